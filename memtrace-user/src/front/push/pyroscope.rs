//! Grafana Pyroscope's push API: `push.v1.PusherService/Push` (Connect
//! protocol, binary protobuf over HTTP/1.1), a series per lens, each a
//! gzipped pprof profile with its labels. The messages mirror Pyroscope's
//! `push/v1/push.proto` and `types/v1/types.proto` field for field.

use prost::Message;

use super::{status_error, SendError};

/// `push.v1.PushRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

/// `push.v1.RawProfileSeries`.
#[derive(Clone, PartialEq, Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

/// `types.v1.LabelPair`.
#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `push.v1.RawSample`: a gzipped pprof profile.
#[derive(Clone, PartialEq, Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub id: String,
}

/// One profile for the store: its labels and its gzipped pprof bytes.
pub fn series(labels: &[(String, String)], gzipped_pprof: Vec<u8>) -> RawProfileSeries {
    RawProfileSeries {
        labels: labels
            .iter()
            .map(|(name, value)| LabelPair {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        samples: vec![RawSample {
            raw_profile: gzipped_pprof,
            id: String::new(),
        }],
    }
}

/// How the agent authenticates to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic { user: String, password: String },
}

/// A Pyroscope to push to.
#[derive(Clone, Debug)]
pub struct Store {
    /// The store's base URL (`/push.v1.PusherService/Push` is appended).
    pub url: String,
    /// Sent as `X-Scope-OrgID`.
    pub tenant: Option<String>,
    pub auth: Auth,
}

impl Store {
    pub(super) fn send(&self, http: &ureq::Agent, body: &[u8]) -> Result<(), SendError> {
        let url = format!(
            "{}/push.v1.PusherService/Push",
            self.url.trim_end_matches('/')
        );
        let mut req = http
            .post(&url)
            .set("Content-Type", "application/proto")
            .set("Connect-Protocol-Version", "1");
        if let Some(t) = &self.tenant {
            req = req.set("X-Scope-OrgID", t);
        }
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.set("Authorization", &format!("Bearer {t}")),
            Auth::Basic { user, password } => {
                use base64::Engine as _;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                req.set("Authorization", &format!("Basic {token}"))
            }
        };
        req.send_bytes(body).map(drop).map_err(status_error)
    }
}

impl PushRequest {
    /// Encoded, for [`super::Pusher::push`].
    pub fn body(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_pyroscopes() {
        let req = PushRequest {
            series: vec![series(
                &[("__name__".into(), "memtrace_rss".into())],
                vec![0x1f, 0x8b],
            )],
        };
        let bytes = req.encode_to_vec();
        // PushRequest.series (1, length-delimited) > labels (1) > name (1).
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(PushRequest::decode(bytes.as_slice()).unwrap(), req);
    }
}
