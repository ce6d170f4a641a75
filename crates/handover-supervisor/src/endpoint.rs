//! The probe endpoint (`[endpoint]`): `GET /ready` and `GET /live` over HTTP, for
//! orchestrators' readiness and liveness probes (Kubernetes, Nomad, a load balancer).
//!
//! It runs on the supervisor's own runtime, as tasks woken only by connections: idle, it
//! costs no wake-up. Each connection is a task of its own that asks the loop for a status
//! snapshot through the command channel, exactly as `handover status` does, so the loop is
//! never blocked by a client and the answer is the loop's own view. Requests are bounded in
//! size (`MAX_HEAD`) and in time, connections are capped, and a bad request gets its
//! 4xx and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use handover_proto::control::{Request, Response};
use handover_proto::endpoint::{self, Probe, MAX_HEAD};
use handover_proto::status::{GenerationState, Phase, Status, WorkerState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::control::Command;

/// How long a client may take to send its request head.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long the answer may take to be written.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long the event loop may take to answer before `/live` and `/ready` say 503. Far
/// beyond anything a healthy loop takes, and shorter than the usual probe timeouts' sum.
const LOOP_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once, unanswered.
const MAX_CONNECTIONS: usize = 64;

/// The endpoint's listening socket, listening and non-blocking.
#[derive(Debug)]
pub enum EndpointSocket {
    /// A TCP socket.
    Tcp(std::net::TcpListener),
    /// A unix stream socket.
    Unix(std::os::unix::net::UnixListener),
}

/// Starts serving the endpoint on the current runtime.
pub fn serve(
    socket: EndpointSocket,
    commands: mpsc::UnboundedSender<Command>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    match socket {
        EndpointSocket::Tcp(listener) => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move {
                accept_loop(
                    || async { listener.accept().await.map(|(s, _)| s) },
                    commands,
                    slots,
                )
                .await
            });
        }
        EndpointSocket::Unix(listener) => {
            let listener = tokio::net::UnixListener::from_std(listener)?;
            tokio::spawn(async move {
                accept_loop(
                    || async { listener.accept().await.map(|(s, _)| s) },
                    commands,
                    slots,
                )
                .await
            });
        }
    }
    Ok(())
}

async fn accept_loop<S, F, Fut>(
    mut accept: F,
    commands: mpsc::UnboundedSender<Command>,
    slots: Arc<Semaphore>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let mut accept_errors = 0u32;
    loop {
        let stream = match accept().await {
            Ok(stream) => {
                accept_errors = 0;
                stream
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning, and log rarely.
                accept_errors = accept_errors.saturating_add(1);
                if accept_errors.is_power_of_two() {
                    warn!("endpoint: accept failed ({accept_errors} in a row): {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("endpoint: {MAX_CONNECTIONS} connections already; closing another");
            continue;
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            handle(stream, &commands).await;
            drop(slot);
        });
    }
}

/// Reads one request head, answers it, and closes.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    commands: &mpsc::UnboundedSender<Command>,
) {
    let head = match tokio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        // The peer closed or sent nothing in time: nobody to answer.
        Ok(None) | Err(_) => return,
    };
    let answer = match endpoint::parse(&head) {
        Ok(request) => {
            let (status, body) = match request.probe {
                Probe::Live => live(commands).await,
                Probe::Ready => ready(commands).await,
            };
            endpoint::response(status, &body, request.head)
        }
        Err(bad) => {
            debug!("endpoint: bad request: {bad}");
            endpoint::response(bad.status(), &bad.to_string(), false)
        }
    };
    let _ = tokio::time::timeout(WRITE_DEADLINE, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// The request head, once its empty line arrived; at most [`MAX_HEAD`] bytes and one more,
/// so that a longer one is refused by the parser. `None` when the peer closed first.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HEAD + 1 - head.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = endpoint::head_end(&head) {
            // A probe sends no body; whatever came after the head is refused by the parser
            // only if it is part of the head, so it is left out here.
            head.truncate(end);
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return Some(head);
        }
    }
}

/// Asks the event loop for its status, as `handover status` does.
async fn status(commands: &mpsc::UnboundedSender<Command>) -> Result<Status, String> {
    let (reply, mut answers) = mpsc::unbounded_channel();
    let command = Command {
        request: Request::Status,
        reply,
    };
    if commands.send(command).is_err() {
        return Err("handover is stopping".into());
    }
    match tokio::time::timeout(LOOP_DEADLINE, answers.recv()).await {
        Ok(Some(Response::Status { status })) => Ok(*status),
        Ok(Some(other)) => Err(format!("unexpected answer from the event loop: {other:?}")),
        Ok(None) => Err("handover is stopping".into()),
        Err(_) => Err(format!(
            "the event loop did not answer within {}s",
            LOOP_DEADLINE.as_secs()
        )),
    }
}

/// `/live`: 200 when the event loop answers.
async fn live(commands: &mpsc::UnboundedSender<Command>) -> (u16, String) {
    match status(commands).await {
        Ok(status) => (200, format!("live: {}", status.status)),
        Err(why) => (503, format!("not live: {why}")),
    }
}

/// `/ready`: 200 when [`readiness`] says so.
async fn ready(commands: &mpsc::UnboundedSender<Command>) -> (u16, String) {
    match status(commands).await.and_then(|s| readiness(&s)) {
        Ok(text) => (200, text),
        Err(why) => (503, format!("not ready: {why}")),
    }
}

/// Whether handover serves: the first generation became ready, handover is not stopping,
/// and the serving generation has at least one ready worker. A reload does not change it:
/// the old generation serves until the new one is ready and takes over.
pub fn readiness(status: &Status) -> Result<String, String> {
    match status.phase {
        Phase::Starting => return Err("the first generation is starting".into()),
        Phase::Stopping => return Err("handover is stopping".into()),
        Phase::Running => {}
    }
    let Some(serving) = status
        .generations
        .iter()
        .find(|g| g.state == GenerationState::Serving)
    else {
        return Err("no generation serves".into());
    };
    // A worker found unhealthy (its check or watchdog) serves on until replaced, but does
    // not make handover ready.
    let ready = serving
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .filter(|w| w.health.as_ref().is_none_or(|h| h.state != "unhealthy"))
        .count();
    if ready == 0 {
        return Err(format!(
            "no worker of generation {} is ready",
            serving.generation
        ));
    }
    Ok(format!(
        "ready: generation {}, {ready}/{} workers ready",
        serving.generation, serving.count
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_proto::status::{GenerationStatus, WorkerStatus, STATUS_VERSION};

    fn worker(index: u32, state: WorkerState) -> WorkerStatus {
        WorkerStatus {
            index,
            pid: Some(100 + index as i32),
            state,
            retiring: false,
            ready_for_ms: None,
            restarts: 0,
            last_exit: None,
            status: None,
            failures_in_a_row: 0,
            crash_looping: false,
            health: None,
            cgroup: None,
        }
    }

    fn status(phase: Phase, generations: Vec<(u64, GenerationState, Vec<WorkerState>)>) -> Status {
        Status {
            version: STATUS_VERSION,
            pid: 1,
            phase,
            uptime_ms: 0,
            reloading: None,
            status: String::new(),
            generations: generations
                .into_iter()
                .map(|(generation, state, workers)| GenerationStatus {
                    generation,
                    state,
                    count: workers.len() as u32,
                    age_ms: 0,
                    workers: workers
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| worker(i as u32, s))
                        .collect(),
                })
                .collect(),
            sockets: Vec::new(),
            logs: Vec::new(),
            cgroups: None,
            cgroup_controllers: None,
        }
    }

    use GenerationState::{Draining, Serving, Starting};
    use WorkerState::{Ready, Starting as Booting, Waiting};

    #[test]
    fn ready_only_while_the_serving_generation_has_a_ready_worker() {
        let starting = status(Phase::Starting, vec![(1, Starting, vec![Ready, Booting])]);
        assert_eq!(
            readiness(&starting).unwrap_err(),
            "the first generation is starting"
        );
        let running = status(Phase::Running, vec![(1, Serving, vec![Ready, Ready])]);
        assert_eq!(
            readiness(&running).unwrap(),
            "ready: generation 1, 2/2 workers ready"
        );
        // A reload in progress: the old generation serves on.
        let reloading = status(
            Phase::Running,
            vec![
                (1, Serving, vec![Ready, Ready]),
                (2, Starting, vec![Booting, Booting]),
            ],
        );
        assert!(readiness(&reloading)
            .unwrap()
            .starts_with("ready: generation 1"));
        // Taken over: the new generation serves, the old one drains.
        let after = status(
            Phase::Running,
            vec![
                (1, Draining, vec![WorkerState::Stopping]),
                (2, Serving, vec![Ready]),
            ],
        );
        assert_eq!(
            readiness(&after).unwrap(),
            "ready: generation 2, 1/1 workers ready"
        );
        // Every worker crashed and waits to be restarted.
        let crashed = status(Phase::Running, vec![(1, Serving, vec![Waiting, Booting])]);
        assert_eq!(
            readiness(&crashed).unwrap_err(),
            "no worker of generation 1 is ready"
        );
        let stopping = status(Phase::Stopping, vec![(1, Serving, vec![Ready])]);
        assert_eq!(readiness(&stopping).unwrap_err(), "handover is stopping");
        // A ready worker found unhealthy does not count.
        let mut sick = status(Phase::Running, vec![(1, Serving, vec![Ready])]);
        sick.generations[0].workers[0].health = Some(handover_proto::status::HealthStatus {
            state: "unhealthy".into(),
            last_check_ms_ago: Some(10),
            last_passed: Some(false),
            failures_in_a_row: 3,
            reason: Some("timed out after 5.0s".into()),
            watchdog_left_ms: None,
        });
        assert_eq!(
            readiness(&sick).unwrap_err(),
            "no worker of generation 1 is ready"
        );
    }

    /// A fake event loop answering status requests with `answer`.
    fn fake_loop(answer: Status) -> mpsc::UnboundedSender<Command> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                assert_eq!(command.request, Request::Status);
                let _ = command.reply.send(Response::Status {
                    status: Box::new(answer.clone()),
                });
            }
        });
        tx
    }

    async fn exchange(commands: &mpsc::UnboundedSender<Command>, request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request).await.unwrap();
        handle(server, commands).await;
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn probes_are_answered_from_the_loops_status() {
        let running = fake_loop(status(Phase::Running, vec![(3, Serving, vec![Ready])]));
        let answer = exchange(&running, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nready: generation 3, 1/1 workers ready\n"),
            "{answer}"
        );
        let answer = exchange(&running, b"GET /live HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let starting = fake_loop(status(Phase::Starting, vec![(1, Starting, vec![Booting])]));
        let answer = exchange(&starting, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(
            answer.ends_with("not ready: the first generation is starting\n"),
            "{answer}"
        );
        // Starting is alive all the same.
        let answer = exchange(&starting, b"GET /live HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn bad_requests_get_4xx_without_asking_the_loop() {
        // A loop that is gone: a request that reached it would get 503.
        let (gone, _) = mpsc::unbounded_channel::<Command>();
        let answer = exchange(&gone, b"DELETE /ready HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        let answer = exchange(&gone, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        let answer = exchange(&gone, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let long = format!("GET /ready HTTP/1.1\r\nX: {}", "a".repeat(10 * MAX_HEAD));
        let answer = exchange(&gone, long.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("longer than 4096 bytes"), "{answer}");
        let answer = exchange(&gone, b"GET /live HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(
            answer.ends_with("not live: handover is stopping\n"),
            "{answer}"
        );
    }
}
