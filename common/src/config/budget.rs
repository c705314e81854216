//! `max_unavailable`: an integer or a percentage of a group's size.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// A group's disruption budget as the operator gave it.
///
/// The integer in force ([`MaxUnavailable::budget`]) follows the group's size for a percentage:
/// rounded down, and never below 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BudgetValue", into = "String")]
pub enum MaxUnavailable {
    /// At most this many hosts at once (≥ 1).
    Count(u64),
    /// At most this percentage (1..=100) of the provisioned hosts, rounded down, at least 1.
    Percent(u8),
}

/// A budget that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BudgetError {
    #[error("max_unavailable {0:?} is not an integer or a percentage like \"25%\"")]
    Malformed(String),
    #[error(
        "max_unavailable must be at least 1 (got {0:?}); a budget of 0 would block every deploy"
    )]
    Zero(String),
    #[error("max_unavailable percentage must be between 1% and 100% (got {0:?})")]
    PercentRange(String),
}

impl MaxUnavailable {
    /// Parses `"2"` or `"25%"`.
    pub fn parse(text: &str) -> Result<Self, BudgetError> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let n: u64 = p
                .trim()
                .parse()
                .map_err(|_| BudgetError::Malformed(text.into()))?;
            if n == 0 || n > 100 {
                return Err(BudgetError::PercentRange(text.into()));
            }
            Ok(Self::Percent(n as u8))
        } else {
            let n: u64 = t.parse().map_err(|_| BudgetError::Malformed(text.into()))?;
            if n == 0 {
                return Err(BudgetError::Zero(text.into()));
            }
            Ok(Self::Count(n))
        }
    }

    /// The integer budget in force for a group of `size` provisioned hosts.
    pub fn budget(self, size: u64) -> u64 {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => (size * u64::from(p) / 100).max(1),
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl From<MaxUnavailable> for String {
    fn from(m: MaxUnavailable) -> String {
        m.to_string()
    }
}

/// What TOML may hold: `max_unavailable = 2` or `max_unavailable = "25%"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BudgetValue {
    Int(i64),
    Text(String),
}

impl TryFrom<BudgetValue> for MaxUnavailable {
    type Error = BudgetError;
    fn try_from(v: BudgetValue) -> Result<Self, BudgetError> {
        match v {
            BudgetValue::Int(n) => Self::parse(&n.to_string()),
            BudgetValue::Text(s) => Self::parse(&s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round() {
        assert_eq!(MaxUnavailable::parse("2"), Ok(MaxUnavailable::Count(2)));
        assert_eq!(
            MaxUnavailable::parse("25%"),
            Ok(MaxUnavailable::Percent(25))
        );
        assert!(matches!(
            MaxUnavailable::parse("0"),
            Err(BudgetError::Zero(_))
        ));
        assert!(matches!(
            MaxUnavailable::parse("0%"),
            Err(BudgetError::PercentRange(_))
        ));
        assert!(matches!(
            MaxUnavailable::parse("101%"),
            Err(BudgetError::PercentRange(_))
        ));
        assert!(matches!(
            MaxUnavailable::parse("x"),
            Err(BudgetError::Malformed(_))
        ));
        assert!(matches!(
            MaxUnavailable::parse("-1"),
            Err(BudgetError::Malformed(_))
        ));
        assert_eq!(MaxUnavailable::Percent(25).budget(10), 2);
        assert_eq!(MaxUnavailable::Percent(25).budget(3), 1);
        assert_eq!(MaxUnavailable::Percent(100).budget(4), 4);
        assert_eq!(MaxUnavailable::Count(3).budget(1), 3);
        assert_eq!(MaxUnavailable::Percent(25).to_string(), "25%");
    }
}
