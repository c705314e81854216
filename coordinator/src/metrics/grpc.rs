//! gRPC refusals by call and code, counted at the edge: a tower layer around every service on
//! the coordinator's gRPC listener.
//!
//! tonic answers a refused call (a handler's `Err(Status)`, an unknown method) with a
//! trailers-only response: the `grpc-status` is in the response headers. The layer reads it
//! there and counts every status but OK as `hotdeploy_grpc_errors_total{call, code}`, with
//! `call` as `Service/Method` (`Coordinator/AcquireSlot`, `RaftPeer/Send`, `Health/Check`).
//!
//! The `call` label stays bounded although the path is the client's: a path that names no
//! method of a served service is answered UNIMPLEMENTED by tonic's router before any handler,
//! and every UNIMPLEMENTED is counted under `call="unknown"`. Any other code comes from a
//! handler, so its path names a real method.
//!
//! Left out: an error that ends a stream already under way (in its trailers, after messages);
//! the refusals that matter to an operator (permissions, not the leader, bad input, budget)
//! come before the first message.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Code;

/// The labels of a refused call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `Service/Method`, or `unknown`.
    pub call: String,
    /// The gRPC code's name, e.g. `PERMISSION_DENIED`.
    pub code: &'static str,
}

/// The counter the layer feeds. Cheap to clone; clones share the counts.
pub type GrpcErrors = Family<GrpcLabels, Counter>;

/// Counts refused calls into `errors`.
#[derive(Clone)]
pub struct GrpcErrorsLayer {
    errors: GrpcErrors,
}

impl GrpcErrorsLayer {
    pub fn new(errors: GrpcErrors) -> Self {
        Self { errors }
    }
}

impl<S> tower::Layer<S> for GrpcErrorsLayer {
    type Service = GrpcErrorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcErrorsService {
            inner,
            errors: self.errors.clone(),
        }
    }
}

/// The service [`GrpcErrorsLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct GrpcErrorsService<S> {
    inner: S,
    errors: GrpcErrors,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcErrorsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = call_name(req.uri().path());
        let errors = self.errors.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(code) = header_code(resp.headers()) {
                count(&errors, call, code);
            }
            Ok(resp)
        })
    }
}

/// Counts one refused call.
pub fn count(errors: &GrpcErrors, call: String, code: Code) {
    if code == Code::Ok {
        return;
    }
    let call = if code == Code::Unimplemented {
        "unknown".to_string()
    } else {
        call
    };
    errors
        .get_or_create(&GrpcLabels {
            call,
            code: code_name(code),
        })
        .inc();
}

/// `/hotdeploy.v1.Coordinator/AcquireSlot` → `Coordinator/AcquireSlot`.
fn call_name(path: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let service = service.rsplit('.').next().unwrap_or(service);
    let mut name = format!("{service}/{method}");
    name.truncate(96);
    name
}

fn header_code(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}

/// The gRPC code's canonical name.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_by_service_and_method_and_unknown_ones_are_lumped() {
        assert_eq!(
            call_name("/hotdeploy.v1.Coordinator/AcquireSlot"),
            "Coordinator/AcquireSlot"
        );
        assert_eq!(call_name("/grpc.health.v1.Health/Check"), "Health/Check");
        let errors = GrpcErrors::default();
        count(&errors, "Coordinator/Status".into(), Code::PermissionDenied);
        count(&errors, "Coordinator/Status".into(), Code::PermissionDenied);
        count(&errors, "Nope/Whatever".into(), Code::Unimplemented);
        count(&errors, "Coordinator/Status".into(), Code::Ok);
        let get = |call: &str, code| {
            errors
                .get_or_create(&GrpcLabels {
                    call: call.into(),
                    code,
                })
                .get()
        };
        assert_eq!(get("Coordinator/Status", "PERMISSION_DENIED"), 2);
        assert_eq!(get("unknown", "UNIMPLEMENTED"), 1);
        assert_eq!(get("Nope/Whatever", "UNIMPLEMENTED"), 0);
        assert_eq!(get("Coordinator/Status", "OK"), 0);
    }
}
