//! End-to-end tests of pprof labels: a server of two routes under
//! `pprof.Do(ctx, pprof.Labels("route", …))`, of which only `/b` leaks
//! (`main.keepForever` keeps a buffer per request and starts a goroutine
//! that never exits every tenth).

use std::process::Command;

use memtrace_tests::*;

/// Of the values in `LENS.folded` whose stack holds `function`, the share
/// under the root frame `root`.
fn share_under(out: &std::path::Path, lens: &str, function: &str, root: &str) -> (f64, u64) {
    let path = out.join(format!("{lens}.folded"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut all, mut under) = (0u64, 0u64);
    for line in text.lines() {
        let (stack, v) = line.rsplit_once(' ').unwrap();
        if !stack.split(';').any(|f| f == function) {
            continue;
        }
        let v: u64 = v.parse().unwrap();
        all += v;
        if stack.starts_with(&format!("{root};")) {
            under += v;
        }
    }
    (under as f64 / all.max(1) as f64, all)
}

/// `go tool pprof -top -tagfocus=FOCUS` of a profile: each function's flat
/// bytes.
fn pprof_top(profile: &std::path::Path, focus: &str) -> Vec<(String, f64)> {
    let o = output_ok(
        Command::new(env_path("MEMTRACE_GO"))
            .args(["tool", "pprof", "-top", "-flat", "-nodefraction=0"])
            .arg(format!("-tagfocus={focus}"))
            .arg(profile),
    );
    let bytes = |s: &str| {
        let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
        let scale = match unit {
            "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => 1.0,
        };
        n.parse::<f64>().ok().map(|n| n * scale)
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.get(5)?.to_string(), bytes(w.first()?)?))
        })
        .collect()
}

/// The share of `function` in a `pprof_top` listing, and whether it leads.
fn leads(top: &[(String, f64)], function: &str) -> (bool, f64) {
    let total: f64 = top.iter().map(|(_, b)| b).sum();
    let mine: f64 = top
        .iter()
        .filter(|(f, _)| f == function)
        .map(|(_, b)| b)
        .sum();
    (
        top.first().is_some_and(|(f, _)| f == function),
        mine / total.max(1.0),
    )
}

/// In rss, alloc-exact and goroutines, at least 90% of the leak's bytes or
/// goroutines carry `route=/b`; `go tool pprof -tagfocus` isolates each
/// route; the split flame graph has a `[route=/b]` root. On every Go
/// version (1.19–1.23 keep label sets in maps, later ones in slices) and
/// in a stripped build.
#[test]
fn the_leaking_route_is_named_by_its_label() {
    let versions = go_versions();
    let mut builds: Vec<(String, &str)> = versions.iter().map(|v| (v.clone(), "labels")).collect();
    builds.push((versions[0].clone(), "labels-stripped"));
    if versions.len() > 1 {
        builds.push((versions[versions.len() - 1].clone(), "labels-stripped"));
    }
    for (version, build) in builds {
        let v = format!("go{version} {build}");
        let r = Record::new(&format!("labels-{version}-{build}"))
            .lens("rss,alloc-exact,goroutines")
            .arg("--split-by-label")
            .arg("route")
            .launch(&fixture(&version, build), &["-requests", "2000"])
            .ok();
        assert_eq!(r.printed("waiting"), 100, "{v}: {}", r.stdout);
        let labels = &r.summary["labels"];
        assert_eq!(labels["values"]["route"], 2, "{v}: {labels}");
        for lens in ["rss", "alloc-exact", "goroutines"] {
            let (share, total) = share_under(&r.out, lens, "main.keepForever", "[route=/b]");
            assert!(total > 0, "{v} {lens}: no stack holds main.keepForever");
            assert!(
                share >= 0.9,
                "{v} {lens}: {:.1}% of the leak carries route=/b",
                share * 100.0
            );
            let by = &r.summary["lenses"][lens]["by_label"]["route"];
            assert!(by["/b"].as_u64().unwrap_or(0) > 0, "{v} {lens}: {by}");
        }
        // The leak's bytes: 16 KiB per /b request.
        let leaked = r.printed("leaked");
        let (_, alloc_total) = share_under(&r.out, "alloc-exact", "main.keepForever", "[route=/b]");
        assert!(alloc_total >= leaked, "{v}: {alloc_total} < {leaked}");
        let svg = std::fs::read_to_string(r.out.join("rss.svg")).unwrap();
        assert!(
            svg.contains("[route=/b]"),
            "{v}: the split flame graph has no [route=/b]"
        );
        let pb = r.out.join("alloc-exact.pb.gz");
        for (focus, function) in [
            ("route=/b", "main.keepForever"),
            ("route=/a", "main.renderPage"),
        ] {
            let top = pprof_top(&pb, focus);
            let (first, share) = leads(&top, function);
            assert!(
                first && share >= 0.9,
                "{v}: -tagfocus={focus}: {function} {:.1}%: {top:?}",
                share * 100.0
            );
        }
    }
}

/// A label set per request at full speed (four workers, each request
/// under `route` and one of 50 `user` values, `u0` … `u49`, whose strings
/// the collector frees and reuses; `/a` also under one of 7 `id`s, so its
/// sets hold three labels): at least 99% of each handler's
/// allocations (alloc-exact) and resident growth (rss) carry its own
/// route, at ≥ 30 000 requests a second traced, on every Go version; and
/// no value the program never set appears in the folded stacks, the
/// summary or the pprof profiles.
#[test]
fn every_request_keeps_its_own_labels_at_full_speed() {
    let users: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    for version in go_versions() {
        let v = format!("go{version}");
        let r = Record::new(&format!("labels-rate-{version}"))
            .lens("rss,alloc-exact")
            .arg("--split-by-label")
            .arg("route,user")
            .launch(
                &fixture(&version, "labels"),
                &[
                    "-requests",
                    "100000",
                    "-pace",
                    "0",
                    "-users",
                    "50",
                    "-keep",
                    "1",
                    "-linger",
                    "0s",
                ],
            )
            .ok();
        let rate = r.printed("rate");
        assert!(rate >= 30_000, "{v}: {rate} requests a second traced");
        for lens in ["alloc-exact", "rss"] {
            for (function, route) in [("main.renderPage", "/a"), ("main.keepForever", "/b")] {
                let root = format!("[route={route}]");
                let (share, total) = share_under(&r.out, lens, function, &root);
                assert!(total > 0, "{v} {lens}: no stack holds {function}");
                assert!(
                    share >= 0.99,
                    "{v} {lens}: {:.2}% of {function} carries route={route}",
                    share * 100.0
                );
            }
            let folded = std::fs::read_to_string(r.out.join(format!("{lens}.folded"))).unwrap();
            for line in folded.lines() {
                let mut frames = line.split(';');
                let (route, user) = (frames.next().unwrap(), frames.next().unwrap());
                assert!(
                    ["[route=/a]", "[route=/b]", "[route=[no labels]]"].contains(&route),
                    "{v} {lens}: {line}"
                );
                let user = user
                    .strip_prefix("[user=")
                    .and_then(|u| u.strip_suffix(']'));
                assert!(
                    user.is_some_and(|u| u == "[no labels]" || users.iter().any(|x| x == u)),
                    "{v} {lens}: a value the program never set: {line}"
                );
            }
            let by = &r.summary["lenses"][lens]["by_label"]["user"];
            for value in by.as_object().unwrap().keys() {
                assert!(
                    value == "[no labels]" || users.contains(value),
                    "{v} {lens}: {by}"
                );
            }
            for (key, value) in pprof_tags(&r.out.join(format!("{lens}.pb.gz"))) {
                let known = match key.as_str() {
                    "route" => value == "/a" || value == "/b",
                    "user" => users.contains(&value),
                    "id" => value.parse::<u32>().is_ok_and(|i| i < 7),
                    _ => false,
                };
                assert!(known, "{v} {lens}.pb.gz: {key}={value}");
            }
        }
        let labels = &r.summary["labels"];
        assert_eq!(labels["values"]["user"], 50, "{v}: {labels}");
        assert_eq!(labels["values"]["route"], 2, "{v}: {labels}");
        assert!(
            labels["captured"].as_u64().unwrap() >= 100_000,
            "{v}: {labels}"
        );
    }
}

/// Every (key, value) of the labels in a pprof profile
/// (`go tool pprof -tags`).
fn pprof_tags(profile: &std::path::Path) -> Vec<(String, String)> {
    let o = output_ok(
        Command::new(env_path("MEMTRACE_GO"))
            .args(["tool", "pprof", "-tags"])
            .arg(profile),
    );
    let mut key = String::new();
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if let Some((k, _)) = line.trim_start().split_once(": Total") {
            key = k.to_string();
        } else if let Some((_, value)) = line.split_once("): ") {
            out.push((key.clone(), value.to_string()));
        }
    }
    assert!(!out.is_empty(), "no labels in {}", profile.display());
    out
}

/// A program that sets 100 000 distinct label values: memtrace keeps 500
/// of them, folds the rest into `[other]` and says how many it folded,
/// and its own memory stays bounded.
#[test]
fn a_hundred_thousand_label_values_are_folded_and_counted() {
    let version = go_versions().pop().unwrap();
    let bin = fixture(&version, "labels");
    let out = out_dir("labels-cardinality");
    let mut cmd = Command::new(memtrace());
    cmd.args([
        "record",
        "--lens",
        "alloc-exact,rss",
        "--split-by-label",
        "id",
        "--out",
    ])
    .arg(&out)
    .arg("--")
    .arg(&bin)
    .args([
        "-requests",
        "200000",
        "-values",
        "100000",
        "-pace",
        "0",
        "-leak=false",
        "-hold",
    ]);
    let o = wait_output(cmd, std::time::Duration::from_secs(240));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    let labels = &s["labels"];
    assert_eq!(labels["values"]["id"], 500, "{labels}");
    let folded = labels["folded_values"].as_u64().unwrap();
    assert!(folded >= 90_000, "{folded} values folded: {labels}");
    let by = &s["lenses"]["rss"]["by_label"]["id"];
    assert!(
        by.as_object().unwrap().len() <= 502,
        "values kept and [other]: {by}"
    );
    let folded_lines = std::fs::read_to_string(out.join("rss.folded")).unwrap();
    assert!(
        folded_lines.contains("[id=[other]]"),
        "no [other] root in rss.folded"
    );
    // The report says how many were folded.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("folded into [other]"), "{stderr}");
    // memtrace's peak RSS (the largest of this test's children) stays
    // bounded.
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let peak_mib = ru.ru_maxrss / 1024;
    eprintln!("labels-cardinality: peak RSS {peak_mib} MiB");
    assert!(peak_mib < MAX_PEAK_MIB, "peak RSS {peak_mib} MiB");
}

/// memtrace's own peak RSS while 100 000 label values go by.
const MAX_PEAK_MIB: i64 = 160;

/// `memtrace gate --per-label route`: a candidate that keeps three times as
/// much per `/b` request is named by the label value that grew.
#[test]
fn the_gate_names_the_label_value_that_grew() {
    let bin = fixture(&go_versions().pop().unwrap(), "labels");
    let out = out_dir("labels-gate");
    let base = format!("{} -requests 1500", bin.display());
    let cand = format!("{base} -keep 48");
    let o = run_memtrace(
        &[
            "gate",
            "--baseline",
            &base,
            "--candidate",
            &cand,
            "--runs",
            "3",
            "--per-label",
            "route",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "gate failed: {}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gate.json")).unwrap()).unwrap();
    let l = &g["per_label"];
    assert_eq!(l["key"], "route", "{l}");
    assert_eq!(l["grew_most"], "/b", "{l}");
    let b = &l["values"][0];
    assert!(
        b["candidate"].as_f64().unwrap() > 2.0 * b["baseline"].as_f64().unwrap(),
        "{l}"
    );
    assert!(stdout.contains("by label route=/b"), "{stdout}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("### By label `route`"), "{md}");
}
