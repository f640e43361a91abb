//! The agent's HTTP API. Profiles are served from memory by (pid, lens);
//! no handler turns its input into a filesystem path. With a token,
//! `/metrics` and `/profiles` answer only requests that carry it
//! (`Authorization: Bearer …`, compared in constant time); `/healthz`
//! stays open for liveness probes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use subtle::ConstantTimeEq as _;

use super::{metrics, Heartbeat, Shared, LENSES};
use crate::front::push::PushStats;

/// The formats a profile is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Folded,
    Pprof,
}

/// `rss.svg` → (`rss`, Svg); anything else → None.
pub fn parse_profile_file(file: &str) -> Option<(&'static str, Format)> {
    let (lens, ext) = file.split_once('.')?;
    let lens = *LENSES.iter().find(|l| **l == lens)?;
    let fmt = match ext {
        "svg" => Format::Svg,
        "folded" => Format::Folded,
        "pb.gz" => Format::Pprof,
        _ => return None,
    };
    Some((lens, fmt))
}

/// Reads the agent's own CPU time and RSS.
pub type SelfUsageFn = fn() -> metrics::SelfUsage;

/// What the handlers need.
#[derive(Clone)]
pub struct Ctx {
    pub shared: Arc<Mutex<Shared>>,
    pub usage: SelfUsageFn,
    /// Required as a bearer token by `/metrics` and `/profiles` when set.
    pub token: Option<Arc<str>>,
    pub push: Option<Arc<Mutex<PushStats>>>,
    pub otlp: Option<Arc<Mutex<PushStats>>>,
    /// The engine's loop, and how long it may go without completing one
    /// before `/healthz` fails.
    pub heartbeat: Arc<Heartbeat>,
    pub stall: Duration,
}

/// `/healthz`: 200 while the engine loops, 503 once it has not completed
/// a loop within the stall limit (the kubelet then restarts the agent).
async fn healthz(State(c): State<Ctx>) -> Response {
    let age = c.heartbeat.age();
    if age > c.stall {
        let msg = format!(
            "engine stalled: no loop completed for {:.0} s (limit {} s)\n",
            age.as_secs_f64(),
            c.stall.as_secs()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    "ok\n".into_response()
}

/// Whether the request's `Authorization` carries `token` (constant time).
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

async fn require_token(State(c): State<Ctx>, req: Request, next: Next) -> Response {
    match &c.token {
        Some(t) if !authorized(req.headers(), t) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 256;
/// Time for a client to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, handler included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's whole life (keep-alive included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Request head (and buffered body) size.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` so that slow or greedy clients cannot
/// starve the others: a bounded number of connections, a deadline for the
/// headers, a bounded head size, a deadline per request and per
/// connection.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: dropped, closed
        };
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}

/// Ends a request that takes longer than [`REQUEST_TIMEOUT`] with 503.
async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

pub fn router(ctx: Ctx) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/profiles", get(list_handler))
        .route("/profiles/{pid}/{file}", get(profile_handler))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(middleware::from_fn(deadline))
        .with_state(ctx)
}

async fn metrics_handler(State(c): State<Ctx>) -> Response {
    let me = (c.usage)();
    let copy = |p: &Option<Arc<Mutex<PushStats>>>| {
        p.as_ref().map(|p| p.lock().expect("push stats").clone())
    };
    let (push, otlp) = (copy(&c.push), copy(&c.otlp));
    let mut deliveries: Vec<(&str, &str, &PushStats)> = Vec::new();
    if let Some(p) = &push {
        deliveries.push(("memtrace_push", "Pyroscope", p));
    }
    if let Some(p) = &otlp {
        deliveries.push(("memtrace_otlp", "the OTLP endpoint", p));
    }
    let text = metrics::render(&c.shared.lock().expect("agent state"), me, &deliveries);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn list_handler(State(c): State<Ctx>) -> Response {
    let s = c.shared.lock().expect("agent state");
    let list: Vec<serde_json::Value> = s
        .procs
        .values()
        .map(|p| {
            let files: Vec<String> = LENSES
                .iter()
                .filter(|l| s.profiles.contains_key(&(p.pid, **l)))
                .flat_map(|l| {
                    ["svg", "folded", "pb.gz"]
                        .iter()
                        .map(move |e| format!("/profiles/{}/{l}.{e}", p.pid))
                })
                .collect();
            let page = s
                .pages
                .contains_key(&p.pid)
                .then(|| format!("/profiles/{}/index.html", p.pid));
            serde_json::json!({
                "pid": p.pid,
                "page": page,
                "exe": p.exe,
                "go_version": p.go_version,
                "cgroup": p.labels.cgroup,
                "pod_uid": p.labels.pod_uid,
                "container_id": p.labels.container_id,
                "pod_namespace": p.pod.as_ref().map(|m| m.namespace.clone()),
                "pod_name": p.pod.as_ref().map(|m| m.name.clone()),
                "window_end": p.window_end,
                "rss_bytes": p.vmrss,
                "files": files,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn profile_handler(
    State(c): State<Ctx>,
    Path((pid, file)): Path<(String, String)>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    if file == "index.html" {
        let Ok(pid) = pid.parse::<u32>() else {
            return not_found();
        };
        let page = c
            .shared
            .lock()
            .expect("agent state")
            .pages
            .get(&pid)
            .cloned();
        return match page {
            Some(p) => (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                p.as_str().to_owned(),
            )
                .into_response(),
            None => not_found(),
        };
    }
    let (Ok(pid), Some((lens, fmt))) = (pid.parse::<u32>(), parse_profile_file(&file)) else {
        return not_found();
    };
    let Some(r) = c
        .shared
        .lock()
        .expect("agent state")
        .profiles
        .get(&(pid, lens))
        .cloned()
    else {
        return not_found();
    };
    match fmt {
        Format::Svg => ([(header::CONTENT_TYPE, "image/svg+xml")], r.svg.clone()).into_response(),
        Format::Folded => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            r.folded.clone(),
        )
            .into_response(),
        Format::Pprof => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            r.pprof.clone(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_once_the_engine_stops_completing_loops() {
        let heartbeat = Arc::new(Heartbeat::default());
        let ctx = Ctx {
            shared: Arc::default(),
            usage: || metrics::SelfUsage {
                cpu_seconds: 0.0,
                rss_bytes: 0,
            },
            token: Some("t".into()),
            push: None,
            otlp: None,
            heartbeat: heartbeat.clone(),
            stall: Duration::from_millis(100),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let status = || rt.block_on(healthz(State(ctx.clone()))).status();
        heartbeat.beat();
        assert_eq!(status(), StatusCode::OK);
        // The engine is stuck (a parse, a kernel call): no beat.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE);
        heartbeat.beat();
        assert_eq!(status(), StatusCode::OK);
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized(&h, "s3cret"));
    }

    #[test]
    fn profile_files() {
        assert_eq!(parse_profile_file("rss.svg"), Some(("rss", Format::Svg)));
        assert_eq!(
            parse_profile_file("goroutines.pb.gz"),
            Some(("goroutines", Format::Pprof))
        );
        for bad in [
            "rss",
            "rss.exe",
            "../etc/passwd",
            "heap.svg",
            "rss.svg/x",
            "",
        ] {
            assert_eq!(parse_profile_file(bad), None, "{bad}");
        }
    }
}
