//! The agent's memory on a node of many distinct large Go binaries: N
//! copies of Debian's prometheus (50 MB each, each with its own build ID)
//! traced at once, against one copy traced alone, three paired trials. The
//! goal (issue 38): a peak ≤ 150 MiB with twenty, where reading each binary
//! whole would need a gigabyte.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::bench::{median, peak_rss_kib};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const TRIALS: usize = 3;
const GOAL_MIB: f64 = 150.0;

/// Children killed when dropped.
struct Reaped(Vec<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` copies of prometheus, one byte of the Go build ID apart, written
/// into `dir`; returns their paths.
fn copies(dir: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    use object::{Object as _, ObjectSection as _};
    let orig = std::fs::read(PROMETHEUS)
        .with_context(|| format!("{PROMETHEUS}: install Debian's prometheus"))?;
    let at = {
        let f = object::File::parse(&*orig)?;
        let s = f
            .section_by_name(".note.go.buildid")
            .context("prometheus has no Go build ID")?;
        s.file_range().context("build ID note")?.0 as usize + 16 + 10
    };
    (0..n)
        .map(|i| {
            let path = dir.join(format!("prom{i}"));
            let mut d = orig.clone();
            d[at] = b'a' + i as u8;
            std::fs::write(&path, &d)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Ok(path)
        })
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn metrics(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// One trial: `bins` running, the agent started after them; its peak RSS
/// (MiB) once every one was traced and two windows were rendered.
fn trial(memtrace: &Path, dir: &Path, bins: &[PathBuf]) -> anyhow::Result<f64> {
    std::fs::write(dir.join("prom.yml"), "global:\n  scrape_interval: 15s\n")?;
    let mut procs = Reaped(Vec::new());
    for (i, b) in bins.iter().enumerate() {
        let data = dir.join(format!("d{i}"));
        let _ = std::fs::remove_dir_all(&data);
        procs.0.push(
            Command::new(b)
                .arg(format!("--config.file={}", dir.join("prom.yml").display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()?))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let port = free_port()?;
    let out = dir.join("agent-out");
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(memtrace);
    cmd.args(["agent", "--window", "3", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--out")
        .arg(&out);
    for b in bins {
        cmd.arg("--exe").arg(b.file_name().context("a file name")?);
    }
    let agent = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let pid = agent.id();
    let agent = Reaped(vec![agent]);
    let start = Instant::now();
    loop {
        let m = metrics(port);
        let traced = procs.0.iter().all(|p| {
            let want = format!("pid=\"{}\"", p.id());
            m.lines()
                .any(|l| l.starts_with("memtrace_process_rss_bytes{") && l.contains(&want))
        });
        if traced {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the agent did not trace all {} copies in 120 s", bins.len());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(7));
    let peak = peak_rss_kib(pid).context("the agent's VmHWM")? as f64 / 1024.0;
    drop(agent);
    Ok(peak)
}

/// Prints the agent's peak RSS with `n` distinct binaries beside one, as
/// medians over paired trials with their spread.
pub fn run(memtrace: &Path, out: &Path, n: usize) -> anyhow::Result<()> {
    let dir = out.join("many-binaries");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bins = copies(&dir, n)?;
    let (mut one, mut many, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..TRIALS {
        eprintln!("xtask: many-binaries bench, trial {}/{TRIALS}", t + 1);
        let a = trial(memtrace, &dir, &bins[..1])?;
        let b = trial(memtrace, &dir, &bins)?;
        one.push(a);
        many.push(b);
        ratio.push(b / a);
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.0}–{:.0}", lo, hi)
    };
    let whole = n as f64 * std::fs::metadata(PROMETHEUS)?.len() as f64 / (1 << 20) as f64;
    println!(
        "\nmemtrace agent, {n} distinct prometheus builds (50 MB each, {whole:.0} MiB of executables), {TRIALS} paired trials:"
    );
    println!(
        "  {:<34} {:>8.0} MiB  (spread {} MiB)",
        "peak RSS, 1 binary",
        median(&one),
        spread(&one)
    );
    println!(
        "  {:<34} {:>8.0} MiB  (spread {} MiB)  goal ≤ {GOAL_MIB:.0} MiB: {}",
        format!("peak RSS, {n} binaries"),
        median(&many),
        spread(&many),
        if many.iter().all(|&m| m <= GOAL_MIB) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  {:<34} {:>8.2}×      (spread {:.2}–{:.2})",
        format!("{n} binaries / 1, paired"),
        median(&ratio),
        ratio.iter().copied().fold(f64::INFINITY, f64::min),
        ratio.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
