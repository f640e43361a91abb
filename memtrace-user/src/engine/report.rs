//! A window's report: every lens's profile for a set of the engine's
//! processes, with the typed `summary.json` that `record` writes and the
//! agent's snapshots share.

use crate::model::extras::SampledSince;
use crate::model::labels::LabelStats;
use std::collections::{BTreeMap, HashMap};

use super::window::{EngineWindow, Symbolize};
use super::{Engine, Host};
use crate::binary::symbolize::Image;
use crate::kernel::Kernel;
use crate::lens;
use crate::lens::cell::Cell;
use crate::model::ended::EndedBy;
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use crate::model::report::{Report, Timeline};
use crate::model::stack::StackKey;
use crate::model::summary::{self, Counters, Summary};

impl<K: Kernel, H: Host> Engine<K, H> {
    /// [`Engine::report`], with the rss lens showing the whole trace's
    /// resident memory by stack (every window's pages still resident, and
    /// what was resident before tracing as one frame) instead of this
    /// window's growth: what holds the memory at an OOM kill or near a
    /// limit, however long it took to fill.
    pub fn report_whole_trace(&mut self, pids: &[u32], ended_by: EndedBy) -> Report {
        self.agg.whole_trace = true;
        let r = self.report(Some(pids), ended_by);
        self.agg.whole_trace = false;
        r
    }

    /// The report of the current window for `pids` (every process when
    /// `None`); `ended_by` says what ended the window.
    pub fn report(&mut self, pids: Option<&[u32]>, ended_by: EndedBy) -> Report {
        self.collect_fault_runs(&[]);
        let pids: Vec<u32> = match pids {
            Some(p) => p
                .iter()
                .copied()
                .filter(|p| self.targets.contains_key(p))
                .collect(),
            None => self.targets.keys().copied().collect(),
        };
        let duration_secs = self.window_secs();
        let mut warnings = Vec::new();
        let images: HashMap<u32, (String, Image)> = pids
            .iter()
            .map(|p| {
                let t = &self.targets[p];
                (*p, (t.name(), t.image.clone()))
            })
            .collect();
        let target_desc = pids
            .iter()
            .map(|p| format!("{} (pid {p})", images[p].0))
            .collect::<Vec<_>>()
            .join(", ");

        // The sampled lenses' cells, from each target's memory profile.
        let (mut sampled, rate, since) = self.sampled_cells(&pids, &mut warnings);

        let rss_released = self.rss_released(&pids, &images, duration_secs, &target_desc);
        let mut lens_summaries = BTreeMap::new();
        let mut profiles = Vec::new();
        let lenses = self.opts.lenses.clone();
        for lens in lenses {
            let mut cells = self
                .agg
                .cells(lens, &pids, &mut self.resolver.stacks)
                .or_else(|| sampled.remove(&lens))
                .unwrap_or_default();
            cells.retain(|k, _| pids.contains(&k.0));
            let mut sym = Symbolize {
                stacks: &self.resolver.stacks,
                sets: &self.labels.sets,
                sym: &mut self.sym,
                images: &images,
                secs: duration_secs,
            };
            let p = sym.profile(lens, &cells, target_desc.clone());
            let mut window = EngineWindow {
                pids: &pids,
                targets: &self.targets,
                whole_trace: self.agg.whole_trace,
                sampling: (rate, since),
                sym,
                warnings: &mut warnings,
            };
            let extras = self
                .agg
                .instance(lens)
                .and_then(|i| i.extras(&p, &mut window));
            lens_summaries.insert(lens.name().to_string(), summary::lens_summary(&p, extras));
            profiles.push(p);
        }

        // The symbol lookups are done: give back the executables' pages
        // they read (a node's agent would otherwise keep a share of every
        // binary it ever symbolized resident).
        for p in &pids {
            self.targets[p].bin.table.release_pages();
        }
        let targets = self.target_summaries(&pids);
        let mut gc = self.agg.gc.clone_for(&pids);
        gc.cycles.sort_by_key(|c| c.ts_ns);
        let summary = Summary {
            targets,
            lenses: lens_summaries,
            dropped_events: {
                let k = self.kernel.counters();
                k.ringbuf_drops + k.kernel_misses
            },
            duration_secs,
            counters: self.counters(),
            ended_by,
            gc: lens::gc::summary(&gc, self.clock.window_ns),
            trigger: None,
            probe_costs: self.kernel.probe_costs(),
            labels: self.label_stats(),
        };
        let timelines = self.timelines(&pids);
        Report {
            profiles,
            summary,
            timelines,
            rss_released,
            warnings,
            split_by: self.opts.split_by_label.clone(),
        }
    }

    /// What became of the label sets, if the targets set any.
    fn label_stats(&self) -> Option<LabelStats> {
        Some(LabelStats {
            not_captured: self.kernel.counters().label_capture_failures,
            ..self.labels.stats()
        })
        .filter(|s| s.sets > 0 || s.unreadable > 0 || s.not_captured > 0)
    }

    /// With the rss lens: the release, by the releasing stack, of memory
    /// resident before the window.
    fn rss_released(
        &mut self,
        pids: &[u32],
        images: &HashMap<u32, (String, Image)>,
        duration_secs: f64,
        target_desc: &str,
    ) -> Option<Profile> {
        let mut cells = self.agg.rss.as_ref()?.released_before.clone();
        cells.retain(|k, _| pids.contains(&k.0));
        Some(self.profile(
            Lens::Rss,
            &cells,
            images,
            duration_secs,
            target_desc.to_string(),
        ))
    }

    /// With the rss lens: each process's RSS timeline.
    fn timelines(&self, pids: &[u32]) -> Vec<Timeline> {
        if !self.opts.has(Lens::Rss) {
            return Vec::new();
        }
        pids.iter()
            .map(|p| {
                let t = &self.targets[p];
                Timeline {
                    pid: *p,
                    title: format!("RSS of {} (pid {p})", t.name()),
                    points: t.timeline.clone(),
                }
            })
            .collect()
    }

    /// The alloc and heap lenses' cells of `pids`, from each target's memory
    /// profile, with the sampling rate and since when it sampled.
    fn sampled_cells(
        &mut self,
        pids: &[u32],
        warnings: &mut Vec<String>,
    ) -> (HashMap<Lens, HashMap<StackKey, Cell>>, u64, SampledSince) {
        let mut sampled: HashMap<Lens, HashMap<StackKey, Cell>> = HashMap::new();
        let mut rate = 0;
        let mut since = SampledSince::Start;
        if !self.opts.sampled() {
            return (sampled, rate, since);
        }
        for pid in pids {
            let Some(p) = self.targets[pid].profile.as_ref() else {
                continue;
            };
            rate = rate.max(p.rate);
            if p.since == SampledSince::Attach || since == SampledSince::Start {
                since = p.since;
            }
            match p.cells(&mut self.resolver.stacks) {
                Some(by_lens) => {
                    for (lens, cells) in by_lens {
                        sampled.entry(lens).or_default().extend(cells);
                    }
                }
                None => warnings.push(format!(
                    "pid {pid}: no memory-profile snapshot at the end of the window; the alloc and heap lenses are empty for it"
                )),
            }
        }
        (sampled, rate, since)
    }

    /// `summary.json`'s `targets` for `pids`.
    fn target_summaries(&self, pids: &[u32]) -> Vec<summary::TargetSummary> {
        pids.iter()
            .map(|p| {
                let t = &self.targets[p];
                summary::TargetSummary {
                    pid: t.pid,
                    exe: t.exe.display().to_string(),
                    go_version: t.bin.go_version.clone(),
                    module: t.bin.module.clone(),
                    build_id: t.bin.table.build_id.clone(),
                    stripped: t.bin.stripped,
                    pie: t.bin.pie,
                    found: t.bin.found_names(),
                    vmrss_start: t.vmrss_start,
                    vmrss_end: t.timeline.last().map(|p| p.vm_rss),
                    timeline: t.timeline.clone(),
                    breakdown: t.final_state.as_ref().and_then(|f| f.breakdown),
                    cgroup: t.cgroup.clone().map(|c| {
                        let usage: Vec<(f64, u64)> = t.cgroup_usage.iter().copied().collect();
                        crate::host::cgroup::memory::summarize(c, &usage)
                    }),
                    exit: t.exit,
                    oom_kill: t.oom.clone(),
                    labels: None,
                }
            })
            .collect()
    }

    /// What was counted rather than attributed: drops, errors, cache work.
    fn counters(&self) -> Counters {
        let k = self.kernel.counters();
        Counters {
            ringbuf_drops: k.ringbuf_drops,
            kernel_misses: k.kernel_misses,
            nested_fault_misses: k.nested_fault_misses,
            stack_errors: k.stack_errors,
            stack_reuses: k.stack_reuses,
            fingerprint_collisions: k.fingerprint_collisions,
            faults_merged: k.faults_merged,
            lost_stacks: self.resolver.lost_stacks,
            capped_stacks: self.resolver.stacks.capped,
            distinct_stacks: self.resolver.stacks.len() as u64,
            syscall_unpaired: self.resolver.unpaired,
            alloc_probe_hits: k.alloc_hits,
            unresolved_frames: self.sym.unresolved,
            unresolved_go_frames: self.sym.unresolved_go,
            truncated_stacks: self.sym.truncated,
            decode_errors: self.resolver.decode_errors,
            hold_failures: k.hold_failures,
            events: self.agg.events,
            stack_error_reasons: self
                .resolver
                .stack_errors
                .iter()
                .map(|(&errno, &events)| summary::StackErrorReason {
                    errno,
                    reason: crate::model::stack::Stack::Failed(errno).reason(),
                    events,
                })
                .collect(),
        }
    }

    fn profile(
        &mut self,
        lens: Lens,
        cells: &HashMap<StackKey, Cell>,
        images: &HashMap<u32, (String, Image)>,
        duration_secs: f64,
        target: String,
    ) -> Profile {
        Symbolize {
            stacks: &self.resolver.stacks,
            sets: &self.labels.sets,
            sym: &mut self.sym,
            images,
            secs: duration_secs,
        }
        .profile(lens, cells, target)
    }
}
