//! The agent as the DaemonSet runs it, in a real container runtime (podman
//! and runc): the image `cargo xtask image` builds, with the manifest's
//! own capabilities, read-only root, host pid namespace, mounts, memory
//! limit, environment and arguments, read from `deploy/daemonset.yaml`.
//! Go programs run in their own containers (FROM scratch, memory limits):
//! a leak the OOM killer ends and a steady service. The agent names each
//! by container id, writes the leak's `oom/` report naming the leaking
//! function on its volume, answers `/metrics` only with the token, and
//! stays within its own limit.
//!
//! What a cluster provides and this host does not is stood in, and only
//! that: the pod network (the host's, with `--listen` on a free loopback
//! port), the API server (a stand-in with this node's pods), the
//! service-account and Secret volumes (files in a temporary directory),
//! and the host path of the agent's output (a temporary directory). The
//! window is 2 s instead of 60 to keep the test short.

use std::path::Path;
use std::time::Duration;

use memtrace_tests::agent::{free_port, http_get, series};
use memtrace_tests::kube::ApiServer;
use memtrace_tests::manifest::{self, strings};
use memtrace_tests::podman::{scratch_image, Container};
use memtrace_tests::*;
use serde_json::Value;

const NODE: &str = "memtrace-e2e-node";
const TOKEN: &str = "e2e-metrics-token";

/// `podman run` options for the agent from the manifest's pod spec.
fn agent_options(out: &Path, secrets: &Path, sa: &Path, port: u16, api: &str) -> Vec<String> {
    let pod = manifest::pod_spec();
    let c = manifest::agent();
    let sc = &c["securityContext"];
    let mut o: Vec<String> = vec!["--network=host".into()];
    if pod["hostPID"] == true {
        o.push("--pid=host".into());
    }
    assert_eq!(sc["privileged"], false, "the agent is not privileged");
    for cap in strings(&sc["capabilities"]["drop"]) {
        o.push(format!("--cap-drop={cap}"));
    }
    for cap in strings(&sc["capabilities"]["add"]) {
        o.push(format!("--cap-add={cap}"));
    }
    if sc["readOnlyRootFilesystem"] == true {
        o.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        o.push("--security-opt=no-new-privileges".into());
    }
    // RuntimeDefault: podman's default seccomp profile, as the kubelet's.
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    if let Some(uid) = sc["runAsUser"].as_u64() {
        o.push(format!("--user={uid}"));
    }
    let limits = &c["resources"]["limits"];
    o.push(format!(
        "--memory={}",
        manifest::bytes(limits["memory"].as_str().unwrap())
    ));
    // Mounts: host paths as they are, but the output's (a test directory);
    // the Secret's as a directory holding its file.
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let at = m["mountPath"].as_str().unwrap();
        let v = volumes.iter().find(|v| v["name"] == name).unwrap();
        let from = if v["secret"].is_object() {
            secrets.display().to_string()
        } else if at == "/var/lib/memtrace" {
            out.display().to_string()
        } else {
            v["hostPath"]["path"].as_str().unwrap().to_string()
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        o.push(format!("--volume={from}:{at}{ro}"));
    }
    if pod["automountServiceAccountToken"] == true {
        o.push(format!(
            "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            sa.display()
        ));
    }
    let mut env = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => NODE.to_string(),
            Some(other) => panic!("no stand-in for fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        o.push(format!("--env={name}={value}"));
        env.push((name, value));
    }
    o.push(std::env::var("MEMTRACE_IMAGE").unwrap_or_else(|_| {
        panic!("MEMTRACE_IMAGE is not set: run the end-to-end tests with `cargo xtask test`")
    }));
    for a in strings(&c["args"]) {
        let mut a = a;
        for (k, v) in &env {
            a = a.replace(&format!("$({k})"), v);
        }
        let a = if a.starts_with("--listen=") {
            format!("--listen=127.0.0.1:{port}")
        } else if a.starts_with("--kube-api=") {
            format!("--kube-api={api}")
        } else if a.starts_with("--window=") {
            "--window=2".into()
        } else {
            a
        };
        o.push(a);
    }
    o
}

fn http(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    http_get(port, path, token)
        .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
        .unwrap_or((0, String::new()))
}

/// The agent's own memory cgroup (v1 here, v2 elsewhere): its peak usage.
fn peak_usage(pid: u32) -> Option<u64> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for l in cg.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        let (dir, file) = if ctrl.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.max_usage_in_bytes")
        } else if ctrl.is_empty() {
            ("/sys/fs/cgroup", "memory.peak")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(format!("{dir}{path}/{file}")) {
            return v.trim().parse().ok();
        }
    }
    None
}

/// The targets, each in its own container with a memory limit: a leak the
/// OOM killer will end, and a steady service.
fn start_targets(leak_tag: &str, svc_tag: &str) -> (Container, Container) {
    let leak = Container::run(&[
        "--network=none".into(),
        "--memory=250m".into(),
        "--memory-swap=250m".into(),
        leak_tag.to_string(),
        "-mode".into(),
        "leak".into(),
        "-rate".into(),
        "600".into(),
    ]);
    let svc = Container::run(&[
        "--network=none".into(),
        "--memory=128m".into(),
        svc_tag.to_string(),
        "-rate".into(),
        "100".into(),
        "-duration".into(),
        "0".into(),
    ]);
    (leak, svc)
}

#[test]
fn the_daemonset_agent_traces_other_containers_and_reports_the_oom_kill() {
    let v = go_versions().pop().unwrap();
    let dir = out_dir("daemonset");
    let (out, secrets, sa) = (dir.join("out"), dir.join("secret"), dir.join("sa"));
    for d in [&out, &secrets, &sa] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(secrets.join("token"), TOKEN).unwrap();
    std::fs::write(sa.join("token"), "sa-token").unwrap();
    let me = std::process::id();
    let (leak_tag, svc_tag) = (
        format!("localhost/memtrace-e2e-leak:{me}"),
        format!("localhost/memtrace-e2e-service:{me}"),
    );
    // Removed when the test ends, passed or not (after the containers).
    let _images = (
        scratch_image(&leak_tag, &fixture(&v, "rss"), &dir.join("leak-image")),
        scratch_image(
            &svc_tag,
            &fixture(&v, "service"),
            &dir.join("service-image"),
        ),
    );

    let api = ApiServer::start(NODE, "sa-token");
    let port = free_port();
    let agent = Container::run(&agent_options(&out, &secrets, &sa, port, &api.url()));
    let up = wait_until(Duration::from_secs(30), || {
        http(port, "/healthz", None).0 == 200
    });
    assert!(up, "the agent did not come up: {}", agent.logs());

    let (leak, svc) = start_targets(&leak_tag, &svc_tag);
    let (leak_pid, svc_pid) = (leak.pid(), svc.pid());
    assert!(leak_pid > 0 && svc_pid > 0);

    // Both traced and named by container id, seen with the token only.
    let named = |pid: u32, id: &str| {
        let (_, m) = http(port, "/metrics", Some(TOKEN));
        series(&m, "memtrace_process_rss_bytes", pid)
            .is_some_and(|l| l.contains(&format!("container_id=\"{id}\"")))
    };
    let traced = wait_until(Duration::from_secs(30), || {
        named(leak_pid, &leak.id) && named(svc_pid, &svc.id)
    });
    assert!(
        traced,
        "not traced and named: {}\n{}",
        http(port, "/metrics", Some(TOKEN)).1,
        agent.logs()
    );
    assert_eq!(http(port, "/metrics", None).0, 401);
    assert_eq!(http(port, "/metrics", Some("wrong")).0, 401);

    // The leak reaches its limit: the OOM killer ends it, and its report
    // on the agent's volume names the leaking function and the container.
    let report = wait_until(Duration::from_secs(90), || {
        oom_report(&out, leak_pid).is_some()
    });
    assert!(
        report,
        "no oom/ report for pid {leak_pid} (running: {}): {}",
        leak.running(),
        agent.logs()
    );
    // (podman with runc on cgroup v1 does not mark it OOMKilled; the
    // kernel's oom:mark_victim, which the report rests on, does.)
    assert!(
        wait_until(Duration::from_secs(10), || !leak.running()),
        "the leak still runs"
    );
    let s = summary(&oom_report(&out, leak_pid).unwrap());
    assert_eq!(s["ended_by"], "oom_kill", "{s}");
    let t = &s["targets"][0];
    assert_eq!(t["labels"]["container_id"], leak.id.as_str(), "{t}");
    assert_eq!(
        s["lenses"]["rss"]["top"][0]["own_frame"]["function"], "main.cacheSession",
        "{s}"
    );
    assert_eq!(t["cgroup"]["limit_bytes"], 250u64 << 20, "{t}");

    // The agent stayed within the manifest's limit, and was never killed.
    let limit = manifest::bytes(
        manifest::agent()["resources"]["limits"]["memory"]
            .as_str()
            .unwrap(),
    );
    let peak = peak_usage(agent.pid()).expect("the agent's memory cgroup");
    assert!(
        peak < limit,
        "the agent's container peaked at {peak} of {limit}"
    );
    assert!(agent.running(), "{}", agent.logs());

    // SIGTERM, as the kubelet stops it: the last window is written, exit 0,
    // and the steady service's report names its container too.
    assert_eq!(agent.stop(30), 0, "{}", agent.logs());
    let last: Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("last-window/{svc_pid}/summary.json")))
            .unwrap_or_else(|e| panic!("no last window of the service ({e}): {}", agent.logs())),
    )
    .unwrap();
    assert_eq!(
        last["targets"][0]["labels"]["container_id"],
        svc.id.as_str()
    );
    assert!(svc.running(), "the traced service died");
    // It asked the stand-in API server for this node's pods, with the
    // service account's token.
    let asked = api.requests();
    assert!(!asked.is_empty(), "{}", agent.logs());
    assert!(asked
        .iter()
        .all(|(t, a)| t == &api.expected_target() && a == "Bearer sa-token"));
    eprintln!(
        "the agent's container peaked at {} MiB of {} MiB",
        peak >> 20,
        limit >> 20
    );
}
