//! Pod names from the kubelet's `/pods` endpoint (a `PodList`): UID →
//! namespace and name, to label processes whose cgroup names a pod UID.

use std::collections::HashMap;

/// What the kubelet says about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
}

/// Parses a `PodList`; pods without a UID, name or namespace are skipped.
pub fn parse_pods(json: &[u8]) -> Result<HashMap<String, PodMeta>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    Ok(v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| {
                    let m = &p["metadata"];
                    Some((
                        m["uid"].as_str()?.to_string(),
                        PodMeta {
                            namespace: m["namespace"].as_str()?.to_string(),
                            name: m["name"].as_str()?.to_string(),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uid_namespace_and_name() {
        let list = br#"{"kind":"PodList","apiVersion":"v1","items":[
            {"metadata":{"name":"cart-7d9","namespace":"shop","uid":"u-1"},"spec":{}},
            {"metadata":{"name":"nouid","namespace":"x"}}]}"#;
        let pods = parse_pods(list).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(
            pods["u-1"],
            PodMeta {
                namespace: "shop".into(),
                name: "cart-7d9".into()
            }
        );
        assert!(parse_pods(b"{}").unwrap().is_empty());
        assert!(parse_pods(b"not json").is_err());
    }
}
