//! The agent pushing to a profile store: a receiver speaking Pyroscope's
//! push API gets every window's profiles, labelled, through an outage and
//! across an agent restart (the spool).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memtrace_tests::agent::*;
use memtrace_tests::receiver::{Push, Receiver};
use memtrace_tests::*;

/// A protobuf field: a varint (no string or bytes field of the schema
/// may be one) or a length-delimited payload.
#[derive(Debug)]
enum Field {
    Varint,
    Bytes(Vec<u8>),
}

fn varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().expect("truncated varint");
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long")
}

/// Walks protobuf wire format, written from the encoding spec and nothing
/// of memtrace's, so that a wrong field number or type shows here.
fn fields(mut b: &[u8]) -> Vec<(u64, Field)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut b);
                out.push((num, Field::Varint));
            }
            2 => {
                let n = varint(&mut b) as usize;
                assert!(n <= b.len(), "field {num} overruns the message");
                out.push((num, Field::Bytes(b[..n].to_vec())));
                b = &b[n..];
            }
            w => panic!("field {num}: wire type {w} is not in Pyroscope's push schema"),
        }
    }
    out
}

fn bytes(f: &Field) -> &[u8] {
    match f {
        Field::Bytes(b) => b,
        Field::Varint => panic!("a varint where the schema has bytes"),
    }
}

/// One decoded `RawProfileSeries`: labels and its profiles (gzipped pprof).
#[derive(Debug)]
struct Series {
    labels: BTreeMap<String, String>,
    profiles: Vec<Vec<u8>>,
}

/// Decodes a `push.v1.PushRequest` by Pyroscope's push.proto and
/// types.proto: series = 1; in a series labels = 1 and samples = 2; a
/// LabelPair is name = 1, value = 2; a RawSample is raw_profile = 1, ID = 2.
fn decode_push(body: &[u8]) -> Vec<Series> {
    fields(body)
        .iter()
        .map(|(num, f)| {
            assert_eq!(*num, 1, "PushRequest has only series = 1");
            let mut s = Series {
                labels: BTreeMap::new(),
                profiles: Vec::new(),
            };
            for (num, f) in fields(bytes(f)) {
                match num {
                    1 => {
                        let (mut name, mut value) = (String::new(), String::new());
                        for (n, f) in fields(bytes(&f)) {
                            let text = String::from_utf8(bytes(&f).to_vec()).unwrap();
                            match n {
                                1 => name = text,
                                2 => value = text,
                                n => panic!("LabelPair field {n}"),
                            }
                        }
                        assert!(s.labels.insert(name, value).is_none(), "a label twice");
                    }
                    2 => {
                        for (n, f) in fields(bytes(&f)) {
                            match n {
                                1 => s.profiles.push(bytes(&f).to_vec()),
                                2 => {}
                                n => panic!("RawSample field {n}"),
                            }
                        }
                    }
                    n => {
                        panic!("RawProfileSeries field {n} (annotations are dropped by Pyroscope)")
                    }
                }
            }
            s
        })
        .collect()
}

/// Every accepted series of `pid` and profile type `name`, with the
/// profile decoded, in arrival order.
fn received(
    r: &Receiver,
    pid: u32,
    name: &str,
) -> Vec<(
    BTreeMap<String, String>,
    memtrace_user::render::pprof::PbProfile,
)> {
    r.accepted()
        .iter()
        .flat_map(|p| decode_push(&p.body))
        .filter(|s| s.labels.get("pid") == Some(&pid.to_string()) && s.labels["__name__"] == name)
        .map(|s| {
            assert_eq!(s.profiles.len(), 1);
            assert!(s.profiles[0].starts_with(&[0x1f, 0x8b]), "not gzipped");
            let pb = memtrace_user::render::pprof::decode(&s.profiles[0]).unwrap();
            (s.labels, pb)
        })
        .collect()
}

fn metric(agent: &Agent, name: &str) -> f64 {
    scalar(&agent.metrics(), name).unwrap_or(-1.0)
}

/// The rss profiles of `pid`, in window order, follow one another with no
/// gap (1 s windows).
fn assert_no_window_missing(recv: &Receiver, pid: u32) {
    let starts = received(recv, pid, "memtrace_rss")
        .iter()
        .map(|(_, pb)| pb.time_nanos)
        .collect();
    assert_windows_follow(starts, 8);
}

/// Wire: a push is Connect's unary call, with the tenant and the bearer
/// token.
fn assert_connect_call(push: &Push, tenant: &str, token: &str) {
    assert_eq!(push.path, "/push.v1.PusherService/Push");
    assert_eq!(push.headers["content-type"], "application/proto");
    assert_eq!(push.headers["connect-protocol-version"], "1");
    assert_eq!(push.headers["x-scope-orgid"], tenant);
    assert_eq!(push.headers["authorization"], format!("Bearer {token}"));
}

#[test]
fn pushes_reach_the_store_labelled_and_survive_an_outage() {
    let v = go_versions().pop().unwrap();
    let recv = Receiver::start();
    let dir = out_dir("fleet-push");
    let token = write_token(&dir, "pyroscope-token", "p-secret");
    let agent = Agent::start(
        "fleet-push-agent",
        &[
            "--window",
            "1",
            "--exe",
            "rss",
            "--alloc",
            "--pyroscope",
            &recv.url(),
            "--pyroscope-tenant",
            "team-a",
            "--pyroscope-token-file",
            token.to_str().unwrap(),
            "--node-name",
            "node-7",
        ],
    );
    let leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak"]);
    let lp = leak.pid();

    let all_kinds = || {
        ["memtrace_rss", "memtrace_goroutines", "memtrace_alloc"]
            .iter()
            .all(|k| !received(&recv, lp, k).is_empty())
    };
    assert!(
        wait_until(Duration::from_secs(30), all_kinds),
        "no rss, goroutines and alloc series for pid {lp}: {}",
        agent.log()
    );
    assert_connect_call(&recv.accepted()[0], "team-a", "p-secret");

    // Labels, and the leak named to the line, in a window long enough to
    // see it.
    assert!(wait_until(Duration::from_secs(20), || received(
        &recv,
        lp,
        "memtrace_rss"
    )
    .len()
        >= 3));
    let rss = received(&recv, lp, "memtrace_rss");
    let (labels, pb) = rss.last().unwrap();
    assert_eq!(labels["service_name"], "rss", "{labels:?}");
    assert_eq!(labels["node"], "node-7");
    assert!(labels["go_version"].starts_with("go1."), "{labels:?}");
    assert!(pb.time_nanos > 0, "no window start");
    assert!(
        (0.5e9..3e9).contains(&(pb.duration_nanos as f64)),
        "{}",
        pb.duration_nanos
    );
    let folded =
        memtrace_user::render::pprof::folded(pb, memtrace_user::model::profile::FrameMode::Line);
    let leaf = top_leaf(&folded);
    assert!(
        leaf.contains("main.cacheSession") && leaf.contains("main.go:"),
        "top of the pushed rss profile: {leaf}\n{folded}"
    );

    // An outage of over two windows.
    let windows_before = metric(&agent, "memtrace_windows_total");
    recv.down.store(true, Ordering::SeqCst);
    let spooled = wait_until(Duration::from_secs(20), || {
        metric(&agent, "memtrace_windows_total") >= windows_before + 3.0
            && metric(&agent, "memtrace_push_failures_total") >= 1.0
    });
    assert!(spooled, "{}", agent.metrics());
    let during = agent.metrics();
    assert!(
        scalar(&during, "memtrace_push_spooled_profiles").unwrap() >= 2.0,
        "{during}"
    );
    recv.down.store(false, Ordering::SeqCst);
    let drained = wait_until(Duration::from_secs(60), || {
        metric(&agent, "memtrace_push_spooled_profiles") == 0.0
    });
    assert!(drained, "{}", agent.metrics());
    // A couple more windows after the outage.
    let after = metric(&agent, "memtrace_windows_total");
    assert!(wait_until(Duration::from_secs(10), || metric(
        &agent,
        "memtrace_windows_total"
    ) >= after + 2.0));
    std::thread::sleep(Duration::from_millis(1500));

    // No window was lost: the rss profiles of the leak, in window order,
    // follow one another with no gap, through the outage.
    assert_no_window_missing(&recv, lp);
    let m = agent.metrics();
    assert_eq!(scalar(&m, "memtrace_push_dropped_total"), Some(0.0), "{m}");
    assert!(*recv.refused.lock().unwrap() >= 1);
    assert!(m.contains("memtrace_push_latency_seconds_count"), "{m}");
    // Every delivered request counted once.
    assert_eq!(
        scalar(&m, "memtrace_push_profiles_total"),
        Some(recv.accepted().len() as f64),
        "{m}"
    );

    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(leak);
    assert_no_memtrace_programs();
}

#[test]
fn an_agent_restart_resumes_the_spool() {
    let v = go_versions().pop().unwrap();
    let recv = Receiver::start();
    recv.down.store(true, Ordering::SeqCst);
    let args = ["--window", "1", "--exe", "rss", "--pyroscope", &recv.url()];
    let first = Agent::start("fleet-restart", &args);
    let leak = Bg::spawn(&fixture(&v, "rss"), &["-mode", "leak"]);
    let lp = leak.pid();
    let spooled = wait_until(Duration::from_secs(30), || {
        metric(&first, "memtrace_push_spooled_profiles") >= 3.0
    });
    assert!(spooled, "{}", first.metrics());
    let (code, out, log) = first.stop();
    assert_eq!(code, Some(0), "{log}");
    let left: Vec<PathBuf> = std::fs::read_dir(out.join("push-spool"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .collect();
    assert!(left.len() >= 3, "{left:?}");
    let stopped = Instant::now();
    let before_restart = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;

    recv.down.store(false, Ordering::SeqCst);
    let second = Agent::start_in(out.clone(), &args);
    let resumed = wait_until(Duration::from_secs(30), || left.iter().all(|p| !p.exists()));
    assert!(resumed, "the spool was not delivered: {}", second.log());
    let old = received(&recv, lp, "memtrace_rss")
        .iter()
        .filter(|(_, pb)| pb.time_nanos < before_restart)
        .count();
    // Each spooled request held one window of the one traced program.
    assert_eq!(
        old,
        left.len(),
        "old rss windows delivered, for the files spooled"
    );
    assert!(stopped.elapsed() < Duration::from_secs(30));
    let (code, _, log) = second.stop();
    assert_eq!(code, Some(0), "{log}");
    drop(leak);
    assert_no_memtrace_programs();
}
