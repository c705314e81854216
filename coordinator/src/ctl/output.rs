//! Printing results: a table for people, or the stable JSON of docs/api.md with `-o json`.

use super::Output;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;

/// Prints `json` as JSON, or as a table with `headers` and `rows`.
pub fn print(output: Output, json: &Value, headers: &[&str], rows: Vec<Vec<String>>) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(json).unwrap_or_default()),
        Output::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_BORDERS_ONLY)
                .set_header(headers.to_vec());
            for r in rows {
                t.add_row(r);
            }
            println!("{t}");
        }
    }
}

/// "-" for an empty string, for table cells.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// A human age from milliseconds.
pub fn age(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}
