//! `handover-example-http`: a small hand-written HTTP/1.1 worker for handover that drains politely.
//!
//! The worker takes its listening socket from systemd-style socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`) or binds one itself, reports readiness with `READY=1` on
//! `NOTIFY_SOCKET`, and answers every `GET`/`HEAD` with a line naming its pid, worker index and
//! generation. It answers the same on the socket named `health`, when it was given one (the
//! private socket of handover's `[health] check = "http"`). On SIGTERM or SIGINT it stops
//! accepting at once, finishes the requests it already
//! has, gives idle keep-alive connections a grace period, and exits once no connection remains.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

/// Writes a line to stderr and ignores failure: a closed log pipe must never make this
/// program panic (Rust ignores SIGPIPE, so such a write fails with EPIPE instead).
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Like `log!`, for stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const PROG: &str = "handover-example-http";

/// A request head larger than this is refused, so a client cannot make us buffer without limit.
const MAX_HEAD: usize = 16 * 1024;
/// A request head must arrive completely within this time; it also bounds keep-alive idleness.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing one response may take at most this long, so a client that never reads cannot pin us.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering with `Connection: close` we keep reading this long so that unread client
/// bytes do not turn our close into a reset that could destroy the response in flight.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// The lingering read discards at most this many bytes before giving up on the client.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// `/slow?ms=N` never sleeps longer than this.
const MAX_SLOW_MS: u64 = 60_000;
/// One connection serves at most this many requests; the last one is answered with close.
const MAX_REQUESTS_PER_CONN: u32 = 100_000;
/// Beyond this many open connections we stop accepting until one finishes.
const MAX_CONNS: usize = 10_000;
/// At most this many header lines are accepted in one request head.
const MAX_HEADERS: usize = 100;
/// A sane upper limit for `LISTEN_FDS`, so fd arithmetic cannot overflow.
const MAX_LISTEN_FDS: u32 = 65_536;
/// Environment values echoed in the response body are cut to this many characters.
const MAX_LABEL_LEN: usize = 64;

const USAGE: &str = "\
usage: handover-example-http [OPTIONS]

Options:
  --socket NAME            use the inherited socket named NAME in LISTEN_FDNAMES (default: fd 3)
  --listen ADDR            bind ADDR (host:port or /unix/path) when no socket is inherited
                           (default 127.0.0.1:8080)
  --boot-ms N              sleep N ms before becoming ready
  --boot-cpu               spend those N ms computing instead of sleeping, as an app that
                           loads and compiles its code at start does
  --idle-grace-ms N        when draining, keep idle keep-alive connections N ms (default 1000)
  --drain-timeout-ms N     when draining, exit after at most N ms (default 30000)
  --crash-on-start CODE    exit with CODE immediately
  --never-ready            never send READY=1
  -h, --help               show this help";

/// Command-line options after parsing.
#[derive(Debug)]
struct Options {
    socket_name: Option<String>,
    listen: String,
    boot: Duration,
    boot_cpu: bool,
    idle_grace: Duration,
    drain_timeout: Duration,
    crash_on_start: Option<i32>,
    never_ready: bool,
}

enum Parsed {
    Run(Options),
    Help,
}

fn main() {
    let code = match parse_args(std::env::args_os().skip(1)) {
        Ok(Parsed::Help) => {
            out!("{USAGE}");
            0
        }
        Ok(Parsed::Run(opts)) => run(opts),
        Err(msg) => {
            log!("{PROG}: {msg}");
            log!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn parse_args(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Parsed, String> {
    let mut opts = Options {
        socket_name: None,
        listen: "127.0.0.1:8080".to_owned(),
        boot: Duration::ZERO,
        boot_cpu: false,
        idle_grace: Duration::from_millis(1000),
        drain_timeout: Duration::from_millis(30_000),
        crash_on_start: None,
        never_ready: false,
    };
    let mut args = args.map(|a| a.to_string_lossy().into_owned());
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--socket" => opts.socket_name = Some(value("--socket")?),
            "--listen" => opts.listen = value("--listen")?,
            "--boot-ms" => opts.boot = parse_ms("--boot-ms", &value("--boot-ms")?)?,
            "--idle-grace-ms" => {
                opts.idle_grace = parse_ms("--idle-grace-ms", &value("--idle-grace-ms")?)?
            }
            "--drain-timeout-ms" => {
                opts.drain_timeout = parse_ms("--drain-timeout-ms", &value("--drain-timeout-ms")?)?
            }
            "--crash-on-start" => {
                let v = value("--crash-on-start")?;
                let code = v
                    .parse::<u8>()
                    .map_err(|_| format!("--crash-on-start: {v:?} is not an exit code 0..255"))?;
                opts.crash_on_start = Some(i32::from(code));
            }
            "--never-ready" => opts.never_ready = true,
            "--boot-cpu" => opts.boot_cpu = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Parsed::Run(opts))
}

/// Parses a millisecond count; a day is far beyond any sensible use and keeps timers sane.
fn parse_ms(name: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) if ms <= 86_400_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{name}: {v:?} is not a number of milliseconds (0..86400000)"
        )),
    }
}

fn run(opts: Options) -> i32 {
    if let Some(code) = opts.crash_on_start {
        log!(
            "{PROG}: pid {} crashing on start with {code}",
            std::process::id()
        );
        return code;
    }
    // Taking the socket happens before the runtime exists so that errors surface plainly.
    let (listener, how) = match acquire_listener(&opts) {
        Ok(v) => v,
        Err(e) => {
            log!("{PROG}: {e}");
            return 1;
        }
    };
    log!("{PROG}: pid {} {how}", std::process::id());
    let health = match health_listener(&opts) {
        Ok(health) => health,
        Err(e) => {
            log!("{PROG}: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log!("{PROG}: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async_main(listener, health, opts))
}

/// The inherited socket named `health`, if there is one besides the socket served: handover
/// passes it for its health checks, and checks are answered like any request.
fn health_listener(opts: &Options) -> Result<Option<StdListener>, String> {
    let Some(count) = activated_fd_count() else {
        return Ok(None);
    };
    if opts.socket_name.as_deref() == Some("health") {
        return Ok(None);
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let Some(index) = names
        .split(':')
        .take(count as usize)
        .position(|n| n == "health")
    else {
        return Ok(None);
    };
    if index == 0 && opts.socket_name.is_none() {
        return Ok(None);
    }
    adopt_fd(3 + index as RawFd).map(Some)
}

/// A listening socket before it is handed to tokio.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes the inherited socket if this process was socket-activated, else binds `--listen`.
/// The second value describes what happened, for the one stderr line we promise.
fn acquire_listener(opts: &Options) -> Result<(StdListener, String), String> {
    if let Some(count) = activated_fd_count() {
        let (fd, label) = match &opts.socket_name {
            None => (3, "fd 3".to_owned()),
            Some(name) => {
                let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
                let index = names
                    .split(':')
                    .take(count as usize)
                    .position(|n| n == name)
                    .ok_or_else(|| {
                        format!("no inherited socket is named {name:?} (LISTEN_FDNAMES={names:?})")
                    })?;
                // The index is below `count`, which is capped, so this cannot overflow.
                let fd = 3 + index as RawFd;
                (fd, format!("fd {fd} ({name})"))
            }
        };
        let listener = adopt_fd(fd)?;
        let local = describe_local(&listener);
        return Ok((
            listener,
            format!("serving on inherited socket {label}, {local}"),
        ));
    }
    let listener = if opts.listen.starts_with('/') {
        std::os::unix::net::UnixListener::bind(&opts.listen)
            .map(StdListener::Unix)
            .map_err(|e| format!("cannot bind {}: {e}", opts.listen))?
    } else {
        let addr: SocketAddr = opts
            .listen
            .parse()
            .map_err(|_| format!("--listen {:?} is not host:port or /path", opts.listen))?;
        std::net::TcpListener::bind(addr)
            .map(StdListener::Tcp)
            .map_err(|e| format!("cannot bind {addr}: {e}"))?
    };
    let local = describe_local(&listener);
    Ok((
        listener,
        format!("bound {local} itself (no socket inherited)"),
    ))
}

/// Returns `LISTEN_FDS` if the activation variables are addressed to this very process.
fn activated_fd_count() -> Option<u32> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    (1..=MAX_LISTEN_FDS).contains(&count).then_some(count)
}

/// Wraps an inherited fd as a listener after checking that it really is a listening stream
/// socket, because wrapping anything else would only fail later in confusing ways.
fn adopt_fd(fd: RawFd) -> Result<StdListener, String> {
    // SAFETY: fcntl on an arbitrary integer only inspects the descriptor table.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "inherited fd {fd} is not open: {}",
            io::Error::last_os_error()
        ));
    }
    // Activation fds must not leak into anything we might run, as sd_listen_fds() also does.
    // SAFETY: setting a descriptor flag on an fd we just confirmed is open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    let sock_type = getsockopt_int(fd, libc::SO_TYPE)
        .map_err(|e| format!("inherited fd {fd} is not a socket: {e}"))?;
    if sock_type != libc::SOCK_STREAM {
        return Err(format!("inherited fd {fd} is not a stream socket"));
    }
    if getsockopt_int(fd, libc::SO_ACCEPTCONN).unwrap_or(0) == 0 {
        return Err(format!("inherited fd {fd} is not listening"));
    }
    let family = socket_family(fd).map_err(|e| format!("getsockname on fd {fd}: {e}"))?;
    let listener = match family {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: the fd is an open, listening TCP socket handed to us by the activation
            // protocol; nothing else in this process owns it, and it is wrapped exactly once.
            StdListener::Tcp(unsafe { std::net::TcpListener::from_raw_fd(fd) })
        }
        libc::AF_UNIX => {
            // SAFETY: as above, for an open, listening unix stream socket.
            StdListener::Unix(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
        }
        other => {
            return Err(format!(
                "inherited fd {fd} has unsupported address family {other}"
            ))
        }
    };
    Ok(listener)
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point to valid memory of the size announced in len.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any socket address and len says so.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(storage.ss_family))
}

fn describe_local(listener: &StdListener) -> String {
    match listener {
        StdListener::Tcp(l) => match l.local_addr() {
            Ok(a) => format!("tcp {a}"),
            Err(_) => "tcp (unknown address)".to_owned(),
        },
        StdListener::Unix(l) => match l.local_addr() {
            Ok(a) => match a.as_pathname() {
                Some(p) => format!("unix {}", p.display()),
                None => "unix (unnamed or abstract)".to_owned(),
            },
            Err(_) => "unix (unknown address)".to_owned(),
        },
    }
}

/// Sends one sd_notify-style datagram if `NOTIFY_SOCKET` is set. Failures are reported but not
/// fatal: a worker that cannot notify still serves, and the supervisor will judge it.
fn notify(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&target, message) {
        log!("{PROG}: cannot notify {:?}: {e}", target.to_string_lossy());
    }
}

fn send_notify(target: &std::ffi::OsStr, message: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let bytes = target.as_bytes();
    let sock = UnixDatagram::unbound()?;
    // A full receive queue must not stall the worker forever.
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    match bytes.first() {
        Some(b'/') => {
            sock.send_to(message.as_bytes(), std::path::Path::new(target))?;
        }
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract name",
            ))
        }
    }
    Ok(())
}

/// Per-process facts every response needs.
struct Ctx {
    body: String,
    idle_grace: Duration,
}

/// Reads an environment value for display, keeping it short and free of control characters
/// because it ends up inside an HTTP response.
fn label(var: &str) -> String {
    let value: String = std::env::var(var)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_LABEL_LEN)
        .collect();
    if value.is_empty() {
        "-".to_owned()
    } else {
        value
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    fn from_std(l: StdListener) -> io::Result<Self> {
        Ok(match l {
            StdListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            StdListener::Unix(l) => {
                l.set_nonblocking(true)?;
                Listener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
        })
    }

    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Responses are written in one piece, but small ones should never wait on Nagle.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

async fn async_main(listener: StdListener, health: Option<StdListener>, opts: Options) -> i32 {
    let (listener, health) = match (
        Listener::from_std(listener),
        health.map(Listener::from_std).transpose(),
    ) {
        (Ok(l), Ok(h)) => (l, h),
        (Err(e), _) | (_, Err(e)) => {
            log!("{PROG}: cannot register the listener: {e}");
            return 1;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log!("{PROG}: cannot install signal handlers: {e}");
            return 1;
        }
    };

    if !opts.boot.is_zero() {
        let boot = opts.boot;
        let booting = async move {
            if opts.boot_cpu {
                // On a thread of its own, so that a stop signal is still seen meanwhile.
                let _ = tokio::task::spawn_blocking(move || {
                    let end = std::time::Instant::now() + boot;
                    while std::time::Instant::now() < end {
                        std::hint::spin_loop();
                    }
                })
                .await;
            } else {
                sleep(boot).await;
            }
        };
        tokio::select! {
            _ = booting => {}
            _ = term.recv() => {
                log!("{PROG}: stopped while booting");
                return 0;
            }
            _ = int.recv() => {
                log!("{PROG}: interrupted while booting");
                return 0;
            }
        }
    }
    if opts.never_ready {
        log!("{PROG}: --never-ready given, not sending READY=1");
    } else {
        notify("READY=1\nSTATUS=serving");
    }

    let ctx = Arc::new(Ctx {
        body: format!(
            "hello from pid {} (worker {}, generation {})\n",
            std::process::id(),
            label("HANDOVER_WORKER"),
            label("HANDOVER_GENERATION")
        ),
        idle_grace: opts.idle_grace,
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns: JoinSet<()> = JoinSet::new();

    // The serving loop ends only on a signal; each pass handles one event.
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept_health(&health), if conns.len() < MAX_CONNS => match accepted {
                Ok(stream) => {
                    conns.spawn(handle(stream, Arc::clone(&ctx), drain_rx.clone()));
                }
                Err(e) => {
                    log!("{PROG}: accept on the health socket failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = listener.accept(), if conns.len() < MAX_CONNS => match accepted {
                Ok(stream) => {
                    conns.spawn(handle(stream, Arc::clone(&ctx), drain_rx.clone()));
                }
                Err(e) => {
                    // Errors such as EMFILE persist for a while; backing off avoids spinning.
                    log!("{PROG}: accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    // Closing our copy of the listening socket at once lets the supervisor's copy route new
    // connections to other workers.
    drop(listener);
    drop(health);
    let _ = drain_tx.send(true);
    notify("STOPPING=1\nSTATUS=draining");
    log!(
        "{PROG}: pid {} draining {} connection(s)",
        std::process::id(),
        conns.len()
    );
    let deadline = Instant::now() + opts.drain_timeout;
    // Each pass either reaps a connection, hits the deadline or sees a signal, so this ends.
    loop {
        if conns.is_empty() {
            log!("{PROG}: pid {} drained, exiting", std::process::id());
            return 0;
        }
        tokio::select! {
            _ = conns.join_next() => {}
            _ = sleep_until(deadline) => {
                log!("{PROG}: drain timeout, abandoning {} connection(s)", conns.len());
                return 0;
            }
            _ = term.recv() => {
                log!("{PROG}: second stop signal, exiting at once");
                return 0;
            }
            _ = int.recv() => {
                log!("{PROG}: second interrupt, exiting at once");
                return 0;
            }
        }
    }
}

/// The next connection on the health socket; never, without one.
async fn accept_health(health: &Option<Listener>) -> io::Result<Stream> {
    match health {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn handle(stream: Stream, ctx: Arc<Ctx>, drain: watch::Receiver<bool>) {
    match stream {
        Stream::Tcp(s) => serve_conn(s, ctx, drain).await,
        Stream::Unix(s) => serve_conn(s, ctx, drain).await,
    }
}

/// A parsed request head, reduced to what this server needs.
#[derive(Debug)]
struct Request {
    head_only: bool,
    target: String,
    http11: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    content_length: u64,
    has_transfer_encoding: bool,
}

impl Request {
    fn wants_close(&self) -> bool {
        if self.http11 {
            self.conn_close
        } else {
            self.conn_close || !self.conn_keep_alive
        }
    }
}

/// What reading a request head produced.
enum HeadResult {
    Head(Request),
    /// The client went away, was idle too long, or an error occurred: close without answering.
    Gone,
    /// Answer with this status and close.
    Reject(u16),
}

async fn serve_conn<S>(mut s: S, ctx: Arc<Ctx>, mut drain: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    for served in 1..=MAX_REQUESTS_PER_CONN {
        let req = match read_head(&mut s, &mut buf, &mut drain, ctx.idle_grace).await {
            HeadResult::Head(r) => r,
            HeadResult::Gone => return,
            HeadResult::Reject(status) => {
                let _ = write_response(&mut s, status, "", false, true).await;
                lingering_close(&mut s).await;
                return;
            }
        };
        // A body we would have to skip is refused: reading it is not worth the risk here.
        if req.content_length > 0 || req.has_transfer_encoding {
            let _ = write_response(
                &mut s,
                400,
                "request bodies are not accepted\n",
                false,
                true,
            )
            .await;
            lingering_close(&mut s).await;
            return;
        }
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.target.as_str(), None),
        };
        if path == "/slow" {
            match slow_ms(query) {
                Some(ms) => sleep(Duration::from_millis(ms)).await,
                None => {
                    let _ = write_response(&mut s, 400, "bad ms parameter\n", req.head_only, true)
                        .await;
                    lingering_close(&mut s).await;
                    return;
                }
            }
        }
        // The drain state is read after processing so that a request that was in flight when
        // the stop began is still told to close.
        let close = req.wants_close() || *drain.borrow() || served == MAX_REQUESTS_PER_CONN;
        let keep_alive_header = !req.http11 && !close;
        let body = &ctx.body;
        let written =
            write_response_full(&mut s, 200, body, req.head_only, close, keep_alive_header).await;
        if written.is_err() {
            return;
        }
        if close {
            lingering_close(&mut s).await;
            return;
        }
    }
}

/// Parses the `ms` query parameter of `/slow`; a missing parameter means no delay.
fn slow_ms(query: Option<&str>) -> Option<u64> {
    let Some(query) = query else {
        return Some(0);
    };
    let mut ms = 0;
    for pair in query.split('&').take(32) {
        if let Some(v) = pair.strip_prefix("ms=") {
            if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            ms = v.parse::<u64>().ok()?.min(MAX_SLOW_MS);
        }
    }
    Some(ms)
}

/// Reads one request head into `buf`, honouring the header timeout, the size cap and, once the
/// worker drains, the idle grace period for a connection on which no request has begun.
async fn read_head<S>(
    s: &mut S,
    buf: &mut Vec<u8>,
    drain: &mut watch::Receiver<bool>,
    grace: Duration,
) -> HeadResult
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let mut grace_deadline = if *drain.borrow_and_update() {
        Some(Instant::now() + grace)
    } else {
        None
    };
    let mut chunk = [0u8; 4096];
    // Every pass returns, adds at least one byte (capped by MAX_HEAD), or records the single
    // drain transition, so this many passes always suffice.
    for _ in 0..MAX_HEAD + 8 {
        // RFC 9112 asks servers to ignore empty lines that precede a request line.
        let blank = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if blank > 0 {
            buf.drain(..blank);
        }
        if let Some(end) = find_head_end(buf) {
            let parsed = parse_head(&buf[..end]);
            buf.drain(..end);
            return match parsed {
                Ok(r) => HeadResult::Head(r),
                Err(status) => HeadResult::Reject(status),
            };
        }
        if buf.len() >= MAX_HEAD {
            return HeadResult::Reject(431);
        }
        let idle = buf.is_empty();
        let limit = match (idle, grace_deadline) {
            (true, Some(g)) => g.min(deadline),
            _ => deadline,
        };
        tokio::select! {
            r = s.read(&mut chunk) => match r {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                // End of stream mid-head leaves nothing sensible to answer.
                _ => return HeadResult::Gone,
            },
            _ = sleep_until(limit) => {
                return if idle { HeadResult::Gone } else { HeadResult::Reject(408) };
            }
            _ = drain.changed(), if grace_deadline.is_none() => {
                grace_deadline = Some(Instant::now() + grace);
            }
        }
    }
    HeadResult::Reject(431)
}

/// Returns the length of the request head including its terminating empty line, if complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    for (i, b) in buf.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        if i >= 1 && buf[i - 1] == b'\n' {
            return Some(i + 1);
        }
        if i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' {
            return Some(i + 1);
        }
    }
    None
}

fn parse_head(head: &[u8]) -> Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(405),
    };
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(400);
    }
    let mut req = Request {
        head_only,
        target: target.to_owned(),
        http11,
        conn_close: false,
        conn_keep_alive: false,
        content_length: 0,
        has_transfer_encoding: false,
    };
    let mut seen_length: Option<u64> = None;
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(431);
        }
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(400);
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            let n: u64 = value.parse().map_err(|_| 400u16)?;
            // Conflicting lengths are a classic request-smuggling vector.
            if seen_length.is_some_and(|old| old != n) {
                return Err(400);
            }
            seen_length = Some(n);
            req.content_length = n;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            req.has_transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').take(16) {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    req.conn_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    req.conn_keep_alive = true;
                }
            }
        }
    }
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

async fn write_response<S>(
    s: &mut S,
    status: u16,
    body: &str,
    head_only: bool,
    close: bool,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    write_response_full(s, status, body, head_only, close, false).await
}

async fn write_response_full<S>(
    s: &mut S,
    status: u16,
    body: &str,
    head_only: bool,
    close: bool,
    keep_alive_header: bool,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let body = if body.is_empty() && status != 200 {
        format!("{status} {}\n", reason(status))
    } else {
        body.to_owned()
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if close {
        out.push_str("Connection: close\r\n");
    } else if keep_alive_header {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    match timeout(WRITE_TIMEOUT, async {
        s.write_all(out.as_bytes()).await?;
        s.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Half-closes the connection and discards what the client still sends for a short while, so
/// that the kernel does not answer unread bytes with a reset that could destroy our response.
async fn lingering_close<S>(s: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(WRITE_TIMEOUT, s.shutdown()).await;
    let deadline = Instant::now() + LINGER_TIMEOUT;
    let mut scratch = [0u8; 4096];
    let mut total = 0usize;
    while total < LINGER_MAX_BYTES {
        match timeout_at(deadline, s.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_with_crlf_and_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn parse_head_handles_versions_and_connection() {
        let r = parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(r.http11 && !r.wants_close() && !r.head_only);
        let r = parse_head(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.head_only && r.wants_close());
        let r = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(!r.wants_close());
        let r = parse_head(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").unwrap();
        assert!(r.wants_close());
    }

    #[test]
    fn parse_head_rejects_bad_input() {
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n").unwrap_err(), 405);
        assert_eq!(parse_head(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(), 505);
        assert_eq!(parse_head(b"GET /\r\n\r\n").unwrap_err(), 400);
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").unwrap_err(),
            400
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .unwrap_err(),
            400
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap_err(),
            400
        );
        assert_eq!(parse_head(&[0xff, b'\n', b'\n']).unwrap_err(), 400);
    }

    #[test]
    fn slow_parameter_is_capped_and_validated() {
        assert_eq!(slow_ms(None), Some(0));
        assert_eq!(slow_ms(Some("ms=250")), Some(250));
        assert_eq!(slow_ms(Some("x=1&ms=99999999")), Some(MAX_SLOW_MS));
        assert_eq!(slow_ms(Some("ms=abc")), None);
        assert_eq!(slow_ms(Some("ms=")), None);
    }

    #[test]
    fn args_parse_and_reject() {
        let args = |v: &[&str]| parse_args(v.iter().map(std::ffi::OsString::from));
        match args(&["--boot-ms", "5", "--idle-grace-ms", "7", "--never-ready"]) {
            Ok(Parsed::Run(o)) => {
                assert_eq!(o.boot, Duration::from_millis(5));
                assert_eq!(o.idle_grace, Duration::from_millis(7));
                assert!(o.never_ready);
            }
            _ => panic!("valid arguments were rejected"),
        }
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--boot-ms"]).is_err());
        assert!(args(&["--crash-on-start", "300"]).is_err());
    }
}
