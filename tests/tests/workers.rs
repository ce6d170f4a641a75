//! End-to-end tests of handover's worker programs: the example HTTP worker, the flag-driven
//! test worker and the load generator. Workers run under `systemd-socket-activate`, which
//! execs them in place so that `LISTEN_PID` names the worker itself, as handover will.
//!
//! Deadlines here only guard against hangs; no assertion depends on how fast anything is.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use handover_tests::loadgen::{self, LoadConfig, Mode};
use serde_json::Value;

/// Generous guard against hangs; never a performance expectation.
const GUARD: Duration = Duration::from_secs(30);

const TEST_WORKER: &str = env!("CARGO_BIN_EXE_handover-test-worker");
const LOADGEN: &str = env!("CARGO_BIN_EXE_handover-loadgen");

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A name no other test in this run, or in a parallel run, will use.
fn unique(tag: &str) -> String {
    format!(
        "handover-workers-{tag}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

// ----------------------------------------------------------------------------------------
// Process and file-system guards
// ----------------------------------------------------------------------------------------

/// A spawned process that is killed and reaped when the guard goes away, including when a
/// test fails half-way.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn a child process");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = Arc::clone(&stderr);
            let pid = child.id();
            // The reader ends when every holder of the pipe's write end is gone.
            std::thread::spawn(move || {
                let reader = std::io::BufReader::new(pipe);
                for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
                    eprintln!("[{pid}] {line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {} did not exit within {GUARD:?}", self.pid());
    }

    /// Waits until some stderr line contains `needle`.
    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            if self.stderr_lines().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no stderr line containing {needle:?}: {:?}",
            self.stderr_lines()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A notify socket like the one handover gives its workers.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: TempDir,
}

impl Notify {
    fn new() -> Notify {
        let dir = TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            path,
            _dir: dir,
        }
    }

    fn env(&self) -> (String, String) {
        (
            "NOTIFY_SOCKET".to_owned(),
            self.path.to_string_lossy().into_owned(),
        )
    }

    /// Receives datagrams until one has the line `needle`, and returns that one.
    fn wait_for(&self, needle: &str) -> String {
        self.collect_until(needle).pop().unwrap()
    }

    /// Receives datagrams until one has the line `needle`; returns all of them, in order.
    fn collect_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + GUARD;
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == needle);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!("no notification {needle:?} arrived; got {seen:?}");
    }
}

// ----------------------------------------------------------------------------------------
// Starting workers
// ----------------------------------------------------------------------------------------

/// Locates handover-example-http next to this test's own target directory, building it once
/// per test process so that a stale binary is never exercised.
fn example_worker() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // The test runs as <target>/<profile>/deps/<name>-<hash>.
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("a target directory");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "example-worker",
            "--bin",
            "handover-example-http",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd
            .output()
            .expect("run cargo build for the example worker");
        assert!(
            out.status.success(),
            "building the example worker failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("handover-example-http");
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
}

/// A port that was free a moment ago; the caller retries if someone takes it meanwhile.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A worker started by systemd-socket-activate with `count` TCP listeners on loopback.
struct Activated {
    proc_: Proc,
    ports: Vec<u16>,
}

impl Activated {
    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports[i]))
    }

    fn pid(&self) -> u32 {
        self.proc_.pid()
    }
}

/// Starts `program args` under systemd-socket-activate. It only execs the program after the
/// first connection attempt, so the caller's first connect also starts the worker.
fn activate(
    count: usize,
    fdnames: &str,
    env: &[(String, String)],
    program: &Path,
    args: &[&str],
) -> Activated {
    for _attempt in 0..20 {
        let ports: Vec<u16> = {
            let mut set = BTreeSet::new();
            // Distinct ports; a collision with ourselves would only waste an attempt.
            for _ in 0..count * 4 {
                if set.len() == count {
                    break;
                }
                set.insert(free_port());
            }
            set.into_iter().collect()
        };
        if ports.len() != count {
            continue;
        }
        let mut cmd = Command::new("systemd-socket-activate");
        for port in &ports {
            cmd.arg("-l").arg(format!("127.0.0.1:{port}"));
        }
        cmd.arg(format!("--fdname={fdnames}"));
        // systemd-socket-activate passes on only a few variables unless told with -E.
        for (k, v) in env {
            cmd.arg("-E").arg(format!("{k}={v}"));
        }
        cmd.arg("--").arg(program).args(args);
        let mut proc_ = Proc::spawn(cmd);
        let deadline = Instant::now() + GUARD;
        let mut exited = false;
        while Instant::now() < deadline {
            let listening = proc_
                .stderr_lines()
                .iter()
                .filter(|l| l.starts_with("Listening on"))
                .count();
            if listening == count {
                return Activated { proc_, ports };
            }
            if proc_.child.try_wait().expect("try_wait").is_some() {
                // Most likely a port was taken between probing and binding: try again.
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            exited,
            "systemd-socket-activate did not start listening in time"
        );
    }
    panic!("could not start systemd-socket-activate on free ports");
}

/// Connects, retrying while the listener is not there yet.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + GUARD;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_read_timeout(Some(GUARD)).unwrap();
                s.set_write_timeout(Some(GUARD)).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {addr}: {e}, retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

// ----------------------------------------------------------------------------------------
// A minimal blocking HTTP client
// ----------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one response; `head_only` is for answers to HEAD, which carry no body.
fn read_response(s: &mut TcpStream, head_only: bool) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    // Reading byte by byte keeps the next response's bytes in the socket.
    while !buf.ends_with(b"\r\n\r\n") {
        assert!(buf.len() < 65536, "response head too large");
        let n = s.read(&mut byte).expect("read a response head");
        assert!(
            n > 0,
            "connection closed mid-head after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).expect("a UTF-8 head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut resp = Resp {
        status,
        headers,
        body: String::new(),
    };
    if !head_only {
        let len: usize = resp
            .header("content-length")
            .expect("a Content-Length")
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("read the body");
        resp.body = String::from_utf8(body).unwrap();
    }
    resp
}

fn request(s: &mut TcpStream, raw: &str) -> Resp {
    s.write_all(raw.as_bytes()).expect("send a request");
    read_response(s, raw.starts_with("HEAD "))
}

fn get(s: &mut TcpStream, path: &str) -> Resp {
    request(s, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

/// Asserts that the server closes the connection: a read returns end of stream.
fn assert_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "unexpected bytes {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("expected an orderly close, got {e}"),
    }
}

// ----------------------------------------------------------------------------------------
// Example worker
// ----------------------------------------------------------------------------------------

#[test]
fn example_worker_serves_its_pid_with_keep_alive() {
    let notify = Notify::new();
    let env = vec![
        notify.env(),
        ("HANDOVER_WORKER".to_owned(), "3".to_owned()),
        ("HANDOVER_GENERATION".to_owned(), "7".to_owned()),
    ];
    let mut w = activate(1, "http", &env, example_worker(), &["--socket", "http"]);
    let pid = w.pid();
    let expected = format!("hello from pid {pid} (worker 3, generation 7)\n");

    let mut s = connect(w.addr(0));
    let first = get(&mut s, "/");
    assert_eq!(first.status, 200);
    assert_eq!(first.body, expected);
    assert!(!first.closes(), "HTTP/1.1 keeps the connection by default");
    // The same connection serves again: keep-alive is honoured.
    let second = get(&mut s, "/anything?x=1");
    assert_eq!(second.status, 200);
    assert_eq!(second.body, expected);
    // HEAD has the headers of GET and no body; the next answer on the connection proves it.
    let head = request(&mut s, "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(get(&mut s, "/").body, expected);
    // Connection: close is obeyed.
    let last = request(
        &mut s,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(last.status, 200);
    assert!(last.closes());
    assert_closed(&mut s);

    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    w.proc_
        .wait_stderr("serving on inherited socket fd 3 (http)");

    // HTTP/1.0 closes unless keep-alive is asked for.
    let mut s10 = connect(w.addr(0));
    let r = request(&mut s10, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closes());
    assert_closed(&mut s10);
    let mut s10k = connect(w.addr(0));
    let r = request(
        &mut s10k,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(request(&mut s10k, "GET / HTTP/1.0\r\n\r\n").status, 200);

    // A request body is refused and the connection closed.
    let mut sb = connect(w.addr(0));
    let r = request(
        &mut sb,
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 400);
    assert!(r.closes());
    assert_closed(&mut sb);
    // An explicit zero-length body is fine.
    let mut sz = connect(w.addr(0));
    let r = request(
        &mut sz,
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // Other methods are refused.
    let mut sp = connect(w.addr(0));
    assert_eq!(
        request(&mut sp, "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        405
    );

    w.proc_.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1");
    let status = w.proc_.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn example_worker_drains_politely() {
    let notify = Notify::new();
    let mut w = activate(
        1,
        "http",
        &[notify.env()],
        example_worker(),
        &["--idle-grace-ms", "2000"],
    );
    let pid = w.pid();

    // A: a keep-alive connection that is idle when the stop begins and then sends a request.
    let mut a = connect(w.addr(0));
    assert_eq!(get(&mut a, "/").status, 200);
    // B: a connection with a slow request in flight when the stop begins.
    let mut b = connect(w.addr(0));
    assert_eq!(get(&mut b, "/").status, 200);
    // C: an idle keep-alive connection that never sends again.
    let mut c = connect(w.addr(0));
    assert_eq!(get(&mut c, "/").status, 200);
    notify.wait_for("READY=1");

    b.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Give the request a moment to reach the worker; correctness does not depend on it.
    std::thread::sleep(Duration::from_millis(100));
    w.proc_.signal(libc::SIGTERM);
    // STOPPING=1 is sent once the worker has stopped accepting and entered the drain.
    notify.wait_for("STOPPING=1");

    // A request on the idle connection within the grace period is answered, with close.
    let ra = get(&mut a, "/");
    assert_eq!(ra.status, 200);
    assert!(ra.body.contains(&format!("pid {pid} ")));
    assert!(ra.closes(), "answers during the drain close the connection");
    assert_closed(&mut a);

    // The slow request completes, and tells the client to go away.
    let rb = read_response(&mut b, false);
    assert_eq!(rb.status, 200);
    assert!(rb.closes());
    assert_closed(&mut b);

    // The idle connection is closed in an orderly way once the grace period is over.
    assert_closed(&mut c);

    let status = w.proc_.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
    w.proc_.wait_stderr("drained, exiting");
}

#[test]
fn example_worker_exits_at_once_on_a_second_sigterm() {
    let notify = Notify::new();
    let mut w = activate(1, "http", &[notify.env()], example_worker(), &[]);
    let mut s = connect(w.addr(0));
    assert_eq!(get(&mut s, "/").status, 200);
    s.write_all(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    notify.wait_for("READY=1");
    w.proc_.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1");
    w.proc_.signal(libc::SIGTERM);
    let status = w.proc_.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}");
    w.proc_.wait_stderr("second stop signal");
}

#[test]
fn example_worker_boot_delay_crash_and_never_ready() {
    // --crash-on-start exits with the given code before doing anything.
    let mut cmd = Command::new(example_worker());
    cmd.args(["--crash-on-start", "7"]);
    let mut crash = Proc::spawn(cmd);
    assert_eq!(crash.wait_exit().code(), Some(7));

    // Bad usage exits 2.
    let mut cmd = Command::new(example_worker());
    cmd.arg("--no-such-flag");
    let mut bad = Proc::spawn(cmd);
    assert_eq!(bad.wait_exit().code(), Some(2));

    // --never-ready serves but never sends READY=1; STOPPING=1 still comes on stop.
    let notify = Notify::new();
    let mut w = activate(
        1,
        "http",
        &[notify.env()],
        example_worker(),
        &["--never-ready", "--boot-ms", "50"],
    );
    let mut s = connect(w.addr(0));
    assert_eq!(get(&mut s, "/").status, 200);
    drop(s);
    w.proc_.signal(libc::SIGTERM);
    let messages = notify.collect_until("STOPPING=1");
    assert!(
        !messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert_eq!(w.proc_.wait_exit().code(), Some(0));
    w.proc_.wait_stderr("not sending READY=1");
}

// ----------------------------------------------------------------------------------------
// Test worker
// ----------------------------------------------------------------------------------------

fn read_json(path: &Path) -> Value {
    let deadline = Instant::now() + GUARD;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).expect("the report is valid JSON");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} did not appear", path.display());
}

#[test]
fn test_worker_reports_inherited_state() {
    let notify = Notify::new();
    let dir = TempDir::new("report");
    let env = vec![
        notify.env(),
        ("HANDOVER_TEST_EXTRA".to_owned(), "yes".to_owned()),
    ];
    let dir_arg = dir.0.to_string_lossy().into_owned();
    let args = [
        "--report",
        dir_arg.as_str(),
        "--stderr",
        "first line",
        "--ready-after",
        "0",
        "--status",
        "all good",
    ];
    let mut w = activate(2, "a:b", &env, Path::new(TEST_WORKER), &args);
    let pid = w.pid();
    // The first connection attempt makes systemd-socket-activate exec the worker.
    let _trigger = connect(w.addr(1));
    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=all good"), "{ready:?}");

    let report = read_json(&dir.0.join(format!("{pid}.json")));
    assert_eq!(report["pid"], pid);
    assert_eq!(report["ppid"], std::process::id());
    assert!(report["pgid"].as_i64().is_some() && report["sid"].as_i64().is_some());
    let argv: Vec<&str> = report["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&argv[1..], &args[..]);
    assert!(report["cwd"].is_string());

    let env = &report["env"];
    assert_eq!(env["LISTEN_FDS"], "2");
    assert_eq!(env["LISTEN_PID"], pid.to_string());
    assert_eq!(env["LISTEN_FDNAMES"], "a:b");
    assert_eq!(env["HANDOVER_TEST_EXTRA"], "yes");

    let fds = report["fds"].as_array().unwrap();
    for n in [3, 4] {
        let entry = fds
            .iter()
            .find(|f| f["fd"] == n)
            .unwrap_or_else(|| panic!("fd {n} missing from {fds:?}"));
        assert!(
            entry["target"].as_str().unwrap().starts_with("socket:["),
            "{entry}"
        );
        assert_eq!(
            entry["cloexec"], false,
            "activation fds are inherited without CLOEXEC"
        );
    }
    assert!(
        fds.iter().all(|f| f["fd"].as_i64().unwrap() <= 4),
        "no stray fds: {fds:?}"
    );

    let sockets = report["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2);
    for (i, sock) in sockets.iter().enumerate() {
        assert_eq!(sock["fd"], 3 + i);
        assert_eq!(sock["family"], "inet");
        assert_eq!(sock["type"], "stream");
        assert_eq!(sock["listening"], true);
        assert_eq!(sock["local"], format!("127.0.0.1:{}", w.ports[i]));
    }
    assert_eq!(report["dev_fd_open"], "ENXIO");
    let status = &report["status"];
    for key in [
        "Uid",
        "Gid",
        "Groups",
        "SigBlk",
        "SigIgn",
        "SigCgt",
        "NoNewPrivs",
        "CapEff",
    ] {
        assert!(status[key].is_string(), "status {key} missing: {status}");
    }
    // No signal handler is installed yet when the report is taken.
    assert_eq!(status["SigCgt"], "0000000000000000");

    w.proc_.wait_stderr("first line");
    w.proc_.signal(libc::SIGTERM);
    assert_eq!(w.proc_.wait_exit().code(), Some(0));
    w.proc_.wait_stderr(&format!("worker {pid} got SIGTERM"));
}

#[test]
fn test_worker_exit_codes_and_ignored_term() {
    let notify = Notify::new();
    let (k, v) = notify.env();

    // SIGTERM is ignored, so the worker lives on to exit with the asked code.
    let mut cmd = Command::new(TEST_WORKER);
    cmd.env(&k, &v).args([
        "--ignore-term",
        "--ready-after",
        "0",
        "--exit-after",
        "1000",
        "7",
    ]);
    let mut w = Proc::spawn(cmd);
    notify.wait_for("READY=1");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait_exit().code(), Some(7));

    let mut cmd = Command::new(TEST_WORKER);
    cmd.env(&k, &v)
        .args(["--ready-after", "0", "--exit-after-ready", "5"]);
    let mut w = Proc::spawn(cmd);
    assert_eq!(w.wait_exit().code(), Some(5));
    notify.wait_for("READY=1");

    let mut cmd = Command::new(TEST_WORKER);
    cmd.arg("--bogus");
    let mut w = Proc::spawn(cmd);
    assert_eq!(w.wait_exit().code(), Some(2));

    // Raw datagrams arrive exactly as given.
    let mut cmd = Command::new(TEST_WORKER);
    cmd.env(&k, &v).args([
        "--notify-raw",
        "5354415455533d726177",
        "--notify-raw-repeat",
        "2",
        "--exit-after",
        "0",
        "0",
    ]);
    let mut w = Proc::spawn(cmd);
    assert_eq!(w.wait_exit().code(), Some(0));
    notify.wait_for("STATUS=raw");
    notify.wait_for("STATUS=raw");
}

/// The pid, parent pid, process group and session of a process, from /proc/<pid>/stat.
fn stat_of(pid: u32) -> Option<(u32, u32, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain anything, so fields are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((
        pid,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(3)?.parse().ok()?,
    ))
}

/// Pids of live processes whose environment carries `HANDOVER_TEST_MARKER=<marker>`.
fn marked(marker: &str) -> Vec<u32> {
    let needle = format!("HANDOVER_TEST_MARKER={marker}");
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Kills every process carrying the marker when the test ends, however it ends.
struct MarkedGuard(String);

impl Drop for MarkedGuard {
    fn drop(&mut self) {
        for pid in marked(&self.0) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn test_worker_starts_children_and_grandchildren() {
    let marker = unique("marker");
    let _cleanup = MarkedGuard(marker.clone());
    let mut cmd = Command::new(TEST_WORKER);
    cmd.args(["--child", "--grandchild", "--marker", &marker]);
    let w = Proc::spawn(cmd);
    let worker = stat_of(w.pid()).expect("the worker's stat");

    let deadline = Instant::now() + GUARD;
    let mut pids = Vec::new();
    while Instant::now() < deadline {
        pids = marked(&marker);
        if pids.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        pids.len(),
        2,
        "expected a child and a grandchild, found {pids:?}"
    );
    let stats: Vec<_> = pids.iter().filter_map(|p| stat_of(*p)).collect();
    let child = stats
        .iter()
        .find(|s| s.1 == worker.0)
        .expect("one process is the worker's direct child");
    assert_eq!(
        child.2, worker.2,
        "the child stays in the worker's process group"
    );
    assert_eq!(child.3, worker.3);
    let grandchild = stats
        .iter()
        .find(|s| s.0 != child.0)
        .expect("the grandchild");
    // Both start with SIGTERM deliverable, whatever the worker blocks while starting up.
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no SigBlk for {pid}"));
        assert_eq!(
            blocked & (1 << (libc::SIGTERM - 1)),
            0,
            "SIGTERM blocked in {pid}"
        );
    }
    assert_ne!(grandchild.1, worker.0, "the grandchild was reparented");
    assert_ne!(grandchild.3, worker.3, "the grandchild is in a new session");
    assert_ne!(grandchild.2, worker.2);
}

#[test]
fn test_worker_serves_its_pid_and_loadgen_counts_it() {
    let w = activate(1, "http", &[], Path::new(TEST_WORKER), &["--serve"]);
    let pid = w.pid();
    let mut s = connect(w.addr(0));
    let r = get(&mut s, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, format!("{pid}\n"));
    assert!(r.closes());

    let summary = run_loadgen_cli(
        w.addr(0),
        "new",
        &["--max-requests", "50", "--duration-ms", "20000"],
    );
    assert_eq!(summary["requests"], 50);
    assert_eq!(summary["ok"], 50, "{summary}");
    assert_eq!(summary["pids"][pid.to_string()], 50, "{summary}");
}

// ----------------------------------------------------------------------------------------
// Load generator
// ----------------------------------------------------------------------------------------

fn run_loadgen_cli(addr: SocketAddr, mode: &str, extra: &[&str]) -> Value {
    let out = Command::new(LOADGEN)
        .args([
            "--addr",
            &addr.to_string(),
            "--mode",
            mode,
            "--concurrency",
            "4",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run handover-loadgen");
    assert_eq!(
        out.status.code(),
        Some(0),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout:?}");
    serde_json::from_str(stdout.trim()).expect("the summary is JSON")
}

#[test]
fn loadgen_against_the_example_worker_sees_no_failures() {
    let w = activate(1, "http", &[], example_worker(), &[]);
    let pid = w.pid().to_string();
    // The first request starts the worker and proves it serves.
    let mut s = connect(w.addr(0));
    assert_eq!(get(&mut s, "/").status, 200);
    drop(s);
    for mode in ["new", "keepalive"] {
        let summary = run_loadgen_cli(w.addr(0), mode, &["--duration-ms", "1000"]);
        eprintln!("{mode}: {summary}");
        for kind in ["refused", "reset", "timeout", "bad_status", "other"] {
            assert_eq!(summary["failures"][kind], 0, "{mode}: {summary}");
        }
        let ok = summary["ok"].as_u64().unwrap();
        assert!(ok > 0, "{mode}: {summary}");
        assert_eq!(summary["requests"], ok);
        assert_eq!(summary["pids"][&pid], ok, "every answer names the worker");
        assert!(
            summary["latency_us"]["max"].as_u64().unwrap()
                >= summary["latency_us"]["p50"].as_u64().unwrap()
        );
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(addr: SocketAddr, mode: Mode, max_requests: u64) -> LoadConfig {
    LoadConfig {
        addr,
        concurrency: 1,
        duration: GUARD,
        max_requests,
        mode,
        request_timeout: Duration::from_secs(10),
        path: "/".to_owned(),
    }
}

#[test]
fn loadgen_refuses_non_loopback_targets_without_connecting() {
    let err = block_on(loadgen::run(config(
        "10.0.0.1:80".parse().unwrap(),
        Mode::KeepAlive,
        1,
    )))
    .expect_err("a non-loopback target is refused");
    assert!(err.to_string().contains("loopback"), "{err}");

    let out = Command::new(LOADGEN)
        .args(["--addr", "10.0.0.1:80"])
        .output()
        .expect("run handover-loadgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());

    // If this host has a non-loopback address, listen on it and prove that nothing connects.
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let local = probe
        .connect("10.0.0.1:80")
        .and_then(|_| probe.local_addr())
        .ok()
        .filter(|a| !a.ip().is_loopback() && !a.ip().is_unspecified());
    if let Some(local) = local {
        let listener = TcpListener::bind((local.ip(), 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let target = listener.local_addr().unwrap();
        let result = block_on(loadgen::run(config(target, Mode::NewConnection, 10)));
        assert!(result.is_err(), "{target} is not loopback");
        let out = Command::new(LOADGEN)
            .args(["--addr", &target.to_string(), "--max-requests", "10"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("something connected to {target}: {other:?}"),
        }
    } else {
        eprintln!("no non-loopback address here; checked the refusal only");
    }
}

/// A tiny blocking server for loadgen tests; it stops when dropped.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// `respond` decides per accepted connection; it runs on the server thread.
    fn start(respond: fn(TcpStream)) -> TestServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + GUARD;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        respond(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TestServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

#[test]
fn loadgen_retries_once_when_an_idle_keep_alive_connection_was_closed() {
    // The server advertises keep-alive but closes after every response, the way a draining
    // worker closes idle connections.
    let server = TestServer::start(|mut s| {
        if read_request_head(&mut s) {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npid 42\r\n");
        }
    });
    let summary = block_on(loadgen::run(config(server.addr, Mode::KeepAlive, 20))).unwrap();
    assert_eq!(summary.requests, 20);
    assert_eq!(summary.ok, 20, "{summary:?}");
    assert_eq!(summary.failed(), 0, "{summary:?}");
    assert!(summary.idle_close_retries >= 1, "{summary:?}");
    assert_eq!(summary.pids.get(&42), Some(&20));
}

#[test]
fn loadgen_counts_fresh_connection_failures() {
    // Closing without any answer fails fresh connections: they are never retried.
    let server = TestServer::start(drop);
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let summary = block_on(loadgen::run(config(server.addr, mode, 5))).unwrap();
        assert_eq!(summary.requests, 5);
        assert_eq!(summary.ok, 0);
        assert_eq!(summary.failed(), 5, "{summary:?}");
        assert_eq!(summary.idle_close_retries, 0);
    }
    drop(server);

    // A non-200 answer is a bad status.
    let server = TestServer::start(|mut s| {
        if read_request_head(&mut s) {
            let _ =
                s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let summary = block_on(loadgen::run(config(server.addr, Mode::KeepAlive, 3))).unwrap();
    assert_eq!(summary.failures.bad_status, 3, "{summary:?}");
    assert_eq!(summary.pids.get(&0), Some(&3));
    drop(server);

    // Nobody listening: refused.
    let port = free_port();
    let summary = block_on(loadgen::run(config(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Mode::NewConnection,
        4,
    )))
    .unwrap();
    assert_eq!(summary.failures.refused, 4, "{summary:?}");
}
