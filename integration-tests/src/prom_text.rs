//! Reads a Prometheus / OpenMetrics text exposition (what `/metrics` serves) strictly enough to
//! catch a malformed one, for tests that scrape the daemons.
//!
//! [`parse`] checks every line: `# HELP`, `# TYPE`, `# UNIT` and `# EOF` comments, and samples
//! `name{label="value",...} number`, with every sample's family declared by a `# TYPE` before it
//! and the text ending in `# EOF` (OpenMetrics requires it). It returns the samples keyed by
//! their series exactly as written (`hotdeploy_raft_role{role="leader"}`), so a test compares
//! values by name. Label values with escaped quotes are kept as written. Timestamps and
//! exemplars, which the daemons do not write, are refused.

use std::collections::BTreeMap;

/// A parsed scrape: every series and its value, and the families' declared types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    /// Family name to its `# TYPE`.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of `series`, if present.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of `series`, or 0 when the series is absent (a counter never incremented).
    pub fn value_or_zero(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// The series whose name (before any `{`) is `name`.
    pub fn series_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples.iter().filter_map(move |(s, v)| {
            let base = s.split('{').next().unwrap_or(s);
            (base == name).then_some((s.as_str(), *v))
        })
    }
}

/// Parses `text`; the error names the line that is wrong.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut saw_eof = false;
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if saw_eof {
            return Err(bad("text after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts.next().ok_or_else(|| bad("comment without a name"))?;
            match kind {
                "TYPE" => {
                    let t = parts.next().ok_or_else(|| bad("TYPE without a type"))?;
                    scrape.types.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        if line.is_empty() {
            return Err(bad("empty line"));
        }
        let (series, value) = split_sample(line).ok_or_else(|| bad("not `series value`"))?;
        let name = series.split('{').next().unwrap_or(series);
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(bad("bad metric name"));
        }
        if series.contains('{') && !series.ends_with('}') {
            return Err(bad("unclosed label set"));
        }
        let declared = scrape.types.keys().any(|family| {
            name == family
                || name
                    .strip_prefix(family.as_str())
                    .is_some_and(|suffix| SUFFIXES.contains(&suffix))
        });
        if !declared {
            return Err(bad("sample of a family with no # TYPE before it"));
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        if scrape.samples.insert(series.to_string(), value).is_some() {
            return Err(bad("series given twice"));
        }
    }
    if !saw_eof {
        return Err("the exposition does not end with # EOF".into());
    }
    Ok(scrape)
}

/// The sample-name suffixes a family's samples may carry.
const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_count", "_sum", "_created", "_info"];

/// `series value`, the series possibly holding spaces inside quoted label values.
fn split_sample(line: &str) -> Option<(&str, &str)> {
    let end_of_series = match line.find('{') {
        Some(open) => {
            let mut in_quotes = false;
            let mut escaped = false;
            let mut close = None;
            for (i, c) in line[open..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_quotes = !in_quotes,
                    '}' if !in_quotes => {
                        close = Some(open + i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            close?
        }
        None => line.find(' ')?,
    };
    let series = &line[..end_of_series];
    let value = line[end_of_series..].trim_start();
    if value.is_empty() || value.contains(' ') {
        return None;
    }
    Some((series, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_exposition_parses_and_a_bad_one_names_its_line() {
        let text = "# HELP hotdeploy_raft_term Term.\n# TYPE hotdeploy_raft_term gauge\nhotdeploy_raft_term 7\n# TYPE hotdeploy_x counter\nhotdeploy_x_total{op=\"a b\",r=\"q\\\"\"} 2\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.get("hotdeploy_raft_term"), Some(7.0));
        assert_eq!(
            s.get("hotdeploy_x_total{op=\"a b\",r=\"q\\\"\"}"),
            Some(2.0)
        );
        assert!(parse("hotdeploy_y 1\n# EOF\n")
            .unwrap_err()
            .contains("no # TYPE"));
        assert!(parse("# TYPE a gauge\na 1\n").unwrap_err().contains("EOF"));
        assert!(parse("# TYPE a gauge\na x\n# EOF\n")
            .unwrap_err()
            .contains("line 2"));
    }
}
