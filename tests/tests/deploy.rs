//! deploy/: the DaemonSet validates offline against the Kubernetes schema
//! (PyPI `kubernetes-validate`, which bundles the schemas), asks for the
//! capabilities the agent tests run with and nothing more, and a broken copy
//! is rejected (so the validator is really checking).

use std::path::PathBuf;
use std::process::Command;

use memtrace_tests::env_path;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml")
}

fn validate(path: &std::path::Path, k8s: &str) -> (bool, String) {
    let out = Command::new(env_path("MEMTRACE_KUBE_VALIDATE"))
        .args(["--strict", "-k", k8s])
        .arg(path)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn daemonset_is_valid_for_current_kubernetes() {
    for k8s in ["1.30.0", "1.37.0"] {
        let (ok, text) = validate(&manifest(), k8s);
        assert!(ok, "kubernetes {k8s}: {text}");
        for kind in [
            "daemonset",
            "serviceaccount",
            "clusterrole",
            "clusterrolebinding",
            "networkpolicy",
        ] {
            assert!(text.contains(&format!("{kind}/memtrace-agent")), "{text}");
        }
    }
}

#[test]
fn daemonset_asks_for_least_privilege() {
    let yaml = std::fs::read_to_string(manifest()).unwrap();
    assert!(yaml.contains("hostPID: true"));
    assert!(yaml.contains("privileged: false"));
    assert!(!yaml.contains("privileged: true"));
    // Exactly the capabilities agent.rs runs the agent with.
    let caps: Vec<&str> = yaml
        .split("add:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(caps, ["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"]);
    assert!(yaml.contains("- ALL"), "capabilities are not dropped first");
    for limit in ["limits:", "requests:", "memory:", "cpu:"] {
        assert!(yaml.contains(limit), "no {limit}");
    }
}

#[test]
fn a_broken_manifest_is_rejected() {
    let yaml = std::fs::read_to_string(manifest()).unwrap();
    let dir = std::env::temp_dir().join(format!("memtrace-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, broken) in [
        (
            "wrong type",
            yaml.replace("hostPID: true", "hostPID: \"yes\""),
        ),
        (
            "unknown field",
            yaml.replace("hostPID: true", "hostPIDs: true"),
        ),
        (
            "missing selector",
            yaml.replace("  selector:\n", "  selectorz:\n"),
        ),
    ] {
        assert_ne!(broken, yaml, "{what}: the replacement did not apply");
        let p = dir.join("broken.yaml");
        std::fs::write(&p, broken).unwrap();
        let (ok, text) = validate(&p, "1.37.0");
        assert!(!ok, "{what} was accepted: {text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
