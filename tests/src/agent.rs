//! A `memtrace agent` under test, and the small HTTP pieces the agent,
//! Prometheus and push tests share.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{memtrace, out_dir, wait_until};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent with its log and output directory.
pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub out: PathBuf,
    /// Sent as a bearer token on every request, when set.
    pub token: Option<String>,
}

impl Agent {
    /// Starts the agent on a free loopback port with only the capabilities
    /// deploy/daemonset.yaml grants, and waits for /healthz.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_in(out_dir(name), args)
    }

    /// Like [`Agent::start`], into an existing output directory (a
    /// restart keeps it).
    pub fn start_in(out: PathBuf, args: &[&str]) -> Self {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("agent.log"))
            .unwrap();
        // Exactly the capabilities deploy/daemonset.yaml grants, nothing else.
        let caps = "-all,+bpf,+perfmon,+sys_ptrace,+sys_admin";
        let child = Command::new("setpriv")
            .arg(format!("--bounding-set={caps}"))
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg("--")
            .arg(memtrace())
            .arg("agent")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting memtrace agent");
        let mut a = Self {
            child,
            port,
            out,
            token: None,
        };
        let up = wait_until(Duration::from_secs(20), || {
            http_get(a.port, "/healthz", None).is_some_and(|(s, _)| s == 200)
        });
        assert!(up, "agent never served /healthz: {}", a.log());
        assert!(a.child.try_wait().unwrap().is_none(), "{}", a.log());
        a
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.out.join("agent.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(self.port, path, self.token.as_deref())
            .unwrap_or_else(|| panic!("GET {path} failed: {}", self.log()))
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    }

    /// SIGTERM; returns the exit code, the output directory and the log.
    pub fn stop(mut self) -> (Option<i32>, PathBuf, String) {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let done = wait_until(Duration::from_secs(30), || {
            self.child.try_wait().unwrap().is_some()
        });
        assert!(done, "agent ignored SIGTERM: {}", self.log());
        let code = self.child.wait().unwrap().code();
        (code, self.out.clone(), self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 GET (the path is sent exactly as given), with an
/// optional bearer token.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The line of `family` for `pid` in an exposition, if any.
pub fn series<'a>(metrics: &'a str, family: &str, pid: u32) -> Option<&'a str> {
    let needle = format!("pid=\"{pid}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(&needle))
}

/// The unlabelled sample of `name` in an exposition, if any.
pub fn scalar(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A sample line's value.
pub fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Leaf of the heaviest stack in a folded profile.
pub fn top_leaf(folded: &str) -> String {
    folded
        .lines()
        .filter_map(|l| {
            let (stack, v) = l.rsplit_once(' ')?;
            Some((
                v.parse::<u64>().ok()?,
                stack.rsplit(';').next()?.to_string(),
            ))
        })
        .max()
        .map(|(_, leaf)| leaf)
        .unwrap_or_default()
}

/// Asserts that 1 s windows, by their start (nanoseconds, in any order,
/// repeats allowed), follow one another with none missing, and that there
/// are at least `min` of them.
pub fn assert_windows_follow(mut starts: Vec<i64>, min: usize) {
    starts.sort_unstable();
    starts.dedup();
    assert!(starts.len() >= min, "{} windows: {starts:?}", starts.len());
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    assert!(
        gaps.iter().all(|g| *g < 1.9),
        "a window is missing (gaps in seconds): {gaps:?}"
    );
}
