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

/// Pending connections one allowed uid other than root and handover's own may hold, so no
/// such user can take every slot from root (ExecReload=, ExecStop=).
const MAX_PENDING_PER_UID: usize = 32;
/// Refusals of one uid are logged once, then counted and summarised this often.
const REFUSAL_SUMMARY: Duration = Duration::from_secs(10);

/// Starts serving `listener` (a listening, non-blocking unix socket) on the current runtime.
///
/// A peer's uid is checked the moment it is accepted: a refused peer is answered and closed
/// at once, without a task or a pending slot, so refused users cannot lock out allowed ones.
pub fn serve(
    listener: OwnedFd,
    access: Access,
    commands: mpsc::UnboundedSender<Command>,
) -> std::io::Result<()> {
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(listener))?;
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let active = Arc::new(Semaphore::new(MAX_ACTIVE));
    let per_uid = Arc::new(PerUid::default());
    let refusals = Arc::new(Refusals::default());
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
            let peer = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(err) => {
                    debug!("control socket: no peer credentials: {err}");
                    continue;
                }
            };
            let uid = peer.uid();
            if !access.permits(uid) {
                refusals.note(uid, peer.pid());
                refuse_now(
                    stream,
                    Response::Error {
                        message: format!("uid {uid} may not control this handover"),
                    },
                );
                continue;
            }
            let limited = uid != 0 && uid != access.own_uid;
            let uid_slot = match per_uid.take(uid, limited) {
                Some(slot) => slot,
                None => {
                    refuse_now(
                        stream,
                        Response::Error {
                            message: format!(
                                "too many control connections of uid {uid} (limit \
                                 {MAX_PENDING_PER_UID})"
                            ),
                        },
                    );
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                refuse_now(
                    stream,
                    Response::Error {
                        message: format!("too many control connections (limit {MAX_PENDING})"),
                    },
                );
                continue;
            };
            let commands = commands.clone();
            let active = active.clone();
            tokio::spawn(async move {
                handle(stream, peer, &commands, (permit, uid_slot), &active).await;
            });
        }
    });
    Ok(())
}

/// Answers and closes a connection without waiting: whatever request already arrived is
/// read first (so the close does not reset the answer), then one line is written into the
/// fresh socket's buffer, which never blocks for a line this short.
fn refuse_now(stream: UnixStream, response: Response) {
    let mut scratch = [0u8; 4096];
    for _ in 0..(MAX_REQUEST / scratch.len() + 1) {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(response.to_line().as_bytes());
}

/// Pending connections per uid, for the uids that are limited.
#[derive(Debug, Default)]
struct PerUid(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One pending connection of a limited uid; gives its place back when dropped.
#[derive(Debug)]
struct UidSlot(Option<(Arc<PerUid>, u32)>);

impl PerUid {
    /// A slot for `uid`; `None` when it already holds [`MAX_PENDING_PER_UID`].
    fn take(self: &Arc<Self>, uid: u32, limited: bool) -> Option<UidSlot> {
        if !limited {
            return Some(UidSlot(None));
        }
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(uid).or_insert(0);
        if *count >= MAX_PENDING_PER_UID {
            return None;
        }
        *count += 1;
        Some(UidSlot(Some((self.clone(), uid))))
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let Some((owner, uid)) = self.0.take() {
            let mut counts = owner.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(&uid) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&uid);
                }
            }
        }
    }
}

/// Refused connections per uid since the last line about them.
#[derive(Debug, Default)]
struct Refusals(std::sync::Mutex<std::collections::HashMap<u32, u64>>);

impl Refusals {
    /// Logs the first refusal of `uid` in full; counts the next ones and logs the count
    /// [`REFUSAL_SUMMARY`] later, so a refusal loop cannot flood the log.
    fn note(self: &Arc<Self>, uid: u32, pid: Option<i32>) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&uid) {
            *count += 1;
            return;
        }
        counts.insert(uid, 0);
        drop(counts);
        warn!(uid, pid, "control socket: refused a client of uid {uid}");
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFUSAL_SUMMARY).await;
            let more = this
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid)
                .unwrap_or(0);
            if more > 0 {
                warn!(
                    uid,
                    "control socket: refused {more} more clients of uid {uid} in the last {}s",
                    REFUSAL_SUMMARY.as_secs()
                );
            }
        });
    }
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
    peer: tokio::net::unix::UCred,
    commands: &mpsc::UnboundedSender<Command>,
    pending: (tokio::sync::OwnedSemaphorePermit, UidSlot),
    active: &Arc<Semaphore>,
) {
    let request = read_request(&mut stream).await;
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
