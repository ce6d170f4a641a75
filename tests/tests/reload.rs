//! Reloads lose nothing (scenarios 28-37 of the reliability catalogue). Every test runs the
//! real `handover` with the example HTTP worker on a self-bound loopback socket, keeps the
//! load generator running in the background for the whole test, and asserts that not one
//! request failed.
//!
//! Waiting is done on handover's log lines and `handover status --json` with the harness's
//! guard deadline; nothing here asserts on timing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use handover_tests::harness::{self, alive, wait_gone, Handover, Options, GUARD};
use handover_tests::loadgen::{self, LoadConfig, Mode, Summary};
use serde_json::Value;

// ---- background load ----------------------------------------------------------------------

/// One load generator run lasts this long; runs follow each other until the test stops the
/// load, so the load is continuous apart from a task restart between runs.
const LOAD_SLICE: Duration = Duration::from_millis(500);
/// The load never runs longer than this, whatever the test does.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
/// Nor does it attempt more requests than this.
const LOAD_MAX_REQUESTS: u64 = 5_000_000;
/// One request may take this long before it counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The load generator, running in its own thread until [`BackgroundLoad::finish`].
/// The load of a test: [`loadgen::Background`] on the test's port, started once the first
/// slice got through, and finished with the assertion that the test (not the load's own
/// limits) stopped it.
struct BackgroundLoad(loadgen::Background);

impl BackgroundLoad {
    fn start(port: u16, mode: Mode, concurrency: usize) -> BackgroundLoad {
        let cfg = LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            concurrency,
            duration: LOAD_SLICE,
            max_requests: LOAD_MAX_REQUESTS,
            mode,
            request_timeout: REQUEST_TIMEOUT,
            path: "/".into(),
        };
        let load = BackgroundLoad(loadgen::Background::start(cfg, LOAD_LIMIT));
        // The first slice proves that the load reaches the workers before anything happens.
        load.wait_slices(1);
        load
    }

    fn wait_slices(&self, n: u64) {
        self.0.wait_slices(n);
    }

    /// Stops the load after the slice in progress and returns the sum of every slice.
    fn finish(self) -> Summary {
        let (summary, limited) = self.0.finish().expect("load thread");
        assert!(
            !limited,
            "the load hit its own limit before the test stopped it: {summary:?}"
        );
        summary
    }
}

fn assert_no_failures(summary: &Summary) {
    let json = serde_json::to_string(summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "requests failed: {json}");
    assert!(summary.ok > 0, "no request succeeded: {json}");
    eprintln!("load: {json}");
}

// ---- handover with the example worker ---------------------------------------------------

/// What the `[worker]` section runs.
struct WorkerSetup {
    /// The program: `{http}` (the example worker) or a path.
    program: String,
    args: Vec<String>,
    count: u32,
    ready_timeout: &'static str,
}

impl WorkerSetup {
    /// The example worker with a short boot and a short idle grace when draining.
    fn example(count: u32, boot_ms: u64) -> WorkerSetup {
        WorkerSetup {
            program: "{http}".into(),
            args: vec![
                "--boot-ms".into(),
                boot_ms.to_string(),
                "--idle-grace-ms".into(),
                "200".into(),
            ],
            count,
            ready_timeout: "20s",
        }
    }

    fn with_args(mut self, args: &[&str]) -> WorkerSetup {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    fn config(&self, port: u16) -> String {
        let mut command = vec![format!("{:?}", self.program)];
        command.extend(self.args.iter().map(|a| format!("{a:?}")));
        format!(
            r#"
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = [{command}]
count = {count}
ready_timeout = "{ready_timeout}"
stop_timeout = "10s"

[reload]
drain_timeout = "5s"
max_draining = 4
"#,
            command = command.join(", "),
            count = self.count,
            ready_timeout = self.ready_timeout,
        )
    }
}

/// A running handover with its port and the generator's load on it.
struct Rig {
    h: Handover,
    port: u16,
    load: Option<BackgroundLoad>,
}

impl Rig {
    /// Starts handover on a free port and waits until its first generation is ready.
    fn start(label: &str, setup: &WorkerSetup) -> Rig {
        let port = harness::free_port();
        let h = Handover::start(label, &setup.config(port), Options::default());
        h.log
            .wait_for(&format!("all {} workers ready", setup.count));
        Rig {
            h,
            port,
            load: None,
        }
    }

    fn start_load(&mut self, mode: Mode) {
        self.load = Some(BackgroundLoad::start(self.port, mode, 8));
    }

    fn finish_load(&mut self) -> Summary {
        self.load.take().expect("load running").finish()
    }

    /// Lets the load run one whole slice more from now on: after a reload, long enough for
    /// keep-alive clients to leave the draining workers (which close their connections) for
    /// the new ones.
    fn load_one_more_slice(&self) {
        let load = self.load.as_ref().expect("load running");
        load.wait_slices(load.0.slices() + 2);
    }

    /// Replaces the config file (atomically: handover may read it at any moment).
    fn write_config(&self, text: &str) {
        write_atomically(&self.h.config, &harness::expand(text, self.h.dir.path()));
    }

    fn set_workers(&self, setup: &WorkerSetup) {
        self.write_config(&setup.config(self.port));
    }

    fn sighup(&self) {
        self.h.signal(libc::SIGHUP);
    }

    /// Reload number `n` (from 1) of a run of successful reloads: `handover reload` (as
    /// ExecReload= runs it), which returns once it is done. At most `max_draining - 1` old
    /// generations are left draining before it. (SIGHUP reloads start at most once a second;
    /// the tests about SIGHUP send it themselves.)
    fn reload(&self, n: usize) {
        if n > 3 {
            self.h
                .log
                .wait_for_count("generation draining has no workers left", n - 3);
        }
        let (status, out, err) = self.h.ctl(&["reload"]);
        assert!(status.success(), "reload {n}: {out}{err}");
        self.h.log.wait_for_count("reload done in", n);
    }

    /// handover's state, from `handover status --json`.
    fn state(&self) -> Value {
        let (status, out, err) = self.h.ctl(&["status", "--json"]);
        assert!(status.success(), "status failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status {out:?}: {e}"))
    }

    /// The serving generation and its workers' pids.
    fn serving(&self) -> (u64, BTreeSet<i32>) {
        let state = self.state();
        let serving: Vec<&Value> = state["generations"]
            .as_array()
            .expect("generations")
            .iter()
            .filter(|g| g["state"] == "serving")
            .collect();
        assert_eq!(serving.len(), 1, "one serving generation: {state}");
        let pids = serving[0]["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter(|w| w["state"] == "ready")
            .map(|w| w["pid"].as_i64().expect("pid") as i32)
            .collect();
        (serving[0]["generation"].as_u64().expect("id"), pids)
    }

    /// Generation of every worker pid handover started, from its "worker started" lines.
    fn generations_by_pid(&self) -> BTreeMap<u32, u64> {
        let mut map = BTreeMap::new();
        for line in self.h.log.text().lines() {
            if !line.contains("worker started") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|t| t.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(pid), Some(generation)) = (field("pid="), field("generation=")) {
                map.insert(pid as u32, generation);
            }
        }
        map
    }

    /// The generations whose workers answered requests during the run.
    fn generations_served(&self, summary: &Summary) -> BTreeSet<u64> {
        let by_pid = self.generations_by_pid();
        summary
            .pids
            .keys()
            .map(|pid| {
                *by_pid
                    .get(pid)
                    .unwrap_or_else(|| panic!("pid {pid} answered but is no worker of handover"))
            })
            .collect()
    }

    fn stop(&mut self) {
        let status = self.h.stop();
        assert!(status.success(), "{status}; log:\n{}", self.h.log.text());
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

// ---- scenario 28: reloads under load ------------------------------------------------------

const RELOADS: usize = 20;

fn reloads_under_load(label: &str, mode: Mode, count: u32) {
    let mut rig = Rig::start(label, &WorkerSetup::example(count, 50));
    let (first, first_pids) = rig.serving();
    assert_eq!(first, 1);
    rig.start_load(mode);
    for n in 1..=RELOADS {
        rig.reload(n);
    }
    let (last, last_pids) = rig.serving();
    assert_eq!(last, 1 + RELOADS as u64, "every reload made a generation");
    rig.load_one_more_slice();
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    let served = rig.generations_served(&summary);
    eprintln!("generations that answered: {served:?}");
    assert!(
        served.len() >= 3,
        "responses came from several generations: {served:?}"
    );
    assert!(
        served.contains(&first) && served.contains(&last),
        "{served:?}"
    );
    wait_gone(&first_pids.iter().copied().collect::<Vec<_>>());
    assert!(last_pids.is_disjoint(&first_pids));
    let log = rig.h.log.text();
    assert_eq!(rig.h.log.count("spawning generation"), RELOADS, "{log}");
    assert_eq!(rig.h.log.count("reload aborted"), 0, "{log}");
    assert_eq!(rig.h.log.count("worker died"), 0, "{log}");
    rig.stop();
}

/// Scenario 28, new connection per request: the mode that catches connections lost in the
/// accept queue. 20 reloads, not one failed request.
#[test]
fn reloads_under_new_connection_load_lose_nothing() {
    reloads_under_load("reload-new", Mode::NewConnection, 2);
}

/// Scenario 28 with persistent connections: old workers close them politely while draining;
/// 20 reloads, not one failed request.
#[test]
fn reloads_under_keep_alive_load_lose_nothing() {
    reloads_under_load("reload-keepalive", Mode::KeepAlive, 3);
}

// ---- scenario 29: aborted reloads ---------------------------------------------------------

/// Scenario 29: 21 reloads to a broken release, rotating through a worker that is never
/// ready, one that crashes at start and one that cannot be executed. Each is aborted, the
/// first generation keeps serving with the same pids, and no request fails; restoring the
/// good config then reloads normally.
#[test]
fn aborted_reloads_under_load_lose_nothing() {
    const ABORTS: usize = 21;
    let good = WorkerSetup::example(3, 50);
    let mut rig = Rig::start("reload-abort", &good);
    let (first, first_pids) = rig.serving();
    rig.start_load(Mode::NewConnection);
    let never_ready = WorkerSetup {
        ready_timeout: "500ms",
        ..WorkerSetup::example(3, 0).with_args(&["--never-ready", "--idle-grace-ms", "200"])
    };
    let crashing = WorkerSetup::example(3, 0).with_args(&["--crash-on-start", "3"]);
    let missing = WorkerSetup {
        program: "{dir}/no-such-program".into(),
        ..WorkerSetup::example(3, 0).with_args(&[])
    };
    let broken = [
        (&never_ready, "not ready within 500ms"),
        (&crashing, "exited with code 3"),
        (&missing, "No such file or directory"),
    ];
    for n in 1..=ABORTS {
        let (setup, why) = &broken[(n - 1) % broken.len()];
        rig.set_workers(setup);
        rig.sighup();
        let line = rig.h.log.wait_for_count("reload aborted", n);
        assert!(
            line.contains(&format!("generation {first} keeps serving")),
            "{line}"
        );
        assert!(line.contains(why), "abort {n} should say {why:?}: {line}");
        let (serving, pids) = rig.serving();
        assert_eq!(serving, first, "abort {n}: the old generation still serves");
        assert_eq!(pids, first_pids, "abort {n}: the old workers are untouched");
    }
    assert_eq!(rig.h.log.count("spawning generation"), ABORTS);
    assert_eq!(rig.h.log.count("reload done in"), 0);
    assert_eq!(rig.h.log.count("draining generation"), 0);
    for pid in &first_pids {
        assert!(alive(*pid), "old worker {pid} is still alive");
    }

    // The good release again: a normal reload replaces the untouched first generation.
    rig.set_workers(&good);
    rig.reload(1);
    let (now, now_pids) = rig.serving();
    assert_eq!(
        now,
        first + ABORTS as u64 + 1,
        "one generation number per attempt"
    );
    assert!(now_pids.is_disjoint(&first_pids));
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    for pid in &first_pids {
        assert!(
            summary.pids.contains_key(&(*pid as u32)),
            "old worker {pid} served during the aborted reloads: {:?}",
            summary.pids
        );
    }
    // Not asserted: a never-ready worker shares the listening socket, so the example worker
    // (which accepts before READY=1) answers some requests until it is stopped.
    let by_pid = rig.generations_by_pid();
    let mut by_generation: BTreeMap<u64, u64> = BTreeMap::new();
    for (pid, n) in &summary.pids {
        *by_generation.entry(by_pid[pid]).or_insert(0) += n;
    }
    eprintln!("responses by generation: {by_generation:?}");
    wait_gone(&first_pids.iter().copied().collect::<Vec<_>>());
    rig.stop();
}

// ---- scenario 30: invalid config on reload ------------------------------------------------

/// Scenario 30: a config file with a syntax error, an unknown key or an invalid value is
/// refused on reload with its file:line:col; nothing is spawned and the old workers keep
/// serving under load. The fixed file then reloads normally.
#[test]
fn invalid_config_on_reload_changes_nothing() {
    let good = WorkerSetup::example(2, 50);
    let mut rig = Rig::start("reload-invalid", &good);
    let (first, first_pids) = rig.serving();
    rig.start_load(Mode::NewConnection);
    let path = rig.h.config.display().to_string();
    let good_text = good.config(rig.port);
    let syntax = good_text.replace("[worker]", "[worker");
    let unknown = good_text.replace("count = 2", "count = 2\ncountx = 3");
    let bad_value = good_text.replace("count = 2", "count = 0");
    // (file text, what the message says, the text on the line it must point at)
    let cases = [
        (syntax, "", None),
        (unknown, "worker.countx: unknown key", Some("countx = 3")),
        (
            bad_value,
            "worker.count: must be between 1 and 1024",
            Some("count = 0"),
        ),
    ];
    for (n, (text, says, at)) in cases.iter().enumerate() {
        rig.write_config(text);
        rig.sighup();
        let line = rig.h.log.wait_for_count("reload failed", n + 1);
        assert!(
            line.contains(&format!("generation {first} keeps serving")),
            "{line}"
        );
        let (l, _col) = position_after(&line, &path)
            .unwrap_or_else(|| panic!("case {n}: the error names {path}:line:col: {line}"));
        assert!(line.contains(says), "case {n}: {line}");
        if let Some(at) = at {
            let expected = text.lines().position(|t| t.contains(at)).map(|i| i + 1);
            assert_eq!(Some(l), expected, "case {n} points at {at:?}: {line}");
        }
        let (serving, pids) = rig.serving();
        assert_eq!(serving, first, "case {n}");
        assert_eq!(pids, first_pids, "case {n}");
    }
    assert_eq!(
        rig.h.log.count("spawning generation"),
        0,
        "{}",
        rig.h.log.text()
    );

    rig.set_workers(&good);
    rig.reload(1);
    let (now, now_pids) = rig.serving();
    assert_eq!(now, first + 1, "refused reloads used no generation number");
    assert!(now_pids.is_disjoint(&first_pids));
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    rig.stop();
}

/// `path:L:C` right after `path` in `line`, with L and C at least 1.
fn position_after(line: &str, path: &str) -> Option<(usize, usize)> {
    let rest = &line[line.find(&format!("{path}:"))? + path.len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let l: usize = parts.next()?.parse().ok()?;
    let c: usize = parts.next()?.parse().ok()?;
    (l >= 1 && c >= 1).then_some((l, c))
}

// ---- scenarios 32 and 37: signal storms ---------------------------------------------------

/// Scenarios 32 and 37: 10 000 SIGHUPs in a burst coalesce into at most two reloads, and
/// handover keeps serving. The burst is sent twice: from idle, and while a slow reload runs
/// (where it may add at most one pending reload).
#[test]
fn sighup_storm_gives_at_most_two_reloads() {
    let mut rig = Rig::start("reload-storm", &WorkerSetup::example(2, 50));
    rig.start_load(Mode::NewConnection);
    // Slow new generations, so a burst lands while a reload runs.
    rig.set_workers(&WorkerSetup::example(2, 1000));

    let sent = sighup_burst(&rig);
    let spawned = settle(&rig, 0);
    eprintln!("{sent} SIGHUPs from idle gave {spawned} reload(s)");
    assert!(
        (1..=2).contains(&spawned),
        "{sent} SIGHUPs gave {spawned} reloads; log:\n{}",
        rig.h.log.text()
    );

    rig.sighup();
    rig.h
        .log
        .wait_for(&format!("spawning generation {}", spawned + 2));
    let sent = sighup_burst(&rig);
    let total = settle(&rig, spawned);
    eprintln!(
        "{sent} SIGHUPs during a reload gave {} more reload(s)",
        total - spawned - 1
    );
    assert!(
        (spawned + 1..=spawned + 2).contains(&total),
        "one reload running plus at most one pending; log:\n{}",
        rig.h.log.text()
    );
    assert_eq!(rig.h.log.count("reload done in"), total);
    let (serving, _) = rig.serving();
    assert_eq!(serving, 1 + total as u64);
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    rig.stop();
}

/// Sends up to 10 000 SIGHUPs to handover as fast as possible (bounded to 2 s).
fn sighup_burst(rig: &Rig) -> u32 {
    let pid = rig.h.pid();
    let began = Instant::now();
    let mut sent = 0u32;
    while sent < 10_000 && began.elapsed() < Duration::from_secs(2) {
        harness::kill(pid, libc::SIGHUP);
        sent += 1;
    }
    sent
}

/// Waits until no reload runs or is pending, and returns how many reloads were spawned in
/// all; `done_before` reloads had finished before the signals that started this. A state
/// dump is logged after everything handover did before it, so it tells whether a coalesced
/// reload still runs.
fn settle(rig: &Rig, done_before: usize) -> usize {
    rig.h.log.wait_for_count("reload done in", done_before + 1);
    for _ in 0..4 {
        if rig.state()["reloading"].is_null() {
            break;
        }
        let done = rig.h.log.count("reload done in");
        rig.h.log.wait_for_count("reload done in", done + 1);
    }
    assert!(rig.state()["reloading"].is_null(), "{}", rig.h.log.text());
    let spawned = rig.h.log.count("spawning generation");
    assert_eq!(rig.h.log.count("reload done in"), spawned);
    spawned
}

// ---- scenario 33: stop during a reload ----------------------------------------------------

/// Scenario 33: SIGTERM while a slow new generation boots. handover stops both generations,
/// tells systemd STOPPING=1 and exits 0, leaving no worker behind.
#[test]
fn stop_during_a_reload_leaves_no_worker() {
    let setup = WorkerSetup::example(2, 50);
    let port = harness::free_port();
    let mut h = Handover::start(
        "reload-stop",
        &setup.config(port),
        Options {
            notify: true,
            ..Default::default()
        },
    );
    h.log.wait_for("all 2 workers ready");
    h.notify.as_mut().expect("notify").wait_for("READY=1");
    let slow = WorkerSetup::example(2, 2000).config(port);
    write_atomically(&h.config, &harness::expand(&slow, h.dir.path()));
    h.signal(libc::SIGHUP);
    h.log.wait_for("spawning generation 2");
    // Both new workers exist (and are booting) before the stop.
    h.log.wait_for_count("worker started", 4);
    let booting = h.log.wait_for_count("serving on inherited socket", 4);
    assert!(!booting.is_empty());
    assert!(
        !h.log.text().contains("ready in generation 2"),
        "the new generation is still booting"
    );
    let pids: Vec<i32> = h
        .log
        .text()
        .lines()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|t| t.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
        })
        .collect();
    assert_eq!(pids.len(), 4, "{}", h.log.text());
    let status = h.stop();
    assert!(status.success(), "{status}; log:\n{}", h.log.text());
    h.notify.as_mut().unwrap().wait_for("STOPPING=1");
    // handover reaps its workers before it exits: none may be left at this point.
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "workers outlived handover: {left:?}; log:\n{}",
        h.log.text()
    );
    assert!(!h.log.text().contains("reload done in"), "{}", h.log.text());
}

// ---- a worker going offline on its own ----------------------------------------------------

/// A worker that announces STOPPING=1 on its own (the example worker does when it gets
/// SIGTERM from someone other than handover) is replaced at once, in its own generation and
/// slot, before it has even exited; its exit is then expected, not a crash. Five rounds under
/// load, not one failed request.
#[test]
fn worker_going_offline_is_replaced_at_once() {
    const ROUNDS: usize = 5;
    let mut rig = Rig::start("offline", &WorkerSetup::example(2, 50));
    rig.start_load(Mode::NewConnection);
    for round in 1..=ROUNDS {
        let state = rig.state();
        let (victim, index) = state["generations"][0]["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .find(|w| w["state"] == "ready")
            .map(|w| {
                (
                    w["pid"].as_i64().unwrap() as i32,
                    w["index"].as_u64().unwrap(),
                )
            })
            .expect("a ready worker");
        harness::kill(victim, libc::SIGTERM);
        let offline = rig
            .h
            .log
            .wait_for_count("worker is going offline; starting its replacement", round);
        assert!(
            offline.contains(&format!("generation=1 worker={index} pid={victim}")),
            "{offline}"
        );
        let stopped = rig.h.log.wait_for_count("worker stopped", round);
        assert!(stopped.contains(&format!("pid={victim}")), "{stopped}");
        // The replacement was asked for when the worker announced it was going, before its
        // exit was handled.
        let log = rig.h.log.text();
        let offline_at = log.find(&offline).expect("offline line");
        let stopped_at = log.find(&stopped).expect("stopped line");
        assert!(offline_at < stopped_at, "round {round}:\n{log}");
        // The replacement takes the same slot of the same generation and becomes ready.
        let started = rig.h.log.wait_for_count("worker started", 2 + round);
        assert!(
            started.contains(&format!("generation=1 worker={index} ")),
            "{started}"
        );
        rig.h.log.wait_for_count("worker ready", 2 + round);
        wait_gone(&[victim]);
        let (generation, now) = rig.serving();
        assert_eq!(generation, 1, "no reload happened");
        assert_eq!(now.len(), 2, "round {round}: both slots serve again");
        assert!(!now.contains(&victim));
    }
    let log = rig.h.log.text();
    assert_eq!(rig.h.log.count("worker died"), 0, "{log}");
    assert_eq!(
        rig.h.log.count("restarting in"),
        0,
        "not a crash restart: {log}"
    );
    assert_eq!(rig.h.log.count("spawning generation"), 0, "{log}");
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    rig.stop();
}

// ---- scenario 31: the socket set on reload ------------------------------------------------

/// Scenario 31: a reload whose config adds a self-bound socket binds it for the new
/// generation; the existing socket keeps serving under load with no failed request.
#[test]
fn reload_adding_a_socket_under_load_loses_nothing() {
    let good = WorkerSetup::example(2, 50);
    let mut rig = Rig::start("reload-add-socket", &good);
    let (first, _) = rig.serving();
    rig.start_load(Mode::NewConnection);
    let other = harness::free_port();
    let added = good.config(rig.port).replace(
        "[worker]",
        &format!("[[socket]]\nname = \"admin\"\nlisten = \"127.0.0.1:{other}\"\n\n[worker]"),
    );
    rig.write_config(&added);
    rig.sighup();
    rig.h.log.wait_for("reload done in");
    let (second, _) = rig.serving();
    assert_ne!(first, second, "a new generation serves");
    std::net::TcpStream::connect(("127.0.0.1", other)).expect("the added socket listens");
    let summary = rig.finish_load();
    assert_no_failures(&summary);
    rig.stop();
}

// ---- scenarios 34 and 35: a draining generation -------------------------------------------

/// Scenarios 34 and 35: old workers held up by idle keep-alive connections keep draining
/// after a reload. One that crashes while draining is not respawned; the other is killed at
/// `drain_timeout`; then the old generation is gone.
#[test]
fn draining_workers_are_not_respawned_and_are_killed_at_drain_timeout() {
    let setup = WorkerSetup::example(2, 50).with_args(&["--idle-grace-ms", "60000"]);
    let port = harness::free_port();
    let config = setup
        .config(port)
        .replace("drain_timeout = \"5s\"", "drain_timeout = \"1s\"");
    let h = Handover::start("reload-drain", &config, Options::default());
    h.log.wait_for("all 2 workers ready");
    let rig = Rig {
        h,
        port,
        load: None,
    };
    let (_, old) = rig.serving();
    // An idle keep-alive connection on each old worker (accepts are spread by the kernel;
    // bounded attempts).
    let mut held: BTreeMap<i32, std::net::TcpStream> = BTreeMap::new();
    for _ in 0..200 {
        if held.len() == old.len() {
            break;
        }
        let (stream, pid) = keep_alive_get(port);
        held.entry(pid).or_insert(stream);
    }
    assert_eq!(held.len(), old.len(), "a connection on every old worker");
    rig.sighup();
    rig.h.log.wait_for("reload done in");
    let mut old_pids = old.iter().copied();
    let (crasher, straggler) = (old_pids.next().unwrap(), old_pids.next().unwrap());
    assert!(alive(crasher) && alive(straggler), "both still draining");
    harness::kill(crasher, libc::SIGKILL);
    let stopped = wait_line(&rig.h.log, &["worker stopped", &format!("pid={crasher}")]);
    assert!(stopped.contains("killed by SIGKILL"), "{stopped}");
    wait_line(
        &rig.h.log,
        &[
            "did not stop in time; sending SIGKILL",
            &format!("pid={straggler}"),
        ],
    );
    rig.h
        .log
        .wait_for("generation draining has no workers left generation=1");
    let log = rig.h.log.text();
    assert_eq!(rig.h.log.count("worker started generation=1"), 2, "{log}");
    assert_eq!(rig.h.log.count("restarting in"), 0, "{log}");
    assert_eq!(rig.h.log.count("worker died"), 0, "{log}");
    wait_gone(&[crasher, straggler]);
    let (generation, _) = rig.serving();
    assert_eq!(generation, 2);
    drop(held);
    let mut rig = rig;
    rig.stop();
}

/// Waits (guarded) for a log line that contains every one of `needles`.
fn wait_line(log: &harness::Lines, needles: &[&str]) -> String {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(line) = log
            .text()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?}:\n{}",
            log.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One GET on a new keep-alive connection; returns the open connection and the pid that
/// answered.
fn keep_alive_get(port: u16) -> (std::net::TcpStream, i32) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The response is one small segment; read until its body line is complete.
    while !got.ends_with(b"\n") || !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        assert!(got.len() < 64 * 1024);
    }
    let text = String::from_utf8_lossy(&got);
    let pid = text
        .split("hello from pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    (stream, pid)
}

// ---- reload strategies ------------------------------------------------------------------

/// docs/configuration.md: with `strategy = "rolling"`, a reload never runs more than
/// `max_extra` workers beyond `count`. Counted from handover's own "worker started" and
/// "worker stopped" lines, in log order.
#[test]
fn rolling_reload_stays_within_max_extra() {
    let setup = WorkerSetup::example(3, 50);
    let port = harness::free_port();
    let config = setup.config(port).replace(
        "max_draining = 4",
        "max_draining = 4\nstrategy = \"rolling\"\nbatch_size = 1\nmax_extra = 1",
    );
    let mut h = Handover::start("reload-rolling", &config, Options::default());
    h.log.wait_for("all 3 workers ready");
    h.signal(libc::SIGHUP);
    h.log.wait_for("reload done in");
    h.log.wait_for("generation draining has no workers left");
    let mut alive_now: i32 = 0;
    let mut most = 0;
    for line in h.log.text().lines() {
        if line.contains("worker started") {
            alive_now += 1;
        } else if line.contains("worker stopped") || line.contains("worker died") {
            alive_now -= 1;
        }
        most = most.max(alive_now);
    }
    assert!(
        most <= 3 + 1,
        "{most} workers at once with count 3 and max_extra 1:\n{}",
        h.log.text()
    );
    assert!(h.stop().success());
}
