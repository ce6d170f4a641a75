//! An axum/hyper worker for handover: takes its socket by fd or by name, says READY=1, drains
//! politely.
//!
//! ```text
//! axum-worker [--socket NAME]
//! ```
//!
//! Without `--socket` it serves on fd 3, the first socket handover (or systemd) passes; with
//! it, on the socket of that name in `LISTEN_FDNAMES`. Started without a socket at all, it
//! binds 127.0.0.1:8080.
//!
//! `axum::serve(...).with_graceful_shutdown(...)` closes a connection at once when it is idle,
//! and a connection whose request has not been read yet counts as idle: under load that
//! resets requests. This worker runs hyper's connections itself: after the stop signal every
//! answer says `Connection: close`, and a connection is shut down only after a grace, when
//! it has been idle for that long.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::header::{HeaderValue, CONNECTION};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// After the stop signal, an idle connection is kept this long for a request that is still
/// to come; only connections idle for this long are closed.
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// Requests still running after that get this long; keep it below handover's drain_timeout.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(20);

static DRAINING: AtomicBool = AtomicBool::new(false);

fn main() {
    if let Err(message) = run() {
        eprintln!("axum-worker: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let name = match std::env::args().nth(1).as_deref() {
        None => None,
        Some("--socket") => Some(std::env::args().nth(2).ok_or("--socket needs a name")?),
        Some(other) => return Err(format!("unknown argument {other:?}")),
    };
    // Before the runtime starts: listenfd removes LISTEN_PID and LISTEN_FDS from the
    // environment, which is only sound while the process has one thread.
    let listener = listener(name.as_deref())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(serve(listener))
}

/// The index among the inherited sockets of the one named `name` (0 without a name).
fn index_of(name: Option<&str>) -> Result<usize, String> {
    let Some(name) = name else { return Ok(0) };
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    names
        .split(':')
        .position(|n| n == name)
        .ok_or_else(|| format!("no inherited socket is named {name:?} (LISTEN_FDNAMES={names})"))
}

fn listener(name: Option<&str>) -> Result<std::net::TcpListener, String> {
    let index = index_of(name)?;
    let mut inherited = listenfd::ListenFd::from_env();
    let listener = match inherited
        .take_tcp_listener(index)
        .map_err(|e| format!("inherited socket {index}: {e}"))?
    {
        Some(listener) => listener,
        None if inherited.len() == 0 => std::net::TcpListener::bind("127.0.0.1:8080")
            .map_err(|e| format!("cannot bind 127.0.0.1:8080: {e}"))?,
        None => return Err(format!("no inherited socket at index {index}")),
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
    Ok(listener)
}

async fn hello() -> String {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "-".into());
    format!(
        "hello from pid {} (worker {}, generation {})\n",
        std::process::id(),
        var("HANDOVER_WORKER"),
        var("HANDOVER_GENERATION")
    )
}

/// Every answer that starts after the stop signal says `Connection: close`, also for requests
/// that were already running; hyper then closes the connection once it is sent.
async fn close_while_draining(mut response: Response) -> Response {
    if DRAINING.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn serve(listener: std::net::TcpListener) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot register the socket: {e}"))?;
    let app = Router::new()
        .route("/", get(hello))
        .layer(axum::middleware::map_response(close_while_draining));
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();

    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        eprintln!("axum-worker: cannot send READY=1: {e}");
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, app.clone(), drain_rx.clone()));
                }
                Err(e) => {
                    eprintln!("axum-worker: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    // Stop listening at once; the connections already accepted are served on.
    drop(listener);
    DRAINING.store(true, Ordering::SeqCst);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = drain_tx.send(true);
    let all_done = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(IDLE_GRACE + IN_FLIGHT_LIMIT, all_done).await;
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    _peer: SocketAddr,
    app: Router,
    mut drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.wait_for(|draining| *draining) => {}
    }
    // Draining: the connection goes on serving (each answer now closes it) for the grace;
    // hyper's graceful shutdown then closes it if idle, or once the request in flight is done.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(IDLE_GRACE) => conn.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(IN_FLIGHT_LIMIT, conn).await;
}
