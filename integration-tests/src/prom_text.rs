//! A strict reader of the Prometheus / OpenMetrics text that `/metrics` serves, for tests that
//! scrape the daemons.
//!
//! [`parse`] refuses anything it does not understand, and names the line: a comment other than
//! `# HELP`, `# TYPE`, `# UNIT` or the final `# EOF`; a sample of a family no `# TYPE` declared
//! before it (a family `f` of type counter writes `f_total`, a histogram `f_bucket`, `f_sum`
//! and `f_count`, an info `f_info`); a malformed label set or value; a series written twice;
//! and text that does not end in `# EOF`. Timestamps and exemplars, which the daemons never
//! write, are refused too.
//!
//! A sample is keyed by its series as written (`hotdeploy_agent_health{health="healthy"}`), so
//! a test looks values up by the exact series it expects.

use std::collections::BTreeMap;

/// One scrape: every series with its value, and each family's declared type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Series as written to value.
    pub samples: BTreeMap<String, f64>,
    /// Family name to its `# TYPE`.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of `series`, if present.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of `series`, or 0 when absent.
    pub fn value_or_zero(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// The series whose metric name (before any `{`) is `name`, with their values.
    pub fn series_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples.iter().filter_map(move |(series, v)| {
            (series.split('{').next() == Some(name)).then_some((series.as_str(), *v))
        })
    }
}

/// The suffixes a family of each type writes its samples with.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        "stateset" | "gauge" | "unknown" => &[""],
        _ => &[],
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks a label set `k="v",k2="v2"` (without the braces).
fn check_labels(set: &str) -> Result<(), &'static str> {
    let mut rest = set;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("a label without `=`")?;
        if !valid_name(&rest[..eq]) {
            return Err("a bad label name");
        }
        let value = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in value.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, _) => return Err("a bad escape in a label value"),
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => return Err("a newline in a label value"),
                _ => {}
            }
        }
        let end = end.ok_or("an unclosed label value")?;
        rest = &value[end + 1..];
        if let Some(more) = rest.strip_prefix(',') {
            if more.is_empty() {
                return Err("a trailing comma in a label set");
            }
            rest = more;
        } else if !rest.is_empty() {
            return Err("labels not separated by commas");
        }
    }
    Ok(())
}

/// Parses `text`; the error names the line that is wrong and why.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if eof {
            return Err(bad("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next(), words.next());
            let name = name.ok_or_else(|| bad("a comment without a metric name"))?;
            if !valid_name(name) {
                return Err(bad("a bad metric name"));
            }
            match kind {
                Some("TYPE") => {
                    let t = words.next().ok_or_else(|| bad("# TYPE without a type"))?;
                    if suffixes(t).is_empty() {
                        return Err(bad("an unknown type"));
                    }
                    if scrape.types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(bad("a family declared twice"));
                    }
                }
                Some("HELP") | Some("UNIT") => {}
                _ => return Err(bad("an unknown comment")),
            }
            continue;
        }
        if line.is_empty() {
            return Err(bad("an empty line"));
        }
        let (series, value) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .ok_or_else(|| bad("an unclosed label set"))?;
                if close < open {
                    return Err(bad("an unclosed label set"));
                }
                check_labels(&line[open + 1..close]).map_err(&bad)?;
                let value = line[close + 1..]
                    .strip_prefix(' ')
                    .ok_or_else(|| bad("no space before the value"))?;
                (&line[..=close], value)
            }
            None => line
                .split_once(' ')
                .ok_or_else(|| bad("a sample without a value"))?,
        };
        let name = series.split('{').next().unwrap_or(series);
        if !valid_name(name) {
            return Err(bad("a bad metric name"));
        }
        if value.contains(' ') {
            return Err(bad(
                "a timestamp or exemplar (never written by the daemons)",
            ));
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("a value that is not a number"))?,
        };
        let declared = scrape.types.iter().any(|(family, t)| {
            name.strip_prefix(family.as_str())
                .is_some_and(|suffix| suffixes(t).contains(&suffix))
        });
        if !declared {
            return Err(bad("a sample of a family no # TYPE declared"));
        }
        if scrape.samples.insert(series.to_owned(), value).is_some() {
            return Err(bad("a series written twice"));
        }
    }
    if !eof {
        return Err("the text does not end in # EOF".into());
    }
    Ok(scrape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_total Things.\n# TYPE a counter\na_total{kind=\"x\"} 3\n\
        # TYPE d_seconds histogram\n# UNIT d_seconds seconds\n\
        d_seconds_sum{phase=\"drain\"} 1.5\nd_seconds_count{phase=\"drain\"} 2\n\
        d_seconds_bucket{le=\"+Inf\",phase=\"drain\"} 2\n# TYPE g gauge\ng 1\n\
        # TYPE b info\nb_info{version=\"0.1.0\"} 1\n# EOF\n";

    #[test]
    fn reads_a_good_scrape() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.get("a_total{kind=\"x\"}"), Some(3.0));
        assert_eq!(s.get("d_seconds_count{phase=\"drain\"}"), Some(2.0));
        assert_eq!(s.get("g"), Some(1.0));
        assert_eq!(s.value_or_zero("nope"), 0.0);
        assert_eq!(s.series_of("d_seconds_sum").count(), 1);
        assert_eq!(s.types["d_seconds"], "histogram");
    }

    #[test]
    fn refuses_what_is_wrong() {
        for (what, text) in [
            ("no EOF", GOOD.trim_end_matches("# EOF\n").to_string()),
            ("undeclared", GOOD.replace("g 1\n", "g 1\nh 2\n")),
            ("wrong suffix", GOOD.replace("a_total{", "a_count{")),
            ("bad value", GOOD.replace("g 1", "g one")),
            ("timestamp", GOOD.replace("g 1", "g 1 1700000000")),
            ("unquoted", GOOD.replace("kind=\"x\"", "kind=x")),
            (
                "unclosed",
                GOOD.replace("a_total{kind=\"x\"}", "a_total{kind=\"x\""),
            ),
            ("twice", GOOD.replace("g 1\n", "g 1\ng 2\n")),
            ("after EOF", format!("{GOOD}g 1\n")),
            ("comment", GOOD.replace("# TYPE g gauge", "# NOTE g gauge")),
            ("empty line", GOOD.replace("g 1\n", "g 1\n\n")),
        ] {
            assert!(parse(&text).is_err(), "{what} must be refused:\n{text}");
        }
    }
}
