//! Issue 2 (core): sockets in, workers out. Each test runs the real `handover` binary.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use handover_tests::harness::{
    self, alive, kill, marked_processes, run_handover, unique_marker, wait_gone, Handover, Options,
    TempDir,
};
use serde_json::Value;

fn env_of(report: &Value, key: &str) -> Option<String> {
    report["env"][key].as_str().map(str::to_string)
}

fn fd_numbers(report: &Value) -> BTreeSet<i64> {
    report["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|f| f["fd"].as_i64().expect("fd"))
        .collect()
}

fn status_line<'a>(report: &'a Value, key: &str) -> &'a str {
    report["status"][key]
        .as_str()
        .unwrap_or_else(|| panic!("status {key} missing in {report}"))
        .trim()
}

/// Two workers on one self-bound socket: each sees exactly fds 0-3, the systemd variables
/// with its own pid, the JSON maps, its index and generation, its own notify socket, and no
/// ignored or blocked signal.
#[test]
fn workers_get_exactly_their_fds_and_environment() {
    let port = harness::free_port();
    let mut h = Handover::start(
        "fds-env",
        &format!(
            r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--report", "{{dir}}/reports", "--ready-after", "0"]
count = 2
"#
        ),
        Options {
            notify: true,
            env: vec![
                ("WATCHDOG_USEC".into(), "1000000".into()),
                ("KEEP_ME".into(), "yes".into()),
            ],
            ..Default::default()
        },
    );
    let ready = h.notify.as_mut().expect("notify").wait_for("READY=1");
    assert!(
        ready.contains("STATUS=2/2 workers ready, generation 1"),
        "{ready}"
    );
    let reports = h.reports(2);
    let mut indexes = BTreeSet::new();
    let mut notify_paths = BTreeSet::new();
    for (pid, report) in &reports {
        assert_eq!(
            fd_numbers(report),
            BTreeSet::from([0, 1, 2, 3]),
            "worker {pid} fds: {}",
            report["fds"]
        );
        assert_eq!(env_of(report, "LISTEN_PID"), Some(pid.to_string()));
        assert_eq!(env_of(report, "LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(env_of(report, "LISTEN_FDNAMES").as_deref(), Some("web"));
        assert_eq!(
            env_of(report, "HANDOVER_FDS").as_deref(),
            Some(r#"{"web":"/dev/fd/3"}"#)
        );
        assert_eq!(
            env_of(report, "HANDOVER_FD_NUMBERS").as_deref(),
            Some(r#"{"web":3}"#)
        );
        assert_eq!(env_of(report, "HANDOVER_GENERATION").as_deref(), Some("1"));
        assert_eq!(
            env_of(report, "KEEP_ME").as_deref(),
            Some("yes"),
            "inherited variables pass on"
        );
        assert_eq!(
            env_of(report, "WATCHDOG_USEC"),
            None,
            "systemd's watchdog variables never reach workers"
        );
        indexes.insert(env_of(report, "HANDOVER_WORKER").expect("index"));
        let notify = env_of(report, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
        assert!(notify.starts_with('/'), "a path, never abstract: {notify}");
        assert_ne!(
            notify,
            h.notify.as_ref().unwrap().path().display().to_string(),
            "never systemd's socket"
        );
        notify_paths.insert(notify);
        let socket = &report["sockets"][0];
        assert_eq!(
            socket["local"].as_str(),
            Some(format!("127.0.0.1:{port}").as_str())
        );
        assert_eq!(socket["listening"].as_bool(), Some(true));
        assert_eq!(
            report["pgid"].as_i64(),
            Some(*pid as i64),
            "own process group"
        );
        assert_eq!(status_line(report, "SigBlk"), "0000000000000000");
        assert_eq!(status_line(report, "SigIgn"), "0000000000000000");
        assert_eq!(
            report["dev_fd_open"].as_str(),
            Some("ENXIO"),
            "why fd numbers are passed too"
        );
        let fd3 = report["fds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["fd"] == 3)
            .unwrap();
        assert_eq!(fd3["cloexec"].as_bool(), Some(false));
    }
    assert_eq!(indexes, BTreeSet::from(["0".to_string(), "1".to_string()]));
    assert_eq!(notify_paths.len(), 2, "one notify socket per worker");
    assert!(h.stop().success());
    h.notify.as_mut().unwrap().wait_for("STOPPING=1");
}

/// Sockets from the real `systemd-socket-activate`, named a and b, reach workers in the
/// config's order (b first: a permutation), and a passed socket the config does not name
/// is passed on after the configured ones.
#[test]
fn systemd_sockets_follow_the_configured_order() {
    let (pa, pb, pc) = (
        harness::free_port(),
        harness::free_port(),
        harness::free_port(),
    );
    let mut h = Handover::start(
        "activate-order",
        r#"
[[socket]]
name = "b"
from_systemd = true

[[socket]]
name = "a"
listen = "127.0.0.1:1"

[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0"]
"#,
        Options {
            activate: vec![
                (format!("127.0.0.1:{pa}"), "a".into()),
                (format!("127.0.0.1:{pb}"), "b".into()),
                (format!("127.0.0.1:{pc}"), "c".into()),
            ],
            ..Default::default()
        },
    );
    let reports = h.reports(1);
    let report = reports.values().next().unwrap();
    assert_eq!(env_of(report, "LISTEN_FDNAMES").as_deref(), Some("b:a:c"));
    assert_eq!(env_of(report, "LISTEN_FDS").as_deref(), Some("3"));
    assert_eq!(
        env_of(report, "HANDOVER_FD_NUMBERS").as_deref(),
        Some(r#"{"b":3,"a":4,"c":5}"#)
    );
    let locals: Vec<String> = report["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["local"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        locals,
        vec![
            format!("127.0.0.1:{pb}"),
            format!("127.0.0.1:{pa}"),
            format!("127.0.0.1:{pc}")
        ]
    );
    assert_eq!(fd_numbers(report), BTreeSet::from([0, 1, 2, 3, 4, 5]));
    assert!(h.stop().success());
}

/// The common case: systemd's fd 3 becomes the worker's fd 3 (same number; close-on-exec
/// must still be cleared), and the worker serves connections on it.
#[test]
fn fd_three_stays_fd_three_and_serves() {
    let port = harness::free_port();
    let mut h = Handover::start(
        "activate-same",
        r#"
[[socket]]
name = "http"
from_systemd = true

[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0", "--serve"]
count = 2
"#,
        Options {
            activate: vec![(format!("127.0.0.1:{port}"), "http".into())],
            ..Default::default()
        },
    );
    let reports = h.reports(2);
    for report in reports.values() {
        let fd3 = report["fds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["fd"] == 3)
            .expect("fd 3");
        assert_eq!(fd3["cloexec"].as_bool(), Some(false));
        assert_eq!(
            report["sockets"][0]["local"].as_str(),
            Some(format!("127.0.0.1:{port}").as_str())
        );
    }
    let body = http_get(port);
    let pid: i32 = body.trim().parse().expect("worker answers with its pid");
    assert!(
        reports.contains_key(&pid),
        "answered by one of handover's workers"
    );
    assert!(h.stop().success());
}

fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(harness::GUARD)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// A worker that crashes after becoming ready is restarted with doubling delays.
#[test]
fn crashed_workers_restart_with_backoff() {
    let mut h = Handover::start(
        "backoff",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--exit-after-ready", "7", "--stderr", "about to fail"]
restart_backoff_initial = "50ms"
restart_backoff_max = "200ms"
"#,
        Options::default(),
    );
    h.log.wait_for("restarting in 50ms");
    h.log.wait_for("restarting in 100ms");
    h.log.wait_for("restarting in 200ms");
    let line = h.log.wait_for_count("restarting in 200ms", 3);
    assert!(line.contains("restarting"));
    let died = h.log.wait_for("worker died");
    assert!(died.contains("exited with code 7"), "{died}");
    assert!(
        died.contains("about to fail"),
        "the last stderr lines explain the death: {died}"
    );
    assert!(h.stop().success());
}

/// A first generation that never becomes ready fails the start: exit 1, naming the timeout.
#[test]
fn never_ready_fails_the_start() {
    let mut h = Handover::start(
        "never-ready",
        r#"
[worker]
command = ["{worker}"]
ready_timeout = "300ms"
stop_timeout = "5s"
"#,
        Options::default(),
    );
    let status = h.wait();
    assert_eq!(status.code(), Some(1), "log:\n{}", h.log.text());
    assert!(
        h.log.text().contains("not ready within 300ms"),
        "{}",
        h.log.text()
    );
}

/// A worker that exits before it is ready fails the start, and the log says how and why.
#[test]
fn exit_before_ready_fails_the_start_with_the_reason() {
    let mut h = Handover::start(
        "exit-early",
        r#"
[worker]
command = ["{worker}", "--stderr", "cannot open database", "--exit-after", "0", "3"]
"#,
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    let log = h.log.text();
    assert!(log.contains("exited with code 3"), "{log}");
    assert!(log.contains("cannot open database"), "{log}");
}

/// A program that cannot be executed fails the start with the OS error, no panic.
#[test]
fn exec_failure_is_reported() {
    let mut h = Handover::start(
        "exec-fail",
        r#"
[worker]
command = ["/nonexistent/program"]
"#,
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    let log = h.log.text();
    assert!(
        log.contains("executing /nonexistent/program: No such file or directory"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// A worker that ignores SIGTERM is SIGKILLed once the stop timeout passes; handover still
/// exits 0, in about the stop timeout.
#[test]
fn stop_kills_a_worker_that_ignores_sigterm() {
    let mut h = Handover::start(
        "ignore-term",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0", "--ignore-term"]
stop_timeout = "1s"
"#,
        Options::default(),
    );
    let pids: Vec<i32> = h.reports(1).keys().copied().collect();
    h.log.wait_for("all 1 workers ready");
    let asked = Instant::now();
    assert!(h.stop().success(), "{}", h.log.text());
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the stop timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "SIGKILL came at the stop timeout plus a margin: {took:?}"
    );
    assert!(h.log.text().contains("sending SIGKILL"), "{}", h.log.text());
    wait_gone(&pids);
}

/// A worker's children in its process group and its double-forked, setsid'd grandchildren
/// are all gone after a stop.
#[test]
fn stop_leaves_no_descendant_behind() {
    let marker = unique_marker("descendants");
    let mut h = Handover::start(
        "descendants",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--ready-after", "0", "--child", "--grandchild", "--marker", "{marker}"]
count = 2
"#
        ),
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let deadline = Instant::now() + harness::GUARD;
    while marked_processes(&marker).len() < 4 {
        assert!(Instant::now() < deadline, "descendants did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(h.stop().success());
    assert_eq!(
        marked_processes(&marker),
        Vec::<i32>::new(),
        "no descendant survives a stop"
    );
}

/// handover SIGKILLed: every worker dies with it (parent-death signal), and the port can be
/// bound again.
#[test]
fn workers_die_with_a_sigkilled_handover() {
    let port = harness::free_port();
    let mut h = Handover::start(
        "sigkill",
        &format!(
            r#"
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--report", "{{dir}}/reports", "--ready-after", "0", "--ignore-term"]
count = 3
"#
        ),
        Options::default(),
    );
    let pids: Vec<i32> = h.reports(3).keys().copied().collect();
    h.log.wait_for("all 3 workers ready");
    h.signal(libc::SIGKILL);
    h.wait();
    wait_gone(&pids);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
}

/// The fourth SIGTERM in a row ends everything at once, without waiting for the timeout.
#[test]
fn fourth_stop_signal_forces_the_exit() {
    let mut h = Handover::start(
        "force",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0", "--ignore-term"]
stop_timeout = "1h"
"#,
        Options::default(),
    );
    let pids: Vec<i32> = h.reports(1).keys().copied().collect();
    h.log.wait_for("all 1 workers ready");
    for n in 1..=4 {
        h.signal(libc::SIGTERM);
        if n < 4 {
            h.log.wait_for_count("SIGTERM", n);
        }
    }
    let status = h.wait();
    assert_eq!(status.code(), Some(1));
    assert!(
        h.log.text().contains("stop signals in a row"),
        "{}",
        h.log.text()
    );
    wait_gone(&pids);
}

/// A shell worker that reports readiness through `systemd-notify --ready` (a child process,
/// which also sends BARRIER=1 with an fd and waits for it to close) is ready.
#[test]
fn readiness_from_a_child_systemd_notify() {
    let mut h = Handover::start(
        "notify-child",
        r#"
[worker]
command = ["{worker}", "--ready-via-child", "--status", "booted"]
count = 2
ready_timeout = "20s"
"#,
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    assert!(h.stop().success());
    // Every datagram of systemd-notify is taken as the worker's, its BARRIER=1 too: the
    // barrier fd closes only after handover has placed the sender, which waits until then.
    assert!(
        !h.log.text().contains("ignored a notification"),
        "{}",
        h.log.text()
    );
}

/// With notify_access = "main", READY=1 sent by a child with its own pid is ignored; with the
/// default ("all") the same child makes the worker ready.
#[test]
fn notify_access_main_ignores_children() {
    // The test worker runs as a child of the shell (not exec'd), so it sends READY=1 with a
    // pid that is not the worker's. ("52454144593d31" is "READY=1".) It lives on for a moment:
    // a sender must still exist when handover reads its datagram, to be placed as the
    // worker's (as with systemd's NotifyAccess=all; systemd-notify waits for that).
    let config = |access: &str| {
        format!(
            r#"
[worker]
command = ["sh", "-c", "'{{worker}}' --notify-raw 52454144593d31 --exit-after 500 0; exec sleep 1000"]
notify_access = "{access}"
ready_timeout = "2s"
"#
        )
    };
    let mut main_only = Handover::start("notify-main", &config("main"), Options::default());
    assert_eq!(main_only.wait().code(), Some(1));
    let log = main_only.log.text();
    assert!(
        log.contains("only the worker's own pid may notify"),
        "{log}"
    );
    assert!(log.contains("not ready within"), "{log}");

    let mut all = Handover::start("notify-all", &config("all"), Options::default());
    all.log.wait_for("all 1 workers ready");
    assert!(all.stop().success());
}

/// Hostile datagrams (oversized with READY=1, NUL, junk) never make a worker ready and never
/// crash handover.
#[test]
fn hostile_notifications_are_dropped() {
    let big = format!("READY=1\n{}", "X".repeat(5000));
    let hex = |s: &[u8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut h = Handover::start(
        "hostile-notify",
        &format!(
            r#"
[worker]
command = ["{{worker}}", "--notify-raw", "{}", "--notify-raw", "{}", "--notify-raw", "{}", "--notify-raw", "{}"]
ready_timeout = "1s"
"#,
            hex(big.as_bytes()),
            hex(b"READY=1\0"),
            hex(b"READY=0\nREADY=1x\nnonsense"),
            hex(&[0xff, 0xfe, b'\n']),
        ),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    let log = h.log.text();
    // The first drop is logged with its reason, the other two counted (issue 13, item 4),
    // the last of them named. (The third datagram parses; its bad fields are ignored.)
    assert!(log.contains("longer than 4096 bytes"), "{log}");
    assert!(
        log.contains(
            "2 more notifications dropped in the last 10.0s; the last: dropped a notification: \
             notification datagram is not valid UTF-8"
        ),
        "{log}"
    );
    assert!(log.contains("not ready within"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Readiness by delay: ready once alive for ready_delay.
#[test]
fn delay_readiness() {
    let mut h = Handover::start(
        "delay",
        r#"
[worker]
command = ["{worker}"]
ready = "delay"
ready_delay = "200ms"
count = 2
"#,
        Options {
            notify: true,
            ..Default::default()
        },
    );
    let ready = h.notify.as_mut().unwrap().wait_for("READY=1");
    assert!(ready.contains("2/2 workers ready"), "{ready}");
    assert!(h.stop().success());
}

/// No zombie is left behind by crashing workers.
#[test]
fn crash_loops_leave_no_zombies() {
    let mut h = Handover::start(
        "zombies",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--exit-after", "300", "1"]
count = 3
restart_backoff_initial = "10ms"
restart_backoff_max = "20ms"
"#,
        Options::default(),
    );
    h.log.wait_for_count("restarting in", 30);
    let me = h.pid();
    let zombies: Vec<i32> = harness::children_of(me)
        .into_iter()
        .filter(|&p| !alive(p))
        .collect();
    // A child that just exited may be a zombie for an instant before the reaper runs; a
    // leak would keep piling up. Look again after more restarts.
    h.log.wait_for_count("restarting in", 60);
    let still: Vec<i32> = zombies
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        still.is_empty(),
        "zombies that were never reaped: {still:?}"
    );
    assert!(h.stop().success());
}

/// Running as root with `user = "nobody"`: the worker runs as nobody, with the groups set,
/// and still dies with handover (the parent-death signal survives the uid change).
#[test]
fn workers_run_as_the_configured_user() {
    if handover_sys_is_root() {
        // nobody must be able to execute the worker and write its report, wherever the
        // checkout is (a 0700 home would block both).
        let dir_note = TempDir::reachable("user-reports");
        let worker = harness::reachable_bin("handover-test-worker");
        let reports = dir_note.path().join("reports");
        std::fs::create_dir_all(&reports).unwrap();
        std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o777)).unwrap();
        harness::assert_reachable_by_others(&worker);
        harness::assert_reachable_by_others(&reports);
        let mut h = Handover::start(
            "user",
            &format!(
                r#"
[worker]
command = ["{}", "--report", "{}", "--ready-after", "0"]
user = "nobody"
"#,
                worker.display(),
                reports.display()
            ),
            Options::default(),
        );
        let found = harness::wait_reports(&reports, 1);
        let (pid, report) = found.iter().next().unwrap();
        let uid_line = status_line(report, "Uid");
        assert!(
            uid_line.split_whitespace().all(|u| u == "65534"),
            "{uid_line}"
        );
        let groups = status_line(report, "Groups");
        assert!(
            !groups.split_whitespace().any(|g| g == "0"),
            "root's group is dropped: {groups}"
        );
        h.signal(libc::SIGKILL);
        h.wait();
        wait_gone(&[*pid]);
    } else {
        eprintln!("skipped: needs root");
    }
}

fn handover_sys_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `kill -9` of a worker: it is replaced, and the replacement is ready again.
#[test]
fn killed_worker_is_replaced() {
    let mut h = Handover::start(
        "replace",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0"]
count = 2
restart_backoff_initial = "10ms"
"#,
        Options::default(),
    );
    let first: Vec<i32> = h.reports(2).keys().copied().collect();
    h.log.wait_for("all 2 workers ready");
    kill(first[0], libc::SIGKILL);
    let died = h.log.wait_for("worker died");
    assert!(died.contains("killed by SIGKILL"), "{died}");
    let all = h.reports(3);
    assert!(
        all.keys().any(|p| !first.contains(p)),
        "a new worker started"
    );
    h.log.wait_for_count("worker ready", 3);
    assert!(h.stop().success());
}

/// `handover version` and `--help` work; an unknown command is a usage error.
#[test]
fn cli_basics() {
    let (status, out, _) = run_handover(&["version"], &[]);
    assert!(status.success());
    assert!(out.starts_with("handover "), "{out}");
    let (status, out, _) = run_handover(&["--help"], &[]);
    assert!(status.success());
    assert!(out.contains("start"), "{out}");
    let (status, _, err) = run_handover(&["frobnicate"], &[]);
    assert_eq!(status.code(), Some(2), "{err}");
}

/// Towards systemd: EXTEND_TIMEOUT_USEC while the first generation starts, WATCHDOG=1 while
/// running (when WATCHDOG_USEC is set for handover), and self-bound sockets handed to the fd
/// store under their names.
#[test]
fn watchdog_extend_timeout_and_fd_store() {
    let port = harness::free_port();
    let mut h = Handover::start(
        "watchdog",
        &format!(
            r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--ready-after", "0"]
ready_timeout = "10s"
"#
        ),
        Options {
            notify: true,
            env: vec![("WATCHDOG_USEC".into(), "200000".into())],
            ..Default::default()
        },
    );
    let notify = h.notify.as_mut().unwrap();
    let stored = notify.wait_for("FDSTORE=1");
    assert!(stored.contains("FDNAME=web"), "{stored}");
    let extend = notify.wait_for("EXTEND_TIMEOUT_USEC=");
    assert!(
        extend.contains("EXTEND_TIMEOUT_USEC=15000000"),
        "ready_timeout + 5 s: {extend}"
    );
    notify.wait_for("READY=1");
    // Several keep-alives while running.
    for _ in 0..3 {
        notify.received.retain(|d| !d.contains("WATCHDOG=1"));
        notify.wait_for("WATCHDOG=1");
    }
    assert!(h.stop().success());
}

/// `start --daemon --pidfile`: the command returns once the first generation is ready (exit
/// 0), the daemon named by the pidfile serves on, and `stop` ends it. A daemon whose start
/// fails makes the command exit 1 with the reason.
#[test]
fn daemon_mode_returns_once_ready() {
    let dir = TempDir::new("daemon");
    let write = |name: &str, worker: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "[worker]\ncommand = [{worker}]\n\n[control]\nsocket = \"{}/{name}.sock\"\n",
            dir.path().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = write(
        "good.toml",
        &format!(
            "\"{}\", \"--ready-after\", \"200\"",
            harness::binary("handover-test-worker").display()
        ),
    );
    let pidfile = dir.path().join("handover.pid");
    let log = dir.path().join("handover.log");
    let (status, _, err) = run_handover(
        &[
            "start",
            "--config",
            good.to_str().unwrap(),
            "--daemon",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Whatever happens below, the daemon does not outlive the test.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            if alive(self.0) {
                kill(self.0, libc::SIGKILL);
            }
        }
    }
    let _reap = Reap(pid);
    assert!(alive(pid), "the daemon runs on");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("all 1 workers ready"));
    let socket = dir.path().join("good.toml.sock");
    let (status, out, err) = run_handover(&["status", "--socket", socket.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains(&format!("handover pid {pid}")), "{out}");
    let (status, _, err) = run_handover(&["stop", "--socket", socket.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    wait_gone(&[pid]);

    let bad = write("bad.toml", "\"/nonexistent/program\"");
    let (status, _, err) = run_handover(
        &["start", "--config", bad.to_str().unwrap(), "--daemon"],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
}

/// With watchdog_min_workers, WATCHDOG=1 stops while fewer workers are ready, so systemd
/// would restart a handover whose workers are down.
#[test]
fn watchdog_needs_enough_ready_workers() {
    let mut h = Handover::start(
        "watchdog-min",
        r#"
[handover]
watchdog_min_workers = 2

[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "0"]
count = 2
restart_backoff_initial = "30s"
restart_backoff_max = "30s"
"#,
        Options {
            notify: true,
            env: vec![("WATCHDOG_USEC".into(), "200000".into())],
            ..Default::default()
        },
    );
    h.log.wait_for("all 2 workers ready");
    let pid = *h.reports(2).keys().next().unwrap();
    kill(pid, libc::SIGKILL);
    h.log
        .wait_for("fewer than 2 workers ready and healthy: not sending WATCHDOG=1");
    assert!(h.stop().success());
}

/// Scenario 19, readiness by probe: a worker is ready once its probe exits 0. The probe
/// sees the worker's pid (here: the worker's own report file appears).
#[test]
fn probe_readiness() {
    let mut h = Handover::start(
        "probe-ok",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports"]
count = 2
ready = "probe"
probe = ["sh", "-c", "test -e '{dir}'/reports/$HANDOVER_WORKER_PID.json"]
probe_interval = "20ms"
"#,
        Options {
            notify: true,
            ..Default::default()
        },
    );
    let ready = h.notify.as_mut().unwrap().wait_for("READY=1");
    assert!(ready.contains("2/2 workers ready"), "{ready}");
    // The log comes through a pipe, and may be read after READY=1 arrived: wait for it.
    h.log.wait_for_count("worker ready (probe succeeded)", 2);
    assert!(h.stop().success());
    assert_eq!(
        h.log.count("worker ready (probe succeeded)"),
        2,
        "{}",
        h.log.text()
    );
}

/// Scenario 19: a probe that hangs is killed at probe_timeout (nothing of it survives), one
/// that refuses is retried, and a worker whose probe never succeeds fails with the reason.
#[test]
fn probe_that_hangs_or_refuses() {
    let marker = unique_marker("probe-hang");
    let mut h = Handover::start(
        "probe-hang",
        &format!(
            r#"
[worker]
command = ["{{worker}}"]
ready = "probe"
probe = ["env", "HANDOVER_TEST_MARKER={marker}", "sleep", "100"]
probe_timeout = "200ms"
probe_interval = "10ms"
ready_timeout = "1s"
"#
        ),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    let log = h.log.text();
    assert!(
        log.contains("not ready within 1.0s; last probe: timed out after 200ms"),
        "{log}"
    );
    assert_eq!(
        marked_processes(&marker),
        Vec::<i32>::new(),
        "every hung probe was killed"
    );

    let mut h = Handover::start(
        "probe-refuse",
        r#"
[worker]
command = ["{worker}"]
ready = "probe"
probe = ["sh", "-c", "exit 3"]
probe_interval = "10ms"
ready_timeout = "500ms"
"#,
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    assert!(
        h.log.text().contains("last probe: exited with code 3"),
        "{}",
        h.log.text()
    );
}

/// Scenario 19: probe attempts of a worker never overlap.
#[test]
fn probes_never_overlap() {
    let mut h = Handover::start(
        "probe-overlap",
        r#"
[worker]
command = ["{worker}"]
ready = "probe"
probe = ["sh", "-c", "echo start >> '{dir}/probes'; sleep 0.1; echo end >> '{dir}/probes'; exit 1"]
probe_interval = "1ms"
probe_timeout = "5s"
ready_timeout = "1500ms"
"#,
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1));
    let lines = std::fs::read_to_string(h.dir.path().join("probes")).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert!(lines.len() >= 6, "several attempts ran: {lines:?}");
    for pair in lines.chunks(2) {
        if pair.len() == 2 {
            assert_eq!(
                pair,
                ["start", "end"],
                "attempts alternate start/end: {lines:?}"
            );
        }
    }
}
