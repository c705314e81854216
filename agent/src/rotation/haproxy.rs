//! A minimal client for HAProxy's runtime API (the stats socket, `level admin`).
//!
//! One command per connection: connect to the Unix socket, write `<command>\n`, read until
//! HAProxy closes (it does, outside interactive mode). We use two commands:
//!
//! - `set server <backend>/<server> state drain|ready` — HAProxy answers an empty line on
//!   success and a sentence ("No such server.") otherwise, so any non-empty answer is an error.
//! - `show stat` — CSV. The first line is the header, `# pxname,svname,qcur,qmax,scur,...,
//!   status,...`; we locate `scur` (current sessions) and `status` (`UP`, `DOWN`, `DRAIN`,
//!   `MAINT`, `UP 1/3`, `no check`, ...) by name rather than by position, since the column set
//!   grows between HAProxy versions, then find the row whose `pxname,svname` is ours.
//!
//! Backend and server names are checked before use: a `;` or a space would let a name smuggle
//! a second command into the request. Every error names the socket path. Each exchange is
//! bounded in time ([`IO_TIMEOUT`]) and size ([`MAX_ANSWER`]).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The most one command may take, connect to close.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer we accept (`show stat` of a big config is a few MB).
pub const MAX_ANSWER: u64 = 64 << 20;

/// A failed exchange with HAProxy.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("haproxy runtime API {}: `{command}`: {source}", socket.display())]
    Io {
        socket: PathBuf,
        command: String,
        source: std::io::Error,
    },
    #[error("haproxy runtime API {}: `{command}` timed out after {after:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        command: String,
        after: Duration,
    },
    #[error("haproxy runtime API {}: `{command}` answered: {answer}", socket.display())]
    Refused {
        socket: PathBuf,
        command: String,
        answer: String,
    },
    #[error("haproxy runtime API {}: show stat: {reason}", socket.display())]
    BadStat { socket: PathBuf, reason: String },
    #[error("haproxy runtime API {}: no server {backend}/{server} in show stat", socket.display())]
    NoServer {
        socket: PathBuf,
        backend: String,
        server: String,
    },
    #[error("haproxy runtime API {}: unsafe name {name:?}", socket.display())]
    BadName { socket: PathBuf, name: String },
}

/// One server's row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Current sessions.
    pub scur: u64,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/3`, `no check`, ...
    pub status: String,
}

/// The runtime API at one socket path.
#[derive(Debug, Clone)]
pub struct HaproxyClient {
    socket: PathBuf,
}

impl HaproxyClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends one command and returns HAProxy's whole answer.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        let io = |source| HaproxyError::Io {
            socket: self.socket.clone(),
            command: command.to_string(),
            source,
        };
        let exchange = async {
            let mut sock = UnixStream::connect(&self.socket).await.map_err(io)?;
            sock.write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io)?;
            let mut answer = Vec::new();
            sock.take(MAX_ANSWER)
                .read_to_end(&mut answer)
                .await
                .map_err(io)?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| HaproxyError::Timeout {
                socket: self.socket.clone(),
                command: command.to_string(),
                after: IO_TIMEOUT,
            })?
    }

    /// `set server <backend>/<server> state <state>`.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: &str,
    ) -> Result<(), HaproxyError> {
        self.check_name(backend)?;
        self.check_name(server)?;
        let command = format!("set server {backend}/{server} state {state}");
        let answer = self.command(&command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                socket: self.socket.clone(),
                command,
                answer: answer.trim().to_string(),
            })
        }
    }

    /// The `show stat` row of `backend/server`.
    pub async fn server_stat(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<ServerStat, HaproxyError> {
        let text = self.command("show stat").await?;
        match parse_show_stat(&text, backend, server) {
            Ok(Some(stat)) => Ok(stat),
            Ok(None) => Err(HaproxyError::NoServer {
                socket: self.socket.clone(),
                backend: backend.to_string(),
                server: server.to_string(),
            }),
            Err(reason) => Err(HaproxyError::BadStat {
                socket: self.socket.clone(),
                reason,
            }),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), HaproxyError> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | '/' | '#' | '\\'));
        if ok {
            Ok(())
        } else {
            Err(HaproxyError::BadName {
                socket: self.socket.clone(),
                name: name.to_string(),
            })
        }
    }
}

/// Finds `backend/server` in `show stat` CSV. `Err` when the header is missing or lacks a
/// column we need; `Ok(None)` when there is no such row.
pub fn parse_show_stat(
    text: &str,
    backend: &str,
    server: &str,
) -> Result<Option<ServerStat>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| format!("no `# pxname,...` header in answer {:?}", head(text)))?;
    let cols: Vec<&str> = header.trim().split(',').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("header lacks column {name:?}"))
    };
    let (px, sv, scur, status) = (col("pxname")?, col("svname")?, col("scur")?, col("status")?);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(px) != Some(&backend) || f.get(sv) != Some(&server) {
            continue;
        }
        let scur_text = f.get(scur).copied().unwrap_or("");
        let scur = scur_text
            .parse()
            .map_err(|_| format!("bad scur {scur_text:?} for {backend}/{server}"))?;
        let status = f.get(status).copied().unwrap_or("").to_string();
        return Ok(Some(ServerStat { scur, status }));
    }
    Ok(None)
}

fn head(text: &str) -> &str {
    let end = text.char_indices().nth(80).map_or(text.len(), |(i, _)| i);
    text[..end].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,\n\
fe,FRONTEND,,,7,9,2000,100,0,0,0,0,0,,,,,OPEN,,,,\n\
be,web-1,0,0,3,5,,50,0,0,,0,,0,0,0,0,DRAIN,1,1,0,\n\
be,web-2,0,0,4,5,,50,0,0,,0,,0,0,0,0,UP,1,1,0,\n\
be,BACKEND,0,0,7,9,200,100,0,0,0,0,,0,0,0,0,UP,2,2,0,\n";

    #[test]
    fn finds_the_row_by_column_names() {
        assert_eq!(
            parse_show_stat(STAT, "be", "web-1").unwrap(),
            Some(ServerStat {
                scur: 3,
                status: "DRAIN".into()
            })
        );
        assert_eq!(
            parse_show_stat(STAT, "be", "web-2")
                .unwrap()
                .unwrap()
                .status,
            "UP"
        );
        assert_eq!(parse_show_stat(STAT, "be", "web-9").unwrap(), None);
        assert_eq!(parse_show_stat(STAT, "other", "web-1").unwrap(), None);
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(parse_show_stat("Permission denied\n", "be", "web-1")
            .unwrap_err()
            .contains("Permission denied"));
        assert!(parse_show_stat("# pxname,svname,status\n", "be", "s")
            .unwrap_err()
            .contains("scur"));
    }

    #[tokio::test]
    async fn errors_name_the_socket_and_names_are_checked() {
        let c = HaproxyClient::new(Path::new("/nonexistent/haproxy.sock"));
        let e = c.server_stat("be", "web-1").await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/haproxy.sock"), "{e}");
        let e = c
            .set_state("be", "web-1; disable server be/web-2", "ready")
            .await
            .unwrap_err();
        assert!(matches!(e, HaproxyError::BadName { .. }), "{e}");
    }
}
