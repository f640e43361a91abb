//! The agent in a fleet: a real Prometheus (Debian's package, started here
//! on loopback) scrapes it with the bearer token and fires the alerts of
//! deploy/alert-rules.yaml on leaking programs; the manifests hold together
//! and grant least privilege; the HTTP API refuses requests without the
//! token and an unguarded non-loopback listen. Pushes are in push.rs.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use memtrace_tests::agent::*;
use memtrace_tests::prometheus::{self, Prometheus};
use memtrace_tests::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
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
