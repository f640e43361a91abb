//! A Go program nobody here wrote: Debian's `prometheus` (stripped, cgo,
//! Go 1.19), under a load of scrapes and queries, attached with every lens
//! that reads the runtime (its variables found from code). Its own
//! `/debug/pprof/heap` and goroutine dump are the reference.

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
            // Go's own heap profile leaves out the runtime frames at the
            // leaf of a stack (runtime/pprof's writeHeapProto), so the
            // allocating map or slice growth is charged to its caller: both
            // profiles are read that way.
            .args(["tool", "pprof", "-top", "-flat", "-hide=^runtime\\."])
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

    // Goroutines: the lens's live count against the program's own, taken
    // right after the window from its goroutine dump (`go_goroutines` is no
    // reference: client_golang gathers metrics in worker goroutines, so
    // during a scrape it reads 31 where the dump, a moment later, has 28).
    // The dump's own request runs in two goroutines (the connection's and
    // its background reader), which are left out; and runtime.NumGoroutine
    // leaves out the runtime's own goroutines, which the lens counts too and
    // reports apart (`runtime_goroutines`).
    let (status, dump) =
        http_get(port, "/debug/pprof/goroutine?debug=2", None).expect("goroutine dump");
    assert_eq!(status, 200);
    let dump = String::from_utf8_lossy(&dump);
    let own = dump
        .split("\n\n")
        .filter(|g| g.starts_with("goroutine "))
        .filter(|g| {
            !g.contains("runtime/pprof.writeGoroutineStacks")
                && !g.contains("created by net/http.(*connReader).startBackgroundRead")
        })
        .count() as f64;
    let lens = &s["lenses"]["goroutines"];
    let all = lens["total"].as_f64().unwrap();
    let ours = all - lens["runtime_goroutines"].as_f64().unwrap();
    assert!(
        (ours / own - 1.0).abs() <= 0.05,
        "goroutines: memtrace {ours} ({all} with the runtime's own), the program's dump {own}"
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
