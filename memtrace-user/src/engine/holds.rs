//! Holds: a target stops itself (SIGSTOP from its own probe) at the start
//! of its program and on its way out, so memtrace can set its sampling
//! rate before any user code runs and read its final state before its
//! memory is gone; then it continues it. `finish` reads the same final
//! state from targets still running when the session ends.

use crate::model::target::OomKill;
use memtrace_common::HoldPoint;

use super::{Engine, Host, Target};
use crate::kernel::Kernel;
use crate::model::target::Exit;

/// How long a target may stay stopped at a hold before the watchdog
/// continues it: a served hold lasts milliseconds.
pub const HOLD_GRACE_NS: u64 = 5_000_000_000;

impl<K: Kernel, H: Host> Engine<K, H> {
    /// A target stopped itself: set or read its state, then continue it.
    pub(super) fn serve_hold(&mut self, pid: u32, point: HoldPoint, code: u64, stopped: bool) {
        if point == HoldPoint::Start {
            self.refresh_maps(pid);
        }
        let Some(mut t) = self.targets.remove(&pid) else {
            if stopped {
                self.kernel.unhold(pid);
                self.host.resume(pid);
            }
            return;
        };
        if stopped && !self.host.wait_stopped(pid) {
            self.opts
                .reporter
                .warn(&format!("pid {pid}: did not stop at {point:?} in time"));
        }
        match point {
            HoldPoint::Start => {
                if let Err(e) = self.start_profile(&mut t, true) {
                    self.opts.reporter.warn(&format!(
                        "pid {pid}: cannot read its Go memory profile: {e}"
                    ));
                }
            }
            HoldPoint::Exit | HoldPoint::Signal => {
                let exit = if point == HoldPoint::Exit {
                    Exit {
                        code: Some(code as i32),
                        ..Exit::default()
                    }
                } else {
                    Exit {
                        signal: Some(code as i32),
                        ..Exit::default()
                    }
                };
                self.capture(&mut t);
                t.exit_hint = Some(exit);
            }
        }
        self.targets.insert(pid, t);
        self.sync_guard(None);
        if stopped {
            self.kernel.unhold(pid);
            self.host.resume(pid);
        }
    }

    /// The watchdog: a target the kernel noted stopped at a hold more than
    /// [`HOLD_GRACE_NS`] ago, whose hold was never served, is continued
    /// (whatever went wrong, a traced service must not stay stopped).
    /// Returns the pids continued.
    pub(super) fn continue_stranded(&mut self) -> Vec<u32> {
        let now = crate::host::clock::monotonic_ns();
        let mut continued = Vec::new();
        for (pid, at) in self.kernel.held() {
            if now.saturating_sub(at) < HOLD_GRACE_NS {
                continue;
            }
            self.kernel.unhold(pid);
            if self.host.alive(pid) {
                self.host.resume(pid);
                self.opts.reporter.warn(&format!(
                    "pid {pid} stayed stopped at a hold for {} s without its event; continued it",
                    now.saturating_sub(at) / 1_000_000_000
                ));
                continued.push(pid);
            }
        }
        continued
    }

    /// Reads a live target's final state: its mappings, a last RSS point,
    /// the memory profile, where its memory sits and its goroutines' stacks.
    pub(super) fn capture(&mut self, t: &mut Target) {
        let secs = self.window_secs();
        t.refresh_maps(&self.host);
        t.sample(&self.host, secs);
        if let Some(p) = t.profile.as_mut() {
            if let Ok(mem) = self.host.memory(t.pid) {
                p.tick(&*mem);
            }
        }
        let live: Vec<u64> = self
            .agg
            .goroutines
            .as_ref()
            .map(|g| g.live_of(t.pid).map(|(g, _)| g).collect())
            .unwrap_or_default();
        t.capture_final(&self.host, &live);
    }

    /// The OOM killer chose `pid` (`rss_kb`: anonymous, file, shmem). The
    /// victim cannot be held: read at once what can still be read (its
    /// cgroup, mappings, profile, breakdown), and note what could not.
    /// Returns whether `pid` is a target not seen killed before.
    pub(super) fn oom_victim(&mut self, pid: u32, rss_kb: [u64; 3]) -> bool {
        let Some(mut t) = self.targets.remove(&pid) else {
            return false;
        };
        if t.oom.is_some() {
            self.targets.insert(pid, t);
            return false;
        }
        // The cgroup first, while the victim is still in it (a dying
        // process shows the root); a reading elsewhere is not its own.
        let cgroup = self
            .host
            .memory_cgroup(pid)
            .filter(|c| t.cgroup.as_ref().is_none_or(|old| old.path == c.path));
        let alive = self.host.alive(pid);
        let secs = self.window_secs();
        let mut unread = Vec::new();
        let gone = "the process was gone";
        match cgroup {
            Some(c) => t.take_cgroup(secs, c),
            None => unread.push(format!(
                "memory cgroup at the kill: {} (the last reading stands)",
                if alive {
                    "the process had left it"
                } else {
                    gone
                }
            )),
        }
        // Marked now: later samples of a dying process are not its own.
        t.oom = Some(OomKill::default());
        if alive {
            self.capture(&mut t);
        }
        // An exiting process's smaps reads empty: nothing to show.
        if let Some(s) = t.final_state.as_mut() {
            s.breakdown = s.breakdown.filter(|b| b.total() > 0);
        }
        let state = t.final_state.as_ref();
        if state.and_then(|s| s.breakdown).is_none() {
            unread.push(format!(
                "breakdown: /proc/{pid}/smaps {}",
                if alive {
                    "was empty (the kernel was reclaiming the victim's memory)"
                } else {
                    gone
                }
            ));
        }
        if state.and_then(|s| s.heap_live).is_none() && t.bin.gc.is_ok() {
            unread.push(format!(
                "Go heap size: {}",
                if alive {
                    "the victim's memory was unreadable"
                } else {
                    gone
                }
            ));
        }
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        t.oom = Some(OomKill {
            at_secs: secs,
            unix_time,
            anon_rss_bytes: rss_kb[0] << 10,
            file_rss_bytes: rss_kb[1] << 10,
            shmem_rss_bytes: rss_kb[2] << 10,
            unread,
        });
        self.targets.insert(pid, t);
        true
    }

    /// Ends the session's tracing: the kernel stops reporting, what is in
    /// the ring buffer is taken, live targets' final state is read, and
    /// every runtime value memtrace wrote is restored.
    pub fn finish(&mut self) {
        for pid in self.targets.keys().copied().collect::<Vec<_>>() {
            self.kernel.remove_target(pid);
        }
        self.drain();
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        self.collect_fault_runs(&pids);
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            let Some(mut t) = self.targets.remove(&pid) else {
                continue;
            };
            let alive = t.exit.is_none() && self.host.alive(pid);
            if alive {
                self.capture(&mut t);
            }
            if let Some(p) = t.profile.as_mut() {
                let mem = self.host.memory(pid).ok().filter(|_| alive);
                p.finish(mem.as_deref(), alive);
            }
            self.targets.insert(pid, t);
        }
        for links in self.probes.take_all() {
            self.kernel.detach(links);
        }
        self.sync_guard(None);
    }
}
