//! Following a rollout: `rollout watch ID` and `rollout start ... --watch`.
//!
//! The leader streams the rollout (`WatchRollout`) on every change and at least every 5 s. The
//! watch reconnects, through any coordinator, when the stream breaks (a leader change, a
//! restart) or goes silent for [`SILENCE`], and ends when the rollout reaches a terminal state.
//! What is shown depends on where stdout goes:
//!
//! - a terminal: indicatif progress bars, one per host with its phase (and what it waits on,
//!   or its error), and one overall;
//! - anything else: plain lines, one per change, so that logs and CI output stay readable.
//!
//! The exit code follows the final state: 0 only for `completed`, 3 for `halted` or `aborted`.

use super::super::client::{status_error, Coord};
use super::show::{phase_of, state_of};
use hotdeploy_common::proto::{RolloutInfo, RolloutState, StepPhase, WatchRolloutRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tonic::Code;

/// A stream this quiet (the server resends every 5 s) is taken for dead, and reopened.
const SILENCE: Duration = Duration::from_secs(15);
/// The pause before reopening a broken stream.
const REOPEN_PAUSE: Duration = Duration::from_millis(300);
/// The positions of a host's bar: one per phase up to done.
const HOST_STEPS: u64 = 8;

/// Exit code 3: the watched rollout halted or was aborted.
pub(crate) const EXIT_HALTED: i32 = 3;

/// The exit code for a rollout's final state.
pub(crate) fn exit_code(r: &RolloutInfo) -> i32 {
    match state_of(r.state) {
        RolloutState::Completed => 0,
        _ => EXIT_HALTED,
    }
}

/// Where a watch shows its progress.
pub(crate) trait View {
    /// The rollout as it is now.
    fn show(&mut self, r: &RolloutInfo);
    /// The rollout reached a terminal state.
    fn finish(&mut self, r: &RolloutInfo);
}

/// Follows rollout `id` until it is terminal, showing it on `view`. Returns its final state.
pub(crate) async fn follow(
    coord: &Coord,
    id: &str,
    view: &mut dyn View,
) -> anyhow::Result<RolloutInfo> {
    loop {
        let mut stream = coord
            .call("rollout watch", Duration::ZERO, |mut c| {
                let req = WatchRolloutRequest { id: id.to_string() };
                async move { c.watch_rollout(req).await }
            })
            .await?;
        loop {
            match tokio::time::timeout(SILENCE, stream.message()).await {
                Ok(Ok(Some(msg))) => {
                    let Some(r) = msg.rollout else { continue };
                    view.show(&r);
                    if !matches!(
                        state_of(r.state),
                        RolloutState::Running | RolloutState::Paused
                    ) {
                        view.finish(&r);
                        return Ok(r);
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(s)) if final_status(s.code()) => {
                    return Err(status_error("rollout watch", &s))
                }
                Ok(Err(s)) => {
                    tracing::debug!("watch stream broke ({}); reopening", s.message());
                    break;
                }
                Err(_) => {
                    tracing::debug!("watch stream silent for {SILENCE:?}; reopening");
                    break;
                }
            }
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// Statuses that reopening will not change.
fn final_status(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::FailedPrecondition
    )
}

/// Plain lines, one per change (stdout, or stderr when stdout carries JSON).
pub(crate) struct Lines {
    out: Box<dyn Write + Send>,
    started: Instant,
    last: Option<RolloutInfo>,
}

impl Lines {
    pub(crate) fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            started: Instant::now(),
            last: None,
        }
    }

    fn line(&mut self, text: String) {
        let t = self.started.elapsed().as_secs_f64();
        let _ = writeln!(self.out, "[{t:7.1}s] {text}");
        let _ = self.out.flush();
    }
}

fn host_note(phase: StepPhase, error: &str, waiting_on: &str) -> String {
    if !error.is_empty() && phase.is_terminal() {
        format!(": {error}")
    } else if !waiting_on.is_empty() {
        format!(" ({waiting_on})")
    } else {
        String::new()
    }
}

fn counts(r: &RolloutInfo) -> String {
    format!(
        "{} succeeded, {} failed, {} pending",
        r.succeeded, r.failed, r.pending
    )
}

impl View for Lines {
    fn show(&mut self, r: &RolloutInfo) {
        let last = self.last.take();
        match &last {
            None => {
                let release = r.release.clone().unwrap_or_default();
                self.line(format!(
                    "rollout {}: release {} to group {} ({} hosts, batch {}, canary {}): {}",
                    r.id,
                    release.id,
                    r.group,
                    r.hosts.len(),
                    r.batch,
                    r.canary,
                    state_of(r.state).label()
                ));
            }
            Some(old) if old.state != r.state || old.reason != r.reason => {
                let reason = if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                };
                self.line(format!(
                    "rollout {}: {}{reason} ({})",
                    r.id,
                    state_of(r.state).label(),
                    counts(r)
                ));
            }
            Some(_) => {}
        }
        let before: BTreeMap<&str, (i32, &str)> = last
            .as_ref()
            .map(|o| {
                o.hosts
                    .iter()
                    .map(|h| (h.host.as_str(), (h.phase, h.waiting_on.as_str())))
                    .collect()
            })
            .unwrap_or_default();
        for h in &r.hosts {
            if before.get(h.host.as_str()) == Some(&(h.phase, h.waiting_on.as_str())) {
                continue;
            }
            let phase = phase_of(h.phase);
            self.line(format!(
                "{}: {}{}",
                h.host,
                phase.label(),
                host_note(phase, &h.error, &h.waiting_on)
            ));
        }
        self.last = Some(r.clone());
    }

    fn finish(&mut self, r: &RolloutInfo) {
        let _ = r;
    }
}

/// Progress bars on a terminal: one per host, one overall.
pub(crate) struct Bars {
    multi: MultiProgress,
    /// Made at the first update, when the number of hosts is known.
    overall: Option<ProgressBar>,
    hosts: BTreeMap<String, ProgressBar>,
    overall_style: ProgressStyle,
    host_style: ProgressStyle,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A phase's place on a host's bar.
fn rank(p: StepPhase) -> u64 {
    match p {
        StepPhase::Unspecified | StepPhase::Pending => 0,
        StepPhase::Staging => 1,
        StepPhase::Staged => 2,
        StepPhase::Waiting => 3,
        StepPhase::Draining => 4,
        StepPhase::Swapping => 5,
        StepPhase::Verifying | StepPhase::RollingBack => 6,
        StepPhase::Succeeded | StepPhase::Failed | StepPhase::RolledBack => HOST_STEPS,
    }
}

impl Bars {
    pub(crate) fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            overall: None,
            hosts: BTreeMap::new(),
            overall_style: style("{prefix:>20.bold} [{bar:30.green/white}] {pos}/{len} {msg}"),
            host_style: style("{prefix:>20} [{bar:30.cyan/blue}] {msg}"),
        }
    }
}

impl View for Bars {
    fn show(&mut self, r: &RolloutInfo) {
        let done = r.succeeded + r.failed;
        let overall = self.overall.get_or_insert_with(|| {
            let b = ProgressBar::with_draw_target(
                Some(r.hosts.len() as u64),
                ProgressDrawTarget::hidden(),
            );
            b.set_style(self.overall_style.clone());
            b.set_prefix(r.id.clone());
            self.multi.add(b)
        });
        overall.set_length(r.hosts.len() as u64);
        overall.set_position(done);
        let reason = if r.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", r.reason)
        };
        overall.set_message(format!(
            "{} · {}{reason}",
            state_of(r.state).label(),
            counts(r)
        ));
        for h in &r.hosts {
            let bar = self.hosts.entry(h.host.clone()).or_insert_with(|| {
                let b =
                    ProgressBar::with_draw_target(Some(HOST_STEPS), ProgressDrawTarget::hidden());
                b.set_style(self.host_style.clone());
                b.set_prefix(h.host.clone());
                self.multi.add(b)
            });
            let phase = phase_of(h.phase);
            bar.set_position(rank(phase));
            let canary = if h.canary { " [canary]" } else { "" };
            bar.set_message(format!(
                "{}{canary}{}",
                phase.label(),
                host_note(phase, &h.error, &h.waiting_on)
            ));
        }
    }

    fn finish(&mut self, r: &RolloutInfo) {
        self.show(r);
        for bar in self.hosts.values() {
            bar.abandon();
        }
        if let Some(overall) = &self.overall {
            overall.abandon();
        }
    }
}
