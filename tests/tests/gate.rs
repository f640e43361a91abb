//! `memtrace gate` against the `service` fixture: a request loop at a fixed
//! rate that keeps `-keep` bytes per request in `main.storeSession`. One
//! trial of each case (the false-positive and detection rates over 20
//! trials are in `cargo xtask bench`).

use std::path::{Path, PathBuf};
use std::process::Output;

use memtrace_tests::*;

fn service() -> PathBuf {
    fixture(&go_versions().pop().unwrap(), "service")
}

/// `memtrace gate` with a baseline keeping 6400 bytes per request and a
/// candidate keeping `keep`; returns the output and the out directory.
fn gate(name: &str, candidate: &str, extra: &[&str]) -> (Output, PathBuf) {
    let out = out_dir(name);
    let svc = service();
    let svc = svc.to_str().unwrap();
    let mut args = vec![
        "gate".to_string(),
        "--baseline".into(),
        format!("{svc} -keep 6400"),
        "--candidate".into(),
        format!("{svc} {candidate}"),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (run_memtrace(&args, &[]), out)
}

const PER_REQUEST: &[&str] = &["--duration", "3", "--per-request", r"requests (\d+)"];

fn gate_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("gate.json")).unwrap()).unwrap()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_same_build_passes() {
    let (o, out) = gate("gate-same", "-keep 6400", PER_REQUEST);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let g = gate_json(&out);
    assert_eq!(g["verdict"], "pass", "{g}");
    assert_eq!(g["unit"], "bytes/request");
    assert_eq!(g["baseline"]["values"].as_array().unwrap().len(), 5);
    // Runs alternate: A1 B1 A2 B2 ...
    let labels: Vec<&str> = g["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(&labels[..4], ["A1", "B1", "A2", "B2"]);
    assert!(out.join("runs/A1/summary.json").exists(), "per-run reports");
    assert!(out.join("summary.md").exists());
}

#[test]
fn a_quarter_more_kept_per_request_fails_and_names_the_code() {
    let (o, out) = gate("gate-25", "-keep 8000", PER_REQUEST);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let g = gate_json(&out);
    assert_eq!(g["verdict"], "fail", "{g}");
    let inc = g["increase_pct"].as_f64().unwrap();
    assert!((10.0..=40.0).contains(&inc), "increase {inc}%: {g}");
    assert_eq!(
        g["grew_most"][0][0], "main.storeSession",
        "the function that keeps the bytes: {g}"
    );
    let svg = std::fs::read_to_string(out.join("gate.svg")).unwrap();
    assert!(svg.contains("main.storeSession"), "gate.svg names it");
    assert!(svg.contains("fill=\"rgb(255,"), "growth drawn red");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("FAIL") && md.contains("main.storeSession"),
        "{md}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("grew most: main.storeSession"),
        "{}",
        explain(&o)
    );
}

#[test]
fn two_percent_more_passes_at_the_default_threshold() {
    let (o, out) = gate("gate-2", "-keep 6528", PER_REQUEST);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let g = gate_json(&out);
    assert_eq!(g["verdict"], "pass", "{g}");
    let inc = g["increase_pct"].as_f64().unwrap();
    assert!((-2.0..=6.0).contains(&inc), "increase {inc}%: {g}");
}

/// A service under a `--load` command, requests from its Prometheus
/// counter.
#[test]
fn a_served_load_counted_by_a_prometheus_counter() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = service();
    let load = format!(
        "{} -load http://127.0.0.1:{port}/ -rate 400 -duration 3s",
        svc.display()
    );
    let counter = format!("http://127.0.0.1:{port}/metrics#requests_total");
    let listen = format!("-listen 127.0.0.1:{port}");
    let out = out_dir("gate-load");
    let o = run_memtrace(
        &[
            "gate",
            "--baseline",
            &format!("{} -keep 6400 {listen}", svc.display()),
            "--candidate",
            &format!("{} -keep 8000 {listen}", svc.display()),
            "--load",
            &load,
            "--per-request",
            &counter,
            "--runs",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let g = gate_json(&out);
    assert_eq!(g["verdict"], "fail", "{g}");
    let rate = g["runs"][0]["request_rate"].as_f64().unwrap();
    assert!((300.0..=450.0).contains(&rate), "requests/s {rate}: {g}");
    assert!(out.join("runs/A1/load.log").exists());
}

#[test]
fn a_missing_binary_is_an_error() {
    let out = out_dir("gate-missing");
    let o = run_memtrace(
        &[
            "gate",
            "--baseline",
            "/no/such/service -keep 1",
            "--candidate",
            service().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("command not found: /no/such/service"),
        "{stderr}"
    );
}

#[test]
fn a_crashing_candidate_is_an_error() {
    let (o, _) = gate(
        "gate-crash",
        "-keep 6400 -crash-after 1s",
        &["--runs", "2", "--duration", "3"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("memtrace: error: run B1: the program crashed: it exited with status 2"),
        "{stderr}"
    );
    assert_no_memtrace_programs();
}
