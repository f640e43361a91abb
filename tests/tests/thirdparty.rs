//! A Go program nobody here wrote: Debian's `prometheus` (stripped, cgo,
//! Go 1.19), under a load of scrapes and queries, attached with every lens
//! that reads the runtime (its variables found from code). Its own
//! `/debug/pprof/heap` and `go_goroutines` are the reference.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memtrace_tests::agent::{free_port, http_get, urlencode};
use memtrace_tests::prometheus::Prometheus;
use memtrace_tests::*;

/// The top `n` functions by flat `sample_index` of a pprof profile, as
/// `go tool pprof -top` lists them.
fn pprof_top(profile: &std::path::Path, sample_index: &str, n: usize) -> Vec<String> {
    let out = output_ok(
        std::process::Command::new(env_path("MEMTRACE_GO"))
            .args(["tool", "pprof", "-top", "-flat"])
            .arg(format!("-sample_index={sample_index}"))
            .arg(format!("-nodecount={n}"))
            .arg(profile),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .take(n)
        .collect()
}

fn own_metric(port: u16, name: &str) -> f64 {
    let (status, body) = http_get(port, "/metrics", None).expect("prometheus /metrics");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in prometheus's metrics"))
}

#[test]
fn debians_prometheus_with_every_runtime_lens() {
    let dir = out_dir("prometheus-thirdparty");
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n\
         scrape_configs:\n  - job_name: self\n    static_configs:\n      \
         - targets: ['127.0.0.1:{port}']\n"
    );
    let p = Prometheus::start_on(&dir, port, &config, "groups: []\n");
    // Load for the first 7 s of the 10 s window (then the connection
    // goroutines are gone, and the count is steady at the window's end).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let q = urlencode("rate(prometheus_http_requests_total[5s])");
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(7) {
                let _ = http_get(port, "/metrics", None);
                let _ = http_get(port, &format!("/api/v1/query?query={q}"), None);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let r = Record::new("prometheus-thirdparty")
        .pid(p.pid())
        .lens("rss,alloc,heap,goroutines")
        .duration("10")
        .ok();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let s = &r.summary;
    let t = &s["targets"][0];
    assert_eq!(t["stripped"], true, "{t}");
    for var in [
        "runtime.mbuckets",
        "runtime.MemProfileRate",
        "runtime.allgs",
    ] {
        assert_eq!(t["found"][var], "code", "{var}: {t}");
    }
    assert_eq!(t["found"]["runtime.g layout"], "runtime_type", "{t}");

    // Goroutines: the lens's live count against the program's own.
    // runtime.NumGoroutine (go_goroutines) leaves out the runtime's own
    // goroutines (`isSystemGoroutine`: a start function in package runtime
    // other than runtime.main); the lens counts them too, under their
    // start function, so they are set apart here as Go does.
    let own = own_metric(port, "go_goroutines");
    let folded = std::fs::read_to_string(r.out.join("goroutines.folded")).unwrap();
    let (mut all, mut system) = (0.0, 0.0);
    for l in folded.lines() {
        let (stack, n) = l.rsplit_once(' ').unwrap();
        let n: f64 = n.parse().unwrap();
        let start = stack.rsplit(';').next().unwrap();
        all += n;
        if start.starts_with("runtime.") && start != "runtime.main" {
            system += n;
        }
    }
    assert_eq!(all, s["lenses"]["goroutines"]["total"].as_f64().unwrap());
    let ours = all - system;
    // The count is read after the window, over HTTP: the request's own
    // connection and the self-scrape's keep-alive connections (a goroutine
    // or two each) come and go between the two readings. Within 5%, or 5
    // goroutines on a server that runs ~30.
    assert!(
        (ours - own).abs() <= (own * 0.05).max(5.0),
        "goroutines: memtrace {ours} ({all} with the runtime's own), go_goroutines {own}"
    );

    // Heap: the top functions of the program's own heap profile.
    let (status, body) = http_get(port, "/debug/pprof/heap", None).expect("pprof heap");
    assert_eq!(status, 200);
    let own_profile = dir.join("own-heap.pb.gz");
    std::fs::write(&own_profile, body).unwrap();
    let theirs = pprof_top(&own_profile, "inuse_space", 5);
    let ours = pprof_top(&r.out.join("heap.pb.gz"), "inuse_space", 5);
    let shared = ours.iter().filter(|f| theirs.contains(f)).count();
    assert!(
        shared >= 3,
        "heap top 5: memtrace {ours:?}, prometheus's own {theirs:?}"
    );
    // alloc and rss saw the load; the program survived it.
    for lens in ["alloc", "rss"] {
        assert!(s["lenses"][lens]["total"].as_u64().unwrap() > 0, "{lens}");
    }
    assert_eq!(s["dropped_events"], 0, "{s}");
    assert!(
        http_get(port, "/-/ready", None).is_some_and(|(s, _)| s == 200),
        "prometheus died: {}",
        p.log()
    );
}
