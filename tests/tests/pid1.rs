//! handover as the first process of a PID namespace, as in a container without systemd
//! (issue 18): it reaps every orphan reparented to it without taking one for a worker, stops
//! cleanly on the runtime's SIGTERM or SIGINT (exit 0), exits non-zero when the first
//! generation never became ready, and its probe endpoint says ready only once the first
//! generation is, and through reloads under load.
//!
//! Each test runs `unshare --pid --fork --mount-proc --kill-child handover start ...`: the
//! harness knows unshare's pid, handover is unshare's only child and PID 1 inside, and
//! unshare exits with handover's status. What is in the namespace is read from its own
//! /proc, through `nsenter`. The network is the host's loopback (no network namespace), so
//! the load generator and the probes reach it directly.
//!
//! Needs root, `unshare` and `nsenter`: otherwise each test says why and is skipped, or fails
//! when `HANDOVER_REQUIRE_SYSTEMD` is set (as for the other namespace tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_tests::harness::{self, alive, children_of, Handover, Options, GUARD};
use handover_tests::loadgen::{self, LoadConfig, Mode};
use serde_json::Value;

/// Why a PID namespace cannot be made here, or `None`.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (a PID namespace needs CAP_SYS_ADMIN)".into());
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => return Some(format!("cannot run unshare (util-linux): {e}")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "unshare --pid --fork --mount-proc fails: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    match Command::new("nsenter").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(_) | Err(_) => Some("cannot run nsenter (util-linux)".into()),
    }
}

/// Whether the test must be skipped (it says why); with `HANDOVER_REQUIRE_SYSTEMD` set, a
/// missing capability fails instead.
fn skip() -> bool {
    let Some(reason) = skip_reason() else {
        return false;
    };
    if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() {
        panic!("cannot run handover as PID 1, and HANDOVER_REQUIRE_SYSTEMD is set: {reason}");
    }
    eprintln!("skipped: cannot run handover as PID 1 here: {reason}");
    true
}

/// handover started as PID 1 of a new PID namespace, with its pid as the host sees it.
struct Pid1 {
    h: Handover,
    /// handover's pid in the test's namespace (inside, it is 1).
    host_pid: i32,
}

fn start(label: &str, config: &str) -> Pid1 {
    let h = Handover::start(
        label,
        config,
        Options {
            wrapper: ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
                .into_iter()
                .map(str::to_string)
                .collect(),
            ..Default::default()
        },
    );
    let deadline = Instant::now() + GUARD;
    let host_pid = loop {
        if let Some(&pid) = children_of(h.pid()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "unshare started no child");
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid1 = Pid1 { h, host_pid };
    // handover is PID 1 of its namespace: the last number of NSpid is its pid there.
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        nspid.last().copied(),
        Some("1"),
        "handover is not PID 1 of its namespace: {status}"
    );
    pid1
}

/// One process of the namespace, as its own /proc shows it.
#[derive(Debug, Clone)]
struct Process {
    pid: i32,
    ppid: i32,
    state: char,
    cmdline: String,
}

impl Pid1 {
    /// Every process in handover's namespace, read from the namespace's own /proc (the
    /// reader, `cat`, left out).
    fn processes(&self) -> Vec<Process> {
        let script = r#"for p in /proc/[0-9]*; do
            [ "${p#/proc/}" = "$$" ] && continue
            stat=$(cat "$p/stat" 2>/dev/null) || continue
            cmd=$(tr '\0\n\t' '   ' < "$p/cmdline" 2>/dev/null)
            printf '%s\t%s\n' "$stat" "$cmd"
        done"#;
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.host_pid.to_string())
            .args(["--pid", "--mount", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "nsenter failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (stat, cmdline) = line.split_once('\t')?;
                let pid = stat.split(' ').next()?.parse().ok()?;
                let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
                Some(Process {
                    pid,
                    state: rest.first()?.chars().next()?,
                    ppid: rest.get(1)?.parse().ok()?,
                    cmdline: cmdline.trim_end().to_string(),
                })
            })
            // The shell nsenter started, and what it ran: they are the test's, not handover's.
            .filter(|p| {
                !p.cmdline.starts_with("sh -c for p in")
                    && !p.cmdline.starts_with("cat ")
                    && !p.cmdline.starts_with("tr ")
            })
            .collect()
    }

    fn status(&self) -> Value {
        let (status, out, err) = self.h.ctl(&["status", "--json"]);
        assert!(status.success(), "status failed: {out}{err}");
        serde_json::from_str(&out).expect("status --json is JSON")
    }
}

/// Waits (guarded) until `done` gives a value.
fn wait_until<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workers of the serving generation: (index, pid, state, restarts).
fn serving_workers(status: &Value) -> Vec<(u64, i64, String, u64)> {
    status["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["state"] == "serving")
        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
        .map(|w| {
            (
                w["index"].as_u64().unwrap_or(u64::MAX),
                w["pid"].as_i64().unwrap_or(0),
                w["state"].as_str().unwrap_or("").to_string(),
                w["restarts"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Workers that double-fork helpers which outlive them and exit later by themselves: every
/// one is reparented to handover (PID 1), reaped when it exits, and none is taken for a
/// worker: the workers keep their pids, nothing is restarted, and they serve. Then the
/// runtime's SIGTERM from outside the namespace: exit 0, and nothing is left of it.
#[test]
fn pid1_reaps_orphans_without_mistaking_them_for_workers_and_stops_with_0() {
    if skip() {
        return;
    }
    let port = harness::free_port();
    // Each worker leaves two orphans, one in a session of its own, that wait for the
    // release file, then exec its server.
    let orphan = "until [ -e {dir}/release ]; do sleep 0.05; done";
    let pid1 = start(
        "pid1-orphans",
        &format!(
            r#"
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = ["sh", "-c", "(sh -c '{orphan}' &); (setsid sh -c '{orphan}' &); exec {{http}}"]
count = 2
"#
        ),
    );
    pid1.h.log.wait_for("all 2 workers ready");
    let release = pid1.h.dir.path().join("release");
    let orphans = wait_until("four orphans were reparented to handover", || {
        let orphans: Vec<Process> = pid1
            .processes()
            .into_iter()
            .filter(|p| p.cmdline.contains("/release"))
            .collect();
        (orphans.len() == 4 && orphans.iter().all(|p| p.ppid == 1)).then_some(orphans)
    });
    let before = serving_workers(&pid1.status());
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before.iter().all(|w| w.2 == "ready" && w.3 == 0),
        "{before:?}"
    );

    std::fs::write(&release, "").unwrap();
    // Every orphan exits by itself; none may stay behind as a zombie.
    let left = wait_until("every orphan is reaped", || {
        let left: Vec<Process> = pid1
            .processes()
            .into_iter()
            .filter(|p| orphans.iter().any(|o| o.pid == p.pid) || p.state == 'Z')
            .collect();
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    let after = serving_workers(&pid1.status());
    assert_eq!(
        before, after,
        "the workers changed while orphans were reaped"
    );
    let log = pid1.h.log.text();
    for wrong in ["worker died", "worker stopped", "waitid failed"] {
        assert!(!log.contains(wrong), "{wrong:?} in the log:\n{log}");
    }
    let body = harness::http_get_body(port);
    assert!(body.contains("generation 1"), "{body}");
    // Inside: handover, its sentinel, and the two workers; nothing else.
    let inside = pid1.processes();
    assert_eq!(
        inside.iter().filter(|p| p.ppid == 1).count(),
        3,
        "handover's children: {inside:#?}"
    );

    // The same processes as the host sees them, to check that none outlives the stop.
    let host_children = children_of(pid1.host_pid);
    assert_eq!(host_children.len(), 3, "{host_children:?}");

    let mut pid1 = pid1;
    harness::kill(pid1.host_pid, libc::SIGTERM);
    let status = pid1.h.wait();
    let log = pid1.h.log.text();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert_eq!(log.matches("worker stopped").count(), 2, "{log}");
    let survivors: Vec<i32> = host_children
        .iter()
        .chain([&pid1.host_pid])
        .copied()
        .filter(|&p| alive(p))
        .collect();
    assert!(
        survivors.is_empty(),
        "still alive after the stop: {survivors:?}"
    );
}

/// SIGINT (Ctrl-C in `docker run -it`, or a runtime's stop signal set to it) stops as
/// cleanly as SIGTERM: every worker gets its stop signal, and handover exits 0.
#[test]
fn pid1_sigint_stops_cleanly_with_0() {
    if skip() {
        return;
    }
    let mut pid1 = start(
        "pid1-sigint",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\ncount = 2\n",
    );
    pid1.h.log.wait_for("all 2 workers ready");
    harness::kill(pid1.host_pid, libc::SIGINT);
    let status = pid1.h.wait();
    assert_eq!(status.code(), Some(0), "log:\n{}", pid1.h.log.text());
    let log = pid1.h.log.text();
    assert_eq!(log.matches("worker stopped").count(), 2, "{log}");
}

/// A first generation that never becomes ready ends handover with a non-zero status, which
/// the runtime sees (a crash-looping pod, a failed Nomad allocation), and the reason.
#[test]
fn pid1_a_first_generation_that_fails_exits_non_zero() {
    if skip() {
        return;
    }
    // The workers fail once the test has seen handover as PID 1 (it exits right after).
    let mut pid1 = start(
        "pid1-fails",
        "[worker]\ncommand = [\"sh\", \"-c\", \"until [ -e {dir}/fail ]; do sleep 0.05; done; echo cannot open the database >&2; exit 3\"]\ncount = 2\n",
    );
    pid1.h.log.wait_for_count("worker started", 2);
    std::fs::write(pid1.h.dir.path().join("fail"), "").unwrap();
    let status = pid1.h.wait();
    let log = pid1.h.log.text();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(log.contains("start failed"), "{log}");
    assert!(log.contains("cannot open the database"), "{log}");
}

/// One HTTP request to the endpoint: (status code, body).
fn probe(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the endpoint");
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let code = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn get(port: u16, path: &str) -> (u16, String) {
    probe(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.32\r\n\r\n"),
    )
}

/// The probe endpoint, as a kubelet uses it, with handover as PID 1 and its log as JSON
/// lines: `/ready` is 503 while the first generation is not ready (and `/live` 200 all the
/// while), flips to 200 once it is, and stays 200 at every probe through three reloads
/// under load, which lose no request. Bad requests get 400 and change nothing. At the end,
/// every line handover wrote is one JSON record.
#[test]
fn pid1_ready_flips_once_and_stays_up_through_reloads_under_load() {
    if skip() {
        return;
    }
    let (port, endpoint) = (harness::free_port(), harness::free_port());
    let mut pid1 = start(
        "pid1-ready",
        &format!(
            r#"
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = ["sh", "-c", "until [ -e {{dir}}/go ]; do sleep 0.05; done; exec {{http}}"]
count = 2

[logs]
format = "json"

[endpoint]
listen = "127.0.0.1:{endpoint}"
"#
        ),
    );
    pid1.h
        .log
        .wait_for("endpoint: /ready and /live on http://127.0.0.1:");
    pid1.h.log.wait_for("worker started");
    for _ in 0..5 {
        let (code, body) = get(endpoint, "/ready");
        assert_eq!(code, 503, "ready before any worker is: {body}");
        assert_eq!(body, "not ready: the first generation is starting\n");
        let (code, body) = get(endpoint, "/live");
        assert_eq!(code, 200, "not live while starting: {body}");
    }
    std::fs::write(pid1.h.dir.path().join("go"), "").unwrap();
    let body = wait_until("/ready says 200", || {
        let (code, body) = get(endpoint, "/ready");
        (code == 200).then_some(body)
    });
    assert_eq!(body, "ready: generation 1, 2/2 workers ready\n");
    assert!(pid1.h.log.text().contains("all 2 workers ready"));

    // A prober that never stops during the reloads, recording every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            let began = Instant::now();
            while !stop.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(120) {
                answers.push(get(endpoint, "/ready"));
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };
    let load = loadgen::Background::start(
        LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            concurrency: 8,
            duration: Duration::from_millis(500),
            max_requests: 2_000_000,
            mode: Mode::KeepAlive,
            request_timeout: Duration::from_secs(10),
            path: "/".into(),
        },
        Duration::from_secs(180),
    );
    wait_until("the load got through", || {
        (load.slices() >= 1).then_some(())
    });
    for generation in 2..=4 {
        let (status, out, err) = pid1.h.ctl(&["reload"]);
        assert!(status.success(), "reload to {generation}: {out}{err}");
        assert!(
            out.contains(&format!("generation {generation} serves")),
            "{out}"
        );
        // Bad requests in between disturb nothing.
        let (code, _) = probe(endpoint, "BREW /ready HTTP/1.1\r\n\r\n");
        assert_eq!(code, 405);
        let (code, _) = probe(endpoint, "GET /ready HTTP/1.1\r\nno colon\r\n\r\n");
        assert_eq!(code, 400);
    }
    let slices = load.slices();
    wait_until("the load ran after the last reload", || {
        (load.slices() > slices).then_some(())
    });
    let (summary, limited) = load.finish().expect("the load thread");
    stop.store(true, Ordering::SeqCst);
    let answers = prober.join().expect("the prober");
    assert!(!limited, "the load hit its own limit: {summary:?}");
    assert!(summary.ok > 0, "{summary:?}");
    assert_eq!(
        summary.failed(),
        0,
        "requests failed during reloads: {summary:?}"
    );
    assert!(!answers.is_empty());
    let not_ready: Vec<&(u16, String)> = answers.iter().filter(|(code, _)| *code != 200).collect();
    assert!(
        not_ready.is_empty(),
        "/ready was not 200 during reloads: {not_ready:?}"
    );
    let (code, body) = get(endpoint, "/ready");
    assert_eq!(
        (code, body.as_str()),
        (200, "ready: generation 4, 2/2 workers ready\n")
    );

    harness::kill(pid1.host_pid, libc::SIGTERM);
    let status = pid1.h.wait();
    assert_eq!(status.code(), Some(0), "log:\n{}", pid1.h.log.text());
    // What a log collector reads: one JSON object per line, handover's and the workers'.
    let text = pid1.h.log.text();
    let mut workers_lines = 0;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(
            record["time"].is_string() && record["msg"].is_string(),
            "{line}"
        );
        if record["stream"].is_string() {
            workers_lines += 1;
            assert!(
                record["generation"].is_u64() && record["pid"].is_i64(),
                "{line}"
            );
        } else {
            assert!(record["level"].is_string(), "{line}");
        }
    }
    assert!(workers_lines > 0, "no worker line was passed on:\n{text}");
}
