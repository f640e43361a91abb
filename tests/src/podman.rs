//! Containers for the tests, with podman and runc from Debian, and what
//! this kind of host demands of them, in one place:
//! - runc, because crun refuses a hybrid cgroup layout (memory controller
//!   on v1, v2 mounted without it);
//! - the cgroupfs manager and file events, as no systemd runs here;
//! - `--ulimit nofile=1024:1024 --ulimit nproc=1000:1000`, because the
//!   sandbox cannot raise rlimits and podman's defaults would;
//! - images `FROM scratch` only: nothing can be pulled.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `podman` with this host's global options.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]);
    c
}

/// The `podman run` options every container here needs.
pub const RUN_LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1000:1000",
];

fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .expect("podman (cargo xtask bootstrap installs it)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An image the test built, removed when dropped.
pub struct Image(pub String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rmi", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds `tag` FROM scratch holding `exe` as `/bin/NAME` (a static Go
/// program), its entry point.
pub fn scratch_image(tag: &str, exe: &Path, dir: &Path) -> Image {
    let name = exe.file_name().unwrap().to_str().unwrap();
    let rootfs = dir.join("rootfs/bin");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(exe, rootfs.join(name)).unwrap();
    std::fs::write(
        dir.join("Containerfile"),
        format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/bin/{name}\"]\n"),
    )
    .unwrap();
    ok(podman()
        .args(["build", "--pull=never", "-q", "-t", tag, "-f"])
        .arg(dir.join("Containerfile"))
        .arg(dir));
    Image(tag.to_string())
}

/// A running container, removed when dropped.
pub struct Container {
    pub id: String,
}

impl Container {
    /// `podman run -d` with the host's limits, then `args` (options, the
    /// image, its arguments).
    pub fn run(args: &[String]) -> Self {
        let out = ok(podman().args(["run", "-d"]).args(RUN_LIMITS).args(args));
        Self {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    /// A `podman inspect` field (a Go template such as `{{.State.Pid}}`).
    pub fn inspect(&self, template: &str) -> String {
        let out = podman()
            .args(["inspect", "-f", template, &self.id])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The host pid of its first process (0 once it ended).
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap_or(0)
    }

    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace` seconds); returns
    /// its exit code.
    pub fn stop(&self, grace: u32) -> i32 {
        let _ = podman()
            .args(["stop", "-t", &grace.to_string(), &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.inspect("{{.State.ExitCode}}").parse().unwrap_or(-1)
    }

    /// What it wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        let out = podman().args(["logs", &self.id]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
