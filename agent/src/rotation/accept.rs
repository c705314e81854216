//! The accept loop both rotation front ends share (agent-check and `/ready`).
//!
//! Load balancers poll these ports constantly, and so may anyone else who can reach them, so
//! the loop bounds what a client can take: at most [`MAX_CONNECTIONS`] connections at once
//! (more are dropped on accept), and each connection handled within a deadline. Accept errors
//! (EMFILE and friends) back off instead of spinning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Most concurrent connections per front end.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// Accepts connections until the process ends, handling each with `handle` within `timeout`.
pub(crate) async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    timeout: Duration,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // over the cap: drop the connection
        };
        let work = handle(sock);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, work).await;
            drop(permit);
        });
    }
}
