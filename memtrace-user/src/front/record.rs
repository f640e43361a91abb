//! `record`'s policy: one window over the given targets, with a report
//! at once for a target the OOM killer chooses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::run::{Policy, Step};
use crate::engine::{Engine, Host, Lifecycle};
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;
use crate::model::profile::FrameMode;

/// Ends the window after `duration` or when every target has exited.
/// A target the OOM killer chooses gets its report at once, in
/// `OUT/oom/PID-UNIXTIME/`.
pub struct RecordPolicy {
    pub started: Instant,
    pub duration: Option<Duration>,
    pub last_progress: Instant,
    pub out: PathBuf,
    pub frames: FrameMode,
    /// Each OOM-killed target, and where its report went (or why not).
    pub oom: Vec<(u32, Result<PathBuf, String>)>,
}

impl RecordPolicy {
    /// From now, for `duration` (or until every target exits), OOM reports
    /// under `out/oom/`.
    pub fn new(duration: Option<Duration>, out: PathBuf, frames: FrameMode) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            duration,
            last_progress: now,
            out,
            frames,
            oom: Vec::new(),
        }
    }
}

impl<K: Kernel, H: Host> Policy<K, H> for RecordPolicy {
    fn on_lifecycle(&mut self, engine: &mut Engine<K, H>, events: Vec<Lifecycle>) {
        for e in events {
            if let Lifecycle::OomKill(pid) = e {
                let report = engine.report(Some(&[pid]), EndedBy::OomKill);
                let written = crate::render::report::write_oom_report(
                    &report,
                    pid,
                    &self.out.join("oom"),
                    self.frames,
                );
                match &written {
                    Ok(dir) => eprintln!(
                        "memtrace: pid {pid} was killed by the OOM killer; its report is in {}",
                        dir.display()
                    ),
                    Err(e) => eprintln!("memtrace: pid {pid} was killed by the OOM killer; {e}"),
                }
                self.oom.push((pid, written));
            }
        }
    }

    fn on_tick(&mut self, engine: &mut Engine<K, H>, _exited: &[u32]) -> Step {
        if engine.live_pids().is_empty() {
            return Step::Stop(EndedBy::EveryTargetExited);
        }
        if self.duration.is_some_and(|d| self.started.elapsed() >= d) {
            return Step::Stop(EndedBy::Duration);
        }
        if self.last_progress.elapsed() >= Duration::from_secs(5) {
            self.last_progress = Instant::now();
            eprintln!(
                "memtrace: {:.0} s, {} events, {} dropped",
                self.started.elapsed().as_secs_f64(),
                engine.events(),
                engine.kernel_counters().ringbuf_drops
            );
        }
        Step::Continue
    }
}
