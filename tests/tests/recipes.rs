//! The worker recipes of docs/workers/, proven on the real frameworks: every example app of
//! `examples/workers/` is installed from its registry (see `handover_tests::recipes`) and
//!
//! - run as 2 workers under handover, taking its socket by name (it is the second socket, so
//!   a recipe that took fd 3 would serve the wrong one), and reloaded again and again under
//!   new-connection load and then under keep-alive load, with not one failed request; every
//!   old generation drains by itself (nothing is killed, every worker exits 0), and a stop
//!   completes before the stop timeout;
//! - run by the real `systemd-socket-activate`, taking fd 3, saying READY=1, answering, and
//!   exiting 0 on SIGTERM.
//!
//! A framework that cannot be installed fails its tests, naming what is missing. Deadlines
//! only guard against hangs, apart from the stop timeout, which is what a stop must beat.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_tests::harness::{
    self, binary, children_of, collect_output, Handover, Lines, Options, TempDir, GUARD,
};
use handover_tests::loadgen::{self, LoadConfig, Mode, Summary};
use handover_tests::recipes::{self, example_dir};

/// Reloads in each load mode.
const RELOADS: u64 = 5;
/// Workers under handover.
const COUNT: u64 = 2;
/// `[worker] stop_timeout`: a stop must complete before it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// One load generator run; runs follow each other until the test stops the load.
const LOAD_SLICE: Duration = Duration::from_millis(500);
/// The load never runs longer than this, whatever the test does.
const LOAD_LIMIT: Duration = Duration::from_secs(300);
/// Nor does it attempt more requests than this.
const LOAD_MAX_REQUESTS: u64 = 5_000_000;
/// Waiting for a reload or a drain gives up after this long: a guard against hangs only.
const RELOAD_GUARD: Duration = Duration::from_secs(120);
/// Concurrent connections of the load.
const LOAD_CONCURRENCY: usize = 8;

/// How to run one example app.
struct Recipe {
    stack: &'static str,
    /// The program and its arguments, without the socket's name.
    command: Vec<String>,
    /// The arguments that select the inherited socket named `http`.
    by_name: Vec<String>,
    /// Environment of the app, under handover and systemd-socket-activate alike.
    env: Vec<(&'static str, &'static str)>,
    /// Environment that selects the inherited socket named `http`, for apps without options.
    by_name_env: Vec<(&'static str, &'static str)>,
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

/// The path an install made, or the test fails naming what is missing.
fn installed(result: Result<PathBuf, recipes::Missing>) -> PathBuf {
    result.unwrap_or_else(|missing| panic!("{missing}"))
}

/// Installs every recipe once, before any test runs its load, so that no download or build
/// competes with a reload for the CPU. Failures are kept, and fail only their own stack's
/// tests.
fn install_all() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        for stack in ["aiohttp", "uvicorn", "gunicorn", "flask", "twisted"] {
            let _ = recipes::python_venv(stack);
        }
        let _ = recipes::npm_install("express");
        let _ = recipes::go_build("go");
        let _ = recipes::cargo_build("axum", "axum-worker");
    });
}

fn socket_option() -> Vec<String> {
    vec!["--socket".into(), "http".into()]
}

fn python(stack: &'static str, script: &str) -> Recipe {
    install_all();
    let python = installed(recipes::python_venv(stack));
    Recipe {
        stack,
        command: vec![path(python), path(example_dir(stack).join(script))],
        by_name: socket_option(),
        // Keeps the examples' folders free of __pycache__.
        env: vec![("PYTHONDONTWRITEBYTECODE", "1")],
        by_name_env: vec![],
    }
}

fn aiohttp() -> Recipe {
    python("aiohttp", "app.py")
}

fn uvicorn() -> Recipe {
    python("uvicorn", "app.py")
}

fn flask() -> Recipe {
    python("flask", "app.py")
}

fn twisted() -> Recipe {
    python("twisted", "app.py")
}

fn gunicorn() -> Recipe {
    install_all();
    let python = installed(recipes::python_venv("gunicorn"));
    let dir = example_dir("gunicorn");
    Recipe {
        stack: "gunicorn",
        command: vec![
            path(python),
            "-m".into(),
            "gunicorn".into(),
            "--config".into(),
            path(dir.join("gunicorn.conf.py")),
            "--chdir".into(),
            path(dir),
            "app:app".into(),
        ],
        by_name: vec![],
        env: vec![("PYTHONDONTWRITEBYTECODE", "1")],
        by_name_env: vec![("SOCKET_NAME", "http")],
    }
}

fn express() -> Recipe {
    install_all();
    let dir = installed(recipes::npm_install("express"));
    let node = recipes::require_tool("node", "nodejs").unwrap_or_else(|e| panic!("{e}"));
    Recipe {
        stack: "express",
        command: vec![path(node), path(dir.join("app.js"))],
        by_name: socket_option(),
        env: vec![],
        by_name_env: vec![],
    }
}

fn go() -> Recipe {
    install_all();
    let program = installed(recipes::go_build("go"));
    Recipe {
        stack: "go",
        command: vec![path(program)],
        by_name: socket_option(),
        env: vec![],
        by_name_env: vec![],
    }
}

fn axum() -> Recipe {
    install_all();
    let program = installed(recipes::cargo_build("axum", "axum-worker"));
    Recipe {
        stack: "axum",
        command: vec![path(program)],
        by_name: socket_option(),
        env: vec![],
        by_name_env: vec![],
    }
}

fn shell() -> Recipe {
    install_all();
    recipes::require_tool("systemd-notify", "systemd").unwrap_or_else(|e| panic!("{e}"));
    Recipe {
        stack: "shell",
        command: vec![
            "/bin/sh".into(),
            path(example_dir("shell").join("worker.sh")),
            path(binary("handover-example-http")),
        ],
        by_name: socket_option(),
        env: vec![],
        by_name_env: vec![],
    }
}

// ---- HTTP by hand -------------------------------------------------------------------------

/// One `GET /` on a fresh connection: the status and the body.
fn get(port: u16) -> (u16, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + GUARD;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

// ---- under handover -----------------------------------------------------------------------

fn config(recipe: &Recipe, admin_port: u16, port: u16) -> String {
    let command: Vec<String> = recipe
        .command
        .iter()
        .chain(&recipe.by_name)
        .map(|a| format!("{a:?}"))
        .collect();
    let env: Vec<String> = recipe
        .env
        .iter()
        .chain(&recipe.by_name_env)
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect();
    format!(
        r#"
# A socket before the app's own, so that taking fd 3 would take the wrong one.
[[socket]]
name = "admin"
listen = "127.0.0.1:{admin_port}"

[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = [{command}]
count = {COUNT}
ready_timeout = "60s"
stop_timeout = "{stop}s"
env = {{ {env} }}

[reload]
drain_timeout = "{stop}s"
max_draining = 4
"#,
        command = command.join(", "),
        stop = STOP_TIMEOUT.as_secs(),
        env = env.join(", "),
    )
}

/// The load generator on the app's port, in the background.
fn start_load(port: u16, mode: Mode) -> loadgen::Background {
    let cfg = LoadConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        concurrency: LOAD_CONCURRENCY,
        duration: LOAD_SLICE,
        max_requests: LOAD_MAX_REQUESTS,
        mode,
        request_timeout: Duration::from_secs(10),
        path: "/".into(),
    };
    let load = loadgen::Background::start(cfg, LOAD_LIMIT);
    // The first slice proves that the load reaches the workers before anything happens.
    wait_slices(&load, 1);
    load
}

fn wait_slices(load: &loadgen::Background, n: u64) {
    let deadline = Instant::now() + GUARD;
    while load.slices() < n {
        assert!(Instant::now() < deadline, "the load generator is stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `count` lines of handover's log contain `needle`. The guard is longer than the
/// harness's: a reload of a Python or Node app on a loaded two-core machine may take a while,
/// and this only guards against a hang.
fn wait_for_count(h: &Handover, needle: &str, count: usize) {
    let deadline = Instant::now() + RELOAD_GUARD;
    while h.log.count(needle) < count {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {count} line(s) containing {needle:?}; log:\n{}",
            h.log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of handover's log that say a worker was killed, died, or stopped other than by
/// exiting 0.
fn unclean_exits(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("did not stop in time")
                || l.contains("worker died")
                || l.contains("reload aborted")
                || (l.contains("worker stopped:")
                    && !l.contains("worker stopped: exited with code 0"))
        })
        .collect()
}

fn reloads_lose_nothing_and_stop_in_time(recipe: Recipe) {
    let admin_port = harness::free_port();
    let port = harness::free_port();
    let mut h = Handover::start(
        &format!("recipe-{}", recipe.stack),
        &config(&recipe, admin_port, port),
        Options::default(),
    );
    wait_for_count(&h, &format!("all {COUNT} workers ready"), 1);
    let (status, body) = get(port);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("generation 1"), "{body}");

    let mut generation = 1;
    let mut summaries = Vec::new();
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let load = start_load(port, mode);
        for _ in 0..RELOADS {
            generation += 1;
            h.signal(libc::SIGHUP);
            let reloads = (generation - 1) as usize;
            wait_for_count(&h, "reload done in", reloads);
            // The old generation drains under the load, by itself, before the next reload.
            wait_for_count(&h, "generation draining has no workers left", reloads);
        }
        // The newest generation serves a while under the load too.
        let slices = load.slices();
        wait_slices(&load, slices + 2);
        let (summary, limited) = load.finish().expect("the load thread");
        assert!(!limited, "the load stopped by itself: {summary:?}");
        let json = serde_json::to_string(&summary).unwrap_or_default();
        eprintln!("{} {mode:?}: {json}", recipe.stack);
        summaries.push((mode, summary));
    }
    for (mode, summary) in &summaries {
        check_load(&recipe, *mode, summary);
    }
    let (status, body) = get(port);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("generation {generation}")),
        "the newest generation answers: {body}"
    );

    let began = Instant::now();
    let status = h.stop();
    let took = began.elapsed();
    let log = h.log.text();
    assert!(
        status.success(),
        "handover exited with {status}; log:\n{log}"
    );
    assert!(
        took < STOP_TIMEOUT,
        "the stop took {took:?}, not less than the stop timeout; log:\n{log}"
    );
    let unclean = unclean_exits(&log);
    assert!(
        unclean.is_empty(),
        "workers that did not exit 0 by themselves: {unclean:#?}\nlog:\n{log}"
    );
    // With its level, so that no warning that mentions a started worker counts.
    let started = h.log.count("INFO worker started generation=");
    assert_eq!(
        h.log.count("worker stopped: exited with code 0"),
        started,
        "every worker started exited 0; log:\n{log}"
    );
}

fn check_load(recipe: &Recipe, mode: Mode, summary: &Summary) {
    let json = serde_json::to_string(summary).unwrap_or_default();
    assert_eq!(
        summary.failed(),
        0,
        "{} under {mode:?} load: requests failed across {RELOADS} reloads: {json}",
        recipe.stack
    );
    // The load generator retries a request once when a reused keep-alive connection was
    // closed before any byte of the answer (as RFC 9112 allows); a client that does not would
    // have failed it. A polite drain announces every close with "Connection: close" first.
    assert_eq!(
        summary.idle_close_retries, 0,
        "{} under {mode:?} load: keep-alive connections closed without \"Connection: close\" \
         across {RELOADS} reloads: {json}",
        recipe.stack
    );
    assert!(summary.ok > 0, "no request succeeded: {json}");
    // Two workers per generation: more than two pids means more than one generation answered.
    assert!(
        summary.pids.len() > COUNT as usize,
        "{} under {mode:?} load: answers came from one generation only: {json}",
        recipe.stack
    );
}

// ---- under systemd-socket-activate --------------------------------------------------------

/// A process killed and reaped when the guard goes away.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `NOTIFY_SOCKET` read all the time, on a thread of its own, as a service manager does:
/// `systemd-notify` waits until its message was received (its BARRIER=1), so nothing may be
/// left unread while the app starts.
struct NotifyRecorder {
    path: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifyRecorder {
    fn new(path: &std::path::Path) -> NotifyRecorder {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                // Ends when the recorder is dropped; a plain recv() also closes passed fds.
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received.lock().expect("lock").push(text);
                    }
                }
            })
        };
        NotifyRecorder {
            path: path.to_path_buf(),
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (guarded) for a datagram with the line `line`.
    fn wait_for(&self, line: &str) {
        let deadline = Instant::now() + GUARD;
        loop {
            let received = self.received.lock().expect("lock").clone();
            if received.iter().any(|d| d.lines().any(|l| l == line)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} arrived; got {received:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NotifyRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn runs_under_systemd_socket_activate(recipe: Recipe) {
    recipes::require_tool("systemd-socket-activate", "systemd").unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new(&format!("recipe-activate-{}", recipe.stack));
    let notify = NotifyRecorder::new(&dir.path().join("notify.sock"));
    let notify_path = notify.path.clone();
    let port = harness::free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=http")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("PATH");
    for (key, value) in &recipe.env {
        cmd.arg("-E").arg(format!("{key}={value}"));
    }
    cmd.arg("--")
        .args(&recipe.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Proc(cmd.spawn().expect("spawn systemd-socket-activate"));
    let log = Lines::default();
    collect_output(child.0.stdout.take().expect("stdout"), log.clone(), true);
    collect_output(child.0.stderr.take().expect("stderr"), log.clone(), true);
    log.wait_for("Listening on");
    let pid = child.0.id() as i32;

    // Notifications are read while the app starts: systemd-notify waits until its message
    // was received.
    // The first connection makes systemd-socket-activate exec the app in place.
    let (status, body) = get(port);
    assert_eq!(status, 200, "{body}");
    notify.wait_for("READY=1");
    let answered = loadgen::pid_in_body(body.as_bytes()) as i32;
    assert!(
        answered == pid || children_of(pid).contains(&answered),
        "the answer names pid {answered}, neither the activated app {pid} nor one of its \
         children: {body}"
    );
    for _ in 0..20 {
        let (status, body) = get(port);
        assert_eq!(status, 200, "{body}");
    }

    harness::kill(pid, libc::SIGTERM);
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            began.elapsed() < STOP_TIMEOUT,
            "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM; output:\n{}",
            recipe.stack,
            log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{} exited with {status} on SIGTERM; output:\n{}",
        recipe.stack,
        log.text()
    );
}

// ---- the recipes --------------------------------------------------------------------------

macro_rules! recipe_tests {
    ($($stack:ident),* $(,)?) => {
        mod under_handover {
            $(
                /// 2 workers, reloads under new-connection and keep-alive load, 0 failures,
                /// and a stop before the stop timeout.
                #[test]
                fn $stack() {
                    super::reloads_lose_nothing_and_stop_in_time(super::$stack());
                }
            )*
        }
        mod under_systemd_socket_activate {
            $(
                /// fd 3 from the real systemd-socket-activate, READY=1, answers, exit 0.
                #[test]
                fn $stack() {
                    super::runs_under_systemd_socket_activate(super::$stack());
                }
            )*
        }
    };
}

recipe_tests!(aiohttp, uvicorn, gunicorn, flask, twisted, express, go, axum, shell);
