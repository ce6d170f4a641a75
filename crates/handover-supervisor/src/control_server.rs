//! Serving the control socket: one JSON request line per connection, answered with JSON lines.
//!
//! The server never blocks the supervisor: each connection is its own task that talks to the
//! supervisor through the command channel. Requests are bounded in size and in time, the
//! number of connections is capped, and peers are checked by their credentials.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use handover_proto::control::{self, Request, Response, MAX_REQUEST};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::control::Command;

/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long one response line may take to be written.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections whose request is still being read; more are answered with an error and
/// closed. Each costs one fd, a small buffer and at most `REQUEST_DEADLINE`.
const MAX_PENDING: usize = 1024;
/// Requests handled at once; further complete requests wait their turn.
const MAX_ACTIVE: usize = 64;
/// Who may use the control socket.
#[derive(Debug, Clone)]
pub struct Access {
    /// handover's own effective uid.
    pub own_uid: u32,
    /// Further uids allowed by the configuration.
    pub allowed: Vec<u32>,
}

impl Access {
    fn permits(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.allowed.contains(&uid)
    }
}

/// Starts serving `listener` (a listening, non-blocking unix socket) on the current runtime.
pub fn serve(
    listener: OwnedFd,
    access: Access,
    commands: mpsc::UnboundedSender<Command>,
) -> std::io::Result<()> {
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(listener))?;
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let active = Arc::new(Semaphore::new(MAX_ACTIVE));
    let access = Arc::new(access);
    tokio::spawn(async move {
        let mut accept_errors = 0u32;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    accept_errors = 0;
                    stream
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning, and log rarely.
                    accept_errors = accept_errors.saturating_add(1);
                    if accept_errors.is_power_of_two() {
                        warn!("control socket: accept failed ({accept_errors} in a row): {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let busy = Response::Error {
                        message: format!("too many control connections (limit {MAX_PENDING})"),
                    };
                    let _ = tokio::time::timeout(
                        WRITE_DEADLINE,
                        stream.write_all(busy.to_line().as_bytes()),
                    )
                    .await;
                });
                continue;
            };
            let commands = commands.clone();
            let access = access.clone();
            let active = active.clone();
            tokio::spawn(async move {
                handle(stream, &access, &commands, permit, &active).await;
            });
        }
    });
    Ok(())
}

async fn send(stream: &mut UnixStream, response: Response) -> bool {
    matches!(
        tokio::time::timeout(
            WRITE_DEADLINE,
            stream.write_all(response.to_line().as_bytes())
        )
        .await,
        Ok(Ok(()))
    )
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_DEADLINE, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request within {}s", REQUEST_DEADLINE.as_secs())),
        Ok(Err(err)) => return Err(format!("reading the request: {err}")),
        Ok(Ok(_)) => {}
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() >= MAX_REQUEST {
            format!("request longer than {MAX_REQUEST} bytes")
        } else {
            "request not terminated by a newline".into()
        });
    }
    control::parse_request(&line[..line.len() - 1]).map_err(|e| e.to_string())
}

async fn handle(
    mut stream: UnixStream,
    access: &Access,
    commands: &mpsc::UnboundedSender<Command>,
    pending: tokio::sync::OwnedSemaphorePermit,
    active: &Arc<Semaphore>,
) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => {
            debug!("control socket: no peer credentials: {err}");
            return;
        }
    };
    // The request is read before a refusal is sent, so a refused client gets a clean answer
    // instead of a reset connection.
    let request = read_request(&mut stream).await;
    if !access.permits(peer.uid()) {
        warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "control socket: refused a client of uid {}",
            peer.uid()
        );
        send(
            &mut stream,
            Response::Error {
                message: format!("uid {} may not control this handover", peer.uid()),
            },
        )
        .await;
        return;
    }
    let request = match request {
        Ok(request) => request,
        Err(message) => {
            debug!(pid = peer.pid(), "control socket: {message}");
            send(&mut stream, Response::Error { message }).await;
            return;
        }
    };
    drop(pending);
    // Complete requests wait here for their turn rather than being turned away.
    let Ok(_active) = active.clone().acquire_owned().await else {
        return;
    };
    debug!(
        pid = peer.pid(),
        uid = peer.uid(),
        "control request: {request:?}"
    );
    let gone = || Response::Error {
        message: "handover is shutting down".into(),
    };
    let is_reload = matches!(request, Request::Reload { .. });
    let (tx, mut rx) = mpsc::unbounded_channel();
    if commands.send(Command { request, reply: tx }).is_err() {
        send(&mut stream, gone()).await;
        return;
    }
    loop {
        let Some(response) = rx.recv().await else {
            let last = if is_reload {
                Response::Failed {
                    reason: "handover stopped during the reload".into(),
                }
            } else {
                gone()
            };
            send(&mut stream, last).await;
            return;
        };
        if response == Response::Stopping {
            // The connection stays open until handover exits: the client's end of file
            // means "everything is down".
            if send(&mut stream, response).await {
                std::future::pending::<()>().await;
            }
            return;
        }
        let last = response.is_final();
        if !send(&mut stream, response).await || last {
            return;
        }
    }
}
