//! The HAProxy `agent-check` responder.
//!
//! HAProxy connects to the agent port every `agent-inter`, may send its `agent-send` string,
//! and reads one line. The line's words are of independent kinds, and one of each may be
//! combined: an *administrative* word (`ready` cancels DRAIN/MAINT; `drain` sets weight 0 so
//! only existing sessions continue; `maint` stops all traffic) and an *operational* word (`up`,
//! `down`). HAProxy keeps the last value of each kind until told otherwise.
//!
//! The mapping (DESIGN §4: `ready`, `drain` or `maint`, plus `up`/`down` from health):
//!
//! | health \ rotation        | in rotation   | draining / out of rotation |
//! |--------------------------|---------------|----------------------------|
//! | healthy                  | `ready up`    | `drain`                    |
//! | unhealthy / unspecified  | `ready down`  | `drain`                    |
//! | unprovisioned            | `maint`       | `maint`                    |
//!
//! Why:
//! - In rotation, the answer is complete (both kinds), so HAProxy's memory of earlier answers
//!   never matters: `ready down` takes an unhealthy server out (operationally) while leaving it
//!   administratively ready, so it comes back by itself once `ready up` is answered again.
//! - Draining or out of rotation, we say `drain` and deliberately *no* operational word:
//!   `down` would let `on-marked-down shutdown-sessions` cut the very in-flight requests a drain
//!   exists to protect, and `up` would vouch for a service that is about to be restarted. The
//!   operational state is set again, explicitly, by the `ready up|down` that follows undrain.
//! - Unprovisioned (nothing deployed yet) is `maint`: not a transient state, and not one that
//!   should count as a failing server in HAProxy's alerts.
//!
//! Each connection gets the line, a write-side shutdown, and a short bounded read of whatever
//! HAProxy sent (closing with unread input would make the kernel send RST, which can discard
//! our reply before HAProxy reads it). Connections are capped and time-bounded, so a hostile
//! client can hold neither memory nor tasks.

use super::accept::{run_scripted, ScriptedClient};
use super::RotationControl;
use futures::FutureExt;
use hotdeploy_common::proto::{Health, Rotation};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Most bytes read from a client (HAProxy's `agent-send` is one short line).
pub const MAX_INPUT: u64 = 1024;

/// The agent-check line (without the newline) for a rotation state and health.
pub fn agent_check_reply(rotation: Rotation, health: Health) -> &'static str {
    match (health, rotation) {
        (Health::Unprovisioned, _) => "maint",
        (Health::Healthy, Rotation::InRotation) => "ready up",
        (_, Rotation::InRotation) => "ready down",
        (_, Rotation::Draining | Rotation::OutOfRotation | Rotation::Unspecified) => "drain",
    }
}

/// Accepts connections until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    ctl: Arc<RotationControl>,
    shutdown: CancellationToken,
) {
    let timeout = ctl.io_timeout;
    super::accept::accept_bounded(listener, "agent-check", timeout, shutdown, move |sock| {
        let line = reply_line(ctl.advertised(), ctl.health());
        async move {
            let _ = answer(sock, line).await;
        }
    })
    .await;
}

fn reply_line(rotation: Rotation, health: Health) -> String {
    format!("{}\n", agent_check_reply(rotation, health))
}

/// One connection: the line, a write-side shutdown, then a bounded read of the client's input.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, line: String) -> io::Result<()> {
    sock.write_all(line.as_bytes()).await?;
    sock.shutdown().await?;
    let mut sink = Vec::new();
    (&mut sock).take(MAX_INPUT).read_to_end(&mut sink).await?;
    Ok(())
}

/// What one scripted client got from the responder (see [`exchange`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Everything the responder wrote.
    pub reply: Vec<u8>,
    /// How many of the client's bytes it read.
    pub consumed: usize,
}

/// Plays `input` as one client's bytes (in reads of at most `chunk` bytes, then end-of-file) to
/// the handler the responder runs on each accepted socket, for a host in `rotation` with
/// `health`, under the same deadline. Public (and hidden) only for the `agent_check` fuzz target
/// and its regression test, which must exercise the code a socket would; the daemon never
/// calls it.
#[doc(hidden)]
pub fn exchange(
    input: &[u8],
    chunk: usize,
    rotation: Rotation,
    health: Health,
) -> io::Result<Exchange> {
    let mut client = ScriptedClient::new(input, chunk);
    run_scripted(
        super::IO_TIMEOUT,
        answer(&mut client, reply_line(rotation, health)).map(|_| ()),
    )?;
    Ok(Exchange {
        reply: client.output,
        consumed: client.read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        use Health::*;
        use Rotation::*;
        assert_eq!(agent_check_reply(InRotation, Healthy), "ready up");
        assert_eq!(agent_check_reply(InRotation, Unhealthy), "ready down");
        assert_eq!(
            agent_check_reply(InRotation, Health::Unspecified),
            "ready down"
        );
        assert_eq!(agent_check_reply(Draining, Healthy), "drain");
        assert_eq!(agent_check_reply(OutOfRotation, Unhealthy), "drain");
        assert_eq!(agent_check_reply(InRotation, Unprovisioned), "maint");
        assert_eq!(agent_check_reply(Draining, Unprovisioned), "maint");
    }
}
