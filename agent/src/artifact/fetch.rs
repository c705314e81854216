//! Fetching an artifact into a local file, hashing it on the way.
//!
//! Sources are `file:///abs/path`, `http://` and `https://` (reqwest with rustls and the
//! webpki roots, so nothing depends on the host's CA store). The bytes are copied into a file
//! the store owns even for `file://`, so what is verified is exactly what is unpacked, however
//! the source changes meanwhile.
//!
//! The size limit is enforced on the bytes actually received, while streaming; a
//! `Content-Length` is never trusted (it may lie, or be absent). Hashing and writing run on a
//! blocking thread fed by a small channel, so a large artifact does not hog the async runtime.
//!
//! Deadlines: a connect timeout, a read timeout that catches a stalled transfer, and the
//! policy's overall fetch timeout, for `file://` as for HTTP. A `file://` source must be a
//! regular file: it is opened non-blocking and checked first, so a FIFO (whose open would wait
//! for a writer forever) or a device is refused at once. The copy runs on a blocking thread
//! watched from the async side: a read that delivers nothing for [`READ_TIMEOUT`] (a stuck
//! network mount) or a copy past the overall deadline fails the fetch, and the thread is told
//! to stop at its next read. (A thread stuck inside the kernel cannot be interrupted; it ends
//! whenever the read returns, and the engine has moved on.) Redirects: at most
//! `MAX_REDIRECTS`, and never from https down to http. Left out: proxies beyond reqwest's
//! defaults, `file://host/` URLs, and percent-decoding of `file://` paths.

use super::error::ArtifactError;
use super::policy::ArtifactPolicy;
use super::verify::DIGEST_LEN;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Enough for a CDN or an object store's signed-URL hop, few enough to stop a loop quickly.
const MAX_REDIRECTS: usize = 5;
/// A host that does not accept a TCP/TLS connection within this is down or unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A transfer (HTTP or `file://`) that delivers nothing for this long has stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks in flight between the network task and the writer thread: bounds memory to a few
/// hundred KiB while letting the two overlap.
const CHANNEL_DEPTH: usize = 16;
/// The read buffer for `file://` copies.
const COPY_BUF: usize = 256 * 1024;

/// A fetched artifact.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub digest: [u8; DIGEST_LEN],
    pub bytes: u64,
}

/// The supported sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    File,
    Http,
}

fn scheme(url: &str) -> Result<Scheme, ArtifactError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("file://") {
        Ok(Scheme::File)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(Scheme::Http)
    } else {
        Err(ArtifactError::InvalidSpec {
            message: format!("unsupported artifact URL {url:?}: use file://, http:// or https://"),
        })
    }
}

/// Checks that `url` is a source `fetch` can handle, without touching it.
pub fn check_url(url: &str) -> Result<(), ArtifactError> {
    if scheme(url)? == Scheme::File {
        file_path(url)?;
    }
    Ok(())
}

fn file_path(url: &str) -> Result<&Path, ArtifactError> {
    let path = &url["file://".len()..];
    if !path.starts_with('/') {
        return Err(ArtifactError::InvalidSpec {
            message: format!("file URL {url:?} must be file:///absolute/path"),
        });
    }
    Ok(Path::new(path))
}

/// Fetches `url` into `dest` (created; must not exist), enforcing `policy.max_bytes`.
pub async fn fetch(
    url: &str,
    dest: &Path,
    policy: &ArtifactPolicy,
) -> Result<Fetched, ArtifactError> {
    match scheme(url)? {
        Scheme::File => {
            let src = file_path(url)?.to_path_buf();
            let u = url.to_string();
            watched_copy(
                url,
                move || open_regular(&u, &src),
                dest,
                policy.max_bytes,
                policy.fetch_timeout,
                READ_TIMEOUT,
            )
            .await
        }
        Scheme::Http => {
            let fut = fetch_http(url, dest, policy.max_bytes);
            tokio::time::timeout(policy.fetch_timeout, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(ArtifactError::Fetch {
                        url: url.into(),
                        message: format!("timed out after {:?}", policy.fetch_timeout),
                    })
                })
        }
    }
}

fn create_dest(dest: &Path) -> Result<File, ArtifactError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| ArtifactError::io(format!("create {}", dest.display()), e))
}

fn too_large(url: &str, limit: u64) -> ArtifactError {
    ArtifactError::TooLarge {
        what: format!("artifact {url}"),
        limit,
    }
}

/// Opens `src` for reading, refusing anything but a regular file. Non-blocking, so that a
/// FIFO's open does not wait for a writer.
fn open_regular(url: &str, src: &Path) -> Result<File, ArtifactError> {
    let fetch_err = |message: String| ArtifactError::Fetch {
        url: url.into(),
        message,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(src)
        .map_err(|e| fetch_err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fetch_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(ArtifactError::InvalidSpec {
            message: format!(
                "artifact {url} is not a regular file (a FIFO, a device, a socket or a \
                 directory)"
            ),
        });
    }
    Ok(file)
}

/// Copies what `open` gives into `dest` on a blocking thread, hashing it, under the size limit,
/// the overall deadline `overall`, and `stall`: no byte for that long fails the copy.
pub(crate) async fn watched_copy<R, F>(
    url: &str,
    open: F,
    dest: &Path,
    limit: u64,
    overall: Duration,
    stall: Duration,
) -> Result<Fetched, ArtifactError>
where
    R: Read,
    F: FnOnce() -> Result<R, ArtifactError> + Send + 'static,
{
    let progress = Arc::new(AtomicU64::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let mut job = {
        let (url, dest, progress, cancel) = (
            url.to_string(),
            dest.to_path_buf(),
            progress.clone(),
            cancel.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let r =
                open().and_then(|input| copy_stream(&url, input, &dest, limit, &progress, &cancel));
            if r.is_err() {
                // Also when the caller gave up long ago: leave no download behind.
                let _ = std::fs::remove_file(&dest);
            }
            r
        })
    };
    let started = Instant::now();
    let check = (stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        tokio::select! {
            r = &mut job => {
                return r.map_err(|e| ArtifactError::io("file copy task", std::io::Error::other(e)))?;
            }
            _ = tokio::time::sleep(check) => {}
        }
        let now = progress.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
        let why = if since.elapsed() >= stall {
            format!("no data for {stall:?} (a stuck mount?)")
        } else if started.elapsed() >= overall {
            format!("timed out after {overall:?}")
        } else {
            continue;
        };
        cancel.store(true, Ordering::Relaxed);
        return Err(ArtifactError::Fetch {
            url: url.into(),
            message: why,
        });
    }
}

/// The copy loop: reports each read in `progress`, stops when `cancel` is set.
fn copy_stream(
    url: &str,
    mut input: impl Read,
    dest: &Path,
    limit: u64,
    progress: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<Fetched, ArtifactError> {
    let mut out = create_dest(dest)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(ArtifactError::Fetch {
                url: url.into(),
                message: "cancelled".into(),
            });
        }
        let n = input.read(&mut buf).map_err(|e| ArtifactError::Fetch {
            url: url.into(),
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        progress.fetch_add(1, Ordering::Relaxed);
        bytes += n as u64;
        if bytes > limit {
            return Err(too_large(url, limit));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ArtifactError::io(format!("write {}", dest.display()), e))?;
    }
    // No fsync: the download is scratch (read back through the page cache, then removed; a
    // crash leaves debris that start-up cleans). Durability is the commit's job, on the
    // unpacked tree. Syncing it cost a full write-back of the artifact on every stage.
    Ok(Fetched {
        digest: hasher.finalize().into(),
        bytes,
    })
}

/// The client for one fetch: bounded redirects, no https→http downgrade, deadlines.
fn client() -> Result<reqwest::Client, String> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt
                .previous()
                .last()
                .is_some_and(|u| u.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if downgrade {
            attempt.error("refusing a redirect from https to http")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(redirects)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| error_chain(&e))
}

/// An error and its sources on one line: reqwest's top-level message alone rarely says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

async fn fetch_http(url: &str, dest: &Path, limit: u64) -> Result<Fetched, ArtifactError> {
    let fetch_err = |message: String| ArtifactError::Fetch {
        url: url.into(),
        message,
    };
    let mut resp = client()
        .map_err(fetch_err)?
        .get(url)
        .send()
        .await
        .map_err(|e| fetch_err(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fetch_err(format!("HTTP status {}", resp.status())));
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANNEL_DEPTH);
    let dest_owned = dest.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<Fetched, ArtifactError> {
        let mut out = create_dest(&dest_owned)?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk)
                .map_err(|e| ArtifactError::io(format!("write {}", dest_owned.display()), e))?;
        }
        // No fsync: scratch, see `copy_file`.
        out.flush()
            .map_err(|e| ArtifactError::io(format!("write {}", dest_owned.display()), e))?;
        Ok(Fetched {
            digest: hasher.finalize().into(),
            bytes,
        })
    });

    let mut received = 0u64;
    let streamed: Result<(), ArtifactError> = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(error_chain(&e)))? {
            received += chunk.len() as u64;
            if received > limit {
                return Err(too_large(url, limit));
            }
            if tx.send(chunk).await.is_err() {
                // The writer stopped; its own error is the one to report.
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| ArtifactError::io("artifact writer task", std::io::Error::other(e)))?;
    streamed?;
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ArtifactPolicy {
        ArtifactPolicy::new(1 << 20, false, Vec::new())
    }

    /// A FIFO's open would wait for a writer forever: it is refused at once.
    #[tokio::test]
    async fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("artifact.tar");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let url = format!("file://{}", fifo.display());
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            fetch(&url, &dir.path().join("dl"), &policy()),
        )
        .await
        .expect("a fetch of a FIFO hung");
        let e = r.unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    /// A source that stops delivering bytes (what a stuck mount looks like) fails the fetch
    /// after the stall bound, rather than holding the deploy forever.
    #[tokio::test]
    async fn a_stalled_read_fails_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let t0 = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            watched_copy(
                "file:///stuck",
                move || Ok(reader),
                &dir.path().join("dl"),
                1 << 20,
                Duration::from_secs(60),
                Duration::from_millis(300),
            ),
        )
        .await
        .expect("a stalled copy hung");
        let e = r.unwrap_err();
        assert!(e.to_string().contains("no data"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        drop(writer);
    }
}
