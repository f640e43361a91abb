//! A real Prometheus server (Debian's package) for the agent's tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::agent::{free_port, http_get, urlencode};
use crate::wait_until;

/// A scrape job for an agent on loopback `port`, every second, with the
/// bearer token in `token_file` if given; rules.yml evaluated every second.
pub fn config(port: u16, token_file: Option<&Path>) -> String {
    let auth = token_file.map_or(String::new(), |t| {
        format!(
            "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
            t.display()
        )
    });
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yml]\n\
         scrape_configs:\n  - job_name: memtrace-agent\n{auth}    static_configs:\n      \
         - targets: ['127.0.0.1:{port}']\n"
    )
}

/// deploy/alert-rules.yaml with its ranges and `for:` durations shortened
/// so that a test minute stands for half an hour; the expressions and
/// thresholds are the shipped ones.
pub fn quick_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alert-rules.yaml");
    let mut rules = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        ("[30m]", "[20s]"),
        ("[10m]", "[20s]"),
        ("for: 30m", "for: 3s"),
        ("for: 10m", "for: 3s"),
        ("for: 2m", "for: 2s"),
    ] {
        assert!(
            rules.contains(from),
            "alert-rules.yaml no longer has {from}"
        );
        rules = rules.replace(from, to);
    }
    rules
}

/// A Prometheus server on a free loopback port.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with `config` (and `rules` as rules.yml beside
    /// it) in `dir`, after `promtool check config`, and waits until ready.
    pub fn start(dir: &Path, config: &str, rules: &str) -> Self {
        Self::start_on(dir, free_port(), config, rules)
    }

    /// As [`Prometheus::start`], on `port` (a config that scrapes the
    /// server itself names it).
    pub fn start_on(dir: &Path, port: u16, config: &str, rules: &str) -> Self {
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let check = Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(dir.join("prometheus.yml"))
            .output()
            .expect("promtool (Debian's prometheus package; cargo xtask bootstrap installs it)");
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package)");
        let p = Self {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let ready = wait_until(Duration::from_secs(30), || {
            http_get(port, "/-/ready", None).is_some_and(|(s, _)| s == 200)
        });
        assert!(ready, "prometheus never ready: {}", p.log());
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_get(self.port, path, None)
            .unwrap_or_else(|| panic!("GET {path} from prometheus failed: {}", self.log()));
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// An instant query's vector: (labels, value) per series.
    pub fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let v = self.api(&format!("/api/v1/query?query={}", urlencode(q)));
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// (alert name, pid label) of the alerts firing now.
    pub fn firing(&self) -> Vec<(String, String)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_string(),
                    a["labels"]["pid"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
