//! Recorded cgroup trees: this project's VM (v1 memory controller on a
//! hybrid host) and a Kubernetes node on cgroup v2 (systemd driver).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

struct Recorded {
    mountinfo: &'static str,
    files: HashMap<PathBuf, &'static str>,
}

impl CgroupFs for Recorded {
    fn mounts(&self) -> Mounts {
        mounts(self.mountinfo)
    }
    fn read(&self, path: &Path) -> Option<String> {
        self.files.get(path).map(|s| s.to_string())
    }
}

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

fn v1() -> Recorded {
    let m = "/sys/fs/cgroup/memory";
    let files = [
        ("/memory.limit_in_bytes", "9223372036854771712\n"),
        ("/memory.usage_in_bytes", "2459127808\n"),
        ("/memtrace-test/memory.limit_in_bytes", "209715200\n"),
        ("/memtrace-test/memory.usage_in_bytes", "157286400\n"),
        (
            "/memtrace-test/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        ),
    ];
    Recorded {
        mountinfo: HYBRID,
        files: files
            .into_iter()
            .map(|(p, t)| (PathBuf::from(format!("{m}{p}")), t))
            .collect(),
    }
}

const V1_PROC: &str = "9:name=systemd:/\n4:memory:/memtrace-test\n1:cpu:/\n0::/\n";

#[test]
fn a_v1_limit_usage_and_kills() {
    let c = read(&v1(), V1_PROC).unwrap();
    assert_eq!(c.version, 1);
    assert_eq!(c.path, "/memtrace-test");
    assert_eq!(c.limit_bytes, Some(200 << 20));
    assert_eq!(c.limit_set_at.as_deref(), Some("/memtrace-test"));
    assert_eq!(c.usage_bytes, 150 << 20);
    assert_eq!(c.oom_kills, 2);
    assert_eq!(c.high_bytes, None);
    assert_eq!(c.used_pct().map(|p| p.round()), Some(75.0));
}

#[test]
fn v1s_page_counter_maximum_is_no_limit() {
    let c = read(&v1(), "4:memory:/\n0::/\n").unwrap();
    assert_eq!(c.limit_bytes, None);
    assert_eq!(c.used_pct(), None);
    assert_eq!(seconds_to_limit(&c, 1e6), None);
    let s = summarize(c, &[]);
    assert_eq!(
        s.describe(|b| b.to_string()),
        "root memory cgroup: no memory limit"
    );
}

const V2_MOUNTS: &str =
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
const POD: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1d.slice";

fn v2() -> Recorded {
    let c = format!("{POD}/cri-containerd-9f3e.scope");
    let files: Vec<(String, &'static str)> = vec![
        (format!("{c}/memory.current"), "402653184\n"),
        (format!("{c}/memory.max"), "max\n"),
        (format!("{c}/memory.high"), "max\n"),
        (
            format!("{c}/memory.events"),
            "low 0\nhigh 12\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n",
        ),
        (format!("{POD}/memory.max"), "536870912\n"),
        (format!("{POD}/memory.high"), "483183820\n"),
        ("/kubepods.slice/memory.max".into(), "24000000000\n"),
    ];
    Recorded {
        mountinfo: V2_MOUNTS,
        files: files
            .into_iter()
            .map(|(p, t)| (PathBuf::from(format!("/sys/fs/cgroup{p}")), t))
            .collect(),
    }
}

#[test]
fn a_v2_containers_limit_is_its_pods() {
    let proc = format!("0::{POD}/cri-containerd-9f3e.scope\n");
    let c = read(&v2(), &proc).unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(c.limit_bytes, Some(512 << 20));
    assert_eq!(c.limit_set_at.as_deref(), Some(POD));
    assert_eq!(c.high_bytes, Some(483183820));
    assert_eq!(c.usage_bytes, 384 << 20);
    assert_eq!(c.oom_kills, 1);
    assert_eq!(c.used_pct().map(|p| p.round()), Some(75.0));
}

#[test]
fn a_process_outside_the_view_has_no_reading() {
    assert_eq!(read(&v2(), "0::/elsewhere\n"), None);
    assert_eq!(read(&v1(), "garbage"), None);
}

#[test]
fn a_container_sees_its_subtree() {
    // A mount of the hierarchy from the pod's cgroup down.
    let mountinfo = "30 23 0:26 /kubepods/pod1 /host/cgroup rw - cgroup cgroup rw,memory\n";
    let rec = Recorded {
        mountinfo,
        files: [
            ("/host/cgroup/c1/memory.usage_in_bytes", "1048576"),
            (
                "/host/cgroup/c1/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            ("/host/cgroup/memory.limit_in_bytes", "104857600"),
        ]
        .into_iter()
        .map(|(p, t)| (PathBuf::from(p), t))
        .collect(),
    };
    let c = read(&rec, "4:memory:/kubepods/pod1/c1\n").unwrap();
    assert_eq!(c.limit_bytes, Some(100 << 20));
    assert_eq!(c.limit_set_at.as_deref(), Some("/kubepods/pod1"));
}

#[test]
fn mount_points_are_unescaped() {
    let m = mounts("35 31 0:32 / /sys/fs/with\\040space rw - cgroup cgroup rw,memory\n");
    assert_eq!(m.v1_memory.unwrap().0, PathBuf::from("/sys/fs/with space"));
}

#[test]
fn growth_and_the_projection() {
    let samples: Vec<(f64, u64)> = (0..10)
        .map(|i| (i as f64, (100 << 20) + i * (2 << 20)))
        .collect();
    let rate = growth_rate(&samples).unwrap();
    assert!((rate - (2 << 20) as f64).abs() < 1.0, "{rate}");
    let c = MemoryCgroup {
        version: 2,
        path: "/x".into(),
        limit_bytes: Some(200 << 20),
        limit_set_at: None,
        high_bytes: None,
        usage_bytes: 120 << 20,
        oom_kills: 0,
    };
    assert_eq!(seconds_to_limit(&c, rate).map(f64::round), Some(40.0));
    // Flat or falling usage: no projection.
    assert_eq!(seconds_to_limit(&c, 0.0), None);
    assert_eq!(seconds_to_limit(&c, -5e6), None);
    assert_eq!(growth_rate(&samples[..1]), None);
}

#[test]
fn the_one_line_says_what_the_projection_rests_on() {
    let c = read(&v1(), V1_PROC).unwrap();
    let samples: Vec<(f64, u64)> = (0..30)
        .map(|i| (i as f64, (120 << 20) + i * (1 << 20)))
        .collect();
    let s = summarize(c.clone(), &samples);
    let human = |b: u64| format!("{} MiB", b >> 20);
    assert_eq!(
        s.describe(human),
        "cgroup limit 200 MiB: 75% used, growing 1 MiB/s, limit in about 50 s, 2 OOM kill(s) so far"
    );
    assert!(
        s.projection.as_deref().unwrap().contains("last 29 s"),
        "{s:?}"
    );
    assert_eq!(s.short(human), "75% of 200 MiB, full in 50 s");
    // Flat: no projection.
    let flat: Vec<(f64, u64)> = (0..30).map(|i| (i as f64, 150 << 20)).collect();
    let s = summarize(c, &flat);
    assert_eq!(s.seconds_to_limit, None);
    assert_eq!(s.projection, None);
    assert!(s.describe(human).contains("not growing"));
}

/// memtrace in a container of its own cgroup namespace (a DaemonSet on
/// cgroup v2): the host's tree is out of view, the target's own is not.
#[test]
fn a_targets_own_view_of_its_container() {
    assert!(outside_view(
        "0::/../../kubepods-burstable-pod6b1d.slice/cri-containerd-9f3e.scope\n"
    ));
    assert!(!outside_view("0::/kubepods.slice/x.scope\n"));
    let root = std::env::temp_dir().join(format!("memtrace-view-{}", std::process::id()));
    let cg = root.join("sys/fs/cgroup");
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("memory.max"), "268435456\n").unwrap();
    std::fs::write(cg.join("memory.current"), "67108864\n").unwrap();
    std::fs::write(cg.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
    let view = ProcessView {
        root: root.clone(),
        mountinfo: "1880 1870 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate\n"
            .into(),
    };
    let c = view.read().unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(c.limit_bytes, Some(256 << 20));
    assert_eq!(c.usage_bytes, 64 << 20);
    assert_eq!(c.used_pct().map(f64::round), Some(25.0));
}
