//! The guardian: a small process that undoes what memtrace did to its
//! targets if memtrace dies without doing it itself, SIGKILL included.
//!
//! memtrace forks it before anything else runs and tells it, over a pipe,
//! each target it traces and each value it writes into one (today only
//! `runtime.MemProfileRate`, with its original value). When memtrace ends
//! normally it says `done` and the guardian just exits. When the pipe closes
//! without `done` (memtrace died), the guardian writes every original value
//! back and continues every target (SIGCONT), in case one was stopped at a
//! hold: twice, the second time after the kernel has surely detached
//! memtrace's probes.
//!
//! The protocol is one line per message: `target PID`, `wrote PID ADDR
//! VALUE` (VALUE being the original), `restored PID ADDR`, `gone PID`,
//! `done`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::host::remote::{ProcessMemory, RemoteMemory as _};

/// What the guardian must undo, from the messages so far.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undo {
    pub targets: BTreeSet<u32>,
    /// (pid, address) → original value.
    pub writes: BTreeMap<(u32, u64), u64>,
    pub done: bool,
}

impl Undo {
    /// Applies one protocol line; unknown lines are ignored.
    pub fn apply(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
        match (w.first().copied(), num(1), num(2), num(3)) {
            (Some("target"), Some(pid), _, _) => {
                self.targets.insert(pid as u32);
            }
            (Some("wrote"), Some(pid), Some(addr), Some(v)) => {
                self.writes.insert((pid as u32, addr), v);
            }
            (Some("restored"), Some(pid), Some(addr), _) => {
                self.writes.remove(&(pid as u32, addr));
            }
            (Some("gone"), Some(pid), _, _) => {
                let pid = pid as u32;
                self.targets.remove(&pid);
                self.writes.retain(|(p, _), _| *p != pid);
            }
            (Some("done"), ..) => self.done = true,
            _ => {}
        }
    }
}

/// memtrace's end of the pipe.
pub struct Guardian {
    /// `None` once closed, which tells the guardian memtrace is gone.
    pipe: Option<std::fs::File>,
    /// The guardian's pid, reaped when it ends.
    child: libc::pid_t,
    /// What was already said (so repeated syncs stay quiet).
    said: Undo,
}

/// In the guardian: closes every descriptor but stdio and `keep`, so it
/// holds none of memtrace's (a launched program's output pipe would never
/// see its end while the guardian lives).
fn close_all_but(keep: std::os::fd::RawFd) {
    let keep = keep as u32;
    // SAFETY: close_range only closes this process's descriptors; an empty
    // range is refused with EINVAL, which changes nothing.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, keep.saturating_sub(1), 0u32);
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
}

impl Guardian {
    /// Forks the guardian. Call it while memtrace has a single thread.
    pub fn spawn() -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only reads the pipe, writes /proc files and
        // sends signals before it exits; memtrace is single-threaded here.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(write);
                close_all_but(std::os::fd::AsRawFd::as_raw_fd(&read));
                guardian_main(read)
            }
            child => Ok(Self {
                pipe: Some(std::fs::File::from(write)),
                child,
                said: Undo::default(),
            }),
        }
    }

    fn say(&mut self, line: &str) {
        let ok = self
            .pipe
            .as_mut()
            .is_some_and(|p| p.write_all(format!("{line}\n").as_bytes()).is_ok());
        if ok {
            self.said.apply(line);
        } else {
            log::warn!("the guardian is gone; a kill -9 of memtrace would not be undone");
        }
    }

    /// Brings the guardian up to date: the targets traced now and the
    /// values memtrace wrote into them, (pid, address, original value).
    pub fn sync(&mut self, targets: &[u32], writes: &[(u32, u64, u64)]) {
        for &pid in targets {
            if !self.said.targets.contains(&pid) {
                self.say(&format!("target {pid}"));
            }
        }
        // A pid that is gone may be reused: never signal it.
        let gone: Vec<u32> = self
            .said
            .targets
            .iter()
            .filter(|p| !targets.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.say(&format!("gone {pid}"));
        }
        for &(pid, addr, v) in writes {
            if self.said.writes.get(&(pid, addr)) != Some(&v) {
                self.say(&format!("wrote {pid} {addr} {v}"));
            }
        }
        let restored: Vec<(u32, u64)> = self
            .said
            .writes
            .keys()
            .filter(|k| !writes.iter().any(|w| (w.0, w.1) == **k))
            .copied()
            .collect();
        for (pid, addr) in restored {
            self.say(&format!("restored {pid} {addr}"));
        }
    }

    /// Everything was undone by memtrace itself: the guardian exits quietly.
    pub fn done(mut self) {
        self.say("done");
    }
}

impl Drop for Guardian {
    /// Closes the pipe and reaps the guardian, so a long-lived memtrace
    /// (gate, agent) leaves no zombie per session. Without `done` first, the
    /// guardian undoes the writes before it exits.
    fn drop(&mut self) {
        drop(self.pipe.take());
        // It exits at once on `done`, within a second otherwise; but a
        // forked child that never exec'd (a launch abandoned) may still hold
        // the pipe open: never wait for it forever.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut status = 0;
        // SAFETY: polls our own child; status is a valid out-pointer.
        while unsafe { libc::waitpid(self.child, &mut status, libc::WNOHANG) } == 0
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// The guardian's life: read until the pipe closes, then undo unless told
/// `done`.
fn guardian_main(read: OwnedFd) -> ! {
    // Survive the terminal's Ctrl-C and hang-up: memtrace handles those
    // itself and closes the pipe when it is done.
    // SAFETY: setting dispositions to ignore.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut undo = Undo::default();
    for line in std::io::BufReader::new(std::fs::File::from(read))
        .lines()
        .map_while(Result::ok)
    {
        undo.apply(&line);
    }
    if !undo.done {
        for pass in 0..2 {
            if pass == 1 {
                // A hold a dying probe fired after the first pass.
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            for (&(pid, addr), &v) in &undo.writes {
                if let Ok(mem) = ProcessMemory::open(pid) {
                    let _ = mem.write_u64(addr, v);
                }
            }
            for &pid in &undo.targets {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            }
        }
    }
    // SAFETY: ends the forked child without running memtrace's atexit.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_what_to_undo() {
        let mut u = Undo::default();
        for l in [
            "target 10",
            "target 11",
            "wrote 10 4096 0",
            "wrote 11 8192 0",
            "restored 11 8192",
            "gone 11",
            "nonsense here",
        ] {
            u.apply(l);
        }
        assert_eq!(u.targets, BTreeSet::from([10]));
        assert_eq!(u.writes, BTreeMap::from([((10, 4096), 0)]));
        assert!(!u.done);
        u.apply("done");
        assert!(u.done);
    }
}
