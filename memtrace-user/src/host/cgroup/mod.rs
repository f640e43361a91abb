//! Kubernetes and container labels from a process's cgroup path. Pure.
//!
//! Shapes handled (cgroup v1 and v2; systemd and cgroupfs drivers):
//! - `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//! - the same with `crio-<id>.scope` (CRI-O) or `docker-<id>.scope`
//! - `/kubepods/burstable/pod<uid>/<id>` (cgroupfs driver)
//! - `/docker/<id>` and `/system.slice/docker-<id>.scope` (plain docker)

pub mod memory;

use serde::Serialize;

/// Labels derived from one cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupLabels {
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// The (controllers, path) entries of `/proc/PID/cgroup`
/// ("ID:CONTROLLERS:PATH"; v2's controllers are empty).
pub fn entries(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctrl, path))
        })
        .collect()
}

/// The process's cgroup path from `/proc/PID/cgroup`: the v2 entry
/// (`0::/path`) unless it is the root of a hybrid host, where the v1 memory
/// controller's path (which kubelet and runtimes set) is the one that says
/// where the process belongs; else the first non-root entry.
pub fn path_from_proc(text: &str) -> Option<String> {
    let entries = entries(text);
    let v2 = entries.iter().find(|(c, _)| c.is_empty());
    let pick = v2
        .filter(|(_, p)| *p != "/" || entries.len() == 1)
        .or_else(|| {
            entries
                .iter()
                .find(|(c, _)| c.split(',').any(|x| x == "memory"))
        })
        .or_else(|| entries.iter().find(|(_, p)| *p != "/"))
        .or(entries.first());
    pick.map(|(_, p)| p.to_string())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container ID in one path component, with its runtime's decoration.
fn container_id(component: &str) -> Option<String> {
    let bare = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "containerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|p| bare.strip_prefix(p))
    .unwrap_or(bare);
    is_container_id(id).then(|| id.to_string())
}

/// A pod UID in one path component (`pod<uid>` or `kubepods-<qos>-pod<uid>.slice`).
fn pod_uid(component: &str) -> Option<String> {
    let bare = component.strip_suffix(".slice").unwrap_or(component);
    let at = bare.rfind("pod")?;
    let uid = &bare[at + 3..];
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// Labels for a cgroup path.
pub fn labels(path: &str) -> CgroupLabels {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    CgroupLabels {
        cgroup: path.to_string(),
        pod_uid: components.iter().find_map(|c| pod_uid(c)),
        container_id: components.iter().rev().find_map(|c| container_id(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f6e0a4b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";
    const UID: &str = "7d8e9f00-1a2b-4c3d-8e5f-0123456789ab";

    #[test]
    fn systemd_driver_containerd_crio_docker() {
        let uid_ = UID.replace('-', "_");
        for runtime in ["cri-containerd-", "crio-", "docker-"] {
            let p = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/{runtime}{ID}.scope"
            );
            let l = labels(&p);
            assert_eq!(l.pod_uid.as_deref(), Some(UID), "{p}");
            assert_eq!(l.container_id.as_deref(), Some(ID), "{p}");
        }
        // Guaranteed QoS pods sit directly under kubepods.slice.
        let p = format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(labels(&p).pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroupfs_driver_and_plain_docker() {
        let l = labels(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(l.pod_uid.as_deref(), Some(UID));
        assert_eq!(l.container_id.as_deref(), Some(ID));
        let d = labels(&format!("/docker/{ID}"));
        assert_eq!((d.pod_uid, d.container_id.as_deref()), (None, Some(ID)));
        let s = labels(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(s.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn host_processes_have_no_pod() {
        let l = labels("/user.slice/user-0.slice/session-3.scope");
        assert_eq!((l.pod_uid, l.container_id), (None, None));
        // "pod" inside another word with a short tail is not a UID.
        assert_eq!(labels("/system.slice/podman.service").pod_uid, None);
    }

    #[test]
    fn reads_v2_then_v1_memory() {
        assert_eq!(path_from_proc("0::/a/b\n").as_deref(), Some("/a/b"));
        assert_eq!(path_from_proc("0::/\n").as_deref(), Some("/"));
        // Hybrid host: v2 at the root, the pod in the v1 memory hierarchy.
        let hybrid = "4:memory:/kubepods/pod1\n1:name=systemd:/\n0::/\n";
        assert_eq!(path_from_proc(hybrid).as_deref(), Some("/kubepods/pod1"));
        let v1 = "12:cpu,cpuacct:/x\n5:memory:/kubepods/pod1\n1:name=systemd:/y\n";
        assert_eq!(path_from_proc(v1).as_deref(), Some("/kubepods/pod1"));
        assert_eq!(path_from_proc("").as_deref(), None);
    }
}
