//! The rollout's JSON (docs/api.md, "rollout") and its tables.
//!
//! `rollout status` is one object; `rollout list` an array of summaries, oldest first. Field
//! names are stable: DESIGN §6 names the ones outside tests rely on (`id, group, release,
//! state, succeeded, failed, pending, hosts[{host, phase, release, error}]` and
//! `created_at_ms` in the list); the rest are documented with them.

use super::super::output::{age, dash};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use hotdeploy_common::proto::{
    RolloutEvent, RolloutHost, RolloutInfo, RolloutKind, RolloutState, RolloutSummary, StepPhase,
};
use hotdeploy_common::time::now_ms;
use serde_json::{json, Value};

/// `""` → `null`.
fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        json!(s)
    }
}

pub(crate) fn state_of(state: i32) -> RolloutState {
    RolloutState::try_from(state).unwrap_or_default()
}

pub(crate) fn phase_of(phase: i32) -> StepPhase {
    StepPhase::try_from(phase).unwrap_or_default()
}

fn kind_of(kind: i32) -> &'static str {
    RolloutKind::try_from(kind).unwrap_or_default().label()
}

/// The `rollout status` object.
pub(crate) fn status_json(r: &RolloutInfo) -> Value {
    let release = r.release.clone().unwrap_or_default();
    json!({
        "id": r.id,
        "kind": kind_of(r.kind),
        "group": r.group,
        "release": release.id,
        "artifact_url": release.artifact_url,
        "sha256": release.sha256,
        "state": state_of(r.state).label(),
        "reason": opt(&r.reason),
        "batch": r.batch,
        "canary": r.canary,
        "pause_after_canary": r.pause_after_canary,
        "max_failures": r.max_failures,
        "auto_rollback": r.auto_rollback,
        "progress_deadline_ms": r.progress_deadline_ms,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "last_progress_at_ms": r.last_progress_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "actor": r.actor,
        "previous_release": opt(&r.previous_release),
        "superseded_by": opt(&r.superseded_by),
        "rollback": opt(&r.rollback),
        "succeeded": r.succeeded,
        "failed": r.failed,
        "pending": r.pending,
        "hosts": r.hosts.iter().map(host_json).collect::<Vec<_>>(),
        "events": r.events.iter().map(event_json).collect::<Vec<_>>(),
        "events_dropped": r.events_dropped,
    })
}

fn host_json(h: &RolloutHost) -> Value {
    let phases: Vec<Value> = h
        .phases
        .iter()
        .map(|p| json!({"phase": phase_of(p.phase).label(), "at_ms": p.at_ms}))
        .collect();
    json!({
        "host": h.host,
        "phase": phase_of(h.phase).label(),
        "release": opt(&h.release),
        "from_release": opt(&h.from_release),
        "error": opt(&h.error),
        "canary": h.canary,
        "attempt": h.attempt,
        "token": if h.token == 0 { Value::Null } else { json!(h.token) },
        "first_install": h.first_install,
        "phase_at_ms": h.since_ms,
        "waiting_on": opt(&h.waiting_on),
        "phases": phases,
    })
}

fn event_json(e: &RolloutEvent) -> Value {
    json!({"index": e.index, "at_ms": e.at_ms, "host": opt(&e.host), "message": e.message})
}

/// One `rollout list` element.
pub(crate) fn summary_json(r: &RolloutSummary) -> Value {
    json!({
        "id": r.id,
        "kind": kind_of(r.kind),
        "group": r.group,
        "release": r.release,
        "state": state_of(r.state).label(),
        "reason": opt(&r.reason),
        "created_at_ms": r.created_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "succeeded": r.succeeded,
        "failed": r.failed,
        "pending": r.pending,
        "hosts": r.hosts,
    })
}

pub(crate) const LIST_HEADERS: [&str; 7] =
    ["id", "kind", "group", "release", "state", "done", "started"];

pub(crate) fn summary_row(r: &RolloutSummary) -> Vec<String> {
    vec![
        r.id.clone(),
        kind_of(r.kind).to_string(),
        r.group.clone(),
        r.release.clone(),
        state_of(r.state).label().to_string(),
        format!("{}/{} ({} failed)", r.succeeded, r.hosts, r.failed),
        format!("{} ago", age(now_ms().saturating_sub(r.created_at_ms))),
    ]
}

/// `rollout status` for people: a header, then one row per host.
pub(crate) fn status_text(r: &RolloutInfo) -> String {
    let release = r.release.clone().unwrap_or_default();
    let mut out = format!(
        "rollout {} ({}): release {} to group {}\nstate:     {}{}\nprogress:  {} succeeded, {} failed, {} pending of {} hosts\npolicy:    batch {}, canary {}{}, max_failures {}, rollback on failure {}, progress deadline {}\nstarted:   {} ago by {}\n",
        r.id,
        kind_of(r.kind),
        release.id,
        r.group,
        state_of(r.state).label(),
        if r.reason.is_empty() { String::new() } else { format!(" ({})", r.reason) },
        r.succeeded,
        r.failed,
        r.pending,
        r.hosts.len(),
        r.batch,
        r.canary,
        if r.pause_after_canary { ", pause after canary" } else { "" },
        r.max_failures,
        if r.auto_rollback { "yes" } else { "no" },
        age(r.progress_deadline_ms),
        age(now_ms().saturating_sub(r.created_at_ms)),
        r.actor,
    );
    if !r.previous_release.is_empty() {
        out.push_str(&format!("previous:  {}\n", r.previous_release));
    }
    if !r.rollback.is_empty() {
        out.push_str(&format!("rollback:  {}\n", r.rollback));
    }
    if !r.superseded_by.is_empty() {
        out.push_str(&format!("superseded by: {}\n", r.superseded_by));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "host",
        "phase",
        "release",
        "canary",
        "attempt",
        "for",
        "waiting on / error",
    ]);
    for h in &r.hosts {
        let note = if !h.error.is_empty() {
            &h.error
        } else {
            &h.waiting_on
        };
        t.add_row(vec![
            h.host.clone(),
            phase_of(h.phase).label().to_string(),
            dash(&h.release),
            if h.canary {
                "yes".into()
            } else {
                String::new()
            },
            h.attempt.to_string(),
            age(now_ms().saturating_sub(h.since_ms)),
            dash(note),
        ]);
    }
    out.push_str(&t.to_string());
    out
}
