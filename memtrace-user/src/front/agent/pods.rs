//! Pod names for the node's processes: a `PodList` (UID → namespace, name,
//! labels and container names), to label processes whose cgroup names a
//! pod UID. It comes from the API server, listing only this node's pods
//! (`fieldSelector=spec.nodeName=NODE`, which RBAC grants with `pods`
//! `list`), or from the kubelet's `/pods` (whose authorization is
//! `nodes/proxy`, exec on every pod, unless the cluster has the kubelet's
//! fine-grained `nodes/pods`). The server's certificate is verified against
//! the service account's CA unless `--kube-insecure-tls`; the token file is
//! read again for every request, as projected tokens rotate.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pod list could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("TLS set-up for the pod lookup: {0}")]
    Tls(String),
    #[error(
        "cannot verify the server's certificate: no CA at {0} ({1}): give --kube-ca-file, or --kube-insecure-tls to skip verification"
    )]
    NoCa(std::path::PathBuf, String),
    #[error("the node name is empty: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")]
    NoNode,
    #[error("{0}")]
    Http(String),
    #[error("the pod list is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the pod list says about one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container ID (without the runtime's `containerd://` prefix) → name.
    pub containers: HashMap<String, String>,
}

impl PodMeta {
    /// The pod's application: its `app.kubernetes.io/name` or `app` label.
    pub fn app(&self) -> Option<&str> {
        self.labels
            .get("app.kubernetes.io/name")
            .or_else(|| self.labels.get("app"))
            .map(String::as_str)
    }
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
                    let labels = m["labels"]
                        .as_object()
                        .map(|l| {
                            l.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                                .collect()
                        })
                        .unwrap_or_default();
                    let containers = p["status"]["containerStatuses"]
                        .as_array()
                        .map(|cs| {
                            cs.iter()
                                .filter_map(|c| {
                                    let id = c["containerID"].as_str()?;
                                    let id = id.split_once("://").map_or(id, |(_, i)| i);
                                    Some((id.to_string(), c["name"].as_str()?.to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Some((
                        m["uid"].as_str()?.to_string(),
                        PodMeta {
                            namespace: m["namespace"].as_str()?.to_string(),
                            name: m["name"].as_str()?.to_string(),
                            labels,
                            containers,
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Where the node's pods are listed: the API server or the kubelet.
pub struct PodSource {
    /// What the log calls it ("the API server https://...").
    pub url: String,
    /// The full request URL.
    endpoint: String,
    http: ureq::Agent,
    token_file: std::path::PathBuf,
    /// Last refresh attempt, and whether the last one failed (logged once).
    pub last: Option<Instant>,
    pub failing: bool,
}

/// Accepts any server certificate (`--kube-insecure-tls`), still checking
/// the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl PodSource {
    /// This node's pods from the API server at `url`: `GET
    /// /api/v1/pods?fieldSelector=spec.nodeName=NODE`, which needs only
    /// `pods` `list` (no exec, no secrets).
    pub fn api_server(
        url: &str,
        node: &str,
        token_file: &Path,
        ca_file: &Path,
        insecure_tls: bool,
    ) -> Result<Self, PodsError> {
        if node.is_empty() {
            return Err(PodsError::NoNode);
        }
        let base = url.trim_end_matches('/');
        let selector = format!("spec.nodeName={node}");
        let endpoint = format!("{base}/api/v1/pods?fieldSelector={}", url_encode(&selector));
        let label = format!("the API server {base}");
        Self::new(label, endpoint, url, token_file, ca_file, insecure_tls)
    }

    /// The pods the kubelet at `url` runs (`GET /pods`).
    pub fn kubelet(
        url: &str,
        token_file: &Path,
        ca_file: &Path,
        insecure_tls: bool,
    ) -> Result<Self, PodsError> {
        let base = url.trim_end_matches('/');
        let (label, endpoint) = (format!("kubelet {base}"), format!("{base}/pods"));
        Self::new(label, endpoint, url, token_file, ca_file, insecure_tls)
    }

    /// An https server's certificate is checked against the CA in
    /// `ca_file` (the service account's), or not at all with
    /// `insecure_tls`.
    fn new(
        label: String,
        endpoint: String,
        url: &str,
        token_file: &Path,
        ca_file: &Path,
        insecure_tls: bool,
    ) -> Result<Self, PodsError> {
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(3));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PodsError::Tls(e.to_string()))?;
        if insecure_tls {
            let tls = tls
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth();
            builder = builder.tls_config(Arc::new(tls));
        } else if url.starts_with("https://") {
            use rustls::pki_types::{pem::PemObject as _, CertificateDer};
            let no_ca = |e: String| PodsError::NoCa(ca_file.to_owned(), e);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| no_ca(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| no_ca(e.to_string()))?)
                    .map_err(|e| no_ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(no_ca("no certificate in it".into()));
            }
            let tls = tls.with_root_certificates(roots).with_no_client_auth();
            builder = builder.tls_config(Arc::new(tls));
        }
        Ok(Self {
            url: label,
            endpoint,
            http: builder.build(),
            token_file: token_file.to_owned(),
            last: None,
            failing: false,
        })
    }

    /// The node's pods, by UID. The token is read from its file each time:
    /// a projected service-account token is rotated under the agent.
    pub fn pods(&mut self) -> Result<HashMap<String, PodMeta>, PodsError> {
        use std::io::Read as _;
        self.last = Some(Instant::now());
        let mut req = self.http.get(&self.endpoint);
        let token = std::fs::read_to_string(&self.token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| PodsError::Http(e.to_string()))?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(256 << 20)
            .read_to_end(&mut body)
            .map_err(|e| PodsError::Http(e.to_string()))?;
        Ok(parse_pods(&body)?)
    }
}

/// Percent-encodes what a query value cannot hold as is.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_uid_namespace_and_name() {
        let list = br#"{"kind":"PodList","apiVersion":"v1","items":[
            {"metadata":{"name":"cart-7d9","namespace":"shop","uid":"u-1","labels":{"app":"cart"}},"spec":{},
             "status":{"containerStatuses":[{"name":"server","containerID":"containerd://abc123"}]}},
            {"metadata":{"name":"nouid","namespace":"x"}}]}"#;
        let pods = parse_pods(list).unwrap();
        assert_eq!(pods.len(), 1);
        let p = &pods["u-1"];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "cart-7d9")
        );
        assert_eq!(p.app(), Some("cart"));
        assert_eq!(p.containers["abc123"], "server");
        assert!(parse_pods(b"{}").unwrap().is_empty());
        // No CA: refused with the fix, unless verification is off.
        let missing = Path::new("/nonexistent/ca.crt");
        let e = PodSource::kubelet("https://10.0.0.1:10250", missing, missing, false).err();
        assert!(matches!(e, Some(PodsError::NoCa(..))), "{e:?}");
        assert!(PodSource::kubelet("https://10.0.0.1:10250", missing, missing, true).is_ok());
        let api =
            PodSource::api_server("https://10.96.0.1:443/", "node-a.b", missing, missing, true);
        assert_eq!(
            api.unwrap().endpoint,
            "https://10.96.0.1:443/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a.b"
        );
        let e = PodSource::api_server("https://10.96.0.1", "", missing, missing, true).err();
        assert!(matches!(e, Some(PodsError::NoNode)), "{e:?}");
        assert!(parse_pods(b"not json").is_err());
    }
}
