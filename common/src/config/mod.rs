//! The TOML config files of `hotdeploy-coordinator` and `hotdeploy-agent` (DESIGN §6).
//!
//! Parsing is strict: unknown keys are refused (a typo must not silently fall back to a
//! default), durations are human strings (`"500ms"`), and [`CoordinatorConfig::load`] /
//! [`AgentConfig::load`] check the whole file before returning, so that a bad value fails at
//! start with an error naming the key. Each `load` reads the file and hands its text to
//! `from_toml_str`, which does all the parsing and checking; tests and the `config` fuzz
//! target call `from_toml_str` directly.

mod agent;
mod budget;
mod coordinator;
mod limits;
mod tls;

pub use agent::{
    AgentConfig, ArtifactConfig, HealthConfig, HealthProbes, HooksConfig, RotationConfig,
    ServiceConfig, ServiceControl, VerifyConfig,
};
pub use budget::{BudgetError, MaxUnavailable};
pub use coordinator::{
    ClusterState, CoordinatorConfig, FleetLockConfig, GroupSeed, LivenessConfig, RaftConfig,
};
pub use limits::LimitsConfig;
pub use tls::TlsConfig;

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A config file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Reads a config file's text.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses TOML text into `T`; `origin` (the file it came from, or a label) names it in errors.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Builds a [`ConfigError::Invalid`] for `key`.
pub(crate) fn invalid(path: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Checks that `value` is a `host:port` address.
pub(crate) fn check_addr(path: &Path, key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(path, key, format!("{value:?} is not host:port")))
    }
}
