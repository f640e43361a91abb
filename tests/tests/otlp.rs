//! OTLP profiles out of `record` and `agent`: a receiver decodes every
//! request with the official messages, checks each index against the
//! dictionary, and finds the leak's function and line, the sample types and
//! units, and the process's resource attributes (its container's ID when
//! it runs in one). One profile goes back to pprof with the same stacks
//! and totals as `LENS.pb.gz`. OTLP/HTTP, and OTLP/gRPC for a `grpc://` URL.

use std::sync::atomic::Ordering;
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::otlp::{self, Received};
use memtrace_tests::podman::{scratch_image, Container};
use memtrace_tests::receiver::{GrpcReceiver, Receiver, GRPC_EXPORT};
use memtrace_tests::*;
use memtrace_user::model::profile::FrameMode;
use memtrace_user::render::pprof;

const PATH: &str = "/v1development/profiles";

fn find<'a>(got: &'a [Received<'a>], lens: &str, sample_type: &str) -> &'a Received<'a> {
    got.iter()
        .find(|r| r.lens == lens && r.sample_type == sample_type)
        .unwrap_or_else(|| {
            let have: Vec<(&str, &str)> = got
                .iter()
                .map(|r| (r.lens.as_str(), r.sample_type.as_str()))
                .collect();
            panic!("no {lens} {sample_type} profile; got {have:?}")
        })
}

/// The heaviest stack's leaf, by source line.
fn leaf(
    req: &opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest,
    r: &Received,
) -> String {
    top_leaf(&pprof::folded(
        &otlp::to_pprof(req, r.profile),
        FrameMode::Line,
    ))
}

#[test]
fn record_exports_a_containerized_leak_over_otlp() {
    let v = go_versions().pop().unwrap();
    let dir = out_dir("otlp-image");
    let image = scratch_image(
        "localhost/memtrace-otlp-rss:test",
        &fixture(&v, "rss"),
        &dir,
    );
    let leak = Container::run(&[
        "--network=none".into(),
        image.0.clone(),
        "-mode".into(),
        "leak".into(),
    ]);
    let pid = leak.pid();
    assert!(pid > 0, "{}", leak.logs());
    let id = leak.inspect("{{.Id}}");
    let recv = Receiver::start();
    let r = Record::new("otlp-record")
        .lens("rss,alloc,goroutines")
        .pid(pid)
        .duration("4")
        .arg("--otlp")
        .arg(recv.url())
        .arg("--otlp-header")
        .arg("Authorization=Bearer otlp-secret")
        .ok();
    assert!(r.stderr.contains("OTLP profiles"), "{}", r.stderr);

    let got = recv.accepted();
    assert_eq!(got.len(), 1, "one export per record");
    let push = &got[0];
    assert_eq!(push.path, PATH);
    assert_eq!(push.headers["content-type"], "application/x-protobuf");
    assert_eq!(push.headers["authorization"], "Bearer otlp-secret");
    let req = otlp::decode(push);
    otlp::check(&req).unwrap();
    let profiles = otlp::profiles(&req);

    // The resource: the process in its container.
    let res = &profiles[0].resource;
    assert_eq!(res["process.pid"], pid.to_string(), "{res:?}");
    assert_eq!(res["container.id"], id, "{res:?}");
    assert_eq!(res["service.name"], "memtrace.test/rss");
    assert_eq!(res["process.executable.name"], "rss");
    assert_eq!(res["process.runtime.name"], "go");
    assert!(
        res["process.runtime.version"].starts_with("go1."),
        "{res:?}"
    );
    assert!(!res["host.name"].is_empty());

    // The sample types as pprof has them, and the leak to its line.
    let rss = find(&profiles, "rss", "space");
    assert_eq!(rss.unit, "bytes");
    assert_eq!(find(&profiles, "alloc", "objects").unit, "count");
    assert_eq!(find(&profiles, "alloc", "space").unit, "bytes");
    assert_eq!(
        find(&profiles, "goroutines", "goroutines").unit,
        "goroutines"
    );
    let top = leaf(&req, rss);
    assert!(
        top.starts_with("main.cacheSession main.go:") && !top.ends_with(":0"),
        "the top of the rss profile: {top}"
    );
    assert!(rss.profile.time_unix_nano > 0);
    assert!((3e9..6e9).contains(&(rss.profile.duration_nano as f64)));

    // OTLP back to pprof: the same stacks and totals as rss.pb.gz.
    let on_disk = pprof::decode(&std::fs::read(r.out.join("rss.pb.gz")).unwrap()).unwrap();
    let back = otlp::to_pprof(&req, rss.profile);
    let (a, b) = (
        pprof::folded(&back, FrameMode::Line),
        pprof::folded(&on_disk, FrameMode::Line),
    );
    assert_eq!(a, b, "the OTLP rss profile differs from rss.pb.gz");
    let total = |f: &str| -> u64 {
        f.lines()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        total(&a),
        r.summary["lenses"]["rss"]["total"].as_u64().unwrap()
    );
    leak.stop(1);
    assert_no_memtrace_programs();
}

/// OTLP/gRPC when the URL asks for it: the official service's server gets
/// the same export, the header as metadata.
#[test]
fn record_exports_over_grpc_when_the_url_asks() {
    let v = go_versions().pop().unwrap();
    let leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak"]);
    let recv = GrpcReceiver::start();
    Record::new("otlp-grpc")
        .lens("rss")
        .pid(leak.pid())
        .duration("3")
        .arg("--otlp")
        .arg(recv.url())
        .arg("--otlp-header")
        .arg("X-Scope-OrgID=team-g")
        .ok();
    let got = recv.accepted();
    assert_eq!(got.len(), 1, "one export per record");
    assert_eq!(got[0].path, GRPC_EXPORT);
    assert_eq!(got[0].headers["x-scope-orgid"], "team-g");
    let req = otlp::decode(&got[0]);
    otlp::check(&req).unwrap();
    let profiles = otlp::profiles(&req);
    let rss = find(&profiles, "rss", "space");
    assert_eq!(rss.resource["process.pid"], leak.pid().to_string());
    let top = leaf(&req, rss);
    assert!(top.starts_with("main.cacheSession main.go:"), "{top}");
    drop(leak);
    assert_no_memtrace_programs();
}

#[test]
fn a_bad_otlp_endpoint_fails_before_tracing() {
    let out = run_memtrace(
        &["record", "--pid", "1", "--otlp", "http://collector:4317"],
        &[],
    );
    assert_one_line_error(&out, "grpc://HOST:4317");
    let out = run_memtrace(
        &[
            "record",
            "--pid",
            "1",
            "--otlp",
            "http://c:4318",
            "--otlp-header",
            "nokv",
        ],
        &[],
    );
    assert_one_line_error(&out, "KEY=VALUE");
}

#[test]
fn the_agent_exports_every_window_and_rides_out_an_outage() {
    let v = go_versions().pop().unwrap();
    let recv = Receiver::start();
    let agent = Agent::start(
        "otlp-agent",
        &[
            "--window",
            "1",
            "--exe",
            "rss",
            "--otlp",
            &recv.url(),
            "--node-name",
            "node-9",
        ],
    );
    let leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak"]);
    let pid = leak.pid().to_string();
    let rss_windows = || -> Vec<(u64, String)> {
        recv.accepted()
            .iter()
            .flat_map(|p| {
                assert_eq!(p.path, PATH);
                let req = otlp::decode(p);
                otlp::check(&req).unwrap();
                otlp::profiles(&req)
                    .iter()
                    .filter(|r| r.resource["process.pid"] == pid && r.lens == "rss")
                    .map(|r| (r.profile.time_unix_nano, leaf(&req, r)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || rss_windows().len() >= 3),
        "no rss windows of pid {pid}: {}",
        agent.log()
    );
    let first = recv.accepted();
    let req = otlp::decode(&first[first.len() - 1]);
    let res = &otlp::profiles(&req)[0].resource;
    assert_eq!(res["k8s.node.name"], "node-9", "{res:?}");
    assert_eq!(res["service.name"], "memtrace.test/rss");
    assert!(
        rss_windows()
            .iter()
            .any(|(_, l)| l.starts_with("main.cacheSession main.go:")),
        "{:?}",
        rss_windows()
    );

    // An outage of a few windows: retried, spooled, then delivered.
    let metric = |n: &str| scalar(&agent.metrics(), n).unwrap_or(-1.0);
    recv.down.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            "memtrace_otlp_failures_total"
        ) >= 1.0
            && metric("memtrace_otlp_spooled_profiles") >= 2.0),
        "{}",
        agent.metrics()
    );
    recv.down.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(60), || metric(
            "memtrace_otlp_spooled_profiles"
        ) == 0.0),
        "{}",
        agent.metrics()
    );
    std::thread::sleep(Duration::from_millis(1500));
    // No window lost: the rss windows follow one another with no gap.
    let starts = rss_windows().iter().map(|(t, _)| *t as i64).collect();
    assert_windows_follow(starts, 5);
    let m = agent.metrics();
    assert_eq!(scalar(&m, "memtrace_otlp_dropped_total"), Some(0.0), "{m}");
    assert_eq!(
        scalar(&m, "memtrace_otlp_profiles_total"),
        Some(recv.accepted().len() as f64),
        "{m}"
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(leak);
    assert_no_memtrace_programs();
}
