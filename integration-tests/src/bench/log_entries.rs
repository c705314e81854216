//! How many raft log entries a bench's work cost, and what they were.
//!
//! [`Tally::read`] scrapes every member's `/metrics`: the commit index (the largest any member
//! reports) and the proposals that applied, by command kind
//! (`hotdeploy_raft_proposals_applied_total{kind}`, summed over the members, since a proposal is
//! counted where it was made). The difference of two tallies, divided by the number of hosts
//! ([`Tally::per_host_since`]), says how many entries each host cost and which commands they
//! were: a deploy's fenced phases, its step reports, report changes from heartbeats, liveness.
//!
//! The commit index also counts the leader's own entries (membership records, the version
//! gate's, raft's empty entry at a leader change), which no client proposes; the per-kind
//! counts leave them out, and the report shows both. A member that does not answer is an error,
//! not a smaller number.

use crate::cluster::Cluster;
use crate::http_probe;
use crate::prom_text;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const APPLIED: &str = "hotdeploy_raft_proposals_applied_total";
const COMMIT_INDEX: &str = "hotdeploy_raft_commit_index";

/// The cluster's log at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// The largest commit index any member reports.
    pub commit_index: f64,
    /// Applied proposals by command kind, summed over the members.
    pub by_kind: BTreeMap<String, f64>,
}

/// Entries per host between two tallies.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PerHost {
    /// Committed entries per host, the leader's own included.
    pub entries: f64,
    /// Applied proposals per host, by command kind (kinds that did not move are left out).
    pub by_kind: BTreeMap<String, f64>,
}

impl Tally {
    /// Scrapes every member of `cluster`.
    pub fn read(cluster: &Cluster) -> Result<Tally> {
        let mut tally = Tally::default();
        for id in cluster.ids() {
            let addr = cluster.http_addr(id);
            let reply = http_probe::get(addr, "/metrics", SCRAPE_TIMEOUT)
                .with_context(|| format!("GET /metrics from coordinator {id} ({addr})"))?;
            if reply.status != 200 {
                bail!("coordinator {id} answered /metrics with {}", reply.status);
            }
            let scrape = prom_text::parse(&reply.body)
                .map_err(|e| anyhow::anyhow!("coordinator {id}'s /metrics: {e}"))?;
            tally.add(&scrape);
        }
        Ok(tally)
    }

    /// Adds one member's scrape.
    fn add(&mut self, scrape: &prom_text::Scrape) {
        self.commit_index = self.commit_index.max(scrape.value_or_zero(COMMIT_INDEX));
        for (series, v) in scrape.series_of(APPLIED) {
            *self.by_kind.entry(kind_of(series)).or_default() += v;
        }
    }

    /// What `hosts` hosts cost each since `before`.
    pub fn per_host_since(&self, before: &Tally, hosts: usize) -> PerHost {
        let n = hosts.max(1) as f64;
        let by_kind = self
            .by_kind
            .iter()
            .filter_map(|(kind, v)| {
                let moved = v - before.by_kind.get(kind).copied().unwrap_or(0.0);
                (moved > 0.0).then(|| (kind.clone(), moved / n))
            })
            .collect();
        PerHost {
            entries: (self.commit_index - before.commit_index) / n,
            by_kind,
        }
    }
}

/// The `kind` label of `series` (`name{kind="ReportPhase"}`), or `?` if it has none.
fn kind_of(series: &str) -> String {
    series
        .split_once("kind=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "?".to_owned(), |(kind, _)| kind.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(text: &str) -> prom_text::Scrape {
        prom_text::parse(text).unwrap()
    }

    const A: &str = "# TYPE hotdeploy_raft_commit_index gauge\n\
        hotdeploy_raft_commit_index 100\n\
        # TYPE hotdeploy_raft_proposals_applied counter\n\
        hotdeploy_raft_proposals_applied_total{kind=\"ReportPhase\"} 40\n\
        hotdeploy_raft_proposals_applied_total{kind=\"Release\"} 10\n\
        # EOF\n";
    const B: &str = "# TYPE hotdeploy_raft_commit_index gauge\n\
        hotdeploy_raft_commit_index 98\n\
        # TYPE hotdeploy_raft_proposals_applied counter\n\
        hotdeploy_raft_proposals_applied_total{kind=\"ReportPhase\"} 2\n\
        # EOF\n";

    #[test]
    fn members_sum_by_kind_and_the_commit_index_is_the_largest() {
        let mut before = Tally::default();
        before.add(&scrape(B));
        let mut after = Tally::default();
        after.add(&scrape(A));
        after.add(&scrape(B));
        assert_eq!(after.commit_index, 100.0);
        assert_eq!(after.by_kind["ReportPhase"], 42.0);
        let per = after.per_host_since(&before, 10);
        assert_eq!(per.entries, 0.2);
        assert_eq!(per.by_kind["ReportPhase"], 4.0);
        assert_eq!(per.by_kind["Release"], 1.0);
        assert_eq!(per.by_kind.len(), 2, "{per:?}");
    }
}
