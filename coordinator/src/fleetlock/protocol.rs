//! The FleetLock wire protocol (Zincati's reboot lock): the two operations, the request body,
//! and the errors with their HTTP statuses.
//!
//! A request is `POST /v1/pre-reboot` or `POST /v1/steady-state` with the header
//! `fleet-lock-protocol: true` and the body `{"client_params": {"id": "...", "group": "..."}}`
//! (Zincati sends it pretty-printed and without a `Content-Type`, so none is required; other
//! fields are ignored, as a newer client may send some). Success is `200` with a small JSON
//! body; an error is a 4xx or 5xx status with `{"kind": "...", "value": "..."}`, `kind` from the
//! fixed set of [`ErrorKind`] (Zincati counts it in a metric label, so it must stay small) and
//! `value` a sentence for the operator reading Zincati's log.

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The largest request body read. A FleetLock body is about a hundred bytes.
pub const MAX_BODY: usize = 8 * 1024;

/// The header every FleetLock request must carry, with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// The two FleetLock operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /v1/pre-reboot`: take (or keep) a reboot slot.
    PreReboot,
    /// `POST /v1/steady-state`: give back the slot taken through FleetLock, if any.
    SteadyState,
}

impl Op {
    /// The operation served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Op> {
        match path {
            "/v1/pre-reboot" => Some(Op::PreReboot),
            "/v1/steady-state" => Some(Op::SteadyState),
            _ => None,
        }
    }

    /// The metric label and log name.
    pub fn label(self) -> &'static str {
        match self {
            Op::PreReboot => "pre_reboot",
            Op::SteadyState => "steady_state",
        }
    }
}

#[derive(Deserialize)]
struct Body {
    client_params: ClientParams,
}

/// Who asks: the client's id (a host id here) and its reboot group (a group here).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

/// Parses a request body, refusing anything but the protocol's shape with non-empty fields.
pub fn parse_body(bytes: &[u8]) -> Result<ClientParams, Refusal> {
    let body: Body = serde_json::from_slice(bytes).map_err(|e| {
        Refusal::new(
            ErrorKind::BadRequestBody,
            format!(
                "the body must be JSON {{\"client_params\": {{\"id\": ID, \"group\": GROUP}}}}: {e}"
            ),
        )
    })?;
    let p = body.client_params;
    for (field, value) in [("id", &p.id), ("group", &p.group)] {
        if value.is_empty() {
            return Err(Refusal::new(
                ErrorKind::BadRequestBody,
                format!("client_params.{field} is empty; it is required"),
            ));
        }
    }
    Ok(p)
}

/// The kinds of error a FleetLock request can get. Fixed and few (the protocol asks for a
/// bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a POST.
    MethodNotAllowed,
    /// `[fleetlock] enabled` is false.
    FleetLockDisabled,
    /// The client's address is not in `[fleetlock] allow`.
    ClientNotAllowed,
    /// No `fleet-lock-protocol: true` header.
    MissingProtocolHeader,
    BodyTooLarge,
    /// Not the protocol's JSON, or an empty field.
    BadRequestBody,
    /// `id` is not a valid host id.
    InvalidClientId,
    /// `group` is not a valid group name.
    InvalidGroup,
    UnknownGroup,
    /// The group's budget is used up: every slot is taken (the protocol's own example kind).
    SemaphoreFull,
    /// The group has a single host and does not allow zero available.
    LoneHost,
    /// The host holds a slot for something else (a deploy, maintenance).
    HeldForOtherPurpose,
    /// The id is a host of other groups, or a lock-only host holding a slot in another group.
    GroupMismatch,
    /// This coordinator is not the leader; ask again (the leader's address is in `value`).
    NotLeader,
    /// The cluster could not answer now (an election, a timeout); ask again.
    Unavailable,
    /// A coordinator of the cluster is too old for FleetLock (a rolling upgrade is not finished);
    /// `value` names it. Asking again helps only once it is upgraded.
    MemberTooOld,
    Internal,
}

impl ErrorKind {
    /// The `kind` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::FleetLockDisabled => "fleetlock_disabled",
            ErrorKind::ClientNotAllowed => "client_not_allowed",
            ErrorKind::MissingProtocolHeader => "missing_protocol_header",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BadRequestBody => "bad_request_body",
            ErrorKind::InvalidClientId => "invalid_client_id",
            ErrorKind::InvalidGroup => "invalid_group",
            ErrorKind::UnknownGroup => "unknown_group",
            ErrorKind::SemaphoreFull => "failed_lock_semaphore_full",
            ErrorKind::LoneHost => "failed_lock_lone_host",
            ErrorKind::HeldForOtherPurpose => "failed_lock_held_for_other_purpose",
            ErrorKind::GroupMismatch => "group_mismatch",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::MemberTooOld => "member_too_old",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status answered with it.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::FleetLockDisabled | ErrorKind::UnknownGroup => StatusCode::NOT_FOUND,
            ErrorKind::ClientNotAllowed => StatusCode::FORBIDDEN,
            ErrorKind::MissingProtocolHeader
            | ErrorKind::BadRequestBody
            | ErrorKind::InvalidClientId
            | ErrorKind::InvalidGroup => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::SemaphoreFull
            | ErrorKind::LoneHost
            | ErrorKind::HeldForOtherPurpose
            | ErrorKind::GroupMismatch => StatusCode::CONFLICT,
            ErrorKind::NotLeader | ErrorKind::Unavailable | ErrorKind::MemberTooOld => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed later unchanged, without anyone acting (the
    /// answer then carries `Retry-After`).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::SemaphoreFull | ErrorKind::NotLeader | ErrorKind::Unavailable
        )
    }
}

/// An error answer: its kind and the sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub value: String,
}

impl Refusal {
    pub fn new(kind: ErrorKind, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }

    /// The protocol's error body.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            kind: &'a str,
            value: &'a str,
        }
        serde_json::to_string(&Wire {
            kind: self.kind.as_str(),
            value: &self.value,
        })
        .unwrap_or_default()
    }
}

/// A success answer's body.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub id: String,
    pub group: String,
    /// pre-reboot: the slot's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// steady-state: the token of the slot freed, `null` when none was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<Option<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body Zincati sends (pretty-printed, as its client does) parses; anything else is a
    /// clear `bad_request_body`.
    #[test]
    fn the_zincati_body_parses_and_others_are_refused() {
        let zincati = "{\n  \"client_params\": {\n    \"id\": \"e0f3745b108f471cbd4883c6fbed8cdd\",\n    \"group\": \"mock-workers\"\n  }\n}";
        assert_eq!(
            parse_body(zincati.as_bytes()),
            Ok(ClientParams {
                id: "e0f3745b108f471cbd4883c6fbed8cdd".into(),
                group: "mock-workers".into()
            })
        );
        let extra = r#"{"client_params":{"id":"a","group":"b","zone":"z"},"v":2}"#;
        assert!(parse_body(extra.as_bytes()).is_ok());
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"client_params":{"id":"a"}}"#,
            r#"{"client_params":{"id":"","group":"b"}}"#,
            r#"{"client_params":{"id":"a","group":""}}"#,
            r#"{"client_params":{"id":7,"group":"b"}}"#,
            r#"{"client_params":"a"}"#,
        ] {
            let e = parse_body(bad.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequestBody, "{bad:?}");
            assert!(!e.value.is_empty());
        }
    }

    /// Errors are `{kind, value}`, with 4xx for the client's mistakes and 5xx for the
    /// cluster's, and a retryable kind only where asking again can help.
    #[test]
    fn errors_have_the_protocols_shape_and_fitting_statuses() {
        let r = Refusal::new(
            ErrorKind::SemaphoreFull,
            "group web (budget 1) is used by web-3",
        );
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["kind"], "failed_lock_semaphore_full");
        assert_eq!(v["value"], "group web (budget 1) is used by web-3");
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(ErrorKind::SemaphoreFull.status(), StatusCode::CONFLICT);
        assert_eq!(
            ErrorKind::MissingProtocolHeader.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ErrorKind::ClientNotAllowed.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            ErrorKind::NotLeader.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(ErrorKind::NotLeader.is_retryable());
        assert!(!ErrorKind::LoneHost.is_retryable());
        assert_eq!(Op::from_path("/v1/pre-reboot"), Some(Op::PreReboot));
        assert_eq!(Op::from_path("/v1/steady-state"), Some(Op::SteadyState));
        assert_eq!(Op::from_path("/v1/pre-reboot/"), None);
    }
}
