//! The agent's own log, read back as timed events: the source of the per-phase times of a
//! deploy that a rollout drives (no Deploy stream exists for it).
//!
//! The agent writes one `tracing` line per deploy transition (`agent/src/deploy/transition.rs`:
//! `phase=`, `ended=`, `rollout=`, `token=` fields), one per rotation state change
//! (`rotation state from=… to=…`, written the moment a drain or an undrain is *confirmed*),
//! and `verify passed in … rounds=R failures=F` when a verify passes. Each line starts with an
//! RFC 3339 UTC timestamp with microseconds. [`parse`] turns the lines into [`Event`]s with
//! that timestamp as fractional Unix milliseconds; everything else is skipped.
//!
//! Left out: lines of other kinds, and timestamps in other zones (the agent logs UTC).

/// What a line says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A deploy entered `phase` (`slot_held`, `draining`, …, `released`; `idle` concludes).
    Entered {
        /// The phase entered.
        phase: String,
        /// The rollout the deploy serves; empty for a local deploy.
        rollout: String,
    },
    /// The reported rotation state changed to `to` (`ROTATION_OUT_OF_ROTATION`, …).
    Rotation {
        /// The new state's proto name.
        to: String,
    },
    /// A verify passed after `failures` failed rounds.
    VerifyPassed {
        /// Failed rounds tolerated.
        failures: u32,
    },
}

/// One timed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix time, ms, with the line's microseconds.
    pub at_ms: f64,
    /// What happened.
    pub kind: Kind,
}

/// Every event in `text` (an agent's log), in order.
pub fn parse(text: &str) -> Vec<Event> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(raw: &str) -> Option<Event> {
    let line = strip_ansi(raw);
    let (stamp, rest) = line.split_once(char::is_whitespace)?;
    let at_ms = parse_rfc3339_ms(stamp)?;
    let kind = if rest.contains("rotation state") {
        Kind::Rotation {
            to: field(rest, "to")?.to_string(),
        }
    } else if rest.contains("verify passed") {
        Kind::VerifyPassed {
            failures: field(rest, "failures")?.parse().ok()?,
        }
    } else if let (Some(phase), Some(_)) = (field(rest, "phase"), field(rest, "host")) {
        Kind::Entered {
            phase: phase.to_string(),
            rollout: field(rest, "rollout").unwrap_or_default().to_string(),
        }
    } else {
        return None;
    };
    Some(Event { at_ms, kind })
}

/// The value of ` name=value` in a line (unquoted, up to the next space).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let value = line[at..].split_whitespace().next()?;
    Some(value.trim_matches('"'))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte (a letter).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-12-02T02:11:44.123456Z` as Unix ms (fraction kept).
fn parse_rfc3339_ms(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + h * 3600 + min * 60) as f64 + sec) * 1000.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_rotation_and_verify_lines_become_events() {
        let log = "\
2026-12-02T02:11:44.123456Z  INFO leaving rotation host=web-1 rollout=c1 token=7 release=v2 phase=draining ended=slot_held ended_ms=3 deploy_ms=40
2026-12-02T02:11:44.124500Z  INFO rotation state from=ROTATION_DRAINING to=ROTATION_OUT_OF_ROTATION
\u{1b}[2m2026-12-02T02:11:45.000000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m verify passed in 1.1s \u{1b}[3mrounds\u{1b}[0m\u{1b}[2m=\u{1b}[0m6 \u{1b}[3mfailures\u{1b}[0m\u{1b}[2m=\u{1b}[0m1
2026-12-02T02:11:45.000000Z  INFO agent-check responder listening addr=Some(127.0.0.1:1)
";
        let e = parse(log);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            e[0].kind,
            Kind::Entered {
                phase: "draining".into(),
                rollout: "c1".into()
            }
        );
        // f64 keeps Unix ms to about a quarter of a microsecond.
        assert!((e[1].at_ms - e[0].at_ms - 1.044).abs() < 1e-3, "{e:?}");
        assert_eq!(
            e[1].kind,
            Kind::Rotation {
                to: "ROTATION_OUT_OF_ROTATION".into()
            }
        );
        assert_eq!(e[2].kind, Kind::VerifyPassed { failures: 1 });
        // 2026-12-02 is day 20789 since the epoch.
        assert_eq!(days_from_civil(2026, 12, 2), 20_789);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
