//! The systemd watchdog, fed from the loops that do the agent's work (DESIGN §8, issue 11).
//!
//! A process whose work has stopped (a loop blocked on a lock that is never released, a runtime
//! worker stuck in a blocking call) may still answer its sockets; a watchdog fed by a bare timer
//! would keep such an agent alive for ever. So the ping follows the work instead:
//!
//! - Each loop that does the agent's work registers a [`Beat`] with the [`Liveness`], with the
//!   longest time one of its turns may take (`within`), and beats at every turn: the health
//!   monitor (every `[health] interval`; a round is bounded by its probe timeouts) and the
//!   engine's reconciliation loop (every second; a turn may wait for a return to rotation,
//!   bounded by `drain_timeout`).
//! - [`feed`] looks every quarter of the watchdog interval (at most a second): while *every*
//!   beat is fresh it pings `WATCHDOG=1`; once one goes stale it stops pinging, logs which loop
//!   stalled and for how long, and systemd restarts the agent when `WatchdogSec` passes. A loop
//!   that comes back is logged too, and the pings resume.
//! - [`feed`] ends on the agent's shutdown token, like every other long-lived task; it is never
//!   aborted.
//!
//! A beat that has never beaten counts as fresh for its first `within` from registration, so
//! that a slow start is not a stall. Deliberately left out: the deploy in progress does not
//! beat (it may wait minutes for budget); the loops above keep turning while it runs, so a
//! deploy never starves the watchdog, and a wedged runtime stops them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where watchdog pings go.
pub trait Notifier: Send + Sync + 'static {
    fn watchdog(&self);
    /// The watchdog interval systemd asked for, if any.
    fn watchdog_interval(&self) -> Option<Duration>;
}

/// systemd's notify socket (a no-op when not run by systemd).
pub struct Systemd;

impl Notifier for Systemd {
    fn watchdog(&self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        let mut usec = 0u64;
        (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec))
    }
}

/// The beats of the agent's work loops. Cheap to clone.
#[derive(Clone)]
pub struct Liveness {
    base: Instant,
    beats: Arc<Mutex<Vec<Beat>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// One loop's beat: it calls [`Beat::beat`] at every turn. Cheap to clone.
#[derive(Clone)]
pub struct Beat {
    name: &'static str,
    within: Duration,
    base: Instant,
    /// Milliseconds since `base` of the last beat (of the registration before the first).
    last_ms: Arc<AtomicU64>,
}

impl Beat {
    /// The loop finished a turn.
    pub fn beat(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Release);
    }

    /// How long ago the loop last turned.
    fn age(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Acquire)))
    }
}

/// A loop that has not turned within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub name: &'static str,
    pub age: Duration,
    pub within: Duration,
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            beats: Default::default(),
        }
    }

    /// Registers loop `name`, which turns at least once per `within`.
    pub fn register(&self, name: &'static str, within: Duration) -> Beat {
        let beat = Beat {
            name,
            within,
            base: self.base,
            last_ms: Arc::new(AtomicU64::new(self.base.elapsed().as_millis() as u64)),
        };
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(beat.clone());
        beat
    }

    /// The first loop that has not turned within its bound; `None` while all are live.
    pub fn stalled(&self) -> Option<Stall> {
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.iter().find_map(|b| {
            let age = b.age();
            (age > b.within).then_some(Stall {
                name: b.name,
                age,
                within: b.within,
            })
        })
    }
}

/// Pings the watchdog while every registered loop is live, until `shutdown`. Returns at once
/// when systemd asked for no watchdog.
pub async fn feed(liveness: Liveness, notifier: impl Notifier, shutdown: CancellationToken) {
    let Some(interval) = notifier.watchdog_interval() else {
        return;
    };
    let every = (interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    tracing::info!(
        ?interval,
        ?every,
        "systemd watchdog enabled, fed by the work loops"
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stall = liveness.stalled();
        match (&stall, live) {
            (Some(s), true) => tracing::error!(
                stalled = s.name,
                age = ?s.age,
                within = ?s.within,
                "the {} loop has not turned for {:?} (bound {:?}): the systemd watchdog is no \
                 longer fed, and systemd restarts the agent when WatchdogSec passes",
                s.name,
                s.age,
                s.within
            ),
            (None, false) => {
                tracing::info!("every work loop turns again: feeding the systemd watchdog")
            }
            _ => {}
        }
        live = stall.is_none();
        if live {
            notifier.watchdog();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Clone, Default)]
    struct Counter(Arc<AtomicUsize>);

    impl Notifier for Counter {
        fn watchdog(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }

        fn watchdog_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(80))
        }
    }

    impl Counter {
        fn pings(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    async fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The pings follow the work loop: fed while it turns, starved once it stalls, fed again
    /// when it turns again, and the pinger ends on the shutdown token.
    #[tokio::test]
    async fn the_ping_stops_when_the_work_loop_stalls_and_resumes_with_it() {
        let liveness = Liveness::new();
        let beat = liveness.register("test loop", Duration::from_millis(200));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let worker = {
            let (beat, stalled, stop) = (beat.clone(), stalled.clone(), shutdown.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if !stalled.load(Ordering::SeqCst) {
                        beat.beat();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let notifier = Counter::default();
        let pinger = tokio::spawn(feed(liveness.clone(), notifier.clone(), shutdown.clone()));
        until("pings while the loop turns", || notifier.pings() >= 5).await;

        stalled.store(true, Ordering::SeqCst);
        until("the stall to be seen", || liveness.stalled().is_some()).await;
        assert_eq!(liveness.stalled().map(|s| s.name), Some("test loop"));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let pings = notifier.pings();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            notifier.pings(),
            pings,
            "the watchdog was fed while the work loop was stalled"
        );

        stalled.store(false, Ordering::SeqCst);
        until("pings again", || notifier.pings() >= pings + 3).await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), pinger)
            .await
            .expect("the pinger ends on the shutdown token")
            .expect("pinger task");
        worker.await.expect("worker task");
    }

    #[tokio::test]
    async fn no_watchdog_asked_for_means_no_pinger() {
        struct Off;
        impl Notifier for Off {
            fn watchdog(&self) {
                panic!("pinged without a watchdog");
            }
            fn watchdog_interval(&self) -> Option<Duration> {
                None
            }
        }
        let shutdown = CancellationToken::new();
        tokio::time::timeout(Duration::from_secs(1), feed(Liveness::new(), Off, shutdown))
            .await
            .expect("returns at once");
    }
}
