//! `handover-test-worker`: a synchronous, flag-driven worker that end-to-end tests compose into
//! well-behaved, slow, crashing, hostile or leaky workers, and that can report exactly what it
//! inherited from its supervisor.
//!
//! The binary defines its own C `main` (`#![no_main]`) on purpose: Rust's usual start-up code
//! sets SIGPIPE to "ignore" before user code runs, which would hide whether the supervisor
//! leaked an ignored SIGPIPE into its workers. Skipping it lets `--report` show the signal
//! dispositions exactly as inherited. Everything else in std works as usual on Linux.
#![cfg_attr(not(test), no_main)]
// Unit tests use the harness's entry point, so the code reached only from ours looks unused.
#![cfg_attr(test, allow(dead_code, unused_imports, unused_macros))]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Writes a line to stderr and ignores failure: a closed log pipe must never make this
/// program panic (Rust ignores SIGPIPE, so such a write fails with EPIPE instead).
/// The line is formatted first and written in one call: stderr is unbuffered, and a line
/// written in pieces could be cut by the output thread's writes.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// Like `log!`, for stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }};
}

const USAGE: &str = "\
usage: handover-test-worker [OPTIONS]

  --report DIR             write DIR/<pid>.json describing the inherited process state
  --ready-after MS         send READY=1 to NOTIFY_SOCKET MS ms after start
  --ready-via-child        send readiness by running `systemd-notify --ready` instead
  --status TEXT            also send STATUS=TEXT with READY=1
  --exit-after MS CODE     exit with CODE MS ms after start
  --exit-after-ready CODE  exit with CODE right after sending READY=1
  --ignore-term            ignore SIGTERM (default: report it on stderr and exit 0)
  --child                  start `sleep 3600` in the same process group
  --grandchild             start `sleep 3600` double-forked into a new session
  --grandchild-ignores-term  --grandchild, with the sleeper ignoring SIGTERM
  --marker VALUE           HANDOVER_TEST_MARKER value for --child/--grandchild (default child)
  --stderr TEXT            write TEXT as a line to stderr at start (repeatable)
  --serve                  answer HTTP requests on fd 3 with the pid
  --accept-batch N         with --serve: accept up to N connections at once, greedily, and
                           answer them only after --answer-delay-ms (1..=1000); the drain of
                           frameworks that batch accepts: SIGTERM drops what is unread
  --answer-delay-ms MS     the delay before a batch is answered (default 20)
  --stop-flag              SIGTERM only sets a flag, seen after the next accept() returns
  --drain                  with --serve: on SIGTERM stop accepting, finish the connections
                           accepted, then exit 0 (a worker that drains politely)
  --health-until PREFIX    answer HTTP on the socket named \"health\" until PREFIX.PID exists
  --hog-memory-at PREFIX   once PREFIX.PID exists, allocate and touch memory, 1 MiB at a time,
                           up to 512 MiB (an OOM kill at a lower memory limit ends it first)
  --threads N              start N idle threads at once (1..=1000) and say how many started
                           (PID: its own), then accept no more there (the socket stays open)
  --watchdog-until PREFIX  send WATCHDOG=1 every WATCHDOG_USEC/4 until PREFIX.PID exists
                           (a server blocked in accept(), like Werkzeug's development one)
  --notify-raw HEX         send this hex-encoded datagram to NOTIFY_SOCKET (repeatable)
  --notify-raw-repeat N    send each raw datagram N times (1..=1000000)
  --sleep-forever          after all actions, sleep until a signal (the default)

Output (written by a thread of its own, in this order, after --output-after-file):
  --output-after-file PATH wait until PATH exists before writing any of the output below
  --write-stdout-hex HEX   write these hex-encoded bytes to stdout in one write (repeatable)
  --write-stderr-hex HEX   the same for stderr (repeatable); then `hex done` on stderr
  --big-line BYTES         write one line of BYTES pattern bytes to stdout, then
                           `big line done` on stderr (1..=1073741824)
  --no-newline             end --big-line without its newline
  --endless-no-newline BYTES
                           write BYTES pattern bytes to stdout and never a newline, then
                           `endless done` on stderr (1..=1073741824)
  --byte-rate B            write --big-line and --endless-no-newline at B bytes a second,
                           4 KiB at a time (default: as fast as possible)
  --flood-stdout N         write N numbered lines `line 00000001 abc...` to stdout
                           (1..=10000000), then `flood done` on stderr
  --flood-stderr N         the same on stderr, after the stdout flood
  --line-bytes B           length of each flood line, newline included (16..=65536,
                           default 64)
  --flood-rate N           write N flood lines a second (default: as fast as possible)
  --flood-pause-at N PATH  after line N of a flood, say `flood paused after line N` on
                           stderr and wait until PATH exists

The pattern is ten-byte blocks, each its own offset in nine decimal digits and a `.`
(`000000000.000000010.000000020.`), so any piece of it shows where it belongs.

  -h, --help               show this help";

/// Timers beyond a day make no sense in tests and would only hide mistakes.
const MAX_MS: u64 = 86_400_000;
/// The worker sleeps at most this long once everything is done, so a forgotten one goes away.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The raw datagram repeat count is capped so a typo cannot flood forever.
const MAX_REPEAT: u64 = 1_000_000;
/// `LISTEN_FDS` beyond this is not believed when describing sockets.
const MAX_LISTEN_FDS: usize = 1024;
/// At most this many connections are served at once by `--serve`.
const MAX_SERVE_THREADS: usize = 64;
/// `--serve` gives up after this many accept failures in a row instead of spinning.
const MAX_ACCEPT_ERRORS: u32 = 1000;
/// A request head is read up to this size before it is answered anyway.
const MAX_HEAD: usize = 16 * 1024;
/// The most lines a flood writes; their numbers have eight digits.
const MAX_FLOOD: u64 = 10_000_000;
/// The most bytes `--big-line` and `--endless-no-newline` write.
const MAX_BIG: u64 = 1 << 30;
/// The shortest flood line: `line 00000001`, a space, one letter and the newline.
const MIN_LINE_BYTES: usize = 16;
/// The longest flood line.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// The highest `--flood-rate` and `--byte-rate`.
const MAX_RATE: u64 = 1_000_000_000;
/// Paced byte output is written in pieces of this size.
const RATE_CHUNK: usize = 4096;

#[derive(Debug, Default, Clone)]
struct Output {
    after_file: Option<PathBuf>,
    stdout_hex: Vec<Vec<u8>>,
    stderr_hex: Vec<Vec<u8>>,
    big_line: Option<u64>,
    no_newline: bool,
    endless: Option<u64>,
    byte_rate: Option<u64>,
    flood_stdout: u64,
    flood_stderr: u64,
    line_bytes: usize,
    flood_rate: Option<u64>,
    flood_pause: Option<(u64, PathBuf)>,
}

impl Output {
    fn any(&self) -> bool {
        !self.stdout_hex.is_empty()
            || !self.stderr_hex.is_empty()
            || self.big_line.is_some()
            || self.endless.is_some()
            || self.flood_stdout > 0
            || self.flood_stderr > 0
    }
}

#[derive(Debug, Default)]
struct Config {
    report: Option<PathBuf>,
    ready_after: Option<u64>,
    ready_via_child: bool,
    status: Option<String>,
    exit_after: Option<(u64, i32)>,
    exit_after_ready: Option<i32>,
    ignore_term: bool,
    child: bool,
    grandchild: bool,
    grandchild_ignores_term: bool,
    marker: Option<String>,
    stderr_lines: Vec<String>,
    serve: bool,
    accept_batch: usize,
    answer_delay_ms: u64,
    stop_flag: bool,
    health_until: Option<PathBuf>,
    drain: bool,
    watchdog_until: Option<PathBuf>,
    hog_memory_at: Option<PathBuf>,
    threads: usize,
    notify_raw: Vec<Vec<u8>>,
    notify_raw_repeat: u64,
    output: Output,
}

enum Parsed {
    Run(Box<Config>),
    Help,
}

/// The C entry point; see the module documentation for why std's start-up is skipped. Unit
/// tests use the harness's own entry point instead.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    let start = Instant::now();
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match parse_args(&args) {
        Ok(Parsed::Run(cfg)) => run(&cfg, start),
        Ok(Parsed::Help) => {
            out!("{USAGE}");
            0
        }
        Err(msg) => {
            log!("handover-test-worker: {msg}");
            log!("{USAGE}");
            2
        }
    }
}

fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut cfg = Config {
        notify_raw_repeat: 1,
        answer_delay_ms: 20,
        output: Output {
            line_bytes: 64,
            ..Output::default()
        },
        ..Config::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs {what}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--report" => cfg.report = Some(PathBuf::from(value("a directory")?)),
            "--ready-after" => cfg.ready_after = Some(parse_ms(&value("milliseconds")?)?),
            "--ready-via-child" => cfg.ready_via_child = true,
            "--status" => cfg.status = Some(value("a text")?),
            "--exit-after" => {
                let ms = parse_ms(&value("milliseconds and an exit code")?)?;
                let code = parse_code(&value("an exit code")?)?;
                cfg.exit_after = Some((ms, code));
            }
            "--exit-after-ready" => {
                cfg.exit_after_ready = Some(parse_code(&value("an exit code")?)?)
            }
            "--ignore-term" => cfg.ignore_term = true,
            "--child" => cfg.child = true,
            "--grandchild" => cfg.grandchild = true,
            "--grandchild-ignores-term" => {
                cfg.grandchild = true;
                cfg.grandchild_ignores_term = true;
            }
            "--marker" => cfg.marker = Some(value("a value")?),
            "--stderr" => cfg.stderr_lines.push(value("a text")?),
            "--serve" => cfg.serve = true,
            "--accept-batch" => {
                cfg.accept_batch = match value("a count")?.parse::<usize>() {
                    Ok(n @ 1..=1000) => n,
                    _ => return Err("--accept-batch takes 1..=1000".into()),
                }
            }
            "--answer-delay-ms" => {
                cfg.answer_delay_ms = value("milliseconds")?
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= MAX_MS)
                    .ok_or("--answer-delay-ms takes a number of milliseconds")?
            }
            "--stop-flag" => cfg.stop_flag = true,
            "--drain" => cfg.drain = true,
            "--health-until" => cfg.health_until = Some(PathBuf::from(value("a path")?)),
            "--watchdog-until" => cfg.watchdog_until = Some(PathBuf::from(value("a path")?)),
            "--hog-memory-at" => cfg.hog_memory_at = Some(PathBuf::from(value("a path")?)),
            "--threads" => {
                cfg.threads = match value("a count")?.parse::<usize>() {
                    Ok(n @ 1..=1000) => n,
                    _ => return Err("--threads takes 1..=1000".into()),
                }
            }
            "--notify-raw" => {
                let hex = value("hex bytes")?;
                cfg.notify_raw.push(
                    decode_hex(&hex).ok_or_else(|| format!("--notify-raw: {hex:?} is not hex"))?,
                );
            }
            "--notify-raw-repeat" => {
                let v = value("a count")?;
                cfg.notify_raw_repeat = match v.parse::<u64>() {
                    Ok(n) if (1..=MAX_REPEAT).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "--notify-raw-repeat: {v:?} is not in 1..={MAX_REPEAT}"
                        ))
                    }
                };
            }
            "--sleep-forever" => {}
            "--output-after-file" => cfg.output.after_file = Some(PathBuf::from(value("a path")?)),
            "--write-stdout-hex" | "--write-stderr-hex" => {
                let hex = value("hex bytes")?;
                let bytes =
                    decode_hex(&hex).ok_or_else(|| format!("{flag}: {hex:?} is not hex"))?;
                if flag == "--write-stdout-hex" {
                    cfg.output.stdout_hex.push(bytes);
                } else {
                    cfg.output.stderr_hex.push(bytes);
                }
            }
            "--big-line" => {
                cfg.output.big_line = Some(parse_bounded(flag, &value("a size")?, 1, MAX_BIG)?)
            }
            "--no-newline" => cfg.output.no_newline = true,
            "--endless-no-newline" => {
                cfg.output.endless = Some(parse_bounded(flag, &value("a size")?, 1, MAX_BIG)?)
            }
            "--byte-rate" => {
                cfg.output.byte_rate = Some(parse_bounded(flag, &value("a rate")?, 1, MAX_RATE)?)
            }
            "--flood-stdout" => {
                cfg.output.flood_stdout = parse_bounded(flag, &value("a count")?, 1, MAX_FLOOD)?
            }
            "--flood-stderr" => {
                cfg.output.flood_stderr = parse_bounded(flag, &value("a count")?, 1, MAX_FLOOD)?
            }
            "--line-bytes" => {
                cfg.output.line_bytes = parse_bounded(
                    flag,
                    &value("a length")?,
                    MIN_LINE_BYTES as u64,
                    MAX_LINE_BYTES as u64,
                )? as usize
            }
            "--flood-rate" => {
                cfg.output.flood_rate = Some(parse_bounded(flag, &value("a rate")?, 1, MAX_RATE)?)
            }
            "--flood-pause-at" => {
                let line = parse_bounded(flag, &value("a line number and a path")?, 1, MAX_FLOOD)?;
                cfg.output.flood_pause = Some((line, PathBuf::from(value("a path")?)));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Parsed::Run(Box::new(cfg)))
}

fn parse_ms(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(ms) if ms <= MAX_MS => Ok(ms),
        _ => Err(format!(
            "{v:?} is not a number of milliseconds (0..={MAX_MS})"
        )),
    }
}

fn parse_bounded(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not in {min}..={max}")),
    }
}

fn parse_code(v: &str) -> Result<i32, String> {
    v.parse::<u8>()
        .map(i32::from)
        .map_err(|_| format!("{v:?} is not an exit code (0..=255)"))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.as_bytes();
    // An odd count cannot be whole bytes. (`is_multiple_of` would need Rust 1.87.)
    if hex.len() & 1 == 1 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

fn run(cfg: &Config, start: Instant) -> c_int {
    let me = std::process::id();
    for line in &cfg.stderr_lines {
        log!("{line}");
    }
    // The report is gathered first, while the process state is still exactly what the
    // supervisor handed over. The status lines come before anything else, so that the signal
    // mask they show is the inherited one.
    let status = cfg.report.as_ref().map(|_| status_lines());

    // SIGTERM stays blocked until our disposition is in place, so a stop that arrives during
    // start-up is handled as configured instead of killing us with the default action.
    let term_set = sigset_of(libc::SIGTERM);
    // The inherited mask is kept for our children, which should not see our temporary block.
    let mut inherited_mask = sigset_of_none();
    // SAFETY: changing this thread's signal mask with a properly initialised set; the old mask
    // is written to valid memory.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &term_set, &mut inherited_mask) };
    let report = status.map(collect_report);
    // From here on a closed peer must show up as EPIPE, not kill the worker, as in any Rust
    // program; this happens only after the inherited disposition was recorded.
    // SAFETY: setting a signal disposition to the constant SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    if let (Some(dir), Some(report)) = (&cfg.report, report) {
        if let Err(e) = write_report(dir, me, &report) {
            log!(
                "test-worker {me}: cannot write report to {}: {e}",
                dir.display()
            );
            return 1;
        }
    }
    let marker = cfg.marker.as_deref().unwrap_or("child");
    // Children are started before any thread exists, which keeps fork() in spawn_grandchild
    // safe, and before our SIGTERM disposition is set, so that they do not inherit an ignored
    // SIGTERM.
    if cfg.child {
        match sleep_command(marker, inherited_mask, false).spawn() {
            Ok(child) => log!("test-worker {me}: child {} started", child.id()),
            Err(e) => log!("test-worker {me}: cannot start child: {e}"),
        }
    }
    if cfg.grandchild {
        if let Err(e) = spawn_grandchild(marker, inherited_mask, cfg.grandchild_ignores_term) {
            log!("test-worker {me}: cannot start grandchild: {e}");
        }
    }

    if cfg.ignore_term {
        // SAFETY: setting a signal disposition to the constant SIG_IGN.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    } else if cfg.stop_flag || cfg.drain {
        install_flag_handler();
    } else {
        install_term_handler();
    }
    // SAFETY: changing this thread's signal mask with a properly initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &term_set, std::ptr::null_mut()) };

    for datagram in &cfg.notify_raw {
        send_raw_repeated(me, datagram, cfg.notify_raw_repeat);
    }
    if cfg.serve {
        start_serving(me, cfg.accept_batch, cfg.answer_delay_ms, cfg.drain);
    }
    let own = |prefix: &PathBuf| {
        let mut path = prefix.clone().into_os_string();
        path.push(format!(".{me}"));
        PathBuf::from(path)
    };
    if let Some(prefix) = &cfg.health_until {
        serve_health(me, own(prefix));
    }
    if let Some(prefix) = &cfg.watchdog_until {
        ping_watchdog(me, own(prefix));
    }
    if let Some(prefix) = &cfg.hog_memory_at {
        hog_memory(me, own(prefix));
    }
    if cfg.threads > 0 {
        start_idle_threads(me, cfg.threads);
    }
    if cfg.output.any() {
        let output = cfg.output.clone();
        let spawned = std::thread::Builder::new()
            .name("output".to_owned())
            .spawn(move || write_output(me, &output));
        if let Err(e) = spawned {
            log!("test-worker {me}: cannot start the output thread: {e}");
        }
    }

    // The timed actions run in time order; readiness goes first when both fall together.
    let ready_at = cfg
        .ready_after
        .or(if cfg.ready_via_child { Some(0) } else { None });
    let mut events: Vec<(u64, Option<i32>)> = Vec::new();
    if let Some(ms) = ready_at {
        events.push((ms, None));
    }
    if let Some((ms, code)) = cfg.exit_after {
        events.push((ms, Some(code)));
    }
    events.sort_by_key(|(ms, exit)| (*ms, exit.is_some()));
    for (ms, exit) in events {
        sleep_until(start + Duration::from_millis(ms));
        match exit {
            Some(code) => {
                log!("test-worker {me}: exiting with {code} as asked");
                std::process::exit(code);
            }
            None => {
                send_ready(me, cfg);
                if let Some(code) = cfg.exit_after_ready {
                    log!("test-worker {me}: exiting with {code} after READY=1");
                    std::process::exit(code);
                }
            }
        }
    }
    sleep_until(start + MAX_LIFETIME);
    log!("test-worker {me}: lived for the maximum lifetime, exiting");
    0
}

/// Sleeps until `deadline`; std's sleep resumes after signal interruptions, and each pass
/// sleeps for the whole remaining time, so this neither spins nor overshoots.
fn sleep_until(deadline: Instant) {
    for _ in 0..1000 {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(deadline - now);
    }
}

fn sigset_of_none() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset then initialises it properly.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

fn sigset_of(sig: c_int) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset then initialises it properly.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    set
}

/// Handles SIGTERM with only async-signal-safe calls: format the pid by hand, write, _exit.
extern "C" fn on_term(_sig: c_int) {
    let mut buf = [0u8; 64];
    let prefix = b"worker ";
    let suffix = b" got SIGTERM\n";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 || n == digits.len() {
            break;
        }
    }
    for i in (0..n).rev() {
        buf[len] = digits[i];
        len += 1;
    }
    buf[len..len + suffix.len()].copy_from_slice(suffix);
    len += suffix.len();
    // SAFETY: write and _exit are async-signal-safe; buf holds len initialised bytes.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(0);
    }
}

/// `--stop-flag`: set by SIGTERM, seen by the serving thread after each accept.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term_flag(_sig: c_int) {
    STOP.store(true, Ordering::SeqCst);
    let message = b"worker got SIGTERM; stopping after the next accept\n";
    // SAFETY: write is async-signal-safe; the buffer is a static string.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

fn install_flag_handler() {
    // SAFETY: sigaction is plain data; zero is a valid starting value for every field.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_term_flag as extern "C" fn(c_int) as usize;
    // SAFETY: sa_mask is a valid sigset_t inside action; the handler only stores an atomic
    // and writes; no SA_RESTART, but accept() restarts in std anyway (EINTR is retried).
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// `--accept-batch`: accepts greedily (one blocking accept, then as many as are waiting, up
/// to `batch`), waits `delay`, then answers them all. A SIGTERM (the default handler exits at
/// once) drops every connection accepted and not answered yet, as frameworks that batch
/// their accepts do.
fn batch_loop(me: u32, listener: Listener, batch: usize, delay: Duration) {
    let Listener::Tcp(listener) = listener else {
        log!("test-worker {me}: --accept-batch serves TCP only");
        return;
    };
    // Non-blocking for good, as an event loop makes it: O_NONBLOCK belongs to the open
    // socket, which the generation's workers share, so switching it back and forth would
    // leave another worker's "greedy" accept blocked with its batch unanswered.
    let _ = listener.set_nonblocking(true);
    loop {
        let mut accepted = Vec::with_capacity(batch);
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the listener we hold.
        if unsafe { libc::poll(&mut poll, 1, -1) } < 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        while accepted.len() < batch {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    accepted.push(s);
                }
                Err(_) => break,
            }
        }
        if accepted.is_empty() {
            continue;
        }
        std::thread::sleep(delay);
        for conn in accepted {
            if ACTIVE.fetch_add(1, Ordering::SeqCst) < MAX_SERVE_THREADS {
                let spawned = std::thread::Builder::new().spawn(move || {
                    answer(me, Box::new(conn));
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                }
            } else {
                answer(me, Box::new(conn));
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn install_term_handler() {
    // SAFETY: sigaction is plain data; zero is a valid starting value for every field.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_term as extern "C" fn(c_int) as usize;
    // SAFETY: sa_mask is a valid sigset_t inside action; the handler only uses
    // async-signal-safe functions.
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// `sleep 3600` carrying the marker in its environment, so tests can find it in /proc. It
/// starts with `mask`, the signal mask this worker inherited: std's spawn keeps the caller's
/// mask, which here still blocks SIGTERM, and a child that cannot be terminated would make
/// every test about stray children meaningless.
fn sleep_command(marker: &str, mask: libc::sigset_t, ignore_term: bool) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("3600").env("HANDOVER_TEST_MARKER", marker);
    // SAFETY: the hook runs between fork and exec and only calls pthread_sigmask and signal,
    // which are async-signal-safe, on values captured by value.
    unsafe {
        cmd.pre_exec(move || {
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
            // An ignored signal stays ignored across exec.
            if ignore_term {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    cmd
}

/// Double-forks so that the sleeper ends up in a new session, reparented away from us.
fn spawn_grandchild(marker: &str, mask: libc::sigset_t, ignore_term: bool) -> io::Result<()> {
    // SAFETY: the process has a single thread here (see run()), so the child may allocate
    // and use std freely before it exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: setsid has no memory-safety preconditions.
        let sid = unsafe { libc::setsid() };
        let code = if sid < 0 {
            3
        } else {
            match sleep_command(marker, mask, ignore_term).spawn() {
                Ok(grandchild) => {
                    log!(
                        "test-worker {}: grandchild {} started in a new session",
                        std::process::id(),
                        grandchild.id()
                    );
                    0
                }
                Err(_) => 4,
            }
        };
        // _exit skips destructors and buffers that belong to the parent's copy of the state.
        // SAFETY: _exit never returns and has no preconditions.
        unsafe { libc::_exit(code) };
    }
    let mut status: c_int = 0;
    // SAFETY: waiting for the child we just forked; status is valid memory.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "intermediate process ended with status {status:#x}"
        )))
    }
}

/// Sends one datagram to `NOTIFY_SOCKET`, supporting '@' for the abstract namespace.
fn send_notify(payload: &[u8]) -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "NOTIFY_SOCKET is not set",
        ));
    };
    let sock = UnixDatagram::unbound()?;
    // A receiver that never reads must not hang the worker.
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    let bytes = target.as_bytes();
    match bytes.first() {
        Some(b'/') => sock.send_to(payload, Path::new(&target))?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(payload, &addr)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract name",
            ))
        }
    };
    Ok(())
}

fn send_raw_repeated(me: u32, datagram: &[u8], repeat: u64) {
    for i in 0..repeat {
        if let Err(e) = send_notify(datagram) {
            // A refusing or stuck receiver stays that way; more attempts would only add noise.
            log!("test-worker {me}: raw datagram {i} of {repeat} not sent: {e}");
            return;
        }
    }
}

fn send_ready(me: u32, cfg: &Config) {
    if cfg.ready_via_child {
        let mut cmd = Command::new("systemd-notify");
        cmd.arg("--ready");
        if let Some(status) = &cfg.status {
            cmd.arg(format!("--status={status}"));
        }
        match run_bounded(cmd, Duration::from_secs(10)) {
            Ok(status) => {
                log!("test-worker {me}: systemd-notify --ready exited with {status}")
            }
            Err(e) => log!("test-worker {me}: systemd-notify --ready failed: {e}"),
        }
        return;
    }
    let mut message = String::from("READY=1");
    if let Some(status) = &cfg.status {
        message.push_str("\nSTATUS=");
        message.push_str(status);
    }
    match send_notify(message.as_bytes()) {
        Ok(()) => log!("test-worker {me}: sent READY=1"),
        Err(e) => log!("test-worker {me}: cannot send READY=1: {e}"),
    }
}

/// Runs a command and waits at most `limit` for it, killing it if it overstays.
fn run_bounded(mut cmd: Command, limit: Duration) -> io::Result<std::process::ExitStatus> {
    let mut child = cmd.stdin(Stdio::null()).spawn()?;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait()
}

// ----------------------------------------------------------------------------------------
// --report
// ----------------------------------------------------------------------------------------

fn collect_report(status: Value) -> Value {
    // SAFETY: these process queries have no preconditions and cannot fail for ourselves.
    let (pid, ppid, pgid, sid) = unsafe {
        (
            libc::getpid(),
            libc::getppid(),
            libc::getpgrp(),
            libc::getsid(0),
        )
    };
    // The fd list is taken first, before reading other files opens descriptors of its own.
    let fds = list_fds();
    let listen_fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_LISTEN_FDS);
    let sockets: Vec<Value> = (0..listen_fds)
        .map(|i| describe_socket(3 + i as RawFd))
        .collect();
    let dev_fd_open = if fd_is_open(3) {
        Value::String(try_open_dev_fd3())
    } else {
        Value::Null
    };
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cwd = std::env::current_dir()
        .map(|p| Value::String(p.to_string_lossy().into_owned()))
        .unwrap_or(Value::Null);
    json!({
        "pid": pid,
        "ppid": ppid,
        "pgid": pgid,
        "sid": sid,
        "argv": argv,
        "cwd": cwd,
        "env": env,
        "fds": fds,
        "sockets": sockets,
        "status": status,
        "dev_fd_open": dev_fd_open,
    })
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Lists /proc/self/fd. The directory's own descriptor is closed before the entries are
/// examined, so it is recognised by no longer being open and left out.
fn list_fds() -> Value {
    let numbers: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .take(65_536)
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut entries = Vec::new();
    let mut sorted = numbers;
    sorted.sort_unstable();
    for fd in sorted {
        // SAFETY: F_GETFD only inspects the descriptor table.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            continue;
        }
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| Value::String(p.to_string_lossy().into_owned()))
            .unwrap_or(Value::Null);
        entries.push(json!({
            "fd": fd,
            "target": target,
            "cloexec": flags & libc::FD_CLOEXEC != 0,
        }));
    }
    Value::Array(entries)
}

fn getsockopt_int(fd: RawFd, opt: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: value and len describe valid memory of the announced size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The local address of a socket, with its family.
enum Local {
    Inet(String),
    Inet6(String),
    Unix(String),
    Other(c_int),
}

fn local_address(fd: RawFd) -> io::Result<Local> {
    // SAFETY: sockaddr_storage is plain data; all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any address and len says so.
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
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    Ok(match c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in; storage is large and aligned enough.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Local::Inet(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).to_string())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6; storage is large and aligned enough.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let addr = SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            );
            Local::Inet6(addr.to_string())
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel filled a sockaddr_un; storage is large and aligned enough.
            let sun: libc::sockaddr_un =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let offset = std::mem::size_of::<libc::sa_family_t>();
            let path_len = len.saturating_sub(offset).min(sun.sun_path.len());
            let raw: Vec<u8> = sun.sun_path[..path_len].iter().map(|c| *c as u8).collect();
            Local::Unix(render_unix_path(&raw))
        }
        other => Local::Other(other),
    })
}

/// Renders a unix socket path: abstract names get the conventional '@' prefix.
fn render_unix_path(raw: &[u8]) -> String {
    match raw.first() {
        None => String::new(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&raw[1..])),
        Some(_) => {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    }
}

fn describe_socket(fd: RawFd) -> Value {
    let sock_type = match getsockopt_int(fd, libc::SO_TYPE) {
        Ok(libc::SOCK_STREAM) => "stream",
        Ok(libc::SOCK_DGRAM) => "dgram",
        _ => "other",
    };
    let listening = getsockopt_int(fd, libc::SO_ACCEPTCONN)
        .map(|v| v != 0)
        .unwrap_or(false);
    // SAFETY: F_GETFL only reads the open file's status flags.
    let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    let (family, local, error) = match local_address(fd) {
        Ok(Local::Inet(a)) => ("inet", Value::String(a), Value::Null),
        Ok(Local::Inet6(a)) => ("inet6", Value::String(a), Value::Null),
        Ok(Local::Unix(a)) => ("unix", Value::String(a), Value::Null),
        Ok(Local::Other(f)) => ("other", Value::Null, Value::String(format!("family {f}"))),
        Err(e) => (
            "other",
            Value::Null,
            Value::String(errno_name(e.raw_os_error().unwrap_or(0))),
        ),
    };
    json!({
        "fd": fd,
        "family": family,
        "type": sock_type,
        "listening": listening,
        "nonblocking": nonblocking,
        "local": local,
        "error": error,
    })
}

/// Opens /dev/fd/3, which Linux refuses for sockets with ENXIO; anything else is worth seeing.
fn try_open_dev_fd3() -> String {
    let path = c"/dev/fd/3";
    // O_NONBLOCK keeps a FIFO at fd 3 from blocking the report.
    // SAFETY: path is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return errno_name(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    "ok".to_owned()
}

fn status_lines() -> Value {
    const KEYS: [&str; 9] = [
        "Umask",
        "Uid",
        "Gid",
        "Groups",
        "SigBlk",
        "SigIgn",
        "SigCgt",
        "NoNewPrivs",
        "CapEff",
    ];
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out = serde_json::Map::new();
    for key in KEYS {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
            .map(|v| Value::String(v.trim().to_owned()))
            .unwrap_or(Value::Null);
        out.insert(key.to_owned(), value);
    }
    // "Max open files  SOFT  HARD  files" from /proc/self/limits, as "SOFT HARD".
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nofile = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .map(|rest| {
            let v: Vec<&str> = rest.split_whitespace().take(2).collect();
            Value::String(v.join(" "))
        })
        .unwrap_or(Value::Null);
    out.insert("nofile".to_owned(), nofile);
    Value::Object(out)
}

fn errno_name(code: c_int) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("E{code}"),
    };
    name.to_owned()
}

fn write_report(dir: &Path, pid: u32, report: &Value) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{pid}.json.tmp"));
    let dest = dir.join(format!("{pid}.json"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    // A rename is atomic, so a reader sees either no report or a complete one.
    std::fs::rename(&tmp, &dest)
}

// ----------------------------------------------------------------------------------------
// Output: hex bytes, big lines, endless lines and floods
// ----------------------------------------------------------------------------------------

/// Writes the requested output, in the order the usage text gives. Every failure is logged
/// and ends that part of the output; nothing here panics or blocks longer than a write does.
fn write_output(me: u32, output: &Output) {
    if let Some(path) = &output.after_file {
        if !wait_for_file(path) {
            log!(
                "test-worker {me}: {} did not appear; no output written",
                path.display()
            );
            return;
        }
    }
    if !output.stdout_hex.is_empty() || !output.stderr_hex.is_empty() {
        for bytes in &output.stdout_hex {
            if let Err(e) = raw_fd(1).write_all(bytes) {
                log!("test-worker {me}: writing stdout failed: {e}");
                break;
            }
        }
        for bytes in &output.stderr_hex {
            if let Err(e) = raw_fd(2).write_all(bytes) {
                log!("test-worker {me}: writing stderr failed: {e}");
                break;
            }
        }
        log!("test-worker {me}: hex done");
    }
    if let Some(len) = output.big_line {
        let newline = !output.no_newline;
        match write_pattern(len, newline, output.byte_rate) {
            Ok(()) => log!("test-worker {me}: big line done: {len} bytes"),
            Err(e) => log!("test-worker {me}: writing the big line failed: {e}"),
        }
    }
    if let Some(len) = output.endless {
        match write_pattern(len, false, output.byte_rate) {
            Ok(()) => log!("test-worker {me}: endless done: {len} bytes without a newline"),
            Err(e) => log!("test-worker {me}: writing the endless line failed: {e}"),
        }
    }
    if output.flood_stdout > 0 || output.flood_stderr > 0 {
        let mut ok = true;
        for (fd, count) in [(1, output.flood_stdout), (2, output.flood_stderr)] {
            if count == 0 || !ok {
                continue;
            }
            if let Err(e) = flood(me, fd, count, output) {
                log!("test-worker {me}: flooding fd {fd} failed: {e}");
                ok = false;
            }
        }
        if ok {
            log!(
                "test-worker {me}: flood done: {} stdout lines, {} stderr lines",
                output.flood_stdout,
                output.flood_stderr
            );
        }
    }
}

/// Waits until `path` exists, at most for the worker's lifetime.
fn wait_for_file(path: &Path) -> bool {
    let deadline = Instant::now() + MAX_LIFETIME;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The inherited stdout (1) or stderr (2) as a file that is never closed.
fn raw_fd(fd: RawFd) -> std::mem::ManuallyDrop<std::fs::File> {
    // SAFETY: fds 1 and 2 belong to the process for its whole life and nothing else wraps
    // them in an owning type; ManuallyDrop keeps this wrapper from ever closing them. Were one
    // of them closed, writes would fail with EBADF, which the callers report.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Fills `buf` with the pattern's bytes from `offset` on (see the usage text).
fn pattern_into(offset: u64, buf: &mut [u8]) {
    for (k, byte) in buf.iter_mut().enumerate() {
        let i = offset + k as u64;
        let pos = i % 10;
        *byte = if pos == 9 {
            b'.'
        } else {
            let block = (i - pos) % 1_000_000_000;
            b'0' + ((block / 10u64.pow(8 - pos as u32)) % 10) as u8
        };
    }
}

/// Sleeps until `start` plus `done` units at `rate` units a second.
fn pace(start: Instant, done: u64, rate: u64) {
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    sleep_until(start + due);
}

/// Writes `len` pattern bytes to stdout, then a newline if asked.
fn write_pattern(len: u64, newline: bool, rate: Option<u64>) -> io::Result<()> {
    let mut out = raw_fd(1);
    let start = Instant::now();
    let chunk = if rate.is_some() {
        RATE_CHUNK
    } else {
        64 * 1024
    };
    let mut buf = vec![0u8; chunk];
    let mut written = 0u64;
    while written < len {
        let n = chunk.min((len - written) as usize);
        pattern_into(written, &mut buf[..n]);
        out.write_all(&buf[..n])?;
        written += n as u64;
        if let Some(rate) = rate {
            pace(start, written, rate);
        }
    }
    if newline {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Flood line `n`: `line 00000001`, a space and letters `abc...` up to `len` bytes with the
/// newline (`len` is at least [`MIN_LINE_BYTES`]; numbers beyond eight digits only come
/// from counts the parser refuses).
fn flood_line(n: u64, len: usize, line: &mut Vec<u8>) {
    line.clear();
    let _ = write!(line, "line {n:08} ");
    let mut letter = 0u8;
    while line.len() + 1 < len {
        line.push(b'a' + letter);
        letter = (letter + 1) % 26;
    }
    line.push(b'\n');
}

/// Writes `count` numbered lines to `fd`, buffered unless paced.
fn flood(me: u32, fd: RawFd, count: u64, output: &Output) -> io::Result<()> {
    let file = raw_fd(fd);
    let mut out = io::BufWriter::with_capacity(64 * 1024, &*file);
    let start = Instant::now();
    let mut line = Vec::with_capacity(output.line_bytes);
    for n in 1..=count {
        flood_line(n, output.line_bytes, &mut line);
        out.write_all(&line)?;
        if let Some(rate) = output.flood_rate {
            // A paced line goes out when it is due, not when the buffer happens to fill.
            out.flush()?;
            pace(start, n, rate);
        }
        if let Some((at, path)) = &output.flood_pause {
            if *at == n {
                out.flush()?;
                log!("test-worker {me}: flood paused after line {n}");
                if !wait_for_file(path) {
                    return Err(io::Error::other(format!(
                        "{} did not appear",
                        path.display()
                    )));
                }
                log!("test-worker {me}: flood resumed");
            }
        }
    }
    out.flush()
}

// ----------------------------------------------------------------------------------------
// --serve
// ----------------------------------------------------------------------------------------

/// A listening socket taken from fd 3.
enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

fn start_serving(me: u32, batch: usize, delay_ms: u64, drain: bool) {
    if !fd_is_open(3) {
        log!("test-worker {me}: --serve given but fd 3 is not open");
        return;
    }
    let listener = match local_address(3) {
        Ok(Local::Inet(_)) | Ok(Local::Inet6(_)) => {
            // SAFETY: fd 3 is an open socket handed over by the activation protocol; nothing
            // else in this process uses it, and it is wrapped exactly once.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
            Listener::Tcp(listener)
        }
        Ok(Local::Unix(_)) => {
            // SAFETY: as above, for a unix socket.
            let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
            Listener::Unix(listener)
        }
        Ok(Local::Other(f)) => {
            log!("test-worker {me}: fd 3 has unsupported family {f}");
            return;
        }
        Err(e) => {
            log!("test-worker {me}: fd 3 is not a socket: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("serve".to_owned())
        .spawn(move || {
            if batch > 0 {
                batch_loop(me, listener, batch, Duration::from_millis(delay_ms))
            } else if drain {
                drain_loop(me, listener)
            } else {
                accept_loop(me, listener)
            }
        });
    if let Err(e) = spawned {
        log!("test-worker {me}: cannot start the serving thread: {e}");
    }
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// The fd of the socket named `name` in `LISTEN_FDNAMES`.
fn named_fd(name: &str) -> Option<RawFd> {
    let names = std::env::var("LISTEN_FDNAMES").ok()?;
    let index = names.split(':').position(|n| n == name)?;
    Some(3 + index as RawFd)
}

/// Most `--hog-memory-at` takes, so that a worker without a limit stops well short of the
/// machine's memory.
const HOG_LIMIT_MIB: usize = 512;

/// `--hog-memory-at`: once `when` exists, takes memory a mebibyte at a time, every page
/// written so that it is really in use, up to [`HOG_LIMIT_MIB`]; then holds it.
fn hog_memory(me: u32, when: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("hog".to_owned())
        .spawn(move || {
            while !when.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
            log!("test-worker {me}: taking memory");
            let mut held: Vec<Vec<u8>> = Vec::with_capacity(HOG_LIMIT_MIB);
            for _ in 0..HOG_LIMIT_MIB {
                held.push(vec![0x5a; 1 << 20]);
                std::thread::sleep(Duration::from_millis(1));
            }
            log!("test-worker {me}: holding {HOG_LIMIT_MIB} MiB");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
                std::hint::black_box(&held);
            }
        });
    if let Err(e) = spawned {
        log!("test-worker {me}: cannot start the memory thread: {e}");
    }
}

/// `--threads`: starts `n` threads that only sleep, and says how many the kernel allowed.
fn start_idle_threads(me: u32, n: usize) {
    let started = (0..n)
        .take_while(|_| {
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(|| loop {
                    std::thread::sleep(Duration::from_secs(3600));
                })
                .is_ok()
        })
        .count();
    log!("test-worker {me}: started {started} of {n} threads");
}

/// `--health-until`: answers on the "health" socket, one connection at a time, until the
/// file exists; then accepts no more, keeping the socket open.
fn serve_health(me: u32, until: PathBuf) {
    let Some(fd) = named_fd("health") else {
        log!("test-worker {me}: --health-until given but no socket is named health");
        return;
    };
    // SAFETY: the fd is a listening socket passed by the activation protocol under this
    // name; nothing else in this process uses it, and it is wrapped exactly once.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let spawned = std::thread::Builder::new()
        .name("health".to_owned())
        .spawn(move || {
            let mut errors = 0;
            while errors < MAX_ACCEPT_ERRORS {
                match listener.accept() {
                    Ok(_) if until.exists() => {
                        log!("test-worker {me}: no longer answering health checks");
                        let _keep = listener;
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                    Ok((conn, _)) => answer(me, Box::new(conn)),
                    Err(_) => errors += 1,
                }
            }
        });
    if let Err(e) = spawned {
        log!("test-worker {me}: cannot start the health thread: {e}");
    }
}

/// `--watchdog-until`: keeps the watchdog fed until the file exists.
fn ping_watchdog(me: u32, until: PathBuf) {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        log!("test-worker {me}: --watchdog-until given but WATCHDOG_USEC is not set");
        return;
    };
    let pid_matches = std::env::var("WATCHDOG_PID").ok() == Some(me.to_string());
    log!("test-worker {me}: WATCHDOG_USEC={usec}, WATCHDOG_PID is mine: {pid_matches}");
    let spawned = std::thread::Builder::new()
        .name("watchdog".to_owned())
        .spawn(move || {
            let deadline = Instant::now() + MAX_LIFETIME;
            while !until.exists() && Instant::now() < deadline {
                let _ = send_notify(b"WATCHDOG=1");
                std::thread::sleep(Duration::from_micros(usec / 4));
            }
            log!("test-worker {me}: no longer sending WATCHDOG=1");
        });
    if let Err(e) = spawned {
        log!("test-worker {me}: cannot start the watchdog thread: {e}");
    }
}

fn accept_loop(me: u32, listener: Listener) {
    let mut errors = 0u32;
    // The loop lives as long as the process unless accepting keeps failing.
    while errors < MAX_ACCEPT_ERRORS {
        let accepted: io::Result<Box<dyn Conn>> = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
            Listener::Unix(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
        };
        let conn = match accepted {
            Ok(c) => {
                errors = 0;
                if STOP.load(Ordering::SeqCst) {
                    // Told to stop while asleep in accept(): this connection is not served.
                    log!("test-worker {me}: accept returned after SIGTERM; exiting");
                    std::process::exit(0);
                }
                c
            }
            Err(e) => {
                errors += 1;
                log!("test-worker {me}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if ACTIVE.fetch_add(1, Ordering::SeqCst) < MAX_SERVE_THREADS {
            let spawned = std::thread::Builder::new().spawn(move || {
                answer(me, conn);
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
            }
        } else {
            // Too many threads already: serve this one inline, which also applies back-pressure.
            answer(me, conn);
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    log!("test-worker {me}: too many accept errors, no longer serving");
}

/// Milliseconds since start of the last accept, for `--drain`.
static LAST_ACCEPT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `--drain`: serves every connection it accepts; once told to stop, accepts no more and
/// exits when the last one is answered. It waits for the socket with poll() first, so a
/// stop while no connection comes is seen at once (the socket's flags are shared with the
/// supervisor and the other workers, so it stays blocking); a connection another worker took
/// first leaves it in accept() until the next, which under load comes at once, and without
/// load the exit below does not wait for it.
fn drain_loop(me: u32, listener: Listener) {
    let fd = match &listener {
        Listener::Tcp(l) => std::os::fd::AsRawFd::as_raw_fd(l),
        Listener::Unix(l) => std::os::fd::AsRawFd::as_raw_fd(l),
    };
    let start = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("drain".to_owned())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(10));
            let idle = (start.elapsed().as_millis() as u64)
                .saturating_sub(LAST_ACCEPT_MS.load(Ordering::SeqCst));
            if STOP.load(Ordering::SeqCst) && ACTIVE.load(Ordering::SeqCst) == 0 && idle > 300 {
                log!("test-worker {me}: drained; exiting");
                std::process::exit(0);
            }
        });
    if let Err(e) = spawned {
        log!("test-worker {me}: cannot start the drain thread: {e}");
    }
    let mut errors = 0u32;
    while errors < MAX_ACCEPT_ERRORS && !STOP.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        let accepted: io::Result<Box<dyn Conn>> = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
            Listener::Unix(l) => l.accept().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
        };
        LAST_ACCEPT_MS.store(start.elapsed().as_millis() as u64, Ordering::SeqCst);
        match accepted {
            Ok(conn) => {
                errors = 0;
                ACTIVE.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().spawn(move || {
                    answer(me, conn);
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    ACTIVE.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                errors += 1;
                log!("test-worker {me}: accept failed: {e}");
            }
        }
    }
    if STOP.load(Ordering::SeqCst) {
        log!("test-worker {me}: told to stop; no longer accepting");
    }
    // The listener stays open (dropping it would close only our copy anyway) until exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What `answer` needs from a TCP or unix stream.
trait Conn: Read + Write + Send {
    fn set_timeouts(&self, t: Duration);
    fn shutdown_write(&self);
}

impl Conn for std::net::TcpStream {
    fn set_timeouts(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
        let _ = self.set_write_timeout(Some(t));
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Reads one request head (bounded in size and time) and answers with our pid.
fn answer(me: u32, mut conn: Box<dyn Conn>) {
    conn.set_timeouts(Duration::from_secs(5));
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    if head.is_empty() {
        return;
    }
    let body = format!("{me}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(response.as_bytes()).is_err() {
        return;
    }
    conn.shutdown_write();
    // Reading until the client closes keeps unread bytes from turning our close into a reset.
    conn.set_timeouts(Duration::from_secs(1));
    let mut discarded = 0;
    while discarded < 64 * 1024 {
        match conn.read(&mut chunk) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Parsed, String> {
        parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex("52454144593d31"), Some(b"READY=1".to_vec()));
        assert_eq!(decode_hex(""), Some(Vec::new()));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn flags_parse() {
        match args(&[
            "--exit-after",
            "10",
            "3",
            "--stderr",
            "a",
            "--stderr",
            "b",
            "--notify-raw",
            "00ff",
        ]) {
            Ok(Parsed::Run(c)) => {
                assert_eq!(c.exit_after, Some((10, 3)));
                assert_eq!(c.stderr_lines, vec!["a", "b"]);
                assert_eq!(c.notify_raw, vec![vec![0, 255]]);
            }
            _ => panic!("valid flags rejected"),
        }
        assert!(args(&["--nope"]).is_err());
        assert!(args(&["--exit-after", "10"]).is_err());
        assert!(args(&["--notify-raw-repeat", "0"]).is_err());
        assert!(args(&["--exit-after-ready", "256"]).is_err());
    }

    #[test]
    fn output_flags_parse() {
        match args(&[
            "--flood-stdout",
            "200000",
            "--line-bytes",
            "100",
            "--flood-rate",
            "3000",
            "--flood-pause-at",
            "10",
            "/x/resume",
            "--write-stdout-hex",
            "ff0a",
            "--big-line",
            "10485760",
            "--no-newline",
        ]) {
            Ok(Parsed::Run(c)) => {
                assert_eq!(c.output.flood_stdout, 200_000);
                assert_eq!(c.output.line_bytes, 100);
                assert_eq!(c.output.flood_rate, Some(3000));
                assert_eq!(c.output.flood_pause, Some((10, PathBuf::from("/x/resume"))));
                assert_eq!(c.output.stdout_hex, vec![vec![0xff, b'\n']]);
                assert_eq!(c.output.big_line, Some(10 << 20));
                assert!(c.output.no_newline);
            }
            _ => panic!("valid flags rejected"),
        }
        assert!(args(&["--flood-stdout", "0"]).is_err());
        assert!(args(&["--flood-stdout", "10000001"]).is_err());
        assert!(args(&["--line-bytes", "15"]).is_err());
        assert!(args(&["--big-line", "1073741825"]).is_err());
        assert!(args(&["--flood-pause-at", "3"]).is_err());
        assert!(args(&["--write-stderr-hex", "f"]).is_err());
    }

    #[test]
    fn pattern_and_flood_lines() {
        let mut buf = [0u8; 25];
        pattern_into(0, &mut buf);
        assert_eq!(&buf, b"000000000.000000010.00000");
        let mut buf = [0u8; 12];
        pattern_into(1_234_567_895, &mut buf);
        assert_eq!(&buf, b"7890.2345679", "offsets wrap at a billion");
        let mut line = Vec::new();
        flood_line(7, 20, &mut line);
        assert_eq!(line, b"line 00000007 abcde\n");
        flood_line(12, 16, &mut line);
        assert_eq!(line, b"line 00000012 a\n");
        flood_line(30, 45, &mut line);
        assert_eq!(line, b"line 00000030 abcdefghijklmnopqrstuvwxyzabcd\n");
    }

    #[test]
    fn unix_paths_render() {
        assert_eq!(render_unix_path(b"/run/x.sock\0\0"), "/run/x.sock");
        assert_eq!(render_unix_path(b"\0abstract"), "@abstract");
        assert_eq!(render_unix_path(b""), "");
    }
}
