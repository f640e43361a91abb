//! End-to-end tests of the goroutines lens.

use std::time::Duration;

use memtrace_tests::*;

fn goroutine_count(lines: &std::sync::Mutex<Vec<String>>) -> Option<u64> {
    lines.lock().unwrap().iter().rev().find_map(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("goroutines=")?.parse().ok())
    })
}

/// Goroutines blocked forever in one function, finishing ones in another:
/// the leaking creation site tops the lens, its live total matches
/// runtime.NumGoroutine() within 5%, and the finishing ones net to ~0. In
/// the default build and in the stripped and PIE-stripped ones, where
/// `runtime.allgs` is found from code and `runtime.g`'s layout from the
/// runtime's type descriptor.
#[test]
fn leaked_goroutines_are_found_by_creation_site() {
    for v in go_versions() {
        for build in [
            "goroutines",
            "goroutines-stripped",
            "goroutines-pie-stripped",
        ] {
            leak_found(&v, build);
        }
    }
}

fn leak_found(version: &str, build: &str) {
    // Named in messages as "go1.27.3 goroutines-stripped".
    let v = &format!("{version} {build}");
    {
        // The leak stops after 30 beats (~3 s), inside the window, so the
        // count is steady when the window ends.
        let mut bg = Bg::spawn(&fixture(version, build), &["-beats", "30"]);
        let lines = collect_stdout(&mut bg);
        assert!(
            wait_until(Duration::from_secs(10), || last_heartbeat(&lines) >= 5),
            "go{v}: fixture never started"
        );
        let r = Record::new(&format!("goroutines-{version}-{build}"))
            .pid(bg.pid())
            .lens("goroutines")
            .duration("5")
            .ok();

        assert!(
            last_heartbeat(&lines) > 32,
            "go{v}: the leak should have stopped inside the window"
        );
        let s = &r.summary;
        let lens = &s["lenses"]["goroutines"];
        assert_eq!(lens["unit"], "goroutines");
        let t = top(s, "goroutines");
        assert_eq!(
            t[0].0.last().map(String::as_str),
            Some("main.waitForever"),
            "go{v}: {:?}",
            t[0]
        );
        assert!(
            t[0].0.iter().any(|f| f == "main.handleRequest"),
            "go{v}: creation stack lost: {:?}",
            t[0]
        );
        // Live total against the program's own count.
        let total = lens["total"].as_u64().unwrap() as f64;
        let own = goroutine_count(&lines).expect("fixture prints its goroutine count") as f64;
        let ratio = total / own;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "go{v}: lens {total} vs NumGoroutine {own}"
        );
        // Goroutines that existed before tracing are counted too.
        assert!(
            t.iter().any(|(f, _)| f[0] == "[created before tracing]"),
            "go{v}: {t:?}"
        );
        // Finishing goroutines: many created, all exited, ~none live.
        let sites = lens["sites"].as_array().unwrap();
        let (mut created, mut exited) = (0, 0);
        for site in sites.iter().filter(|s| {
            s["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "main.spawnWorkers")
        }) {
            created += site["created"].as_u64().unwrap();
            exited += site["exited"].as_u64().unwrap();
        }
        let live_workers: u64 = t
            .iter()
            .filter(|(f, _)| f.iter().any(|x| x == "main.spawnWorkers"))
            .map(|(_, n)| n)
            .sum();
        assert!(
            created >= 500,
            "go{v}: only {created} finishing goroutines seen created"
        );
        assert!(
            exited * 100 >= created * 95,
            "go{v}: {exited} of {created} exited"
        );
        assert!(
            live_workers * 20 <= created,
            "go{v}: {live_workers} finishing goroutines still live"
        );
        assert!(
            lens["live_over_time"][0]["live"].as_array().unwrap().len() >= 3,
            "go{v}"
        );
        assert!(bg.alive(), "go{v}: target died");
        assert_no_memtrace_programs();
    }
}

/// Two `go` statements in one function with the same start function and
/// the same callers: the remembered creation stacks (the stack cache keys
/// the `go` statement and its callers) keep them apart, to the line, with
/// exact counts, launched and exiting 0.5 s later.
#[test]
fn go_statements_differing_only_in_line_are_counted_apart() {
    const N: u64 = 4000;
    for v in go_versions() {
        let r = Record::new(&format!("goroutines-sites-{v}"))
            .lens("goroutines")
            .arg("--frames")
            .arg("line")
            .launch(&fixture(&v, "goroutines"), &["-sites", &N.to_string()])
            .ok();
        let (first, second) = (r.printed("first"), r.printed("second"));
        assert_eq!(first + second, N);
        // Folded stacks by line: `...;main.spawnAt main.go:55;main.waitForever main.go:21 1000`.
        let folded = std::fs::read_to_string(r.out.join("goroutines.folded")).unwrap();
        let mut by_line = std::collections::BTreeMap::new();
        for l in folded.lines() {
            let (stack, n) = l.rsplit_once(' ').unwrap();
            let frames: Vec<&str> = stack.split(';').collect();
            if !frames.last().unwrap().starts_with("main.waitForever ") {
                continue;
            }
            let line: u64 = frames
                .iter()
                .find_map(|f| f.strip_prefix("main.spawnAt "))
                .and_then(|f| f.rsplit_once(':')?.1.parse().ok())
                .unwrap_or_else(|| panic!("go{v}: no spawnAt line in {l}"));
            *by_line.entry(line).or_insert(0) += n.parse::<u64>().unwrap();
        }
        let counts: Vec<u64> = by_line.values().copied().collect();
        assert_eq!(
            counts,
            vec![first, second],
            "go{v}: live goroutines by spawnAt line: {by_line:?}"
        );
        let lines: Vec<u64> = by_line.keys().copied().collect();
        assert_eq!(lines[1] - lines[0], 2, "go{v}: lines {by_line:?}");
        assert_no_memtrace_programs();
    }
}
