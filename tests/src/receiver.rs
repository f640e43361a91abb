//! A profile store's HTTP end for the push tests: it accepts requests
//! (or refuses them, as in an outage) and keeps what it got.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One push the receiver accepted.
#[derive(Clone, Debug)]
pub struct Push {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 server that takes pushes (Pyroscope, OTLP): 200 while up,
/// 503 while `down`. Keeps what it accepted, as sent.
pub struct Receiver {
    pub port: u16,
    /// While set, every request gets 503.
    pub down: Arc<AtomicBool>,
    pub accepted: Arc<Mutex<Vec<Push>>>,
    pub refused: Arc<Mutex<u64>>,
}

impl Receiver {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Self {
            port,
            down: Arc::new(AtomicBool::new(false)),
            accepted: Arc::default(),
            refused: Arc::default(),
        };
        let (down, accepted, refused) = (r.down.clone(), r.accepted.clone(), r.refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (down, accepted, refused) = (down.clone(), accepted.clone(), refused.clone());
                std::thread::spawn(move || serve(conn, &down, &accepted, &refused));
            }
        });
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn accepted(&self) -> Vec<Push> {
        self.accepted.lock().unwrap().clone()
    }
}

/// Serves one keep-alive connection.
fn serve(
    conn: std::net::TcpStream,
    down: &AtomicBool,
    accepted: &Mutex<Vec<Push>>,
    refused: &Mutex<u64>,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = if down.load(Ordering::SeqCst) {
            *refused.lock().unwrap() += 1;
            "503 Service Unavailable"
        } else {
            accepted.lock().unwrap().push(Push {
                path,
                headers,
                body,
            });
            "200 OK"
        };
        if write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/proto\r\nContent-Length: 0\r\n\r\n"
        )
        .is_err()
        {
            return;
        }
    }
}

/// The gRPC method an OTLP/gRPC export calls.
pub const GRPC_EXPORT: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

/// An OTLP/gRPC receiver (tonic's server for the official service): each
/// export it takes is kept as a [`Push`] to [`GRPC_EXPORT`], its metadata
/// as headers and the request re-encoded as the body.
pub struct GrpcReceiver {
    pub port: u16,
    pub accepted: Arc<Mutex<Vec<Push>>>,
}

struct Profiles(Arc<Mutex<Vec<Push>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::ProfilesService for Profiles {
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceResponse,
        >,
        tonic::Status,
    > {
        use prost::Message as _;
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        self.0.lock().unwrap().push(Push {
            path: GRPC_EXPORT.into(),
            headers,
            body: request.get_ref().encode_to_vec(),
        });
        Ok(tonic::Response::new(Default::default()))
    }
}

impl GrpcReceiver {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accepted: Arc<Mutex<Vec<Push>>> = Arc::default();
        let svc = Profiles(accepted.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(
                tonic::transport::Server::builder()
                    .add_service(
                        opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::ProfilesServiceServer::new(svc),
                    )
                    .serve(([127, 0, 0, 1], port).into()),
            )
            .unwrap();
        });
        // Listening before a client comes.
        let up = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the gRPC receiver did not start on port {port}");
        Self { port, accepted }
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    pub fn accepted(&self) -> Vec<Push> {
        self.accepted.lock().unwrap().clone()
    }
}
