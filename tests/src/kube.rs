//! A stand-in Kubernetes API server for the agent's pod lookup. It answers
//! `GET /api/v1/pods?fieldSelector=spec.nodeName%3DNODE` with a `PodList`
//! of pods shaped like a real server's (`tests/data/pod.json`), and only
//! with the current bearer token and that field selector: any other
//! request gets 403, and every request is recorded for the test to check.

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};

/// One pod the stand-in knows: (uid, namespace, name, container id).
pub type Pod = (String, String, String, String);

#[derive(Default)]
struct State {
    token: String,
    pods: Vec<Pod>,
    /// (request target, Authorization header).
    requests: Vec<(String, String)>,
}

pub struct ApiServer {
    pub port: u16,
    node: String,
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    /// Serves `node`'s pods to requests bearing `token`.
    pub fn start(node: &str, token: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            ..State::default()
        }));
        let (st, node_name) = (state.clone(), node.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                answer(conn, &st, &node_name);
            }
        });
        Self {
            port,
            node: node.into(),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_pods(&self, pods: &[Pod]) {
        self.state.lock().unwrap().pods = pods.to_vec();
    }

    /// Accepts only `token` from now on (a rotated service-account token).
    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = token.into();
    }

    /// Every request so far: (target, Authorization header).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The request target a well-behaved agent sends.
    pub fn expected_target(&self) -> String {
        format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.node)
    }
}

fn answer(mut conn: std::net::TcpStream, st: &Mutex<State>, node: &str) {
    let mut buf = vec![0u8; 16 << 10];
    let n = conn.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let auth = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let mut s = st.lock().unwrap();
    s.requests.push((target.clone(), auth.clone()));
    let want = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
    let (status, body) = if auth != format!("Bearer {}", s.token) {
        (
            "401 Unauthorized",
            r#"{"kind":"Status","code":401}"#.to_string(),
        )
    } else if target != want {
        (
            "403 Forbidden",
            r#"{"kind":"Status","code":403}"#.to_string(),
        )
    } else {
        ("200 OK", pod_list(&s.pods, node))
    };
    drop(s);
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A `PodList` as the API server writes it.
pub fn pod_list(pods: &[Pod], node: &str) -> String {
    let template = include_str!("../data/pod.json");
    let items: Vec<String> = pods
        .iter()
        .map(|(uid, ns, name, id)| {
            template
                .replace("@UID@", uid)
                .replace("@NAMESPACE@", ns)
                .replace("@NAME@", name)
                .replace("@CONTAINER_ID@", id)
                .replace("@NODE@", node)
        })
        .collect();
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"48211187"}},"items":[{}]}}"#,
        items.join(",")
    )
}
