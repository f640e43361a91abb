//! The agent's reports beside its windows: the triggered snapshots
//! (growth, limit) and the report of an OOM-killed process. A child of
//! `session`, so it sees the policy's state.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{unix_now, AgentPolicy};
use crate::engine::Engine;
use crate::engine::Host;
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;
use crate::model::profile::FrameMode;
use crate::render::report::write_report;

impl AgentPolicy {
    /// Writes a `record`-style report of `pid` for a triggered snapshot;
    /// `trigger` (with its `kind`) goes into `summary.json`, `why` to the log.
    pub(super) fn snapshot<K: Kernel, H: Host>(
        &mut self,
        engine: &mut Engine<K, H>,
        pid: u32,
        trigger: serde_json::Value,
        why: &str,
    ) {
        let root = &self.snapshots.dir;
        let dir = root.join(format!("{pid}-{}", unix_now()));
        let kind = trigger["kind"].as_str().unwrap_or("growth").to_string();
        let ended_by = if kind == "limit" {
            EndedBy::Limit
        } else {
            EndedBy::Snapshot
        };
        let mut report = self.report_of(engine, pid, ended_by);
        report.summary.trigger = Some(trigger);
        let written = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|_| write_report(&dir, &report, FrameMode::Func).map_err(|e| e.to_string()));
        match written {
            Ok(_) => {
                prune(root, self.snapshots.keep);
                let mut shared = self.shared.lock().expect("agent state");
                shared.snapshots += 1;
                *shared.snapshots_by_trigger.entry(kind).or_default() += 1;
                if let Some(p) = shared.procs.get_mut(&pid) {
                    p.snapshots += 1;
                }
                eprintln!(
                    "memtrace: agent: snapshot of pid {pid}: {why} → {}",
                    dir.display()
                );
            }
            Err(e) => eprintln!("memtrace: agent: snapshot of pid {pid} failed: {e}"),
        }
    }

    /// Every tick: the processes near their memory cgroup's limit are read
    /// again, and one that crossed the threshold is snapshotted now, not at
    /// the next once-a-second reading (a fast leak is killed before it).
    pub(super) fn watch_limits<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
        let t = self.started.elapsed().as_secs_f64();
        for pid in self.limits.watched() {
            let Some(c) = engine.memory_cgroup(pid) else {
                continue;
            };
            let Some(limit) = c.limit_bytes.filter(|&l| l > 0) else {
                continue;
            };
            let used = c.usage_bytes as f64 * 100.0 / limit as f64;
            if !self.limits.observe(pid, t, Some(used)) {
                continue;
            }
            let secs = engine.window_secs();
            let mut usage: Vec<(f64, u64)> = engine
                .target(pid)
                .map(|t| t.cgroup_usage.iter().copied().collect())
                .unwrap_or_default();
            usage.push((secs, c.usage_bytes));
            let c = crate::host::cgroup::memory::summarize(c, &usage);
            let why = c.describe(crate::render::report::human_bytes);
            let trigger = serde_json::json!({
                "kind": "limit",
                "limit_pct": self.snapshots.limit_pct,
                "cgroup": c,
            });
            self.snapshot(engine, pid, trigger, &why);
        }
    }

    /// The OOM killer chose `pid`: its report goes to `OUT/oom/PID-UNIXTIME/`
    /// at once, and (with a profile store) its last window is pushed.
    /// The kill is counted first, so whoever sees the report on disk also
    /// sees it in `/metrics`.
    pub(super) fn oom_killed<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>, pid: u32) {
        {
            let mut shared = self.shared.lock().expect("agent state");
            shared.oom_kills += 1;
            *shared
                .snapshots_by_trigger
                .entry("oom_kill".into())
                .or_default() += 1;
        }
        let report = self.report_of(engine, pid, EndedBy::OomKill);
        match crate::render::report::write_oom_report(
            &report,
            pid,
            &self.snapshots.oom_dir,
            FrameMode::Func,
        ) {
            Ok(dir) => {
                prune(&self.snapshots.oom_dir, self.snapshots.keep);
                eprintln!(
                    "memtrace: agent: pid {pid} was killed by the OOM killer; its report is in {}",
                    dir.display()
                )
            }
            Err(e) => eprintln!("memtrace: agent: pid {pid} was killed by the OOM killer; {e}"),
        }
        self.publish(pid, &report);
    }
}

/// Says once per new fault that an executable shrank on disk while mapped
/// (a tenant truncated its binary after its process exited): the pages it
/// lost read as zeros, so that binary's names may be missing.
pub(super) fn say_bus_faults() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SAID: AtomicU64 = AtomicU64::new(0);
    let now = crate::binary::file::bus_faults();
    let said = SAID.swap(now, Ordering::Relaxed);
    if now > said {
        eprintln!(
            "memtrace: agent: an executable shrank on disk while mapped ({} pages so far); what it lost reads as zeros, and its frames may be unnamed",
            now
        );
    }
}

/// Keeps the `keep` newest report directories under `root` (snapshots,
/// OOM reports); never removes the newest one.
pub(super) fn prune(root: &std::path::Path, keep: usize) {
    let keep = keep.max(1);
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, d) in dirs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod tests {
    use super::prune;
    use std::time::{Duration, SystemTime};

    fn dirs(root: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn prune_keeps_the_newest_and_never_the_last_one() {
        let root = std::env::temp_dir().join(format!("memtrace-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let t0 = SystemTime::now() - Duration::from_secs(100);
        for name in ["4-d", "1-a", "3-c", "2-b"] {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("summary.json"), "{}").unwrap();
            // Ages by the order of the digit, not by name or creation.
            let age = name.as_bytes()[0] - b'0';
            let f = std::fs::File::open(&d).unwrap();
            f.set_modified(t0 + Duration::from_secs(u64::from(age) * 10))
                .unwrap();
        }
        prune(&root, 2);
        assert_eq!(dirs(&root), ["3-c", "4-d"]);
        prune(&root, 0);
        assert_eq!(dirs(&root), ["4-d"]);
        prune(&root.join("missing"), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
