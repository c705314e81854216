//! Checks on what callers send, before anything is acted on. Every refusal says what is wrong
//! (INVALID_ARGUMENT).

use crate::deploy::{ArtifactRef, DeployParams, MaintParams};
use hotdeploy_common::proto::{DeployRequest, RunMaintenanceRequest};
use std::time::Duration;
use tonic::Status;

/// The longest maintenance reason accepted.
const MAX_REASON_LEN: usize = 1024;
/// The most maintenance command arguments accepted, and the longest one.
const MAX_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;
/// The longest maintenance time limit accepted (a week).
const MAX_MAINT_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks a RunMaintenance request and turns it into engine parameters.
pub fn maint_request(req: &RunMaintenanceRequest) -> Result<MaintParams, Status> {
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(Status::invalid_argument(
            "reason is required (it is shown in `locks list`)",
        ));
    }
    if reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "reason must be at most {MAX_REASON_LEN} bytes of printable text"
        )));
    }
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(Status::invalid_argument(
            "argv is required: the maintenance command and its arguments",
        ));
    }
    if req.argv.len() > MAX_ARGS {
        return Err(Status::invalid_argument(format!(
            "argv has {} arguments; at most {MAX_ARGS} are accepted",
            req.argv.len()
        )));
    }
    if let Some(a) = req
        .argv
        .iter()
        .find(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
    {
        return Err(Status::invalid_argument(format!(
            "argument {:?}... is longer than {MAX_ARG_LEN} bytes or holds a NUL byte",
            a.chars().take(32).collect::<String>()
        )));
    }
    let timeout = match req.timeout_ms {
        0 => None,
        ms => {
            let d = Duration::from_millis(ms);
            if d > MAX_MAINT_TIMEOUT {
                return Err(Status::invalid_argument(format!(
                    "timeout_ms must be at most {} (a week)",
                    MAX_MAINT_TIMEOUT.as_millis()
                )));
            }
            Some(d)
        }
    };
    Ok(MaintParams {
        reason: reason.to_owned(),
        argv: req.argv.clone(),
        timeout,
    })
}

/// The longest rollout id accepted.
const MAX_ROLLOUT_LEN: usize = 128;
/// The longest artifact URL accepted.
const MAX_URL_LEN: usize = 4096;
/// The longest signature accepted (base64 of 64 bytes is 88 characters).
const MAX_SIGNATURE_LEN: usize = 256;

/// Checks a Deploy request and turns it into engine parameters.
pub fn deploy_request(req: &DeployRequest) -> Result<DeployParams, Status> {
    let Some(rel) = &req.release else {
        return Err(Status::invalid_argument("release is required"));
    };
    hotdeploy_common::names::check_release(&rel.id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    check_sha256(&rel.sha256)?;
    check_url(&rel.artifact_url)?;
    let signature = rel.signature.trim();
    if signature.len() > MAX_SIGNATURE_LEN
        || !signature
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
    {
        return Err(Status::invalid_argument(
            "signature must be base64 text (an ed25519 signature over the sha256 digest)",
        ));
    }
    if req.rollout_id.len() > MAX_ROLLOUT_LEN || req.rollout_id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "rollout_id must be at most {MAX_ROLLOUT_LEN} printable characters"
        )));
    }
    Ok(DeployParams {
        release: rel.id.clone(),
        artifact: ArtifactRef {
            url: rel.artifact_url.clone(),
            sha256: rel.sha256.to_ascii_lowercase(),
            signature: (!signature.is_empty()).then(|| signature.to_owned()),
        },
        rollout: req.rollout_id.clone(),
        // A local deploy: its rollout id is free text, and nothing is reported for it.
        step: None,
    })
}

fn check_sha256(sha: &str) -> Result<(), Status> {
    if sha.len() == 64 && sha.bytes().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "sha256 must be 64 hex characters, got {:?}",
            sha.chars().take(80).collect::<String>()
        )))
    }
}

fn check_url(url: &str) -> Result<(), Status> {
    if url.len() > MAX_URL_LEN {
        return Err(Status::invalid_argument(format!(
            "artifact URL is longer than {MAX_URL_LEN} characters"
        )));
    }
    let ok = ["file:///", "http://", "https://"]
        .iter()
        .any(|p| url.len() > p.len() && url.starts_with(p));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "artifact URL {:?} must be file:///ABSOLUTE/PATH, http:// or https://",
            url.chars().take(200).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdeploy_common::proto::Release;

    fn req(id: &str, url: &str, sha: &str) -> DeployRequest {
        DeployRequest {
            release: Some(Release {
                id: id.into(),
                artifact_url: url.into(),
                sha256: sha.into(),
                signature: String::new(),
            }),
            rollout_id: String::new(),
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let sha = "a".repeat(64);
        assert!(deploy_request(&req("v1", "file:///tmp/a.tar.gz", &sha)).is_ok());
        assert!(deploy_request(&req("v1", "https://x/a.tar", &sha.to_uppercase())).is_ok());
        for (r, needle) in [
            (req("../x", "file:///a", &sha), "release"),
            (req("v1", "ftp://x/a", &sha), "URL"),
            (req("v1", "file://", &sha), "URL"),
            (req("v1", "file:///a", "abc"), "sha256"),
            (req("v1", "file:///a", &"g".repeat(64)), "sha256"),
        ] {
            let e = deploy_request(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
        }
        let mut r = req("v1", "file:///a", &sha);
        r.release.as_mut().unwrap().signature = "not base64!".into();
        assert!(deploy_request(&r).is_err());
        assert!(deploy_request(&DeployRequest::default()).is_err());
    }

    #[test]
    fn maintenance_requests_need_a_reason_and_a_command_within_limits() {
        let ok = RunMaintenanceRequest {
            reason: "kernel".into(),
            argv: vec!["apt-get".into(), "upgrade".into()],
            timeout_ms: 60_000,
        };
        let p = maint_request(&ok).unwrap();
        assert_eq!(p.timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            maint_request(&RunMaintenanceRequest {
                timeout_ms: 0,
                ..ok.clone()
            })
            .unwrap()
            .timeout,
            None
        );
        for (r, needle) in [
            (
                RunMaintenanceRequest {
                    reason: " ".into(),
                    ..ok.clone()
                },
                "reason",
            ),
            (
                RunMaintenanceRequest {
                    reason: "a\nb".into(),
                    ..ok.clone()
                },
                "reason",
            ),
            (
                RunMaintenanceRequest {
                    argv: vec![],
                    ..ok.clone()
                },
                "argv",
            ),
            (
                RunMaintenanceRequest {
                    argv: vec![String::new()],
                    ..ok.clone()
                },
                "argv",
            ),
            (
                RunMaintenanceRequest {
                    argv: vec!["x".into(); 257],
                    ..ok.clone()
                },
                "257",
            ),
            (
                RunMaintenanceRequest {
                    argv: vec!["a\0b".into()],
                    ..ok.clone()
                },
                "NUL",
            ),
            (
                RunMaintenanceRequest {
                    timeout_ms: u64::MAX,
                    ..ok.clone()
                },
                "timeout_ms",
            ),
        ] {
            let e = maint_request(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(needle), "{}", e.message());
        }
    }
}
