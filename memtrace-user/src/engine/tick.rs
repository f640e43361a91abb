//! The engine's clock work: each tick notices targets that ended (exit,
//! signal, or an exec into another program) and retires them; each second
//! samples VmRSS, rereads mappings, starts and polls the runtime's memory
//! profile, and counts live goroutines.

use std::time::{Duration, Instant};

use super::{Engine, Host};
use crate::kernel::Kernel;
use crate::lens::rss::Thp;
use crate::model::target::Exit;

impl<K: Kernel, H: Host> Engine<K, H> {
    /// Every ~100 ms: notices exited targets (retiring them), and once a
    /// second samples RSS, the memory profile and live goroutines and
    /// rereads mappings. Returns the targets that exited since the last call.
    ///
    /// With discovery on, exits and execs arrive as tracepoint events, so
    /// the polling here is a once-a-second fallback: /proc reads for
    /// hundreds of targets ten times a second were most of the agent's CPU.
    pub fn tick(&mut self) -> Vec<u32> {
        let second = self.clock.last_second.elapsed() >= Duration::from_secs(1);
        let mut exited = Vec::new();
        let poll = !self.opts.discovery || second;
        for t in self
            .targets
            .values_mut()
            .filter(|t| poll && t.exit.is_none())
        {
            let exit = if t.launched {
                self.host
                    .reap(t.pid)
                    .map(|st| t.exit_hint.unwrap_or(Exit::from_status(st)))
            } else {
                (!self.host.alive(t.pid)).then(|| t.exit_hint.unwrap_or_default())
            };
            // Once it ran its program, another executable means an exec:
            // what runs now is not what was probed (a binary replaced on
            // disk reads as "PATH (deleted)" and is no exec).
            let exit = exit.or_else(|| {
                t.image.maps.as_ref()?;
                let now = self.host.exe(t.pid)?;
                let now = now.to_string_lossy();
                let was = t.exe.to_string_lossy();
                let plain = |s: &str| s.trim_end_matches(" (deleted)").to_string();
                (plain(&now) != plain(&was)).then(|| Exit {
                    exec: true,
                    ..Exit::default()
                })
            });
            if let Some(e) = exit {
                t.exit = Some(e);
                exited.push(t.pid);
            }
        }
        for &pid in &exited {
            self.retire(pid);
        }
        if second {
            self.clock.last_second = Instant::now();
            self.every_second();
        }
        if !exited.is_empty() {
            self.sync_guard(None);
        }
        exited
    }

    fn every_second(&mut self) {
        self.continue_stranded();
        self.collect_fault_runs(&[]);
        let secs = self.window_secs();
        let pids = self.live_pids();
        for pid in pids {
            let Some(mut t) = self.targets.remove(&pid) else {
                continue;
            };
            t.sample(&self.host, secs);
            // Keep mappings current (new shared objects), once read.
            if t.image.maps.is_some() {
                if let Some(m) = self.host.maps(pid) {
                    t.image.maps = Some(m);
                }
            }
            if t.launched && !(self.opts.holds && t.bin.holds.is_ok()) {
                // Without a start hold, sampling starts once it runs its program.
                if let Err(e) = self.start_profile(&mut t, false) {
                    self.opts.reporter.warn(&format!("pid {pid}: {e}"));
                }
            }
            if let Some(p) = t.profile.as_mut() {
                if let Ok(mem) = self.host.memory(pid) {
                    p.tick(&*mem);
                }
            }
            if let Some(gs) = self.agg.goroutines.as_ref() {
                t.live_goroutines.push((secs, gs.live_count(pid)));
            }
            if let Some(r) = self.agg.rss.as_mut().filter(|r| r.thp == Thp::Always) {
                r.set_anon_vmas(pid, t.anon_vmas());
            }
            self.targets.insert(pid, t);
        }
        self.sync_guard(None);
    }
}
