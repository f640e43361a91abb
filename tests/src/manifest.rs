//! `deploy/daemonset.yaml`, read as Kubernetes reads it: the tests take the
//! agent's capabilities, mounts, limits and RBAC from the manifest itself,
//! so what is tested and what is shipped cannot drift.

use std::path::PathBuf;

use serde_json::Value;

pub fn path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml")
}

/// Every document of the manifest, as JSON values.
pub fn documents() -> Vec<Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path()).expect("deploy/daemonset.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("daemonset.yaml is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The first document of `kind`.
pub fn of_kind(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("daemonset.yaml has no {kind}"))
}

/// The DaemonSet's pod spec.
pub fn pod_spec() -> Value {
    of_kind("DaemonSet")["spec"]["template"]["spec"].clone()
}

/// The agent's container.
pub fn agent() -> Value {
    pod_spec()["containers"][0].clone()
}

/// Strings of a JSON array (empty when absent).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A Kubernetes quantity of bytes ("512Mi", "1Gi", "300M", "1000").
pub fn bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a number") * mult;
        }
    }
    q.parse().expect("a quantity")
}
