//! Helpers for memtrace's end-to-end tests. They run as root against real Go
//! fixtures built by `cargo xtask test`, which passes their locations through
//! the environment. A missing variable is a set-up error, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
pub mod agent;
pub mod hostile;
pub mod kube;
pub mod manifest;
pub mod otlp;
pub mod podman;
pub mod prometheus;
pub mod receiver;

use std::time::{Duration, Instant};

pub fn env_path(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the end-to-end tests with `cargo xtask test`")
    })
}

pub fn memtrace() -> PathBuf {
    env_path("MEMTRACE_BIN")
}

/// Go versions to test, e.g. `["1.21.13", "1.27.3"]`.
pub fn go_versions() -> Vec<String> {
    let v = std::env::var("MEMTRACE_GO_VERSIONS")
        .unwrap_or_else(|_| panic!("MEMTRACE_GO_VERSIONS is not set: run `cargo xtask test`"));
    v.split(',').map(str::to_string).collect()
}

pub fn fixture(version: &str, name: &str) -> PathBuf {
    let p = env_path("MEMTRACE_FIXTURES")
        .join(format!("go{version}"))
        .join(name);
    assert!(
        p.exists(),
        "fixture {} is missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// A fresh, empty output directory for one test.
pub fn out_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("memtrace-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `token` (and a newline) to `dir/name`, as a mounted Secret holds
/// it; returns the path.
pub fn write_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// Runs memtrace to completion with a generous timeout.
pub fn run_memtrace(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(memtrace());
    cmd.args(args).envs(envs.iter().copied());
    wait_output(cmd, Duration::from_secs(120))
}

pub fn wait_output(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("collecting output"),
        Err(_) => {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// A `memtrace record` run, built up and run once: the one way the tests
/// run a recording.
///
/// ```no_run
/// # use memtrace_tests::Record;
/// let r = Record::new("leak").pid(1234).lens("rss").duration("4").ok();
/// assert_eq!(r.summary["ended_by"], "duration");
/// ```
pub struct Record {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    out: PathBuf,
    label: String,
}

/// A finished, successful recording.
pub struct Recorded {
    pub out: PathBuf,
    pub stdout: String,
    pub stderr: String,
    pub summary: serde_json::Value,
}

impl Record {
    /// `memtrace record --out DIR`, with a fresh DIR named after `name`
    /// (which also labels failures).
    pub fn new(name: &str) -> Self {
        let out = out_dir(name);
        Self {
            args: vec![
                "record".into(),
                "--out".into(),
                out.to_string_lossy().into_owned(),
            ],
            envs: Vec::new(),
            out,
            label: name.to_string(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn lens(self, lenses: &str) -> Self {
        self.arg("--lens").arg(lenses)
    }

    pub fn pid(self, pid: u32) -> Self {
        self.arg("--pid").arg(pid.to_string())
    }

    pub fn duration(self, secs: &str) -> Self {
        self.arg("--duration").arg(secs)
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Launch mode: `-- BIN ARGS...`.
    pub fn launch(mut self, bin: &Path, args: &[&str]) -> Self {
        self.args.push("--".into());
        self.args.push(bin.to_string_lossy().into_owned());
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The report directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Runs memtrace to completion, whatever its exit status.
    pub fn run(self) -> Output {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        run_memtrace(&args, &envs)
    }

    /// Runs memtrace, asserts it succeeded, and reads its summary.
    pub fn ok(self) -> Recorded {
        let (label, out) = (self.label.clone(), self.out.clone());
        let o = self.run();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success(),
            "{label}: memtrace failed ({}): {stderr}",
            o.status
        );
        Recorded {
            summary: summary(&out),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr,
            out,
        }
    }
}

impl Recorded {
    /// The lens's `top` entries as (frames, value).
    pub fn top(&self, lens: &str) -> Vec<(Vec<String>, u64)> {
        top(&self.summary, lens)
    }

    /// A `key=value` number the launched fixture printed.
    pub fn printed(&self, key: &str) -> u64 {
        fixture_value(&self.stdout, key)
    }
}

/// The agent's or `record`'s `oom/PID-UNIXTIME/` report of `pid` under
/// `root`, once its `summary.json` is written.
pub fn oom_report(root: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(root.join("oom"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pid}-")))
                && p.join("summary.json").exists()
        })
}

pub fn summary(out: &Path) -> serde_json::Value {
    let p = out.join("summary.json");
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The lens's `top` entries as (frames, value).
pub fn top(summary: &serde_json::Value, lens: &str) -> Vec<(Vec<String>, u64)> {
    summary["lenses"][lens]["top"]
        .as_array()
        .unwrap_or_else(|| panic!("no lens {lens} in {summary}"))
        .iter()
        .map(|e| {
            let frames = e["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (frames, e["value"].as_u64().unwrap())
        })
        .collect()
}

/// Parses `key=value` pairs the fixtures print.
pub fn fixture_value(stdout: &str, key: &str) -> u64 {
    stdout
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("fixture printed no {key}= in {stdout:?}"))
}

/// Runs a helper command to completion and asserts it succeeded.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The target's `runtime.MemProfileRate`, read from its memory (the
/// binary must have a symbol table and be non-PIE).
pub fn mem_profile_rate(bin: &Path, pid: u32) -> u64 {
    let nm = output_ok(Command::new("nm").arg(bin));
    let addr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find(|l| l.ends_with(" runtime.MemProfileRate"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .expect("runtime.MemProfileRate in the symbol table");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut b, addr).unwrap();
    u64::from_le_bytes(b)
}

/// Names of loaded BPF programs (from bpftool).
pub fn bpf_program_names() -> Vec<String> {
    let out = output_ok(Command::new("bpftool").args(["-j", "prog", "show"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// The names memtrace gives its programs, read from the built eBPF
/// object (so a new program cannot be left out).
pub fn memtrace_programs() -> Vec<String> {
    let names = memtrace_user::kernel::ebpf::program_names();
    assert!(names.len() >= 20, "the eBPF object lists {names:?}");
    names
}

/// Asserts that none of memtrace's BPF programs is loaded. The kernel frees
/// a program after an RCU grace period once its last reference is gone, so
/// this allows a few seconds before failing.
pub fn assert_no_memtrace_programs() {
    let leftover = || -> Vec<String> {
        let names = bpf_program_names();
        memtrace_programs()
            .into_iter()
            .filter(|p| names.iter().any(|n| n == p))
            .collect()
    };
    let mut left = leftover();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = leftover();
    }
    assert!(
        left.is_empty(),
        "BPF programs still loaded after memtrace exited: {left:?}"
    );
}

/// Collects a background process's stdout lines.
pub fn collect_stdout(bg: &mut Bg) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead as _;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = bg.0.stdout.take().expect("stdout is piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

/// The highest `heartbeat=N` a fixture printed.
pub fn last_heartbeat(lines: &std::sync::Mutex<Vec<String>>) -> u64 {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("heartbeat=")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// A background process killed on drop.
pub struct Bg(pub Child);

impl Bg {
    pub fn spawn(path: &Path, args: &[&str]) -> Self {
        let child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }

    /// Waits for it to exit; its status, as its parent sees it.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait")
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `f` holds or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Asserts memtrace failed with exactly one non-empty stderr line containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_ne!(
        out.status.code(),
        Some(0),
        "expected failure, stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr}");
    assert!(lines[0].starts_with("memtrace: error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "error line {:?} should mention {needle:?}",
        lines[0]
    );
}

#[cfg(test)]
mod tests {
    /// Every program the eBPF crate's sources define is in the built
    /// object [`super::memtrace_programs`] reads, and nothing else is.
    #[test]
    fn the_object_holds_every_program_of_the_ebpf_crate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../memtrace-ebpf/src");
        let mut defined = Vec::new();
        let mut files = vec![dir];
        while let Some(d) = files.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    files.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let mut attributed = false;
                for line in text.lines().map(str::trim) {
                    let program = ["uprobe", "tracepoint", "btf_tracepoint", "raw_tracepoint"]
                        .iter()
                        .any(|m| line.starts_with(&format!("#[{m}")));
                    if program {
                        attributed = true;
                    } else if attributed && line.starts_with("pub fn ") {
                        let name = line["pub fn ".len()..].split('(').next().unwrap();
                        defined.push(name.to_string());
                        attributed = false;
                    }
                }
            }
        }
        defined.sort();
        let listed = super::memtrace_programs();
        assert!(defined.len() >= 24, "{defined:?}");
        assert_eq!(defined, listed);
    }
}
