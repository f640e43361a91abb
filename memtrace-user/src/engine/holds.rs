//! Holds: a target stops itself (SIGSTOP from its own probe) at the start
//! of its program and on its way out, so memtrace can set its sampling
//! rate before any user code runs and read its final state before its
//! memory is gone; then it continues it. `finish` reads the same final
//! state from targets still running when the session ends.

use memtrace_common::HoldPoint;

use super::{Engine, Exit, Host, Target};
use crate::kernel::Kernel;

impl<K: Kernel, H: Host> Engine<K, H> {
    /// A target stopped itself: set or read its state, then continue it.
    pub(super) fn serve_hold(&mut self, pid: u32, point: HoldPoint, code: u64, stopped: bool) {
        if point == HoldPoint::Start {
            self.refresh_maps(pid);
        }
        let Some(mut t) = self.targets.remove(&pid) else {
            if stopped {
                self.host.resume(pid);
            }
            return;
        };
        if stopped && !self.host.wait_stopped(pid) {
            log::warn!("pid {pid}: did not stop at {point:?} in time");
        }
        match point {
            HoldPoint::Start => {
                if let Err(e) = self.start_profile(&mut t, true) {
                    eprintln!(
                        "memtrace: warning: pid {pid}: cannot read its Go memory profile: {e}"
                    );
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
            self.host.resume(pid);
        }
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
