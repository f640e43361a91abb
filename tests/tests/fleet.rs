//! The agent in a fleet: a real Prometheus (Debian's package, started here
//! on loopback) scrapes it with the bearer token and fires the alerts of
//! deploy/alert-rules.yaml on leaking programs; a receiver speaking
//! Pyroscope's push API gets every window's profiles, labelled, through an
//! outage and across an agent restart; the HTTP API refuses requests
//! without the token and an unguarded non-loopback listen.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memtrace_tests::agent::*;
use memtrace_tests::prometheus::{self, Prometheus};
use memtrace_tests::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn write_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

#[test]
fn prometheus_scrapes_with_the_token_and_the_alerts_fire() {
    let v = go_versions().pop().unwrap();
    let dir = out_dir("fleet-prometheus");
    let token = format!("t{:016x}", fastish_random());
    let token_file = write_token(&dir, "token", &token);
    let mut agent = Agent::start(
        "fleet-prometheus-agent",
        &[
            "--window",
            "1",
            "--exe",
            "rss",
            "--exe",
            "goroutines",
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
    );

    // Without the token (or with a wrong one): 401; /healthz stays open.
    for path in ["/metrics", "/profiles", "/profiles/1/rss.svg"] {
        assert_eq!(http_get(agent.port, path, None).unwrap().0, 401, "{path}");
        assert_eq!(
            http_get(agent.port, path, Some("wrong")).unwrap().0,
            401,
            "{path}"
        );
    }
    assert_eq!(http_get(agent.port, "/healthz", None).unwrap().0, 200);
    agent.token = Some(token.clone());
    assert!(agent.metrics().contains("memtrace_windows_total"));

    let rss = fixture(&v, "rss");
    let leak = Bg::spawn(&rss, &["-mode", "leak"]);
    let offheap = Bg::spawn(
        &rss,
        &["-mode", "offheap", "-rate", "1", "-limit", "160", "-gc"],
    );
    let steady = Bg::spawn(&rss, &["-mode", "steady"]);
    let gor = Bg::spawn(&fixture(&v, "goroutines"), &["-leak", "20"]);
    let (lp, op, sp, gp) = (leak.pid(), offheap.pid(), steady.pid(), gor.pid());

    let config = prometheus::config(agent.port, Some(&token_file));
    let prom = Prometheus::start(&dir, &config, &prometheus::quick_rules());

    // Scraped with the token, per-process RSS by pid.
    let scraped = wait_until(Duration::from_secs(30), || {
        let r = prom.query("memtrace_process_rss_bytes");
        [lp, op, sp, gp]
            .iter()
            .all(|p| r.iter().any(|(l, v)| l["pid"] == p.to_string() && *v > 0.0))
    });
    assert!(
        scraped,
        "prometheus has no RSS per pid: {:?}\n{}\n{}",
        prom.query("up"),
        prom.log(),
        agent.log()
    );
    let up = prom.query("up{job=\"memtrace-agent\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0, "the scrape failed: {up:?}");
    let rss_of = |pid: u32| {
        prom.query(&format!("memtrace_process_rss_bytes{{pid=\"{pid}\"}}"))
            .first()
            .map(|(l, v)| (l.clone(), *v))
            .unwrap()
    };
    let (labels, _) = rss_of(lp);
    assert!(labels["exe"].ends_with("/rss"), "{labels:?}");
    assert!(labels["go_version"].starts_with("go1."), "{labels:?}");
    // The Go heap from the GC view, for the program that collects.
    let heap = prom.query(&format!(
        "memtrace_process_go_heap_live_bytes{{pid=\"{op}\"}}"
    ));
    let heap_seen = wait_until(Duration::from_secs(20), || {
        !prom
            .query(&format!(
                "memtrace_process_go_heap_live_bytes{{pid=\"{op}\"}}"
            ))
            .is_empty()
    });
    assert!(heap_seen, "no Go heap for pid {op}: {heap:?}");

    // The shipped alerts fire on the programs that leak, and only there.
    let want = [
        ("MemtraceRSSGrowing", lp),
        ("MemtraceRSSFarAboveGoHeap", op),
        ("MemtraceGoroutinesClimbing", gp),
    ];
    let fired = wait_until(Duration::from_secs(90), || {
        let f = prom.firing();
        want.iter()
            .all(|(name, pid)| f.contains(&(name.to_string(), pid.to_string())))
    });
    let firing = prom.firing();
    assert!(
        fired,
        "want {want:?} firing, have {firing:?}\nRSS: leak {:?} offheap {:?}",
        rss_of(lp).1,
        rss_of(op).1
    );
    for (name, pid) in &firing {
        assert_ne!(pid, &sp.to_string(), "{name} fired on the steady program");
    }
    assert!(
        !firing.contains(&("MemtraceGoroutinesClimbing".into(), lp.to_string())),
        "{firing:?}"
    );

    drop(prom);
    let (code, _, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    drop((leak, offheap, steady, gor));
    assert_no_memtrace_programs();
}

/// A few random bits without another dependency.
fn fastish_random() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn deploy_manifests_hold_together() {
    // The rules load.
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("alert-rules.yaml"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{out:?}");
    // The PrometheusRule holds the same rules, indented under spec.
    let plain = std::fs::read_to_string(deploy("alert-rules.yaml")).unwrap();
    let plain = &plain[plain.find("groups:").unwrap()..];
    let operator = std::fs::read_to_string(deploy("prometheus-rule.yaml")).unwrap();
    assert!(operator.contains("kind: PrometheusRule"));
    let spec = &operator[operator.find("spec:\n").unwrap() + 6..];
    let dedented: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(dedented.trim_end(), plain.trim_end());
    // The scrape job is valid Prometheus configuration (Debian builds
    // Prometheus without Kubernetes discovery: static targets stand in).
    let dir = out_dir("fleet-deploy");
    let token = write_token(&dir, "token", "x");
    let shipped = std::fs::read_to_string(deploy("prometheus-scrape.yaml")).unwrap();
    let (sd, relabel) = (
        shipped
            .find("    kubernetes_sd_configs:")
            .expect("kubernetes_sd_configs"),
        shipped
            .find("    relabel_configs:")
            .expect("relabel_configs"),
    );
    let scrape = format!(
        "{}    static_configs:\n      - targets: ['127.0.0.1:9464']\n{}",
        &shipped[..sd],
        &shipped[relabel..]
    )
    .replace(
        "/etc/prometheus/secrets/memtrace-agent-token/token",
        token.to_str().unwrap(),
    );
    std::fs::write(dir.join("prometheus.yml"), scrape).unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The DaemonSet: token from a Secret, a NetworkPolicy, kubelet TLS
    // verified.
    let ds = std::fs::read_to_string(deploy("daemonset.yaml")).unwrap();
    for want in [
        "kind: NetworkPolicy",
        "secretName: memtrace-agent-token",
        "--auth-token-file",
        "NODE_NAME",
    ] {
        assert!(ds.contains(want), "daemonset.yaml lacks {want}");
    }
    assert!(!ds.contains("--kubelet-insecure-tls"));
    assert!(!ds.contains("--kube-insecure-tls"));
    assert!(!ds.contains("--insecure-listen"));
}

/// The agent's RBAC is least privilege: no `nodes/proxy` (exec on every
/// pod), no wildcard, no secrets; pod names come from listing pods, with
/// the node's field selector. The pod is hardened as the issue asks.
#[test]
fn the_agents_rbac_grants_no_exec_and_its_pod_is_hardened() {
    use memtrace_tests::manifest::{self, strings};
    let role = manifest::of_kind("ClusterRole");
    let rules = role["rules"].as_array().expect("rules");
    for rule in rules {
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        for r in &resources {
            assert!(
                !r.starts_with("nodes/") && r != "secrets" && r != "*" && !r.contains("exec"),
                "the agent may not have {r}: {rule}"
            );
        }
        assert!(!verbs.iter().any(|v| v == "*"), "{rule}");
        assert!(
            !strings(&rule["apiGroups"]).iter().any(|g| g == "*"),
            "{rule}"
        );
        for v in &verbs {
            assert!(["get", "list", "watch"].contains(&v.as_str()), "{rule}");
        }
    }
    assert_eq!(
        rules
            .iter()
            .map(|r| (strings(&r["resources"]), strings(&r["verbs"])))
            .collect::<Vec<_>>(),
        [(vec!["pods".to_string()], vec!["list".to_string()])]
    );
    for kind in ["Role", "RoleBinding"] {
        assert!(
            !manifest::documents().iter().any(|d| d["kind"] == kind),
            "no namespaced grants: {kind}"
        );
    }
    let pod = manifest::pod_spec();
    let agent = manifest::agent();
    let args = strings(&agent["args"]);
    assert!(
        args.iter().any(|a| a.starts_with("--kube-api=https://")),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a == "--node-name=$(NODE_NAME)"),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--kubelet")), "{args:?}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        agent["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["priorityClassName"], "memtrace-agent");
    assert_eq!(
        manifest::of_kind("PriorityClass")["metadata"]["name"],
        "memtrace-agent"
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        manifest::of_kind("ServiceAccount")["automountServiceAccountToken"],
        false
    );
    assert_eq!(agent["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        strings(&agent["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
}

#[test]
fn an_unguarded_api_is_refused() {
    let dir = out_dir("fleet-refused");
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let out = dir.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(memtrace());
        cmd.arg("agent").args(["--out", out]).args(args);
        wait_output(cmd, Duration::from_secs(20))
    };
    assert_one_line_error(&run(&["--listen", &listen]), "--auth-token-file");
    let empty = write_token(&dir, "empty", "");
    assert_one_line_error(
        &run(&["--auth-token-file", empty.to_str().unwrap()]),
        "empty",
    );
    assert_one_line_error(
        &run(&["--auth-token-file", "/nonexistent/token"]),
        "/nonexistent/token",
    );
    assert_one_line_error(
        &run(&[
            "--pyroscope",
            "http://127.0.0.1:1",
            "--pyroscope-token-file",
            "/nonexistent/p",
        ]),
        "/nonexistent/p",
    );
}

// ----------------------------------------------------------- push receiver

/// One push the receiver accepted.
#[derive(Clone, Debug)]
struct Push {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP/1.1 server that takes Pyroscope pushes: 200 while up, 503 while
/// `down`. Keeps what it accepted.
struct Receiver {
    port: u16,
    down: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Push>>>,
    refused: Arc<Mutex<u64>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Self {
            port,
            down: Arc::new(AtomicBool::new(false)),
            accepted: Arc::default(),
            refused: Arc::default(),
        };
        let (down, accepted, refused) = (r.down.clone(), r.accepted.clone(), r.refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (down, accepted, refused) = (down.clone(), accepted.clone(), refused.clone());
                std::thread::spawn(move || serve(conn, &down, &accepted, &refused));
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> Vec<Push> {
        self.accepted.lock().unwrap().clone()
    }
}

/// Serves one keep-alive connection.
fn serve(
    conn: std::net::TcpStream,
    down: &AtomicBool,
    accepted: &Mutex<Vec<Push>>,
    refused: &Mutex<u64>,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = if down.load(Ordering::SeqCst) {
            *refused.lock().unwrap() += 1;
            "503 Service Unavailable"
        } else {
            accepted.lock().unwrap().push(Push {
                path,
                headers,
                body,
            });
            "200 OK"
        };
        if write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/proto\r\nContent-Length: 0\r\n\r\n"
        )
        .is_err()
        {
            return;
        }
    }
}

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
    // Wire: the Connect unary call, tenant and bearer token.
    let first = &recv.accepted()[0];
    assert_eq!(first.path, "/push.v1.PusherService/Push");
    assert_eq!(first.headers["content-type"], "application/proto");
    assert_eq!(first.headers["connect-protocol-version"], "1");
    assert_eq!(first.headers["x-scope-orgid"], "team-a");
    assert_eq!(first.headers["authorization"], "Bearer p-secret");

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
    let mut starts: Vec<i64> = received(&recv, lp, "memtrace_rss")
        .iter()
        .map(|(_, pb)| pb.time_nanos)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    assert!(starts.len() >= 8, "{starts:?}");
    assert!(
        gaps.iter().all(|g| *g < 1.9),
        "a window is missing (gaps in seconds): {gaps:?}"
    );
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
