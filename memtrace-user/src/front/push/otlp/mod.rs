//! OTLP for profiles: an `ExportProfilesServiceRequest`, over OTLP/HTTP
//! (binary protobuf, gzipped, `POST`ed to the collector's
//! `/v1development/profiles`; TLS when the URL is https) or OTLP/gRPC
//! (`grpc://`, `grpcs://` with TLS: `ProfilesService/Export` through
//! tonic). Headers (auth) come from `--otlp-header K=V` or
//! `OTEL_EXPORTER_OTLP_HEADERS`, as gRPC metadata on gRPC.

use std::io::Write as _;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message as _;

mod grpc;

use super::{status_error, SendError};

/// The most of a receiver's answer that is read (1 MiB).
const MAX_ANSWER: u64 = 1 << 20;

/// The signal's path, appended to a URL that has none.
pub const PROFILES_PATH: &str = "/v1development/profiles";

/// An OTLP endpoint that cannot be used, with what to give instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("--otlp {0}: port 4317 is OTLP/gRPC; write grpc://HOST:4317 (grpcs:// for TLS), or give the OTLP/HTTP port, http://HOST:4318")]
    Grpc(String),
    #[error("--otlp {0}: give an http(s):// URL (OTLP/HTTP, e.g. http://collector:4318) or a grpc(s):// one (OTLP/gRPC, e.g. grpc://collector:4317)")]
    Scheme(String),
    #[error("--otlp-header {0:?}: write it as KEY=VALUE, KEY a header name (letters, digits, -)")]
    Header(String),
}

/// How requests travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP, binary protobuf.
    Http,
    /// OTLP/gRPC.
    Grpc,
}

/// Where OTLP profiles go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP: the full URL, the signal's path included; gRPC: the server's
    /// `http(s)://HOST:PORT`.
    pub url: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// `url` as given if it has a path, else with [`PROFILES_PATH`]; each
    /// header `KEY=VALUE`.
    pub fn new(url: &str, headers: &[String]) -> Result<Self, EndpointError> {
        let schemes = [
            ("http://", Protocol::Http, "http://"),
            ("https://", Protocol::Http, "https://"),
            ("grpc://", Protocol::Grpc, "http://"),
            ("grpcs://", Protocol::Grpc, "https://"),
        ];
        let Some((rest, protocol, scheme)) = schemes
            .iter()
            .find_map(|(p, proto, s)| Some((url.strip_prefix(p)?, *proto, *s)))
        else {
            return Err(EndpointError::Scheme(url.into()));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(EndpointError::Scheme(url.into()));
        }
        let url = match protocol {
            Protocol::Http if authority.ends_with(":4317") => {
                return Err(EndpointError::Grpc(url.into()))
            }
            Protocol::Http if path.is_empty() => {
                format!("{}{PROFILES_PATH}", url.trim_end_matches('/'))
            }
            Protocol::Http => url.to_string(),
            Protocol::Grpc => format!("{scheme}{authority}"),
        };
        let headers = headers
            .iter()
            .map(|h| {
                let (k, v) = h
                    .split_once('=')
                    .ok_or_else(|| EndpointError::Header(h.clone()))?;
                let (k, v) = (k.trim(), v.trim());
                let name_ok = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !name_ok || v.bytes().any(|b| b.is_ascii_control()) {
                    return Err(EndpointError::Header(h.clone()));
                }
                Ok((k.to_string(), v.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            url,
            protocol,
            headers,
        })
    }

    pub(super) fn send(&self, http: &ureq::Agent, body: &[u8]) -> Result<(), SendError> {
        match self.protocol {
            Protocol::Http => self.send_http(http, body),
            Protocol::Grpc => grpc::send(self, body),
        }
    }

    fn send_http(&self, http: &ureq::Agent, body: &[u8]) -> Result<(), SendError> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let gzipped = gz
            .write_all(body)
            .and_then(|_| gz.finish())
            .map_err(|e| SendError::Retry(e.to_string()))?;
        let mut req = http
            .post(&self.url)
            .set("Content-Type", "application/x-protobuf")
            .set("Content-Encoding", "gzip");
        for (k, v) in &self.headers {
            req = req.set(k, v);
        }
        let resp = req.send_bytes(&gzipped).map_err(status_error)?;
        let mut answer = Vec::new();
        // The answer is a small status message; a receiver cannot make the
        // agent hold more than this of it.
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_reader(), MAX_ANSWER),
            &mut answer,
        );
        if let Ok(r) = ExportProfilesServiceResponse::decode(answer.as_slice()) {
            self.say_partial(&r);
        }
        Ok(())
    }

    /// A receiver that took part of a request says why it refused the rest.
    pub(super) fn say_partial(&self, r: &ExportProfilesServiceResponse) {
        if let Some(p) = r
            .partial_success
            .as_ref()
            .filter(|p| p.rejected_profiles > 0)
        {
            log::warn!(
                "{} rejected {} profiles: {}",
                self.url,
                p.rejected_profiles,
                p.error_message
            );
        }
    }

    /// Sends `body` now (`record`): up to `attempts` tries, 1 s apart and
    /// doubling, while the failure is worth retrying.
    pub fn send_now(&self, body: &[u8], attempts: u32) -> Result<(), String> {
        let http = super::http_client();
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=attempts.max(1) {
            match self.send(&http, body) {
                Ok(()) => return Ok(()),
                Err(SendError::Refused(e)) => return Err(format!("{} refused it ({e})", self.url)),
                Err(SendError::Retry(e)) if attempt == attempts.max(1) => {
                    return Err(format!("{attempt} tries failed, the last: {e}"))
                }
                Err(SendError::Retry(e)) => {
                    eprintln!("memtrace: the OTLP export failed ({e}); retrying in {wait:?}");
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// The headers `OTEL_EXPORTER_OTLP_HEADERS` (or its profiles variant)
/// gives, `k1=v1,k2=v2`, as `--otlp-header` takes them.
pub fn env_headers(get: impl Fn(&str) -> Option<String>) -> Vec<String> {
    [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_PROFILES_HEADERS",
    ]
    .iter()
    .filter_map(|k| get(k))
    .flat_map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
    .collect()
}

/// Encoded, for [`super::Pusher::push`] or [`Endpoint::send_now`].
pub fn body(req: &ExportProfilesServiceRequest) -> Vec<u8> {
    req.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_path_is_added_to_a_bare_url_only() {
        let e = Endpoint::new("http://collector:4318", &[]).unwrap();
        assert_eq!(e.url, "http://collector:4318/v1development/profiles");
        let e = Endpoint::new("https://collector:4318/", &[]).unwrap();
        assert_eq!(e.url, "https://collector:4318/v1development/profiles");
        let e = Endpoint::new("http://gw/otlp/v1development/profiles", &[]).unwrap();
        assert_eq!(e.url, "http://gw/otlp/v1development/profiles");
        assert_eq!(e.protocol, Protocol::Http);
    }

    #[test]
    fn grpc_is_asked_for_by_the_scheme() {
        let e = Endpoint::new("grpc://collector:4317/ignored", &[]).unwrap();
        assert_eq!(
            (e.url.as_str(), e.protocol),
            ("http://collector:4317", Protocol::Grpc)
        );
        let e = Endpoint::new("grpcs://collector:4317", &[]).unwrap();
        assert_eq!(e.url, "https://collector:4317");
        let e = Endpoint::new("http://collector:4317", &[]).unwrap_err();
        assert!(matches!(e, EndpointError::Grpc(_)));
        assert!(e.to_string().contains("grpc://HOST:4317"), "{e}");
    }

    #[test]
    fn other_schemes_are_refused_with_the_fix() {
        assert!(matches!(
            Endpoint::new("collector:4318", &[]),
            Err(EndpointError::Scheme(_))
        ));
        assert!(Endpoint::new("http://", &[]).is_err());
    }

    #[test]
    fn headers_are_key_value() {
        let e = Endpoint::new(
            "http://c:4318",
            &[
                "Authorization=Bearer a=b".into(),
                " X-Scope-OrgID = t1 ".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            e.headers,
            [
                ("Authorization".to_string(), "Bearer a=b".to_string()),
                ("X-Scope-OrgID".to_string(), "t1".to_string())
            ]
        );
        for bad in ["novalue", "=v", "a b=c", "k=v\r\nX: y"] {
            assert!(
                matches!(
                    Endpoint::new("http://c", &[bad.into()]),
                    Err(EndpointError::Header(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_environment_gives_headers_too() {
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_HEADERS").then(|| "a=1, b=2,".to_string());
        assert_eq!(env_headers(env), ["a=1", "b=2"]);
    }
}
