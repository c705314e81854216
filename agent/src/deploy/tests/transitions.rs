//! The phase-transition lines (`transition`): one `tracing` event per transition, carrying the
//! host, the rollout (if any), the token, the phase entered, and the phase that ended with its
//! duration, as fields. Captured with a test subscriber on the test's own thread (the engine's
//! tasks run there too: `#[tokio::test]` is single-threaded).

use super::fake::Fake;
use super::*;
use std::collections::BTreeMap;
use std::fmt::Debug;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

/// Every event's fields (`message` included), in order.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
}

impl Capture {
    /// The transition lines: the events with a `phase` field and a `deploy_ms`.
    fn transitions(&self) -> Vec<Fields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.contains_key("phase") && f.contains_key("deploy_ms"))
            .cloned()
            .collect()
    }
}

async fn deploy_captured(rollout: &str) -> Vec<Fields> {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::with(Some("v1"), None, &[true]);
    let eng = engine(&fake, dir.path(), true);
    let mut p = params("v2", "aa");
    p.rollout = rollout.into();
    let (outcome, err) = eng.deploy(p, Progress::none()).unwrap().await.unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "{err}");
    capture.transitions()
}

#[tokio::test]
async fn each_phase_transition_is_one_line_with_its_fields() {
    let lines = deploy_captured("").await;
    let phases: Vec<&str> = lines.iter().map(|l| l["phase"].as_str()).collect();
    assert_eq!(
        phases,
        [
            "staging",
            "staged",
            "slot_requested",
            "slot_held",
            "draining",
            "swapped",
            "restarted",
            "verifying",
            "undraining",
            "released",
            "idle"
        ],
        "{lines:#?}"
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["host"], "web-1", "{l:?}");
        assert_eq!(l["release"], "v2", "{l:?}");
        assert!(
            !l.contains_key("rollout"),
            "a local deploy has no rollout: {l:?}"
        );
        assert!(l["deploy_ms"].parse::<u64>().is_ok(), "{l:?}");
        if i == 0 {
            assert!(
                !l.contains_key("ended") && !l.contains_key("ended_ms"),
                "{l:?}"
            );
        } else {
            // The phase that ended is the one the line before entered, with its duration.
            assert_eq!(l["ended"], lines[i - 1]["phase"], "{l:?}");
            assert!(l["ended_ms"].parse::<u64>().is_ok(), "{l:?}");
        }
    }
    // The token is the slot's from the grant on (the fake grants 7), 0 before.
    assert_eq!(lines[2]["token"], "0");
    assert_eq!(lines[3]["token"], "7");
    assert_eq!(lines[4]["token"], "7");
    let last = lines.last().unwrap();
    assert_eq!(last["outcome"], "succeeded", "{last:?}");
    assert_eq!(last["ended"], "released", "{last:?}");
}

#[tokio::test]
async fn a_rollout_deploy_line_names_the_rollout() {
    let lines = deploy_captured("r-42").await;
    assert!(lines.len() >= 10, "{lines:#?}");
    for l in &lines {
        assert_eq!(l.get("rollout").map(String::as_str), Some("r-42"), "{l:?}");
    }
}
