//! Scenarios of the reliability catalogue (section (b): 48 failure and bad-input scenarios)
//! that no other suite covered, or covered only in part. Each test is named after its
//! scenario's number and asserts what the catalogue expects; docs/ARCHITECTURE.md ("Scenario
//! coverage") says which file covers each of the 48. Every test runs the real `handover`.
//!
//! Waits are on events (a log line, a status answer, a file, a process exit) guarded by
//! [`harness::GUARD`]; nothing here measures speed. Floods and loops are bounded in count and
//! time, and traffic stays on loopback. Tests that need root or a tool say so and skip; with
//! `HANDOVER_REQUIRE_SYSTEMD` set (as in CI) a missing precondition fails instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use handover_tests::harness::{
    self, alive, children_of, free_port, marked_processes, output_guarded, skip, unique_marker,
    wait_gone, Handover, Options, TempDir, GUARD,
};
use handover_tests::systemd::{shipped, Systemd};
use serde_json::Value;

// ---- helpers ---------------------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `Some(reason)` unless running as root.
fn needs_root(why: &str) -> Option<String> {
    (!is_root()).then(|| format!("needs root {why}"))
}

/// `Some(reason)` unless `tool` runs.
fn needs_tool(tool: &str) -> Option<String> {
    let runs = Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!runs).then(|| format!("needs {tool}"))
}

/// Debian's own python3: the tests run scripts as workers, some of them as other users, who
/// cannot reach an interpreter installed in root's home.
const PYTHON: &str = "/usr/bin/python3";

/// Hex of a datagram, as the test worker's `--notify-raw` takes it.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TOML string holding `text` (JSON's escapes are TOML's).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// The `pid=N` field of a log line.
fn pid_in(line: &str) -> i32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// The pids of the log lines containing every one of `needles`, in log order.
fn pids_of_lines(h: &Handover, needles: &[&str]) -> Vec<i32> {
    h.log
        .text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(pid_in)
        .collect()
}

/// `handover status --json`, parsed; the command must succeed.
fn status_json(h: &Handover) -> Value {
    let (status, out, err) = h.ctl(&["status", "--json"]);
    assert!(status.success(), "status --json failed: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json ({e}): {out}"))
}

/// The workers of generation `n` in a status, by pid.
fn workers_of(status: &Value, n: u64) -> BTreeMap<i32, Value> {
    status["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .filter(|g| g["generation"].as_u64() == Some(n))
        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| Some((w["pid"].as_i64()? as i32, w)))
        .collect()
}

/// Asks for the status until `ok` holds (guarded); returns the status that satisfied it.
fn wait_status(h: &Handover, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + GUARD;
    loop {
        let status = status_json(h);
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status:\n{status:#}\nlog:\n{}",
            h.log.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (guarded) until `check` gives a value.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's environment exactly as it is, duplicates included (`std::env` shows a
/// process only the first of two equal keys).
fn raw_environ(pid: i32) -> Vec<(String, String)> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    bytes
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            }
        })
        .collect()
}

/// How many fds `pid` has open.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The smallest of a few fd counts of `pid` a moment apart: a control connection that is
/// being closed, or a worker that is being spawned, holds fds for a moment only.
fn settled_fd_count(pid: i32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            fd_count(pid)
        })
        .min()
        .unwrap_or(0)
}

/// `VmRSS` of `pid` in KiB.
fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time `pid` used so far (utime + stime), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// Clock ticks per second.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Runs `sh -c SCRIPT` in a fresh directory, where `$H` is handover and `$C` a config file
/// with `config` (and a control socket in that directory); returns the exit code and the
/// whole output. Nothing may panic.
fn sh(label: &str, config: &str, script: &str) -> (Option<i32>, String, TempDir) {
    let dir = TempDir::new(label);
    let path = dir.path().join("handover.toml");
    let mut text = harness::expand(config, dir.path());
    if !text.contains("[control]") {
        text.push_str(&format!(
            "\n[control]\nsocket = \"{}/control.sock\"\n",
            dir.path().display()
        ));
    }
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("H", harness::binary("handover"))
        .env("C", &path)
        .env("PY", PYTHON)
        .current_dir(dir.path());
    for var in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        cmd.env_remove(var);
    }
    let (status, out, err) = output_guarded(cmd);
    let text = format!("{out}{err}");
    assert!(!text.contains("panicked"), "{text}");
    (status.code(), text, dir)
}

/// A python3 program that puts a socket made by `make` (python code binding `s`) at fd 3,
/// sets `LISTEN_FDS` to `fds` and `LISTEN_FDNAMES` to `http` (then `more` for each other fd), `LISTEN_PID` to `listen_pid` (python code;
/// `os.getpid()` is the pid handover will have), and execs handover on `$C`.
fn exec_with_fd3(make: &str, listen_pid: &str, fds: u32) -> String {
    format!(
        r#"exec "$PY" -c '
import os, socket, sys
{make}
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
names = ":".join(["http"] + ["more"] * ({fds} - 1))
os.environ.update(LISTEN_PID=str({listen_pid}), LISTEN_FDS="{fds}", LISTEN_FDNAMES=names)
print("listen_pid=%s own=%d" % (os.environ["LISTEN_PID"], os.getpid()), file=sys.stderr, flush=True)
os.execv(os.environ["H"], ["handover", "start", "--config", os.environ["C"]])'"#
    )
}

/// The `listen_pid=` and `own=` values [`exec_with_fd3`] printed.
fn pids_printed(text: &str) -> (String, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with("listen_pid="))
        .unwrap_or_else(|| panic!("no pids printed: {text}"));
    let mut parts = line.split_whitespace();
    let listen = parts.next().unwrap().trim_start_matches("listen_pid=");
    let own = parts.next().unwrap().trim_start_matches("own=");
    (listen.to_string(), own.to_string())
}

const FROM_SYSTEMD: &str = r#"
[[socket]]
name = "http"
from_systemd = true

[worker]
command = ["{worker}", "--ready-after", "0"]
"#;

// ---- inherited sockets and systemd input (1-8) -----------------------------------------

/// Scenario 1: a real listening socket at fd 3 whose `LISTEN_PID` names another (living)
/// process, while the config needs systemd's socket: exit 4 naming both pids, and nothing is
/// bound, not even the control socket. The config's self-bound port is busy: had handover
/// gone on to bind, it would have said "already in use" instead.
#[test]
fn scenario_01_sockets_for_another_pid_stop_the_start_before_any_bind() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config =
        format!("{FROM_SYSTEMD}\n[[socket]]\nname = \"own\"\nlisten = \"127.0.0.1:{port}\"\n");
    let script = exec_with_fd3(
        r#"s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)"#,
        "os.getppid()",
        1,
    );
    let (code, text, dir) = sh("s01", &config, &script);
    assert_eq!(code, Some(4), "{text}");
    let (listen_pid, own) = pids_printed(&text);
    assert_ne!(listen_pid, own);
    assert!(
        text.contains(&format!(
            "LISTEN_PID={listen_pid} but handover's pid is {own}"
        )),
        "both pids named: {text}"
    );
    assert!(!text.contains("already in use"), "a bind was tried: {text}");
    assert!(
        !dir.path().join("control.sock").exists(),
        "the control socket was bound"
    );
    drop(busy);
}

/// Scenario 2, through the binary, the cases the other suites leave to the parser's table:
/// `LISTEN_FDS=0` is "no sockets" (so a config that needs one fails, naming what systemd
/// passed), an empty, negative or zero `LISTEN_PID` is an error naming the value, and
/// `LISTEN_FDS` beyond the open fds names the first fd that is not open.
#[test]
fn scenario_02_socket_activation_variables_through_the_binary() {
    for (vars, needle) in [
        ("LISTEN_PID=$pid LISTEN_FDS=0", "systemd passed no sockets"),
        (
            "LISTEN_PID= LISTEN_FDS=1",
            r#"LISTEN_PID="" is not a process id"#,
        ),
        (
            "LISTEN_PID=-1 LISTEN_FDS=1",
            r#"LISTEN_PID="-1" is not a process id"#,
        ),
        (
            "LISTEN_PID=0 LISTEN_FDS=1",
            r#"LISTEN_PID="0" is not a process id"#,
        ),
    ] {
        let script = format!("pid=$$; exec env {vars} \"$H\" start --config \"$C\"");
        let (code, text, _dir) = sh("s02", FROM_SYSTEMD, &script);
        assert_eq!(code, Some(4), "{vars}: {text}");
        assert!(text.contains(needle), "{vars}: {needle:?} missing: {text}");
    }
    // A real listener at fd 3 and LISTEN_FDS=2: fd 4 is the one missing.
    let script = exec_with_fd3(
        r#"s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)"#,
        "os.getpid()",
        2,
    );
    let (code, text, _dir) = sh("s02-fd4", FROM_SYSTEMD, &script);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("LISTEN_FDS includes fd 4") && text.contains("fd 4 is not open"),
        "{text}"
    );
}

/// Scenario 4: a connected (not listening) TCP socket at fd 3 is refused, naming the fd.
#[test]
fn scenario_04_a_connected_socket_at_fd_3_is_refused() {
    let script = exec_with_fd3(
        r#"l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(8)
s = socket.create_connection(l.getsockname())"#,
        "os.getpid()",
        1,
    );
    let (code, text, _dir) = sh("s04", FROM_SYSTEMD, &script);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains(r#"fd 3 ("http") is a IPv4 stream socket that is not listening"#),
        "{text}"
    );
}

/// Scenario 5: under the real `systemd-socket-activate`, with `LISTEN_PIDFDID`, the watchdog
/// variables and a `NOTIFY_SOCKET` in handover's environment, each worker's environment
/// (read raw from /proc, where a second copy of a variable would show) has every variable
/// once: `LISTEN_PID` its own pid, `LISTEN_FDS`/`LISTEN_FDNAMES` its sockets, the JSON maps,
/// its own notify socket, and nothing of what handover was given for itself.
#[test]
fn scenario_05_workers_see_each_variable_once_and_none_of_handovers_own() {
    let port = free_port();
    let mut h = Handover::start(
        "s05",
        r#"
[[socket]]
name = "http"
from_systemd = true

[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0"]
count = 2
"#,
        Options {
            activate: vec![(format!("127.0.0.1:{port}"), "http".into())],
            notify: true,
            env: vec![
                ("LISTEN_PIDFDID".into(), "4242".into()),
                ("WATCHDOG_USEC".into(), "1000000".into()),
                ("WATCHDOG_PID".into(), "1".into()),
            ],
            ..Default::default()
        },
    );
    let systemd_socket = h.notify.as_ref().unwrap().path().display().to_string();
    let reports = h.reports(2);
    h.log.wait_for("all 2 workers ready");
    for pid in reports.keys() {
        let env = raw_environ(*pid);
        let mut seen = BTreeSet::new();
        for (key, _) in &env {
            assert!(seen.insert(key.clone()), "worker {pid} has {key} twice");
        }
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("LISTEN_PID"), Some(pid.to_string().as_str()));
        assert_eq!(get("LISTEN_FDS"), Some("1"));
        assert_eq!(get("LISTEN_FDNAMES"), Some("http"));
        assert_eq!(get("HANDOVER_FDS"), Some(r#"{"http":"/dev/fd/3"}"#));
        assert_eq!(get("HANDOVER_FD_NUMBERS"), Some(r#"{"http":3}"#));
        let notify = get("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
        assert!(
            notify.starts_with('/') && notify != systemd_socket,
            "{notify}"
        );
        for (key, _) in &env {
            assert!(
                key != "LISTEN_PIDFDID" && !key.starts_with("WATCHDOG_"),
                "worker {pid} got handover's {key}"
            );
        }
    }
    assert!(h.stop().success());
}

/// Scenario 8: a symlink at a unix socket's path is refused, even one pointing at a stale
/// socket, and both are left as they were.
#[test]
fn scenario_08_a_symlink_at_a_unix_socket_path_is_refused() {
    let dir = TempDir::new("s08-link");
    let real = dir.path().join("real.sock");
    drop(std::os::unix::net::UnixListener::bind(&real).unwrap());
    let link = dir.path().join("app.sock");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let config = format!(
        "[[socket]]\nname = \"u\"\nlisten = \"{}\"\n\n[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\"]\n",
        link.display()
    );
    let (code, text, _run) = sh("s08-run", &config, r#"exec "$H" start --config "$C""#);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains(&format!(
            "{} exists and is a symbolic link; refusing to replace it",
            link.display()
        )),
        "{text}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::symlink_metadata(&real).unwrap().file_type()
    ));
}

/// Scenario 8: a stale socket is replaced under a lock, so that two instances starting on
/// the same path cannot both win. The first (A) is held for three seconds between binding
/// its fresh socket and listening on it (strace delays its `listen()`); a second (B) that
/// starts meanwhile must not take the path from it: B fails with "already in use", and the
/// path leads to A's worker.
#[test]
fn scenario_08_a_stale_socket_is_replaced_under_a_lock() {
    if skip(needs_tool("strace")) {
        return;
    }
    let shared = TempDir::new("s08-lock");
    let path = shared.path().join("app.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    // A mode no fresh socket gets (the inode number may well be reused) tells them apart.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "[[socket]]\nname = \"u\"\nlisten = \"{}\"\n\n[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\", \"--serve\"]\n",
        path.display()
    );
    // The control socket's listen() is the first, the unix socket's the second.
    let a = Handover::start(
        "s08-lock-a",
        &config,
        Options {
            wrapper: [
                "strace",
                "-D",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=listen",
                "-e",
                "inject=listen:delay_enter=3000000:when=2",
                "--",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    );
    wait_until("A to bind its fresh socket", || {
        std::fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.mode() & 0o777 != 0o600)
            .map(|_| ())
    });
    let mut b = Handover::start("s08-lock-b", &config, Options::default());
    let b_won = wait_until("B to give up or to serve", || {
        if b.log.text().contains("all 1 workers ready") {
            Some(true)
        } else if !alive(b.pid()) {
            Some(false)
        } else {
            None
        }
    });
    assert!(
        !b_won,
        "both instances serve on {}:\n{}",
        path.display(),
        b.log.text()
    );
    assert_eq!(b.wait().code(), Some(4), "{}", b.log.text());
    assert!(b.log.text().contains("already in use"), "{}", b.log.text());
    a.log.wait_for("all 1 workers ready");
    let a_worker = pids_of_lines(&a, &["worker started"])[0];
    let mut stream = UnixStream::connect(&path).expect("connect to the path");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.ends_with(&format!("\r\n\r\n{a_worker}\n")),
        "the path does not lead to A's worker {a_worker}: {response:?}"
    );
}

// ---- readiness and notify (9-18) ---------------------------------------------------------

/// A config with one self-bound TCP socket and `worker` as the `[worker]` section's body.
fn with_socket(port: u16, worker: &str) -> String {
    format!("[[socket]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\n\n[worker]\n{worker}\n")
}

/// Scenario 9, on reload: a new generation that never becomes ready is told to stop at
/// `ready_timeout` (SIGTERM), and a worker that ignores it is SIGKILLed at `stop_timeout`;
/// `handover reload` exits 6, systemd hears `READY=1` with the abort in `STATUS=`, and the
/// old workers serve on untouched.
#[test]
fn scenario_09_a_never_ready_generation_is_stopped_then_killed_and_the_reload_fails() {
    let port = free_port();
    let good = with_socket(
        port,
        "command = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2",
    );
    let mut h = Handover::start(
        "s09",
        &good,
        Options {
            notify: true,
            ..Default::default()
        },
    );
    h.log.wait_for("all 2 workers ready");
    let old: BTreeSet<i32> = h.reports(2).keys().copied().collect();
    h.rewrite_config(&with_socket(
        port,
        r#"command = ["sh", "-c", "if [ \"$HANDOVER_WORKER\" = 0 ]; then exec {worker} --ignore-term; else exec {worker}; fi"]
count = 2
ready_timeout = "500ms"
stop_timeout = "1s""#,
    ));
    h.notify.as_mut().unwrap().received.clear();
    let (status, out, err) = h.ctl(&["reload"]);
    assert_eq!(status.code(), Some(6), "{out}{err}");
    assert!(err.contains("not ready within 500ms"), "{err}");
    let aborted = h
        .notify
        .as_mut()
        .unwrap()
        .wait_for("STATUS=reload aborted, generation 1 keeps serving");
    assert!(aborted.lines().any(|l| l == "READY=1"), "{aborted}");
    let stubborn = pids_of_lines(&h, &["worker started generation=2 worker=0"]);
    let polite = pids_of_lines(&h, &["worker started generation=2 worker=1"]);
    assert_eq!((stubborn.len(), polite.len()), (1, 1), "{}", h.log.text());
    h.log.wait_for(&format!("worker {} got SIGTERM", polite[0]));
    let killed = h
        .log
        .wait_for("worker did not stop in time; sending SIGKILL to its process group");
    assert_eq!(pid_in(&killed), stubborn[0], "{killed}");
    wait_gone(&[stubborn[0], polite[0]]);
    let status = status_json(&h);
    assert_eq!(
        workers_of(&status, 1)
            .keys()
            .copied()
            .collect::<BTreeSet<_>>(),
        old,
        "the same old workers serve"
    );
    assert!(workers_of(&status, 2).is_empty(), "{status:#}");
    assert!(h.stop().success());
}

/// Scenarios 9 and 10 under systemd, with the shipped unit: a first generation that is
/// never ready, or whose worker exits before READY=1, fails `systemctl start`; the unit does
/// not become active, handover's exit status is 1, and the journal says why.
#[test]
fn scenario_09_10_a_failed_first_generation_fails_systemctl_start() {
    const SERVICE: &str = "handover@web.service";
    let example = shipped("example.toml");
    let with_args = |args: &str| {
        let original = r#""--socket", "http"]"#;
        assert!(example.contains(original), "example.toml's command changed");
        example
            .replace(original, &format!(r#""--socket", "http", {args}]"#))
            .replace(r#"ready_timeout = "30s""#, r#"ready_timeout = "1s""#)
    };
    let Some(sd) = Systemd::builder("s09-unit")
        .shipped_unit("handover@.service")
        .shipped_unit("handover-http@.socket")
        .config("web", &with_args(r#""--never-ready""#))
        .boot()
    else {
        return;
    };
    sd.systemctl_ok(&["start", "handover-http@web.socket"]);
    for (config, why) in [
        (None, "not ready within 1.0s"),
        (
            Some(with_args(r#""--crash-on-start", "3""#)),
            "exited with code 3",
        ),
    ] {
        if let Some(config) = config {
            sd.write_config("web", &config);
        }
        let (status, out, err) = sd.systemctl(&["start", SERVICE]);
        assert!(!status.success(), "systemctl start succeeded: {out}{err}");
        assert_ne!(sd.show(SERVICE, "ActiveState"), "active");
        assert_eq!(sd.show(SERVICE, "ExecMainStatus"), "1");
        sd.wait_journal(SERVICE, why);
        let _ = sd.systemctl(&["stop", SERVICE]);
        let _ = sd.systemctl(&["reset-failed", SERVICE]);
    }
}

/// Scenario 10: a worker that exits with code 0 before it is ready fails the start (exit 1,
/// saying so); in a serving generation, restarts that exit 0 before ready are failures that
/// back off like crashes.
#[test]
fn scenario_10_exit_0_before_ready_fails_the_start_and_counts_for_backoff() {
    let mut h = Handover::start(
        "s10-start",
        "[worker]\ncommand = [\"{worker}\", \"--exit-after\", \"0\", \"0\"]\n",
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    assert!(
        h.log
            .text()
            .contains("worker died before it was ready: exited with code 0"),
        "{}",
        h.log.text()
    );

    // The first worker is ready and then exits; each restart exits 0 before it is ready.
    let h = Handover::start(
        "s10-serving",
        r#"
[worker]
command = ["sh", "-c", "if mkdir {dir}/first 2>/dev/null; then exec {worker} --ready-after 0 --exit-after 300 1; else exec {worker} --exit-after 0 0; fi"]
restart_backoff_initial = "50ms"
restart_backoff_max = "400ms"
"#,
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    h.log.wait_for("restarting in 400ms");
    let log = h.log.text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker died") || l.contains("restarting in"))
        .collect();
    let expected = [
        "worker died: exited with code 1",
        "restarting in 50ms",
        "worker died before it was ready: exited with code 0",
        "restarting in 100ms",
        "worker died before it was ready: exited with code 0",
        "restarting in 200ms",
        "worker died before it was ready: exited with code 0",
        "restarting in 400ms",
    ];
    assert!(lines.len() >= expected.len(), "{log}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.contains(want),
            "{want:?} expected, got {line:?}:\n{log}"
        );
    }
}

/// Scenario 11: READY=1 and an exit right after it, a thousand times over four slots: every
/// exit is "died" after a "worker ready" of the same pid, never "died before it was ready"
/// (the notify socket is read empty before the exit is handled).
#[test]
fn scenario_11_ready_then_exit_is_always_a_death_after_ready() {
    const DEATHS: usize = 1000;
    let h = Handover::start(
        "s11",
        r#"
[worker]
command = ["sh", "-c", "if [ -e {dir}/crash ]; then exec {worker} --ready-after 0 --exit-after-ready 3; else exec {worker} --report {dir}/reports --ready-after 0; fi"]
count = 4
restart_backoff_initial = "1ms"
restart_backoff_max = "1ms"
"#,
        Options::default(),
    );
    h.log.wait_for("all 4 workers ready");
    let first: Vec<i32> = h.reports(4).keys().copied().collect();
    std::fs::write(h.dir.path().join("crash"), "").unwrap();
    for pid in first {
        harness::kill(pid, libc::SIGKILL);
    }
    h.log
        .wait_for_count("worker died: exited with code 3", DEATHS);
    std::fs::remove_file(h.dir.path().join("crash")).unwrap();
    let log = h.log.text();
    assert_eq!(
        h.log.count("worker died before it was ready"),
        0,
        "a READY=1 was lost behind its exit:\n{}",
        log.lines()
            .filter(|l| l.contains("before it was ready"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut ready = BTreeSet::new();
    let mut checked = 0;
    for line in log.lines() {
        if line.contains("worker ready") {
            ready.insert(pid_in(line));
        } else if line.contains("worker died: exited with code 3") {
            let pid = pid_in(line);
            assert!(ready.contains(&pid), "{pid} died without being ready first");
            checked += 1;
        }
    }
    assert!(checked >= DEATHS, "{checked}");
}

/// Scenario 12: 500 READY=1 datagrams from a process that is neither the worker nor one it
/// started (the test itself) leave the worker not ready and cost a line or two of log, not
/// 500; the count accounts for every one. Other users cannot reach the socket at all: it is
/// open to its owner only.
#[test]
fn scenario_12_a_strangers_flood_is_ignored_and_summarised() {
    const FORGED: usize = 500;
    let mut h = Handover::start(
        "s12",
        "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\"]\nready_timeout = \"3s\"\n",
        Options::default(),
    );
    let reports = h.reports(1);
    let report = reports.values().next().unwrap();
    let socket = PathBuf::from(
        report["env"]["NOTIFY_SOCKET"]
            .as_str()
            .expect("NOTIFY_SOCKET"),
    );
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", socket.display());
    let sender = UnixDatagram::unbound().unwrap();
    sender.set_write_timeout(Some(GUARD)).unwrap();
    for _ in 0..FORGED {
        sender
            .send_to(b"READY=1", &socket)
            .expect("send a forged READY=1");
    }
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    let log = h.log.text();
    assert!(log.contains("not ready within 3.0s"), "{log}");
    assert!(!log.contains("all 1 workers ready"), "{log}");
    let lines = log.lines().filter(|l| l.contains("notification")).count();
    assert!(lines <= 3, "{lines} lines about notifications:\n{log}");
    let first = log
        .lines()
        .filter(|l| {
            l.contains("ignored a notification from pid") && !l.contains("more notifications")
        })
        .count();
    let counted: usize = log
        .lines()
        .filter(|l| l.contains("more notifications dropped"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<usize>().ok()))
        .sum();
    assert_eq!(
        first + counted,
        FORGED,
        "every forged datagram is accounted for:\n{log}"
    );
}

/// Scenario 13: READY=1 from the worker's grandchild (a shell's child of the worker's shell)
/// counts with the default `notify_access = "all"` (the worker and its descendants) and is
/// ignored with `"main"`.
#[test]
fn scenario_13_ready_from_a_grandchild_follows_notify_access() {
    let config = |access: &str| {
        format!(
            r#"
[worker]
command = ["sh", "-c", "sh -c '{{worker}} --notify-raw 52454144593d31 --exit-after 500 0; true'; exec sleep 1000"]
notify_access = "{access}"
ready_timeout = "2s"
"#
        )
    };
    let mut all = Handover::start("s13-all", &config("all"), Options::default());
    all.log.wait_for("all 1 workers ready");
    assert!(all.stop().success());

    let mut main = Handover::start("s13-main", &config("main"), Options::default());
    assert_eq!(main.wait().code(), Some(1), "{}", main.log.text());
    let log = main.log.text();
    assert!(
        log.contains("only the worker's own pid may notify"),
        "{log}"
    );
    assert!(log.contains("not ready within 2.0s"), "{log}");
}

/// Scenario 14: datagrams of 4097 bytes, 64 KiB and 200 KiB that begin with READY=1 are
/// dropped whole (never half-read as READY=1); one of exactly 4096 bytes is read.
#[test]
fn scenario_14_oversized_datagrams_are_dropped_whole() {
    let script = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
sizes = [4096] if os.environ["HANDOVER_WORKER"] == "0" else [4097, 65536, 204800]
for size in sizes:
    head = b"READY=1\nX="
    s.sendto(head + b"x" * (size - len(head)), os.environ["NOTIFY_SOCKET"])
    print("sent", size, file=sys.stderr, flush=True)
time.sleep(1000)
"#;
    let mut h = Handover::start(
        "s14",
        &format!(
            "[worker]\ncommand = [\"{PYTHON}\", \"-c\", {}]\ncount = 2\nready_timeout = \"3s\"\n",
            toml_string(script)
        ),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    let log = h.log.text();
    for size in [4096, 4097, 65536, 204800] {
        assert!(
            log.contains(&format!("sent {size}")),
            "{size} not sent:\n{log}"
        );
    }
    let ready = log
        .lines()
        .find(|l| l.contains("worker ready"))
        .expect("worker 0 ready");
    assert!(ready.contains("worker=0"), "{ready}");
    assert!(
        log.contains("worker 1: not ready within 3.0s"),
        "the oversized READY=1 counted:\n{log}"
    );
    assert!(log.contains("datagram longer than 4096 bytes"), "{log}");
    assert!(
        log.contains("2 more notifications dropped"),
        "all three dropped:\n{log}"
    );
}

/// Scenario 16: 20 datagrams carrying 250 fds each leave handover with exactly the fds it
/// had before (each was closed at once), and handover reads on: a later STATUS= arrives.
#[test]
fn scenario_16_passed_fds_leave_handovers_fd_count_unchanged() {
    let script = r#"
import array, os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
target = os.environ["NOTIFY_SOCKET"]
s.sendto(b"READY=1", target)
go = os.path.join(os.environ["DIR"], "go")
while not os.path.exists(go):
    time.sleep(0.01)
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(250)]
for _ in range(20):
    s.sendmsg([b"STATUS=junk"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, target)
s.sendto(b"STATUS=after the fds", target)
time.sleep(1000)
"#;
    let h = Handover::start(
        "s16",
        &format!(
            "[worker]\ncommand = [\"env\", \"DIR={{dir}}\", \"{PYTHON}\", \"-c\", {}]\n",
            toml_string(script)
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let before = settled_fd_count(h.pid());
    std::fs::write(h.dir.path().join("go"), "").unwrap();
    wait_status(&h, "the STATUS= after the fds", |s| {
        s["generations"][0]["workers"][0]["status"] == "after the fds"
    });
    let after = wait_until("handover's fd count back where it was", || {
        let now = settled_fd_count(h.pid());
        (now <= before).then_some(now)
    });
    assert_eq!(after, before);
}

/// Scenario 17: while one worker floods its notify socket (valid STATUS= lines, as fast as
/// handover reads them), `handover status` keeps answering, the flood is seen going on
/// between answers, a killed second worker is replaced and its READY=1 read, and handover's
/// memory stays where it was.
#[test]
fn scenario_17_a_notify_flood_blocks_neither_control_nor_other_workers() {
    let script = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
stop = os.path.join(os.environ["DIR"], "stop")
n, end = 0, time.time() + 60
while n % 1000 or not (os.path.exists(stop) or time.time() > end):
    s.send(b"STATUS=flood %d" % n)
    n += 1
print("flood ended after", n, file=sys.stderr, flush=True)
time.sleep(1000)
"#;
    let command = format!(
        r#"command = ["sh", "-c", "if [ \"$HANDOVER_WORKER\" = 0 ]; then exec env DIR={{dir}} {PYTHON} -c \"$0\"; else exec {{worker}} --report {{dir}}/reports --ready-after 0; fi", {}]
count = 2
restart_backoff_initial = "10ms""#,
        toml_string(script)
    );
    let h = Handover::start("s17", &format!("[worker]\n{command}\n"), Options::default());
    h.log.wait_for("all 2 workers ready");
    let flood_of = |s: &Value| -> Option<u64> {
        s["generations"][0]["workers"]
            .as_array()?
            .iter()
            .find(|w| w["index"] == 0)?["status"]
            .as_str()?
            .strip_prefix("flood ")?
            .parse()
            .ok()
    };
    let start = wait_status(&h, "the flood to begin", |s| flood_of(s).is_some());
    let rss_before = vm_rss_kib(h.pid());
    let mut last = flood_of(&start).unwrap();
    let mut advanced = 0;
    for _ in 0..20 {
        let status = status_json(&h);
        assert_eq!(
            status["status"], "2/2 workers ready, generation 1",
            "{status:#}"
        );
        let now = flood_of(&status).expect("still flooding");
        if now > last {
            advanced += 1;
        }
        last = now;
    }
    assert!(
        advanced >= 10,
        "the flood did not go on between answers ({advanced} of 20)"
    );
    let other = *h.reports(1).keys().next().unwrap();
    harness::kill(other, libc::SIGKILL);
    h.log.wait_for_count("worker ready", 3);
    assert_eq!(h.log.count("flood ended"), 0, "the flood ended too early");
    let rss_after = vm_rss_kib(h.pid());
    std::fs::write(h.dir.path().join("stop"), "").unwrap();
    h.log.wait_for("flood ended");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "handover's memory grew from {rss_before} KiB to {rss_after} KiB during the flood"
    );
}

/// Scenario 18: a worker's MAINPID=, FDSTORE=1, WATCHDOG=1 and a STATUS= full of control
/// characters never reach systemd; the worker's status is kept sanitized (control
/// characters as `?`) and cut to 256 bytes on a character boundary.
#[test]
fn scenario_18_worker_notifications_are_never_forwarded_to_systemd() {
    let status_text = format!("\x1b[31mevil\x07{}", "é".repeat(200));
    let datagram = format!(
        "READY=1\nMAINPID=1\nFDSTORE=1\nFDNAME=stolen\nWATCHDOG=1\nWATCHDOG_USEC=1\nSTATUS={status_text}"
    );
    let mut h = Handover::start(
        "s18",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--notify-raw\", \"{}\"]\n",
            hex(datagram.as_bytes())
        ),
        Options {
            notify: true,
            ..Default::default()
        },
    );
    h.notify.as_mut().unwrap().wait_for("READY=1");
    let status = status_json(&h);
    let shown = status["generations"][0]["workers"][0]["status"]
        .as_str()
        .expect("the worker's status")
        .to_string();
    assert!(shown.starts_with("?[31mevil?é"), "{shown:?}");
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(
        shown.len() <= 256 && shown.len() > 250,
        "{} bytes",
        shown.len()
    );
    assert!(h.stop().success());
    let notify = h.notify.as_mut().unwrap();
    notify.wait_for("STOPPING=1");
    for datagram in &notify.received {
        for bad in ["MAINPID=", "FDSTORE=", "FDNAME=", "WATCHDOG", "evil"] {
            assert!(
                !datagram.contains(bad),
                "{bad} reached systemd: {datagram:?}"
            );
        }
    }
}

// ---- lifecycle (20-27) -------------------------------------------------------------------

/// The fd count and memory of handover once its only worker has been ready for a while
/// (checked through `status`), so that no spawn or crash is in the middle of happening.
fn settled_resources(h: &Handover) -> (usize, u64) {
    wait_status(h, "a worker ready for a while", |s| {
        s["generations"][0]["workers"][0]["ready_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 300)
    });
    (settled_fd_count(h.pid()), vm_rss_kib(h.pid()))
}

/// Scenario 20: a crash loop costs nothing that stays: handover's fd count after 150 more
/// crashes is what it was after 20, and its memory is where it was.
#[test]
fn scenario_20_a_crash_loop_leaves_fd_count_and_memory_flat() {
    let h = Handover::start(
        "s20",
        r#"
[worker]
command = ["sh", "-c", "if [ -e {dir}/crash ]; then exec {worker} --ready-after 0 --exit-after-ready 1; else exec {worker} --ready-after 0; fi"]
restart_backoff_initial = "1ms"
restart_backoff_max = "5ms"
"#,
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let crash = h.dir.path().join("crash");
    let crashes = |n: usize| {
        std::fs::write(&crash, "").unwrap();
        let worker = pids_of_lines(&h, &["worker started"]).pop().unwrap();
        harness::kill(worker, libc::SIGKILL);
        h.log.wait_for_count("worker died", n);
        std::fs::remove_file(&crash).unwrap();
    };
    crashes(20);
    let (fds_early, rss_early) = settled_resources(&h);
    let died = h.log.count("worker died");
    crashes(died + 150);
    let (fds_late, rss_late) = settled_resources(&h);
    assert_eq!(fds_late, fds_early, "handover's fds grew over 150 crashes");
    assert!(
        rss_late < rss_early + 4 * 1024,
        "handover's memory grew from {rss_early} KiB to {rss_late} KiB over 150 crashes"
    );
    assert!(h.log.text().contains("crash-looping"), "{}", h.log.text());
}

/// Scenario 22, on reload: the old generation's descendants, the one in the worker's process
/// group and the double-forked one in a session of its own, are gone once that generation
/// has drained, while the new generation's run on: each worker's cgroup is killed once the
/// worker has exited.
#[test]
fn scenario_22_a_reload_leaves_no_descendant_of_the_old_generation() {
    if skip(needs_root("for a cgroup of each worker")) {
        return;
    }
    let old_marker = unique_marker("s22-old");
    let new_marker = unique_marker("s22-new");
    let config = |marker: &str| {
        format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\", \"--child\", \"--grandchild\", \"--marker\", \"{marker}\"]\ncount = 2\n\n[reload]\ndrain_timeout = \"2s\"\n"
        )
    };
    let mut h = Handover::start("s22", &config(&old_marker), Options::default());
    h.log.wait_for("all 2 workers ready");
    wait_until("the old generation's descendants", || {
        (marked_processes(&old_marker).len() == 4).then_some(())
    });
    h.rewrite_config(&config(&new_marker));
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    h.log
        .wait_for("generation draining has no workers left generation=1");
    wait_until("the new generation's descendants", || {
        (marked_processes(&new_marker).len() == 4).then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marked_processes(&old_marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = marked_processes(&old_marker)
        .into_iter()
        .map(describe_process)
        .collect();
    assert!(
        left.is_empty(),
        "descendants of the drained generation outlived it: {left:?}"
    );
    assert!(h.stop().success());
}

/// `pid (ppid P, process group G, session S)`, from /proc.
fn describe_process(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or("?");
    format!(
        "{pid} (ppid {}, process group {}, session {})",
        field(4),
        field(5),
        field(6)
    )
}

/// Scenario 23: 150 worker exits, each leaving four orphans behind (two in the worker's
/// process group, two double-forked into sessions of their own, all reparented to handover,
/// the subreaper): no zombie stays, and each exit is reported with the worker's real status.
#[test]
fn scenario_23_exits_and_orphans_leave_no_zombie() {
    const EXITS: usize = 150;
    let h = Handover::start(
        "s23",
        r#"
[worker]
command = ["sh", "-c", "(sleep 0.05 &); (sleep 0.05 &); (setsid sleep 0.05 &); (setsid sleep 0.05 &); if [ -e {dir}/crash ]; then exec {worker} --ready-after 0 --exit-after-ready 1; else exec {worker} --ready-after 0; fi"]
count = 2
restart_backoff_initial = "1ms"
restart_backoff_max = "5ms"
"#,
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let crash = h.dir.path().join("crash");
    std::fs::write(&crash, "").unwrap();
    for pid in pids_of_lines(&h, &["worker started"]) {
        harness::kill(pid, libc::SIGKILL);
    }
    h.log.wait_for_count("worker died", EXITS);
    std::fs::remove_file(&crash).unwrap();
    // Once both slots are stable again and their own orphans have exited, no zombie child
    // of handover may be left: one that was missed would stay one for good.
    wait_status(&h, "both workers ready for a while", |s| {
        s["generations"][0]["workers"].as_array().is_some_and(|w| {
            w.len() == 2 && w.iter().all(|w| w["ready_for_ms"].as_u64() >= Some(300))
        })
    });
    let zombies = wait_until("every zombie reaped", || {
        let zombies: Vec<i32> = children_of(h.pid())
            .into_iter()
            .filter(|&p| !alive(p) && Path::new(&format!("/proc/{p}")).exists())
            .collect();
        zombies.is_empty().then_some(zombies)
    });
    assert!(zombies.is_empty());
    let log = h.log.text();
    let deaths: Vec<&str> = log.lines().filter(|l| l.contains("worker died")).collect();
    assert!(deaths.len() >= EXITS);
    for line in &deaths[2..] {
        assert!(
            line.contains("worker died: exited with code 1"),
            "a death reported with another status: {line}"
        );
    }
    assert!(!log.contains("waitid failed"), "{log}");
}

/// Tids of `pid`'s threads.
fn threads_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Scenario 25, the counter-test: the parent-death signal fires when the *thread* that
/// started a worker exits. handover forks only from threads that live as long as it does (its
/// spawning thread; reload plans are made on a planning thread made at start, not on a pool
/// thread that ends when idle): workers started at start, by a restart, by a reload and by
/// `scale` leave handover's threads as they were, and all of them are alive after tokio's
/// idle-thread keep-alive (10 s) has passed.
#[test]
fn scenario_25_workers_outlive_the_exit_of_handovers_helper_threads() {
    let h = Handover::start(
        "s25",
        "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2\nrestart_backoff_initial = \"10ms\"\n",
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let threads = threads_of(h.pid());
    let first = *h.reports(2).keys().next().unwrap();
    harness::kill(first, libc::SIGKILL);
    h.log.wait_for_count("worker ready", 3);
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    let (status, out, err) = h.ctl(&["scale", "3"]);
    assert!(status.success(), "{out}{err}");
    let status = wait_status(&h, "three ready workers of generation 2", |s| {
        workers_of(s, 2)
            .values()
            .filter(|w| w["state"] == "ready")
            .count()
            == 3
    });
    let workers: Vec<i32> = workers_of(&status, 2).keys().copied().collect();
    assert_eq!(threads_of(h.pid()), threads, "threads came or went");
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(threads_of(h.pid()), threads, "a thread ended while idle");
    // A worker killed by its parent-death signal would be reaped and logged at once; wait for
    // a status round trip so that handover had the chance.
    status_json(&h);
    for pid in &workers {
        assert!(alive(*pid), "worker {pid} died with a thread of handover");
    }
    assert_eq!(h.log.count("worker died"), 1, "{}", h.log.text());
}

/// Scenario 26: more ways a worker cannot start, each reported with the OS error and no
/// half-started worker: a file that is not a program (ENOEXEC), and handover without the
/// capabilities to switch to `user` (EPERM at setgroups). A restart that cannot exec counts
/// as a failure and backs off, and the slot recovers once the program is back.
#[test]
fn scenario_26_exec_and_credential_failures_are_reported() {
    let dir = TempDir::new("s26");
    let junk = dir.path().join("not-a-program");
    std::fs::write(&junk, b"\x7fELF\x02\x01\x01 this is no program").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = Handover::start(
        "s26-enoexec",
        &format!("[worker]\ncommand = [\"{}\"]\n", junk.display()),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    let log = h.log.text();
    assert!(
        log.contains(&format!("executing {}: Exec format error", junk.display())),
        "{log}"
    );

    if !skip(needs_root("to switch users").or_else(|| needs_tool("setpriv"))) {
        let mut h = Handover::start(
            "s26-eperm",
            "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\nuser = \"nobody\"\n",
            Options {
                wrapper: vec![
                    "setpriv".into(),
                    "--bounding-set=-setuid,-setgid".into(),
                    "--".into(),
                ],
                ..Default::default()
            },
        );
        assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
        let log = h.log.text();
        assert!(
            log.contains("setgroups()") && log.contains("Operation not permitted"),
            "{log}"
        );
        assert!(
            harness::read_reports(&h.dir.path().join("reports")).is_empty(),
            "a worker ran"
        );
    }

    // The program vanishes while handover runs: the restart fails, backs off, and recovers.
    let program = dir.path().join("worker-copy");
    std::fs::copy(harness::binary("handover-test-worker"), &program).unwrap();
    let h = Handover::start(
        "s26-restart",
        &format!(
            "[worker]\ncommand = [\"{}\", \"--report\", \"{{dir}}/reports\", \"--ready-after\", \"0\"]\nrestart_backoff_initial = \"50ms\"\nrestart_backoff_max = \"200ms\"\n",
            program.display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let first = *h.reports(1).keys().next().unwrap();
    let aside = dir.path().join("worker-aside");
    std::fs::rename(&program, &aside).unwrap();
    harness::kill(first, libc::SIGKILL);
    h.log.wait_for("restarting in 200ms");
    let log = h.log.text();
    assert!(
        log.contains(&format!(
            "executing {}: No such file or directory",
            program.display()
        )),
        "{log}"
    );
    assert!(log.contains("restarting in 100ms"), "{log}");
    assert_eq!(
        harness::read_reports(&h.dir.path().join("reports")).len(),
        1,
        "no worker ran meanwhile"
    );
    std::fs::rename(&aside, &program).unwrap();
    h.log.wait_for_count("worker ready", 2);
    assert!(alive(h.pid()));
}

/// Scenario 27: handover started the way `nohup` and careless parents start programs (with
/// SIGHUP, SIGINT, SIGQUIT, SIGPIPE and SIGUSR1 ignored and SIGUSR2 and SIGALRM blocked)
/// still gives its workers a clean signal state: nothing blocked, nothing ignored.
#[test]
fn scenario_27_workers_start_with_clean_signals_whatever_handover_inherited() {
    const WRAPPER: &str = r#"
import os, signal, sys
for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGUSR1):
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGALRM})
for line in open("/proc/self/status"):
    if line.startswith(("SigBlk:", "SigIgn:")):
        sys.stderr.write("wrapper " + line)
os.execv(sys.argv[1], sys.argv[1:])
"#;
    let mut h = Handover::start(
        "s27",
        "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2\n",
        Options {
            wrapper: vec![PYTHON.into(), "-c".into(), WRAPPER.into()],
            ..Default::default()
        },
    );
    h.log.wait_for("all 2 workers ready");
    // The wrapper did block and ignore signals before it exec'd handover...
    let log = h.log.text();
    for key in ["SigBlk:", "SigIgn:"] {
        let line = log
            .lines()
            .find_map(|l| l.strip_prefix(&format!("wrapper {key}")))
            .unwrap_or_else(|| panic!("the wrapper did not report {key}:\n{log}"));
        assert_ne!(line.trim(), "0000000000000000", "wrapper {key}");
    }
    // ...and handover, whose own signals must arrive, unblocked what it inherited.
    let handover_status = std::fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap();
    assert!(
        handover_status
            .lines()
            .any(|l| l == "SigBlk:\t0000000000000000"),
        "handover kept an inherited signal mask:\n{handover_status}"
    );
    for (pid, report) in h.reports(2) {
        for key in ["SigBlk", "SigIgn"] {
            assert_eq!(
                report["status"][key].as_str().map(str::trim),
                Some("0000000000000000"),
                "worker {pid} {key}"
            );
        }
    }
    assert!(h.stop().success());
}

// ---- reload (30) -------------------------------------------------------------------------

/// Scenario 30, the kinds of bad configuration the reload suite does not try: a bad socket
/// spec, a new socket whose port is taken, a file that is gone, and a file that is
/// `/dev/zero`. Each reload is refused with the reason (and the file, with line and column
/// where there is one), nothing is spawned, the old workers serve on, and no generation
/// number is used up.
#[test]
fn scenario_30_bad_socket_specs_and_unreadable_files_change_nothing_on_reload() {
    let port = free_port();
    let worker = "command = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2";
    let good = with_socket(port, worker);
    let h = Handover::start("s30", &good, Options::default());
    h.log.wait_for("all 2 workers ready");
    let old: BTreeSet<i32> = h.reports(2).keys().copied().collect();
    let path = h.config.display().to_string();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let bad_spec = good.replace(&format!("127.0.0.1:{port}"), "localhost:80");
    let taken =
        format!("[[socket]]\nname = \"more\"\nlisten = \"127.0.0.1:{busy_port}\"\n\n{good}");
    let check = |what: &str, needles: &[&str]| {
        let (status, out, err) = h.ctl(&["reload"]);
        assert_eq!(status.code(), Some(6), "{what}: {out}{err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} missing: {err}");
        }
        let status = status_json(&h);
        assert_eq!(
            workers_of(&status, 1)
                .keys()
                .copied()
                .collect::<BTreeSet<_>>(),
            old,
            "{what}: the old workers serve"
        );
        assert_eq!(
            status["generations"].as_array().map(Vec::len),
            Some(1),
            "{what}"
        );
        assert_eq!(
            h.log.count("spawning generation"),
            0,
            "{what}: {}",
            h.log.text()
        );
    };
    h.rewrite_config(&bad_spec);
    let line = bad_spec
        .lines()
        .position(|l| l.contains("localhost:80"))
        .unwrap()
        + 1;
    check("bad listen", &[&format!("{path}:{line}:"), "listen"]);
    h.rewrite_config(&taken);
    check(
        "taken port",
        &[&format!("address 127.0.0.1:{busy_port} is already in use")],
    );
    std::fs::remove_file(&h.config).unwrap();
    check("missing file", &[&path]);
    std::os::unix::fs::symlink("/dev/zero", &h.config).unwrap();
    check("/dev/zero", &[&path]);
    std::fs::remove_file(&h.config).unwrap();
    h.rewrite_config(&good);
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("reload done: generation 2 serves"), "{out}");
    drop(busy);
}

// ---- signals and resources (37-42) -------------------------------------------------------

/// Scenario 37, the part the storm tests leave out: SIGPIPE is ignored by handover, and so
/// is the EPIPE of answering control clients that went away (some with a reset) before
/// reading their answer.
#[test]
fn scenario_37_sigpipe_and_vanishing_clients_are_harmless() {
    let mut h = Handover::start(
        "s37",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    for _ in 0..100 {
        h.signal(libc::SIGPIPE);
    }
    for i in 0..100 {
        let mut stream = UnixStream::connect(h.control_socket()).expect("connect");
        stream.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
        if i % 2 == 0 {
            // A zero linger time turns the close into a reset.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket we own, with a valid linger struct and its size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        drop(stream);
    }
    let (status, out, err) = h.ctl(&["status"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("1/1 workers ready"), "{out}");
    assert!(alive(h.pid()));
    assert!(h.stop().success(), "{}", h.log.text());
}

/// Scenario 38: handover at its fd limit (`prlimit --nofile=64`) with control clients taking
/// every free fd: it backs off from accepting instead of spinning, says so in a few lines,
/// fails a restart and a reload with a clear error while the old generation's other worker
/// serves on, and recovers by itself once the clients are gone.
#[test]
fn scenario_38_running_out_of_fds_backs_off_fails_clearly_and_recovers() {
    if skip(needs_tool("prlimit")) {
        return;
    }
    let port = free_port();
    let h = Handover::start(
        "s38",
        &with_socket(
            port,
            "command = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2\nrestart_backoff_initial = \"50ms\"\nrestart_backoff_max = \"200ms\"",
        ),
        Options {
            wrapper: vec!["prlimit".into(), "--nofile=64:64".into(), "--".into()],
            ..Default::default()
        },
    );
    h.log.wait_for("all 2 workers ready");
    let workers: Vec<i32> = h.reports(2).keys().copied().collect();
    let clients: Vec<UnixStream> = (0..100)
        .map(|i| {
            UnixStream::connect(h.control_socket()).unwrap_or_else(|e| panic!("client {i}: {e}"))
        })
        .collect();
    h.log.wait_for("control socket: accept failed");
    let accept_error = h.log.wait_for("control socket: accept failed");
    assert!(
        accept_error.contains("Too many open files"),
        "{accept_error}"
    );
    harness::kill(workers[0], libc::SIGKILL);
    let failed = h.log.wait_for("could not start worker");
    assert!(failed.contains("Too many open files"), "{failed}");
    h.log.wait_for("restarting in 100ms");
    h.signal(libc::SIGHUP);
    // Refused while reading the file, or aborted at the spawn: either way with the reason.
    let refused = h.log.wait_for("generation 1 keeps serving");
    assert!(refused.contains("Too many open files"), "{refused}");
    assert!(alive(workers[1]), "the other worker serves on");
    let before = cpu_ticks(h.pid());
    let measured = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = (cpu_ticks(h.pid()) - before) as f64 / ticks_per_second() as f64;
    let share = used / measured.elapsed().as_secs_f64();
    assert!(
        share < 0.5,
        "handover used {:.0}% of a CPU at its fd limit",
        share * 100.0
    );
    let lines = h.log.count("accept failed");
    assert!(
        lines <= 8,
        "{lines} lines about failed accepts:\n{}",
        h.log.text()
    );
    drop(clients);
    h.log.wait_for_count("worker ready", 3);
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "after the clients left: {out}{err}");
    assert!(out.contains("reload done: generation 3 serves"), "{out}");
}

/// A pids cgroup (v1, `/sys/fs/cgroup/pids`) of its own, removed on drop.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new(label: &str) -> Result<PidsCgroup, String> {
        let path = PathBuf::from(format!("/sys/fs/cgroup/pids/{}", unique_marker(label)));
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot create a pids cgroup at {}: {e}", path.display()))?;
        Ok(PidsCgroup(path))
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value} to {file}: {e}"));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Only empty once every process in it was reaped.
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Scenario 39: handover cannot fork (its pids cgroup is full: `EAGAIN`). A worker that dies
/// meanwhile is not replaced, and says why, and its slot backs off; a reload fails with the
/// reason while the old generation serves on; nothing panics, and once forks work again the
/// slot and reloads recover.
#[test]
fn scenario_39_fork_failures_back_off_fail_clearly_and_recover() {
    if skip(needs_root("to make a pids cgroup")) {
        return;
    }
    let cgroup = match PidsCgroup::new("handover-s39") {
        Ok(cgroup) => cgroup,
        Err(reason) => {
            skip(Some(reason));
            return;
        }
    };
    let port = free_port();
    let h = Handover::start(
        "s39",
        &with_socket(
            port,
            "command = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\ncount = 2\nrestart_backoff_initial = \"50ms\"\nrestart_backoff_max = \"200ms\"",
        ),
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let workers: Vec<i32> = h.reports(2).keys().copied().collect();
    cgroup.write("cgroup.procs", &h.pid().to_string());
    let current = cgroup.read("pids.current").trim().to_string();
    cgroup.write("pids.max", &current);
    harness::kill(workers[0], libc::SIGKILL);
    let failed = h.log.wait_for("could not start worker");
    assert!(
        failed.contains("Resource temporarily unavailable"),
        "{failed}"
    );
    h.log.wait_for("restarting in 200ms");
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(alive(h.pid()), "handover died:\n{}", h.log.text());
    assert_eq!(status.code(), Some(6), "{out}{err}");
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    assert!(alive(workers[1]), "the other worker serves on");
    assert!(!h.log.text().contains("panicked"), "{}", h.log.text());
    cgroup.write("pids.max", "max");
    h.log.wait_for_count("worker ready", 3);
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
}

// ---- control plane and privileges (44-48) ------------------------------------------------

/// Scenario 44, the notify side: entries planted in the runtime directory (a symlink at the
/// name an older version used, `handover.<pid>.notify`, or another user's directory) are never
/// followed, replaced or removed. handover's own directory has a name no one can guess
/// (`handover.<pid>-<time>.notify`, made under another name and renamed into place), so it
/// starts anyway; the sweep of stale entries passes over links and other users' directories.
#[test]
fn scenario_44_planted_notify_directories_are_left_alone() {
    // A worker that never becomes ready ends the run by itself, after it has started.
    let config = "[handover]\nruntime_dir = \"{dir}\"\n\n[worker]\ncommand = [\"{worker}\"]\nready_timeout = \"300ms\"\n";
    let (code, text, dir) = sh(
        "s44a",
        config,
        r#"mkdir precious stale-target && echo keep > precious/file && echo keep > stale-target/file
ln -s "$PWD/precious" "$PWD/handover.$$.notify"
ln -s "$PWD/stale-target" "$PWD/handover.999999999.notify"
exec "$H" start --config "$C""#,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("not ready within 300ms"),
        "it started: {text}"
    );
    for target in ["precious", "stale-target"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(target).join("file"))
                .ok()
                .as_deref(),
            Some("keep\n"),
            "{target} was touched"
        );
    }
    for link in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = link.file_name().to_string_lossy().into_owned();
        if name.ends_with(".notify") {
            assert!(
                link.file_type().unwrap().is_symlink(),
                "{name}: only the planted links are left"
            );
        }
    }

    if skip(needs_root("to plant another user's directory")) {
        return;
    }
    let (code, text, dir) = sh(
        "s44b",
        config,
        r#"mkdir "handover.$$.notify" handover.999999998.notify && echo keep > "handover.$$.notify/file" && echo keep > handover.999999998.notify/file
chown -R 65534:65534 "handover.$$.notify" handover.999999998.notify
exec "$H" start --config "$C""#,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("not ready within 300ms"),
        "it started: {text}"
    );
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".notify"))
        .filter(|e| std::fs::read_to_string(e.path().join("file")).is_ok_and(|t| t == "keep\n"))
        .count();
    assert_eq!(kept, 2, "another user's directories were touched");
}

/// Scenario 44, the control side: handover running as an ordinary user, with no
/// `[control] socket`, no `RUNTIME_DIRECTORY` and no `XDG_RUNTIME_DIR`, refuses to start
/// rather than put its control socket in /tmp.
#[test]
fn scenario_44_no_control_socket_in_tmp_for_ordinary_users() {
    if skip(needs_root("to run handover as another user").or_else(|| needs_tool("setpriv"))) {
        return;
    }
    let dir = TempDir::new("s44-tmp");
    for ancestor in dir.path().ancestors() {
        let mode = std::fs::metadata(ancestor).map(|m| m.mode()).unwrap_or(0);
        if mode & 0o005 != 0o005 {
            skip(Some(format!(
                "{} is not readable and searchable by others",
                ancestor.display()
            )));
            return;
        }
    }
    let config = dir.path().join("app.toml");
    std::fs::write(
        &config,
        harness::expand(
            "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
            dir.path(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(harness::binary("handover"))
        .arg("start")
        .arg("--config")
        .arg(&config)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env("TMPDIR", "/tmp")
        .current_dir("/");
    let (status, out, err) = output_guarded(cmd);
    assert_eq!(status.code(), Some(5), "{out}{err}");
    assert!(
        err.contains("handover never puts its control socket in /tmp"),
        "{err}"
    );
}

/// Scenario 47, the environment handover passes on: with `inherit_env` listing what to
/// inherit, a worker gets exactly those of handover's variables (and `env`), never
/// handover's own `HANDOVER_*` or `LISTEN_FDNAMES`, and each variable once.
#[test]
fn scenario_47_inherited_environment_is_allowlisted_and_reserved_names_are_handovers() {
    let mut h = Handover::start(
        "s47",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0"]
inherit_env = ["PATH", "KEEP_ME"]
env = { ADDED = "by config" }
"#,
        Options {
            env: vec![
                ("KEEP_ME".into(), "yes".into()),
                ("NOT_LISTED".into(), "secret".into()),
                ("HANDOVER_WORKER".into(), "99".into()),
                ("HANDOVER_GENERATION".into(), "7".into()),
                ("HANDOVER_FDS".into(), "{\"evil\":\"/etc/shadow\"}".into()),
                ("LISTEN_FDNAMES".into(), "evil".into()),
            ],
            ..Default::default()
        },
    );
    let reports = h.reports(1);
    let pid = *reports.keys().next().unwrap();
    h.log.wait_for("all 1 workers ready");
    let env = raw_environ(pid);
    let mut seen = BTreeSet::new();
    for (key, _) in &env {
        assert!(seen.insert(key.as_str()), "{key} twice");
    }
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("KEEP_ME"), Some("yes"));
    assert_eq!(get("ADDED"), Some("by config"));
    assert_eq!(get("NOT_LISTED"), None, "not in inherit_env");
    assert_eq!(get("HANDOVER_WORKER"), Some("0"));
    assert_eq!(get("HANDOVER_GENERATION"), Some("1"));
    assert_eq!(get("HANDOVER_FDS"), Some("{}"));
    assert_eq!(get("LISTEN_FDNAMES"), Some(""));
    assert!(get("PATH").is_some());
    assert!(h.stop().success());
}

/// Sends one raw control request and reads every answer line until the server closes.
fn raw_request(h: &Handover, request: &str) -> Vec<Value> {
    let mut stream = UnixStream::connect(h.control_socket()).expect("connect");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Scenario 47, through a reload's overrides (the raw control protocol, as `handover reload
/// --env` and `--replace-env` send them): reserved variables cannot be set for the new
/// generation; each new worker has handover's values, each variable once.
#[test]
fn scenario_47_reload_overrides_cannot_set_reserved_variables() {
    let h = Handover::start(
        "s47-reload",
        "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\nready_timeout = \"5s\"\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    for request in [
        r#"{"v":1,"cmd":"reload","env":[["LISTEN_PID","1"],["LISTEN_FDS","9"],["HANDOVER_WORKER","9"]]}"#,
        r#"{"v":1,"cmd":"reload","env":[["NOTIFY_SOCKET","/tmp/evil.sock"],["WATCHDOG_USEC","1"]]}"#,
        r#"{"v":1,"cmd":"reload","replace_env":true,"env":[["HANDOVER_FD_NUMBERS","{\"evil\":3}"]]}"#,
    ] {
        let answers = raw_request(&h, request);
        let last = answers.last().cloned().unwrap_or(Value::Null);
        assert_eq!(last["event"], "done", "{request}: {answers:?}");
        let generation = last["generation"].as_u64().expect("generation");
        let status = wait_status(&h, "the new worker", |s| {
            workers_of(s, generation)
                .values()
                .any(|w| w["state"] == "ready")
        });
        let pid = *workers_of(&status, generation).keys().next().unwrap();
        let env = raw_environ(pid);
        let mut seen = BTreeSet::new();
        for (key, value) in &env {
            assert!(seen.insert(key.clone()), "{request}: {key} twice");
            assert!(!value.contains("evil"), "{request}: {key}={value}");
        }
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(
            get("LISTEN_PID"),
            Some(pid.to_string().as_str()),
            "{request}"
        );
        assert_eq!(get("LISTEN_FDS"), Some("0"), "{request}");
        assert_eq!(get("HANDOVER_WORKER"), Some("0"), "{request}");
        assert_eq!(get("WATCHDOG_USEC"), None, "{request}");
        assert_eq!(get("HANDOVER_FD_NUMBERS"), Some("{}"), "{request}");
        assert!(
            get("NOTIFY_SOCKET").is_some_and(|p| p.contains("handover.")),
            "{request}"
        );
    }
}

/// Scenario 47: a reload override whose name is empty or holds `=` or a NUL is refused, as
/// the same name in the configuration is, and nothing is spawned. (A name with `=` is no
/// harmless oddity: `NOTIFY_SOCKET=/x` as a name puts a second `NOTIFY_SOCKET` before the
/// real one in the worker's environment, and the worker reports to the wrong socket.)
#[test]
fn scenario_47_bad_override_names_are_refused() {
    let h = Handover::start(
        "s47-names",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\nready_timeout = \"2s\"\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    for env in [
        r#"[["NOTIFY_SOCKET=/tmp/elsewhere.sock","x"]]"#,
        r#"[["A=B","x"]]"#,
        r#"[["A\u0000B","x"]]"#,
        r#"[["","x"]]"#,
    ] {
        let answers = raw_request(&h, &format!(r#"{{"v":1,"cmd":"reload","env":{env}}}"#));
        assert_eq!(answers.len(), 1, "{env}: {answers:?}");
        assert_eq!(answers[0]["event"], "error", "{env}: {answers:?}");
    }
    assert_eq!(h.log.count("spawning generation"), 0, "{}", h.log.text());
}

/// Scenario 48: a worker run as `user = "nobody"` has every uid and gid of nobody, no
/// supplementary group of root, no capability, cannot become root again, and its notify
/// socket belongs to nobody and is closed to every other user.
#[test]
fn scenario_48_workers_drop_every_privilege() {
    if skip(needs_root("to switch users").or_else(|| needs_tool("setpriv"))) {
        return;
    }
    let reports = TempDir::new("s48-reports");
    std::fs::set_permissions(reports.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut h = Handover::start(
        "s48",
        &format!(
            r#"
[worker]
command = ["sh", "-c", "setpriv --reuid=0 true || echo regaining root failed; exec {{worker}} --report {} --ready-after 0"]
user = "nobody"
"#,
            reports.path().display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let found = harness::wait_reports(reports.path(), 1);
    let (pid, report) = found.iter().next().unwrap();
    let line = |key: &str| {
        report["status"][key]
            .as_str()
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert!(
        line("Uid").split_whitespace().all(|u| u == "65534"),
        "Uid {}",
        line("Uid")
    );
    assert!(
        line("Gid").split_whitespace().all(|g| g == "65534"),
        "Gid {}",
        line("Gid")
    );
    assert!(
        !line("Groups").split_whitespace().any(|g| g == "0"),
        "Groups {}",
        line("Groups")
    );
    assert_eq!(line("CapEff"), "0000000000000000");
    h.log.wait_for("regaining root failed");
    let socket = PathBuf::from(report["env"]["NOTIFY_SOCKET"].as_str().unwrap());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (65534, 0o600),
        "{}",
        socket.display()
    );
    // Another unprivileged user cannot send to it.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65533", "--regid=65533", "--clear-groups", PYTHON, "-c"])
        .arg("import socket, sys\ntry:\n    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'STOPPING=1', sys.argv[1])\n    print('sent')\nexcept OSError as e:\n    print('refused', e.errno)\n")
        .arg(&socket);
    let (_, out, err) = output_guarded(cmd);
    assert!(out.starts_with("refused 13"), "{out}{err}");
    assert!(alive(*pid));
    assert!(h.stop().success());
}

/// Scenario 48: workers run with `NO_NEW_PRIVS`, so no setuid program can give back what
/// the privilege drop took; `no_new_privileges = false` turns it off, and the umask and
/// open-file limit of `[worker]` reach the worker.
#[test]
fn scenario_48_workers_have_no_new_privileges() {
    if skip(needs_root("to switch users")) {
        return;
    }
    let reports = TempDir::new("s48-nnp-reports");
    std::fs::set_permissions(reports.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut h = Handover::start(
        "s48-nnp",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--report\", \"{}\", \"--ready-after\", \"0\"]\nuser = \"nobody\"\n",
            reports.path().display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let found = harness::wait_reports(reports.path(), 1);
    let report = found.values().next().unwrap();
    assert_eq!(
        report["status"]["NoNewPrivs"].as_str().map(str::trim),
        Some("1")
    );
    assert!(h.stop().success());

    // Turned off, and the per-process settings.
    let reports = TempDir::new("s48-off-reports");
    std::fs::set_permissions(reports.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut h = Handover::start(
        "s48-off",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--report\", \"{}\", \"--ready-after\", \"0\"]\nuser = \"nobody\"\nno_new_privileges = false\numask = \"0027\"\nlimit_nofile = 4096\n",
            reports.path().display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let found = harness::wait_reports(reports.path(), 1);
    let report = found.values().next().unwrap();
    let status = &report["status"];
    assert_eq!(
        status["NoNewPrivs"].as_str().map(str::trim),
        Some("0"),
        "{status}"
    );
    assert_eq!(
        status["Umask"].as_str().map(str::trim),
        Some("0027"),
        "{status}"
    );
    assert_eq!(status["nofile"].as_str(), Some("4096 4096"), "{status}");
    assert!(h.stop().success());
}

/// Outside the catalogue, found with scenario 37: handover started with SIGTERM, SIGHUP and
/// SIGUSR2 blocked (a signal mask survives exec) still reloads on SIGHUP and stops on SIGTERM.
#[test]
fn inherited_blocked_signals_are_unblocked() {
    if skip(needs_tool(PYTHON)) {
        return;
    }
    let port = free_port();
    let config = format!(
        "[[socket]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\n\n[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\"]\n"
    );
    let block = "import os, signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2})\nos.execv(sys.argv[1], sys.argv[1:])";
    let mut h = Handover::start(
        "blocked-signals",
        &config,
        Options {
            wrapper: vec![PYTHON.into(), "-c".into(), block.into()],
            ..Default::default()
        },
    );
    h.log.wait_for("all 1 workers ready");
    h.signal(libc::SIGHUP);
    h.log.wait_for("reload done in");
    let status = h.stop();
    assert!(status.success(), "{status:?}: {}", h.log.text());
}
