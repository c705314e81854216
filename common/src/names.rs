//! Name charsets (DESIGN §7). Hosts and groups are DNS-label-like, so that they are safe in file
//! names, metrics labels and HAProxy server names; release ids may also hold upper case and `_`.

use thiserror::Error;

/// A name that does not fit its charset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} name {value:?}: {rule}")]
pub struct NameError {
    /// What was being named: "host", "group", "release" or "rollout".
    pub kind: &'static str,
    /// The offending value (truncated to 80 characters).
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

const HOST_RULE: &str = "must match [a-z0-9][a-z0-9.-]{0,62}";
const RELEASE_RULE: &str = "must match [A-Za-z0-9._-]{1,64} and not be . or ..";

fn err(kind: &'static str, value: &str, rule: &'static str) -> NameError {
    NameError {
        kind,
        value: value.chars().take(80).collect(),
        rule,
    }
}

fn check_label(kind: &'static str, value: &str) -> Result<(), NameError> {
    let b = value.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .skip(1)
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-');
    if first_ok && rest_ok && b.len() <= 63 {
        Ok(())
    } else {
        Err(err(kind, value, HOST_RULE))
    }
}

/// Checks a host id.
pub fn check_host(value: &str) -> Result<(), NameError> {
    check_label("host", value)
}

/// Checks a group name.
pub fn check_group(value: &str) -> Result<(), NameError> {
    check_label("group", value)
}

/// Checks a release id. It becomes a directory name, so `.` and `..` are refused too.
pub fn check_release(value: &str) -> Result<(), NameError> {
    check_id("release", value)
}

/// Checks a rollout id: the same charset as release ids.
pub fn check_rollout(value: &str) -> Result<(), NameError> {
    check_id("rollout", value)
}

fn check_id(kind: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(err(kind, value, RELEASE_RULE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_groups() {
        for ok in ["web", "web-1", "a", "0", "db.eu-1", &"a".repeat(63)] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "-web",
            ".web",
            "web_1",
            "we b",
            "web/1",
            &"a".repeat(64),
        ] {
            assert!(check_group(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn releases() {
        for ok in ["v1", "V1.2.3_rc-1", &"x".repeat(64)] {
            assert!(check_release(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_release(bad).is_err(), "{bad}");
            let e = check_rollout(bad).unwrap_err();
            assert_eq!(e.kind, "rollout");
        }
        assert!(check_rollout("web-v2-3f9a").is_ok());
    }
}
