//! Issue 12 (steered reloads): new connections go only to the generation that should get
//! them, so workers that drain badly lose nothing. Every test that shows steering helps runs
//! the same thing with `steering = false` too, which must show the failures, so the test can
//! fail.

use std::time::{Duration, Instant};

use handover_tests::harness::{self, free_port, Handover, Options};
use handover_tests::loadgen::{self, Mode, Summary};

/// The load never runs longer than this.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// A handover with two test workers that drain badly (`worker_args`) on a socket with
/// steering on or off.
fn start(label: &str, steering: bool, worker_args: &str, extra: &str) -> (Handover, u16) {
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"
steering = {steering}

[worker]
command = ["{{worker}}", "--ready-after", "0", "--serve", {worker_args}]
count = 2
stop_timeout = "20s"

[reload]
drain_timeout = "20s"
max_draining = 8
{extra}
"#
    );
    let h = Handover::start(label, &config, Options::default());
    h.log.wait_for("all 2 workers ready");
    (h, port)
}

fn load(port: u16) -> loadgen::Background {
    loadgen::Background::on_port(port, Mode::NewConnection, 8, LOAD_LIMIT)
}

fn finish(load: loadgen::Background) -> Summary {
    load.finish_by_test()
}

/// `reloads` reloads under new-connection load with workers that batch their accepts and
/// drop what they have not read when told to stop; the load's summary, and how long the
/// old generations took to stop.
fn batching_reloads(label: &str, steering: bool, reloads: usize) -> (Summary, Duration) {
    let (mut h, port) = start(
        label,
        steering,
        r#""--accept-batch", "16", "--answer-delay-ms", "20""#,
        "",
    );
    let load = load(port);
    let started = Instant::now();
    for n in 1..=reloads {
        let (status, out, err) = h.ctl(&["reload"]);
        assert!(status.success(), "reload {n}: {out}{err}");
        h.log
            .wait_for_count("generation draining has no workers left", n);
    }
    let took = started.elapsed();
    let summary = finish(load);
    assert!(h.stop().success());
    (summary, took)
}

/// With steering, a worker that drops accepted-but-unread connections at its stop signal has
/// none: 0 failed requests over 5 reloads under new-connection load.
#[test]
fn batching_workers_lose_nothing_with_steering() {
    let (summary, _) = batching_reloads("steer-batch-on", true, 5);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "requests failed with steering: {json}");
}

/// The same without steering: the old workers take new connections until their stop
/// signal and drop some of them. (This is what steering fixes; if it ever stops failing,
/// the test above proves nothing.)
#[test]
fn batching_workers_lose_requests_without_steering() {
    let (summary, _) = batching_reloads("steer-batch-off", false, 5);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert!(
        summary.failed() > 0,
        "no request failed without steering, so the steered test proves nothing: {json}"
    );
}

/// Two workers blocked in accept() on one socket (Werkzeug's development server after
/// select()): told to stop with no traffic, the one that lost the race never sees its flag.
/// With steering, handover wakes it with a connection of its own: the old generation is gone
/// well before the drain timeout. Without, it waits for SIGKILL at the drain timeout.
fn blocked_accept_stop(label: &str, steering: bool) -> Duration {
    let (h, _) = start(label, steering, r#""--stop-flag""#, "");
    let started = Instant::now();
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    h.log
        .wait_for("generation draining has no workers left generation=1");
    let took = started.elapsed();
    let mut h = h;
    // The new generation may hang the same way at stop; that is not this test's subject.
    h.signal(libc::SIGKILL);
    h.wait();
    took
}

#[test]
fn workers_blocked_in_accept_are_woken_with_steering() {
    let took = blocked_accept_stop("steer-blocked-on", true);
    assert!(
        took < Duration::from_secs(10),
        "the old generation took {took:?} to stop, not far below the 20 s drain timeout"
    );
}

#[test]
fn workers_blocked_in_accept_hang_until_sigkill_without_steering() {
    let took = blocked_accept_stop("steer-blocked-off", false);
    assert!(
        took >= Duration::from_secs(19),
        "stopped after {took:?}: without steering one blocked worker should wait for SIGKILL"
    );
}

/// Aborted reloads under load with steering: nothing fails, and no user connection ever
/// reaches an aborted generation (every answer comes from generation 1's workers), since the
/// selector never moved to it.
#[test]
fn aborted_steered_reloads_lose_nothing_and_the_new_socket_gets_no_user() {
    let (h, port) = start("steer-abort", true, r#""--accept-batch", "16""#, "");
    let (status, out, _) = h.ctl(&["status", "--json"]);
    assert!(status.success());
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first_pids: Vec<u64> = first["generations"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    let load = load(port);
    // A new generation that serves (it takes connections if any reach it) but is never
    // ready, so each reload is aborted at the ready timeout.
    let never_ready = h.config.clone();
    let text = std::fs::read_to_string(&never_ready).unwrap();
    let broken = text.replace(r#""--ready-after", "0", "#, "").replace(
        "stop_timeout = \"20s\"",
        "stop_timeout = \"20s\"\nready_timeout = \"500ms\"",
    );
    std::fs::write(&never_ready, broken).unwrap();
    for n in 1..=5 {
        let (status, out, err) = h.ctl(&["reload"]);
        assert_eq!(status.code(), Some(6), "reload {n} must abort: {out}{err}");
    }
    let summary = finish(load);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "{json}\nlog:\n{}", h.log.text());
    for pid in summary.pids.keys() {
        assert!(
            first_pids.contains(&u64::from(*pid)),
            "pid {pid} answered, but only generation 1 ({first_pids:?}) may: {json}"
        );
    }
    let mut h = h;
    assert!(h.stop().success());
}

/// `handover status` says which sockets are steered, and why one is not.
#[test]
fn status_says_which_sockets_are_steered_and_why_not() {
    let (p1, p2) = (free_port(), free_port());
    let dir = harness::TempDir::new("steer-status-unix");
    let unix = dir.path().join("s.sock");
    let config = format!(
        r#"
[[socket]]
name = "steered"
listen = "127.0.0.1:{p1}"

[[socket]]
name = "off"
listen = "127.0.0.1:{p2}"
steering = false

[[socket]]
name = "local"
listen = "{}"

[worker]
command = ["{{worker}}", "--ready-after", "0"]
"#,
        unix.display()
    );
    let mut h = Handover::start("steer-status", &config, Options::default());
    h.log.wait_for("all 1 workers ready");
    let (status, out, err) = h.ctl(&["status", "--json"]);
    assert!(status.success(), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sockets = json["sockets"].as_array().unwrap();
    let mode = |name: &str| {
        let s = sockets.iter().find(|s| s["name"] == name).unwrap();
        (
            s["mode"].as_str().unwrap().to_string(),
            s["shared_because"].clone(),
        )
    };
    assert_eq!(mode("steered"), ("steered".into(), serde_json::Value::Null));
    assert_eq!(
        mode("off"),
        ("shared".into(), serde_json::json!("steering = false"))
    );
    assert_eq!(
        mode("local"),
        ("shared".into(), serde_json::json!("a unix socket"))
    );
    let (_, table, _) = h.ctl(&["status"]);
    assert!(table.contains("steered"), "{table}");
    assert!(h
        .log
        .text()
        .contains("steered: each generation gets its own socket socket=steered"));
    assert!(h.stop().success());
}

/// Many reloads reuse the sockets of generations that ended: handover's open fds stay flat.
#[test]
fn steered_sockets_of_ended_generations_are_reused() {
    let (mut h, _) = start("steer-reuse", true, "", "");
    // The fewest of a few readings: a control connection may be closing at any one moment.
    let fds = || {
        (0..5)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
                    .unwrap()
                    .count()
            })
            .min()
            .unwrap()
    };
    let mut counts = Vec::new();
    for n in 1..=12 {
        let (status, out, err) = h.ctl(&["reload"]);
        assert!(status.success(), "{out}{err}");
        h.log
            .wait_for_count("generation draining has no workers left", n);
        if n >= 4 {
            counts.push(fds());
        }
    }
    assert!(
        counts.iter().max() == counts.iter().min(),
        "open fds grew with reloads: {counts:?}"
    );
    assert!(h.stop().success());
}

/// IPv6: steering works on [::1] too (the selector reads the TCP port after an IPv6 header).
#[test]
fn steering_works_on_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "[::1]:{port}"

[worker]
command = ["{{worker}}", "--ready-after", "0", "--serve", "--stop-flag"]
count = 2

[reload]
drain_timeout = "20s"
"#
    );
    let mut h = Handover::start("steer-v6", &config, Options::default());
    h.log.wait_for("all 2 workers ready");
    let started = Instant::now();
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    h.log
        .wait_for("generation draining has no workers left generation=1");
    // The wake-up connections reached the old workers' own IPv6 socket.
    assert!(started.elapsed() < Duration::from_secs(10));
    h.signal(libc::SIGKILL);
    h.wait();
}

/// A config whose workers serve HTTP on a steered socket but never send READY=1: only
/// handover's own check (`ready = "http"`) can make them ready.
fn http_checked(port: u16, worker_args: &str, ready: &str) -> String {
    format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", {worker_args}]
count = 2
probe_interval = "100ms"
probe_timeout = "300ms"
ready_timeout = "3s"
{ready}

[reload]
drain_timeout = "20s"
"#
    )
}

/// `ready = "http"`: workers that never notify become ready by handover's own GET, and
/// reloads under load with it lose nothing.
#[test]
fn http_checks_make_silent_workers_ready() {
    let port = free_port();
    let config = http_checked(
        port,
        r#""--serve""#,
        "ready = \"http\"\nready_path = \"/health\"",
    );
    let mut h = Handover::start("check-http", &config, Options::default());
    h.log.wait_for("all 2 workers ready");
    assert_eq!(h.log.count("worker ready (check succeeded)"), 2);
    let load = load(port);
    for n in 1..=3 {
        let (status, out, err) = h.ctl(&["reload"]);
        assert!(status.success(), "reload {n}: {out}{err}");
        h.log
            .wait_for_count("generation draining has no workers left", n);
    }
    let summary = finish(load);
    assert_eq!(
        summary.failed(),
        0,
        "{}",
        serde_json::to_string(&summary).unwrap_or_default()
    );
    assert_eq!(h.log.count("worker ready (check succeeded)"), 8);
    assert!(h.stop().success());
}

/// A check reaches the new generation alone: a new generation that holds the socket but never
/// accepts fails its check although the old one, on the same port, would answer. The reload is
/// aborted, says why, and the old generation keeps serving.
#[test]
fn checks_reach_only_the_new_generation() {
    for (label, ready, why) in [
        (
            "check-new-http",
            "ready = \"http\"",
            "last probe: timed out after 300ms",
        ),
        (
            "check-new-connect",
            "ready = \"connect\"",
            "last probe: timed out after 300ms",
        ),
    ] {
        let port = free_port();
        let mut h = Handover::start(
            label,
            &http_checked(port, r#""--serve""#, ready),
            Options::default(),
        );
        h.log.wait_for("all 2 workers ready");
        // The next generation holds the socket but never accepts.
        h.rewrite_config(&http_checked(port, r#""--sleep-forever""#, ready));
        let (status, out, err) = h.ctl(&["reload"]);
        assert_eq!(status.code(), Some(6), "{label}: {out}{err}");
        assert!(format!("{out}{err}").contains(why), "{label}: {out}{err}");
        let after = harness::http_get_body(port);
        let (_, json, _) = h.ctl(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let pid: u64 = after.trim().parse().expect("a pid answered");
        let serving = &json["generations"][0];
        assert_eq!(serving["generation"], 1, "{json}");
        assert!(
            serving["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["pid"] == pid),
            "{label}: {json}"
        );
        assert!(h.stop().success());
    }
}

/// An answer with another status fails the check, and the message says what came back.
#[test]
fn http_checks_want_the_configured_status() {
    let port = free_port();
    let config = http_checked(port, r#""--serve""#, "ready = \"http\"\nready_status = 204");
    let mut h = Handover::start("check-status", &config, Options::default());
    let status = h.wait();
    assert!(!status.success());
    let log = h.log.text();
    assert!(
        log.contains("last probe: answered 200, expected 204"),
        "{log}"
    );
}

/// A check on a socket every generation shares could be answered by the old generation: that
/// is an error at start, naming the socket and why it is shared.
#[test]
fn checks_need_a_steered_socket() {
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"
steering = false

[worker]
command = ["{{worker}}", "--serve"]
ready = "http"
"#
    );
    let mut h = Handover::start("check-shared", &config, Options::default());
    assert!(!h.wait().success());
    let log = h.log.text();
    assert!(
        log.contains(
            "the check goes to socket \"web\", which every generation shares (steering = false)"
        ),
        "{log}"
    );
    let config = config.replace("steering = false", "").replace(
        "ready = \"http\"",
        "ready = \"http\"\nready_socket = \"api\"",
    );
    let mut h = Handover::start("check-unknown", &config, Options::default());
    assert!(!h.wait().success());
    let log = h.log.text();
    assert!(
        log.contains("worker.ready_socket: there is no socket named \"api\""),
        "{log}"
    );
}

/// A worker that makes its socket non-blocking (as every event loop does) changes the open
/// socket it shares with handover. A later generation that gets the same socket again finds
/// it as the first one did: blocking, like a socket freshly bound or passed by systemd.
#[test]
fn a_reused_socket_comes_back_as_it_was_made() {
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--report", "{{dir}}/reports", "--ready-after", "0", "--serve", "--accept-batch", "4"]
"#
    );
    let mut h = Handover::start("steer-flags", &config, Options::default());
    h.log.wait_for("all 1 workers ready");
    for n in 1..=2 {
        let (status, out, err) = h.ctl(&["reload"]);
        assert!(status.success(), "{out}{err}");
        h.log
            .wait_for_count("generation draining has no workers left", n);
    }
    // One report per generation, in generation order (pids need not grow: they wrap).
    let mut reports: Vec<serde_json::Value> = h.reports(3).into_values().collect();
    reports.sort_by_key(|r| {
        r["env"]["HANDOVER_GENERATION"]
            .as_str()
            .and_then(|g| g.parse::<u64>().ok())
    });
    let socket = |r: &serde_json::Value| {
        let inode = r["fds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["fd"] == 3)
            .and_then(|f| f["target"].as_str())
            .unwrap_or_default()
            .to_string();
        (inode, r["sockets"][0]["nonblocking"].as_bool())
    };
    let (first, second, third) = (
        socket(&reports[0]),
        socket(&reports[1]),
        socket(&reports[2]),
    );
    assert_ne!(
        first.0, second.0,
        "generations 1 and 2 have sockets of their own"
    );
    assert_eq!(
        first.0, third.0,
        "generation 3 got generation 1's socket again"
    );
    assert_eq!(first.1, Some(false), "{:#}", reports[0]);
    assert_eq!(
        third.1,
        Some(false),
        "left non-blocking by generation 1: {:#}",
        reports[2]
    );
    assert!(h.stop().success());
}

/// A process of the same user that joins a steered socket's `SO_REUSEPORT` group after the
/// start (which the kernel allows without a word) is named at the next reload, and the
/// reload goes on.
#[test]
fn a_stranger_joining_a_steered_group_is_named_at_the_next_reload() {
    let found = std::process::Command::new("python3")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if harness::skip((!found).then(|| "needs python3".to_string())) {
        return;
    }
    let (h, port) = start("steer-stranger", true, r#""--drain""#, "");
    let (st, out, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{out}{err}");
    assert!(
        !h.log.text().contains("another process"),
        "{}",
        h.log.text()
    );
    // Listens with SO_REUSEPORT on the same address until its stdin closes.
    let mut stranger = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
             s.bind(('127.0.0.1', int(sys.argv[1])))\n\
             s.listen()\n\
             print('listening', flush=True)\n\
             sys.stdin.read()\n",
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stranger.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    let (st, out, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{out}{err}");
    h.log
        .wait_for("in the SO_REUSEPORT group of socket \"web\", and handover holds");
    assert!(
        h.log
            .text()
            .contains(&format!("listen on 127.0.0.1:{port}")),
        "{}",
        h.log.text()
    );
    drop(stranger.stdin.take());
    let _ = stranger.wait();
}
