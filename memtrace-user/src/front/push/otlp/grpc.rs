//! OTLP/gRPC: one unary `ProfilesService/Export` call with tonic's client,
//! on a current-thread runtime of its own (the delivery thread and
//! `record`'s end are not async). The spool holds encoded requests, so a
//! body is decoded back into the message tonic sends.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    profiles_service_client::ProfilesServiceClient, ExportProfilesServiceRequest,
};
use prost::Message as _;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::ClientTlsConfig;

use super::Endpoint;
use crate::front::push::SendError;

const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn send(e: &Endpoint, body: &[u8]) -> Result<(), SendError> {
    let req = ExportProfilesServiceRequest::decode(body)
        .map_err(|err| SendError::Refused(format!("not an export request: {err}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| SendError::Retry(format!("starting a runtime: {err}")))?;
    rt.block_on(call(e, req))
}

async fn call(e: &Endpoint, req: ExportProfilesServiceRequest) -> Result<(), SendError> {
    let refused =
        |what: &str, err: &dyn std::fmt::Display| SendError::Refused(format!("{what}: {err}"));
    let mut ep = tonic::transport::Endpoint::from_shared(e.url.clone())
        .map_err(|err| refused("the URL", &err))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    if e.url.starts_with("https://") {
        ep = ep
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|err| refused("TLS", &err))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|err| SendError::Retry(format!("connecting: {err}")))?;
    let mut request = tonic::Request::new(req);
    for (k, v) in &e.headers {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|err| refused("a header name", &err))?;
        let value: MetadataValue<_> = v.parse().map_err(|err| refused("a header value", &err))?;
        request.metadata_mut().insert(key, value);
    }
    match ProfilesServiceClient::new(channel).export(request).await {
        Ok(resp) => {
            e.say_partial(resp.get_ref());
            Ok(())
        }
        Err(status) => Err(classify(&status)),
    }
}

/// OTLP's retryable codes, and auth that may be fixed, are retried; the
/// rest (a malformed request, no profiles service) never will succeed.
fn classify(s: &tonic::Status) -> SendError {
    use tonic::Code;
    let msg = format!("gRPC {:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::ResourceExhausted
        | Code::Unknown
        | Code::Unauthenticated
        | Code::PermissionDenied => SendError::Retry(msg),
        _ => SendError::Refused(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_are_retried() {
        let retry = |c| matches!(classify(&tonic::Status::new(c, "x")), SendError::Retry(_));
        assert!(retry(tonic::Code::Unavailable));
        assert!(retry(tonic::Code::ResourceExhausted));
        assert!(!retry(tonic::Code::InvalidArgument));
        assert!(!retry(tonic::Code::Unimplemented));
    }

    #[test]
    fn a_body_that_is_no_request_is_refused() {
        let e = Endpoint::new("grpc://127.0.0.1:1", &[]).unwrap();
        assert!(matches!(
            send(&e, &[0xff, 0xff]),
            Err(SendError::Refused(_))
        ));
    }
}
