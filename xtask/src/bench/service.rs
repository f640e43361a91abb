//! alloc-exact against the runtime's own sampler on a real service:
//! Debian's prometheus (stripped, cgo, Go 1.19) under a loop of scrapes and
//! queries on loopback, recorded with `--lens alloc-exact,alloc` (alloc at
//! the program's own rate) for 30 s, three times. The two must agree within
//! 5% on bytes (objects differ by the tiny allocations, which the runtime's
//! profiler records per 16-byte block); the program's
//! `go_memstats_mallocs_total` rate over the command is shown beside
//! alloc-exact's over its window (see the README's table of what each lens
//! counts).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::bench::median;

const RUNS: usize = 3;
const SECS: &str = "30";
/// One round of the load (three requests) every 20 ms.
const PERIOD: Duration = Duration::from_millis(20);

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn mallocs(port: u16) -> Option<f64> {
    get(port, "/metrics")?.lines().find_map(|l| {
        l.strip_prefix("go_memstats_mallocs_total ")?
            .trim()
            .parse()
            .ok()
    })
}

pub fn prometheus(memtrace: &Path, out: &Path) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = out.join("prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )?;
    let mut child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Debian's prometheus (cargo xtask bootstrap installs it)")?;
    let result = (|| {
        let start = Instant::now();
        while get(port, "/-/ready").is_none_or(|b| !b.contains("200 OK")) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus never ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut rows = Vec::new();
        for run in 0..RUNS {
            rows.push(one_run(memtrace, &dir, port, child.id(), run)?);
        }
        println!(
            "\nalloc-exact and alloc (the program's own rate) on Debian's prometheus under load, \
             {SECS} s, {RUNS} runs:"
        );
        println!("| run | alloc-exact objects | alloc/alloc-exact objects | bytes | mallocs counter's rate/alloc-exact's |");
        println!("|---|---|---|---|---|");
        for (i, r) in rows.iter().enumerate() {
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} |",
                i + 1,
                r[0],
                r[1],
                r[2],
                r[3]
            );
        }
        let col = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<_>>();
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::MAX, f64::min);
            let hi = v.iter().copied().fold(f64::MIN, f64::max);
            format!("{:.3} ({lo:.3}-{hi:.3})", median(v))
        };
        println!(
            "median (min-max): objects {}, bytes {} (goal: bytes within 5%, every run)",
            spread(&col(1)),
            spread(&col(2))
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// [alloc-exact objects, alloc/exact objects, alloc/exact bytes,
/// the mallocs counter's rate / alloc-exact's].
fn one_run(
    memtrace: &Path,
    dir: &Path,
    port: u16,
    pid: u32,
    run: usize,
) -> anyhow::Result<[f64; 4]> {
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // A fixed rate (not as fast as it answers), so the program
            // allocates as much per second traced as untraced.
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let _ = get(port, "/metrics");
                let _ = get(port, "/api/v1/query?query=up");
                let _ = get(
                    port,
                    "/api/v1/query_range?query=up&start=0&end=100000&step=15",
                );
                n += 1;
                if let Some(ahead) = (PERIOD * n).checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        })
    };
    let before = mallocs(port).context("go_memstats_mallocs_total")?;
    let wall = Instant::now();
    let out = dir.join(format!("run-{run}"));
    let o = Command::new(memtrace)
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--lens",
            "alloc-exact,alloc",
        ])
        .args(["--duration", SECS, "--out"])
        .arg(&out)
        .output()?;
    let after = mallocs(port).context("go_memstats_mallocs_total")?;
    let wall = wall.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    anyhow::ensure!(
        o.status.success(),
        "memtrace: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
    let num = |lens: &str, k: &str| s["lenses"][lens][k].as_f64().unwrap_or(f64::NAN);
    let exact = num("alloc-exact", "objects");
    // The counter is read around the whole command (attach and report
    // included), the lens over the traced window: compare rates.
    let traced = s["duration_secs"].as_f64().unwrap_or(f64::NAN);
    Ok([
        exact,
        num("alloc", "objects") / exact,
        num("alloc", "total") / num("alloc-exact", "total"),
        ((after - before) / wall) / (exact / traced),
    ])
}
