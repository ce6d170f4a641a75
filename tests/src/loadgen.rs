//! A small HTTP/1.1 load generator for zero-downtime tests: it drives a loopback server with
//! many concurrent requests and classifies every failure, so a test can assert that a restart
//! or upgrade lost nothing.
//!
//! Only loopback targets are accepted; the tool must never send traffic anywhere else.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// The most concurrent connections one run may use.
pub const MAX_CONCURRENCY: usize = 10_000;
/// A response head larger than this is a protocol error.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A response body larger than this is a protocol error; test servers answer with a line.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
/// Interim (1xx) responses skipped before the final one at most.
const MAX_INTERIM: usize = 8;
/// Paths longer than this are refused, since test paths are short.
const MAX_PATH: usize = 8 * 1024;

/// How connections are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One new TCP connection per request, with `Connection: close`.
    NewConnection,
    /// HTTP/1.1 persistent connections, reopened when the server closes them.
    KeepAlive,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The target; must be a loopback address.
    pub addr: SocketAddr,
    /// The number of concurrent request loops.
    pub concurrency: usize,
    /// No request is started after this much time has passed.
    pub duration: Duration,
    /// No more than this many requests are attempted in total.
    pub max_requests: u64,
    /// How connections are used.
    pub mode: Mode,
    /// One request, including connecting and any retry, may take at most this long.
    pub request_timeout: Duration,
    /// The request target, e.g. `/` or `/slow?ms=10`.
    pub path: String,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            concurrency: 8,
            duration: Duration::from_millis(5000),
            max_requests: 1_000_000,
            mode: Mode::KeepAlive,
            request_timeout: Duration::from_millis(5000),
            path: "/".to_owned(),
        }
    }
}

impl LoadConfig {
    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.addr.ip().is_loopback() {
            bail!(
                "refusing to send traffic to {}: only loopback addresses (127.0.0.0/8, ::1) are allowed",
                self.addr
            );
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            bail!(
                "concurrency must be in 1..={MAX_CONCURRENCY}, not {}",
                self.concurrency
            );
        }
        if self.request_timeout.is_zero() {
            bail!("the request timeout must be positive");
        }
        if !self.path.starts_with('/')
            || self.path.len() > MAX_PATH
            || !self.path.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!(
                "the path must start with '/', hold only visible ASCII and be at most {MAX_PATH} bytes"
            );
        }
        Ok(())
    }
}

/// Failure counts by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// Connecting was refused (nobody listening).
    pub refused: u64,
    /// The connection was reset, or writing hit a closed connection.
    pub reset: u64,
    /// The request did not complete within the request timeout.
    pub timeout: u64,
    /// A complete response arrived with a status other than 200.
    pub bad_status: u64,
    /// Anything else: early end of stream, malformed response, other I/O errors.
    pub other: u64,
}

impl Failures {
    fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.bad_status += o.bad_status;
        self.other += o.other;
    }

    fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.bad_status + self.other
    }
}

/// Latency of successful requests, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Requests attempted; a retry on a fresh connection does not count again.
    pub requests: u64,
    /// Requests answered with status 200.
    pub ok: u64,
    pub failures: Failures,
    /// Requests retried once because a reused keep-alive connection was closed or reset
    /// before any byte of the response arrived (RFC 9112 section 9.3.1); not failures.
    pub idle_close_retries: u64,
    /// TCP connections opened.
    pub connections: u64,
    pub latency_us: Latency,
    /// Complete responses per pid named in the body ("pid N", or a body that is just a
    /// number); 0 counts responses that name none.
    pub pids: BTreeMap<u32, u64>,
    pub elapsed_ms: u64,
}

impl Summary {
    /// Adds the counts of another run (of the same load, e.g. the next burst) to this one.
    /// Latency percentiles cannot be summed: the worst run's are kept, as is the maximum.
    pub fn absorb(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.failures.refused += other.failures.refused;
        self.failures.reset += other.failures.reset;
        self.failures.timeout += other.failures.timeout;
        self.failures.bad_status += other.failures.bad_status;
        self.failures.other += other.failures.other;
        self.idle_close_retries += other.idle_close_retries;
        self.connections += other.connections;
        self.latency_us.p50 = self.latency_us.p50.max(other.latency_us.p50);
        self.latency_us.p99 = self.latency_us.p99.max(other.latency_us.p99);
        self.latency_us.max = self.latency_us.max.max(other.latency_us.max);
        for (pid, n) in &other.pids {
            *self.pids.entry(*pid).or_insert(0) += n;
        }
        self.elapsed_ms += other.elapsed_ms;
    }

    /// The number of failed requests of every kind.
    pub fn failed(&self) -> u64 {
        self.failures.total()
    }
}

/// A log-linear latency histogram: exact below 128, then 64 sub-buckets per power of two,
/// which keeps the error under 1.6% in constant memory however many samples arrive.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BUCKETS: usize = 64;
const LINEAR_LIMIT: usize = 128;
const HISTOGRAM_LEN: usize = LINEAR_LIMIT + 57 * SUB_BUCKETS;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; HISTOGRAM_LEN],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR_LIMIT as u64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() as usize;
        let shift = exp - 6;
        let mantissa = (v >> shift) as usize;
        LINEAR_LIMIT + (exp - 7) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)
    }

    /// The middle of bucket `i`, used as the value reported for it.
    fn value_of(i: usize) -> u64 {
        if i < LINEAR_LIMIT {
            return i as u64;
        }
        let j = i - LINEAR_LIMIT;
        let exp = j / SUB_BUCKETS + 7;
        let mantissa = (j % SUB_BUCKETS + SUB_BUCKETS) as u64;
        let shift = exp - 6;
        let low = mantissa << shift;
        low.saturating_add((1u64 << shift) / 2)
    }

    fn record(&mut self, v: u64) {
        let i = Self::index(v).min(HISTOGRAM_LEN - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value_of(i).min(self.max);
            }
        }
        self.max
    }
}

/// Per-task counters, merged at the end so tasks never contend on shared state.
struct TaskStats {
    requests: u64,
    ok: u64,
    failures: Failures,
    retries: u64,
    connections: u64,
    latency: Histogram,
    pids: BTreeMap<u32, u64>,
}

impl TaskStats {
    fn new() -> Self {
        TaskStats {
            requests: 0,
            ok: 0,
            failures: Failures::default(),
            retries: 0,
            connections: 0,
            latency: Histogram::new(),
            pids: BTreeMap::new(),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Refused,
    Reset,
    Timeout,
    Other,
}

impl Fail {
    fn from_io(e: &io::Error) -> Fail {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Fail::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Fail::Reset,
            io::ErrorKind::TimedOut => Fail::Timeout,
            _ => Fail::Other,
        }
    }

    fn count(self, f: &mut Failures) {
        match self {
            Fail::Refused => f.refused += 1,
            Fail::Reset => f.reset += 1,
            Fail::Timeout => f.timeout += 1,
            Fail::Other => f.other += 1,
        }
    }
}

/// A failed exchange, with what is needed to decide whether a retry is allowed.
struct ExchangeError {
    fail: Fail,
    /// Whether any byte of the response had arrived.
    got_bytes: bool,
    /// Whether the server closed or reset the connection (as opposed to a protocol error).
    closed: bool,
}

impl ExchangeError {
    fn io(e: &io::Error, got_bytes: bool) -> Self {
        let fail = Fail::from_io(e);
        ExchangeError {
            fail,
            got_bytes,
            closed: fail == Fail::Reset,
        }
    }

    fn eof(got_bytes: bool) -> Self {
        ExchangeError {
            fail: Fail::Other,
            got_bytes,
            closed: true,
        }
    }

    fn protocol() -> Self {
        ExchangeError {
            fail: Fail::Other,
            got_bytes: true,
            closed: false,
        }
    }
}

/// A complete response.
struct Response {
    status: u16,
    body: Vec<u8>,
    /// Whether the connection cannot be used for another request.
    close: bool,
}

/// An open connection with the bytes read past the last response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Shared {
    attempted: AtomicU64,
}

/// Runs the load described by `cfg` and summarises it. Fails only if the configuration is
/// invalid; request failures are counted in the summary.
pub async fn run(cfg: LoadConfig) -> anyhow::Result<Summary> {
    // Validation comes before anything touches the network, so a refused address is never
    // connected to.
    cfg.validate()?;
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let request = match cfg.mode {
        Mode::NewConnection => format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            cfg.path
        ),
        Mode::KeepAlive => format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", cfg.path),
    };
    let request: Arc<[u8]> = Arc::from(request.into_bytes());
    let shared = Arc::new(Shared {
        attempted: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.concurrency {
        let shared = Arc::clone(&shared);
        let request = Arc::clone(&request);
        let cfg = cfg.clone();
        tasks.spawn(request_loop(cfg, request, shared, deadline));
    }
    let mut summary = Summary::default();
    let mut latency = Histogram::new();
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("a load task failed")?;
        summary.requests += stats.requests;
        summary.ok += stats.ok;
        summary.failures.add(&stats.failures);
        summary.idle_close_retries += stats.retries;
        summary.connections += stats.connections;
        latency.merge(&stats.latency);
        for (pid, n) in stats.pids {
            *summary.pids.entry(pid).or_insert(0) += n;
        }
    }
    summary.latency_us = Latency {
        p50: latency.quantile(0.50),
        p99: latency.quantile(0.99),
        max: latency.max,
    };
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

/// One concurrent request loop; it ends at the deadline or when the request budget is spent.
async fn request_loop(
    cfg: LoadConfig,
    request: Arc<[u8]>,
    shared: Arc<Shared>,
    deadline: Instant,
) -> TaskStats {
    let mut stats = TaskStats::new();
    let mut conn: Option<Conn> = None;
    let keep_alive = cfg.mode == Mode::KeepAlive;
    // Bounded by max_requests through the shared counter and by the deadline.
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if shared.attempted.fetch_add(1, Ordering::Relaxed) >= cfg.max_requests {
            break;
        }
        stats.requests += 1;
        let began = Instant::now();
        let outcome = timeout_at(
            began + cfg.request_timeout,
            one_request(&mut conn, cfg.addr, &request, keep_alive, &mut stats),
        )
        .await;
        let response = match outcome {
            Err(_) => {
                // The connection, if any, was dropped with the cancelled future.
                conn = None;
                stats.failures.timeout += 1;
                continue;
            }
            Ok(Err(fail)) => {
                fail.count(&mut stats.failures);
                continue;
            }
            Ok(Ok(r)) => r,
        };
        *stats.pids.entry(pid_in_body(&response.body)).or_insert(0) += 1;
        if response.status == 200 {
            stats.ok += 1;
            let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.latency.record(micros);
        } else {
            stats.failures.bad_status += 1;
        }
    }
    stats
}

/// Performs one logical request, retrying once on a fresh connection when a reused
/// keep-alive connection turns out to have been closed before the response began.
async fn one_request(
    slot: &mut Option<Conn>,
    addr: SocketAddr,
    request: &[u8],
    keep_alive: bool,
    stats: &mut TaskStats,
) -> Result<Response, Fail> {
    let (mut conn, reused) = match slot.take() {
        Some(c) => (c, true),
        None => (connect(addr, stats).await?, false),
    };
    match exchange(&mut conn, request).await {
        Ok(resp) => {
            if keep_alive && !resp.close {
                *slot = Some(conn);
            }
            Ok(resp)
        }
        Err(e) if reused && !e.got_bytes && e.closed => {
            drop(conn);
            stats.retries += 1;
            let mut fresh = connect(addr, stats).await?;
            let resp = exchange(&mut fresh, request).await.map_err(|e| e.fail)?;
            if keep_alive && !resp.close {
                *slot = Some(fresh);
            }
            Ok(resp)
        }
        Err(e) => Err(e.fail),
    }
}

async fn connect(addr: SocketAddr, stats: &mut TaskStats) -> Result<Conn, Fail> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Fail::from_io(&e))?;
    stats.connections += 1;
    // Requests are written in one piece; Nagle would only add latency to them.
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(1024),
    })
}

/// Sends the request and reads one complete response.
async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<Response, ExchangeError> {
    if !conn.buf.is_empty() {
        // Bytes nobody asked for mean the server and we disagree about message framing.
        return Err(ExchangeError::protocol());
    }
    conn.stream
        .write_all(request)
        .await
        .map_err(|e| ExchangeError::io(&e, false))?;
    let mut interim = 0;
    loop {
        let head_end = read_head(conn).await?;
        let head =
            parse_response_head(&conn.buf[..head_end]).ok_or_else(ExchangeError::protocol)?;
        conn.buf.drain(..head_end);
        if (100..200).contains(&head.status) && head.status != 101 {
            interim += 1;
            if interim > MAX_INTERIM {
                return Err(ExchangeError::protocol());
            }
            continue;
        }
        if head.chunked {
            // Chunked bodies are not needed for handover's test servers.
            return Err(ExchangeError::protocol());
        }
        let (body, close) = match head.content_length {
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| ExchangeError::protocol())?;
                if len > MAX_RESPONSE_BODY {
                    return Err(ExchangeError::protocol());
                }
                read_exact_body(conn, len).await?;
                let body: Vec<u8> = conn.buf.drain(..len).collect();
                (body, head.close)
            }
            None if head.status == 204 || head.status == 304 => (Vec::new(), head.close),
            None => {
                // Without a length the body ends where the connection does.
                read_to_eof(conn).await?;
                (std::mem::take(&mut conn.buf), true)
            }
        };
        return Ok(Response {
            status: head.status,
            body,
            close,
        });
    }
}

/// Reads until `conn.buf` holds a complete response head; returns its length.
async fn read_head(conn: &mut Conn) -> Result<usize, ExchangeError> {
    let mut chunk = [0u8; 8192];
    // Every pass adds at least one byte, and the head size is capped.
    for _ in 0..=MAX_RESPONSE_HEAD {
        if let Some(pos) = find(&conn.buf, b"\r\n\r\n") {
            return Ok(pos + 4);
        }
        if conn.buf.len() >= MAX_RESPONSE_HEAD {
            return Err(ExchangeError::protocol());
        }
        let got_bytes = !conn.buf.is_empty();
        match conn.stream.read(&mut chunk).await {
            Ok(0) => return Err(ExchangeError::eof(got_bytes)),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ExchangeError::io(&e, got_bytes)),
        }
    }
    Err(ExchangeError::protocol())
}

async fn read_exact_body(conn: &mut Conn, len: usize) -> Result<(), ExchangeError> {
    let mut chunk = [0u8; 8192];
    // Every pass adds at least one byte, and len is capped.
    for _ in 0..=len {
        if conn.buf.len() >= len {
            return Ok(());
        }
        match conn.stream.read(&mut chunk).await {
            Ok(0) => return Err(ExchangeError::eof(true)),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ExchangeError::io(&e, true)),
        }
    }
    Err(ExchangeError::protocol())
}

async fn read_to_eof(conn: &mut Conn) -> Result<(), ExchangeError> {
    let mut chunk = [0u8; 8192];
    // Every pass adds at least one byte, and the body size is capped.
    for _ in 0..=MAX_RESPONSE_BODY {
        if conn.buf.len() > MAX_RESPONSE_BODY {
            return Err(ExchangeError::protocol());
        }
        match conn.stream.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(ExchangeError::io(&e, true)),
        }
    }
    Err(ExchangeError::protocol())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The parts of a response head this tool uses.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
}

fn parse_response_head(head: &[u8]) -> Option<ResponseHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    let mut content_length = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for line in lines.take(200) {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = value.parse().ok()?;
            if content_length.is_some_and(|old| old != n) {
                return None;
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').take(16) {
                let token = token.trim();
                conn_close |= token.eq_ignore_ascii_case("close");
                conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let close = conn_close || (!http11 && !conn_keep_alive);
    Some(ResponseHead {
        status,
        content_length,
        chunked,
        close,
    })
}

/// Finds the pid a test server names in its body: "pid N" (the example worker) or a body
/// that is just a number (the test worker). 0 stands for "none".
pub fn pid_in_body(body: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(body);
    if let Some(pos) = text.find("pid ") {
        let digits: String = text[pos + 4..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        return digits.parse().unwrap_or(0);
    }
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.len() <= 10 && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.parse().unwrap_or(0);
    }
    0
}

/// Parses a `--mode` value.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "new" | "new-connection" => Some(Mode::NewConnection),
        "keepalive" | "keep-alive" => Some(Mode::KeepAlive),
        _ => None,
    }
}

/// Load that runs on a thread of its own until [`Background::finish`]: `run` again and again
/// in slices of `cfg.duration`, summed with [`Summary::absorb`]. Bounded by `limit` and by
/// `cfg.max_requests` as well as by the stop flag, so a forgotten load ends by itself.
pub struct Background {
    stop: Arc<AtomicBool>,
    slices: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<(Summary, bool)>>>,
}

impl Background {
    /// Starts the load.
    pub fn start(cfg: LoadConfig, limit: Duration) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let slices = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, slices) = (stop.clone(), slices.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let began = std::time::Instant::now();
                let mut total = Summary::default();
                let mut limited = false;
                while !stop.load(Ordering::SeqCst) {
                    if began.elapsed() >= limit || total.requests >= cfg.max_requests {
                        limited = true;
                        break;
                    }
                    let mut slice = cfg.clone();
                    slice.max_requests = cfg.max_requests - total.requests;
                    total.absorb(&rt.block_on(run(slice))?);
                    slices.fetch_add(1, Ordering::SeqCst);
                }
                Ok((total, limited))
            })
        };
        Background {
            stop,
            slices,
            thread: Some(thread),
        }
    }

    /// Load of `concurrency` clients on 127.0.0.1:`port` in `mode`, in one-second slices for
    /// at most `limit`; returns once the first slice got through, which proves the load
    /// reaches the workers before the test does anything.
    pub fn on_port(port: u16, mode: Mode, concurrency: usize, limit: Duration) -> Background {
        let load = Background::start(
            LoadConfig {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                concurrency,
                duration: Duration::from_secs(1),
                max_requests: 50_000_000,
                mode,
                request_timeout: Duration::from_secs(10),
                path: "/".into(),
            },
            limit,
        );
        load.wait_slices(1);
        load
    }

    /// How many slices have completed.
    pub fn slices(&self) -> u64 {
        self.slices.load(Ordering::SeqCst)
    }

    /// Waits until `n` slices have completed; panics after the harness's guard.
    pub fn wait_slices(&self, n: u64) {
        let deadline = std::time::Instant::now() + crate::harness::GUARD;
        while self.slices() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the load generator is stuck"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Background::finish`] for a test that stops the load itself: panics if the load
    /// stopped by its own limits first, or if not one request succeeded.
    pub fn finish_by_test(self) -> Summary {
        let (summary, limited) = self.finish().expect("load thread");
        assert!(
            !limited,
            "the load hit its own limit before the test stopped it: {summary:?}"
        );
        assert!(summary.ok > 0, "no request succeeded: {summary:?}");
        summary
    }

    /// Stops after the slice in progress; returns the sum of every slice and whether the
    /// load stopped by itself first (its time or request limit).
    pub fn finish(mut self) -> anyhow::Result<(Summary, bool)> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            _ => bail!("the load thread panicked"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [0u64, 1, 127, 128, 129, 1000, 65_535, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i < HISTOGRAM_LEN, "index {i} for {v}");
            assert!(i >= last);
            last = i;
            let back = Histogram::value_of(i);
            let err = back.abs_diff(v) as f64 / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {back}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((490..=510).contains(&p50), "p50 {p50}");
        assert!((975..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.max, 1000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }

    #[test]
    fn response_heads_parse() {
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length, Some(5));
        assert!(!h.close);
        let h = parse_response_head(b"HTTP/1.0 503 Busy\r\n\r\n").unwrap();
        assert!(h.close && h.content_length.is_none());
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(h.close);
        assert!(parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_none());
        assert!(parse_response_head(b"SPDY 200\r\n\r\n").is_none());
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_none());
    }

    #[test]
    fn pids_are_found() {
        assert_eq!(
            pid_in_body(b"hello from pid 1234 (worker 0, generation 1)\n"),
            1234
        );
        assert_eq!(pid_in_body(b"4321\n"), 4321);
        assert_eq!(pid_in_body(b"nothing here"), 0);
        assert_eq!(pid_in_body(b"pid 99999999999"), 0);
    }

    #[test]
    fn validation_refuses_non_loopback() {
        let mut cfg = LoadConfig {
            addr: "10.0.0.1:80".parse().unwrap(),
            ..LoadConfig::default()
        };
        assert!(cfg.validate().is_err());
        cfg.addr = "[::1]:80".parse().unwrap();
        assert!(cfg.validate().is_ok());
        cfg.addr = "127.1.2.3:80".parse().unwrap();
        assert!(cfg.validate().is_ok());
        cfg.addr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert!(cfg.validate().is_err());
        cfg.addr = "127.0.0.1:80".parse().unwrap();
        cfg.path = "/a b".to_owned();
        assert!(cfg.validate().is_err());
        cfg.path = "/".to_owned();
        cfg.concurrency = 0;
        assert!(cfg.validate().is_err());
    }
}
