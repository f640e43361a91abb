//! Launch mode: start a command held at a gate, so probes are attached
//! before its first instruction, then let it `exec`.

use std::ffi::CString;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crate::model::error::TargetError;

/// A forked child waiting to exec.
pub struct Gated {
    pub pid: u32,
    gate: OwnedFd,
}

/// Finds `cmd` the way `execvp` would.
pub fn resolve(cmd: &str) -> Result<PathBuf, TargetError> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    let found = if cmd.contains('/') {
        Some(PathBuf::from(cmd)).filter(|p| is_exec(p))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(cmd))
                .find(|p| is_exec(p))
        })
    };
    let path = found.ok_or_else(|| TargetError::CommandNotFound(cmd.to_string()))?;
    std::fs::canonicalize(&path).map_err(|e| TargetError::Read {
        path,
        reason: e.to_string(),
    })
}

/// Forks a child that blocks until [`Gated::release`], then execs `path`
/// with `args` (args[0] included), its standard output on `stdout` if given.
pub fn spawn_gated(
    path: &Path,
    args: &[String],
    stdout: Option<OwnedFd>,
) -> Result<Gated, TargetError> {
    let err = |reason: String| TargetError::Read {
        path: path.to_owned(),
        reason,
    };
    let cpath =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| err(e.to_string()))?;
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: the child only calls async-signal-safe functions (read, close,
    // execv, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    let out_fd = stdout.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    if pid == 0 {
        unsafe {
            libc::close(fds[1]);
            if let Some(fd) = out_fd {
                libc::dup2(fd, 1);
            }
            let mut b = 0u8;
            let n = libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            if n != 1 {
                libc::_exit(127); // memtrace went away before releasing us
            }
            libc::execv(cpath.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: fds are ours; the read end is only needed by the child.
    unsafe { libc::close(fds[0]) };
    drop(stdout);
    Ok(Gated {
        pid: pid as u32,
        // SAFETY: a fresh descriptor from pipe2 that nothing else owns.
        gate: unsafe { OwnedFd::from_raw_fd(fds[1]) },
    })
}

impl Gated {
    /// Kills the child before it ran anything (set-up failed).
    pub fn abandon(self) {
        // SAFETY: signalling our own gated child.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = try_wait(self.pid);
    }

    /// Lets the child exec.
    pub fn release(self) {
        let b = [1u8];
        // SAFETY: writing one byte from a valid buffer to our pipe.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.gate),
                b.as_ptr().cast(),
                1,
            )
        };
    }
}

/// Non-blocking reap of our child: `Some(status)` once it has exited.
pub fn try_wait(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if r == pid as i32 {
        Some(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        })
    } else if r < 0 {
        Some(-1)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_on_path_and_rejects_missing() {
        assert!(resolve("sh").unwrap().is_absolute());
        assert!(matches!(
            resolve("no-such-command-xyz"),
            Err(TargetError::CommandNotFound(_))
        ));
        assert!(matches!(
            resolve("./no/such"),
            Err(TargetError::CommandNotFound(_))
        ));
    }

    #[test]
    fn gated_child_runs_only_after_release() {
        let path = resolve("true").unwrap();
        let g = spawn_gated(&path, &["true".into()], None).unwrap();
        let pid = g.pid;
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(try_wait(pid), None, "child must wait at the gate");
        g.release();
        let mut status = None;
        for _ in 0..200 {
            status = try_wait(pid);
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(status, Some(0));
    }
}
