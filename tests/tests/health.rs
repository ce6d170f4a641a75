//! Issue 15 (health checks): a worker that still runs but stops answering is found, by its
//! check or its watchdog, and replaced with its replacement ready first, without a failed
//! request; the log and status say why. The test worker turns sick on cue: it stops
//! answering on its private health socket (`--health-until`) or stops feeding its watchdog
//! (`--watchdog-until`) once the file `PREFIX.PID` exists.

use std::time::{Duration, Instant};

use handover_tests::harness::{free_port, Handover, Options, GUARD};
use handover_tests::loadgen::{self, Mode, Summary};
use serde_json::Value;

/// The load never runs longer than this.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

/// The serving generation's workers, as status shows them.
fn serving_workers(h: &Handover) -> Vec<Value> {
    let status = h.status_json();
    let generations = status["generations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    generations
        .into_iter()
        .find(|g| g["state"] == "serving")
        .and_then(|g| g["workers"].as_array().cloned())
        .unwrap_or_default()
}

/// The pid of the serving generation's worker `index`.
fn pid_of(h: &Handover, index: u64) -> i64 {
    serving_workers(h)
        .iter()
        .find(|w| w["index"] == index && w["retiring"] == false)
        .and_then(|w| w["pid"].as_i64())
        .expect("a pid for the worker")
}

/// Marks the worker with `pid` sick for the flag whose prefix is `name`.
fn make_sick(h: &Handover, name: &str, pid: i64) {
    std::fs::write(h.dir.path().join(format!("{name}.{pid}")), "").expect("write the cue");
}

fn start(label: &str, worker_args: &str, sections: &str, count: u32) -> (Handover, u16) {
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{worker}}", "--ready-after", "0", "--serve", "--drain", {worker_args}]
count = {count}
stop_timeout = "10s"
{sections}

[reload]
drain_timeout = "10s"
"#
    );
    let h = Handover::start(label, &config, Options::default());
    h.log.wait_for(&format!("all {count} workers ready"));
    (h, port)
}

fn load(port: u16) -> loadgen::Background {
    loadgen::Background::on_port(port, Mode::NewConnection, 8, LOAD_LIMIT)
}

fn finish(load: loadgen::Background) -> Summary {
    load.finish_by_test()
}

/// Waits (guarded) until no worker with `pid` is left.
fn wait_gone(h: &Handover, pid: i64) {
    let deadline = Instant::now() + GUARD;
    while serving_workers(h).iter().any(|w| w["pid"] == pid) {
        assert!(Instant::now() < deadline, "worker {pid} is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The issue's first proof: a worker that stops answering `/ok` on its health socket (and
/// keeps the socket) is replaced within interval × failures (+ timeouts and its boot), under
/// load, with 0 failed requests; the log says why, and status counts it meanwhile.
#[test]
fn a_worker_that_stops_answering_its_check_is_replaced_without_a_failed_request() {
    let (mut h, port) = start(
        "health-http",
        r#""--health-until", "{dir}/sick""#,
        "\n[health]\ncheck = \"http\"\npath = \"/ok\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nfailures = 3\n",
        2,
    );
    let first = h.status_json();
    let w0 = &first["generations"][0]["workers"][0];
    assert_eq!(w0["health"]["state"], "healthy", "{first:#}");
    assert_eq!(w0["health"]["last_passed"], true, "{first:#}");
    let load = load(port);
    let sick = pid_of(&h, 0);
    let sick_at = Instant::now();
    make_sick(&h, "sick", sick);
    h.log.wait_for(&format!(
        "worker is unhealthy: failed its health check 3 times in a row; last: timed out after \
         300ms generation=1 worker=0 pid={sick}"
    ));
    h.log.wait_for(&format!("replacing unhealthy worker (failed its health check 3 times in a row; last: timed out after 300ms); it serves until its replacement is ready generation=1 worker=0 pid={sick}"));
    wait_gone(&h, sick);
    let replaced_in = sick_at.elapsed();
    let summary = finish(load);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "requests failed: {json}");
    // interval × failures + timeouts + a boot of ~0 ms; the guard is generous, as tests' are.
    assert!(
        replaced_in < Duration::from_secs(15),
        "replaced only after {replaced_in:?}"
    );
    let text = h.log.text();
    let ready = text
        .find("worker ready; its health check passed generation=1 worker=0")
        .expect("the replacement became ready");
    let stopped = text
        .find(&format!(
            "worker stopped: exited with code 0 generation=1 worker=0 pid={sick}"
        ))
        .expect("the sick worker stopped cleanly");
    assert!(
        ready < stopped,
        "stopped before its replacement was ready:\n{text}"
    );
    let workers = serving_workers(&h);
    assert_eq!(workers.len(), 2, "{workers:#?}");
    assert!(workers.iter().all(|w| w["health"]["state"] == "healthy"));
    assert!(h.stop().success());
}

/// The watchdog: a worker gets WATCHDOG_USEC and WATCHDOG_PID (its own pid), and one that
/// stops sending WATCHDOG=1 is replaced, its replacement ready first.
#[test]
fn a_worker_that_stops_sending_watchdog_is_replaced() {
    let (mut h, port) = start(
        "health-watchdog",
        r#""--watchdog-until", "{dir}/quiet""#,
        "watchdog = \"500ms\"\n",
        2,
    );
    h.log
        .wait_for("WATCHDOG_USEC=500000, WATCHDOG_PID is mine: true");
    let load = load(port);
    let quiet = pid_of(&h, 1);
    make_sick(&h, "quiet", quiet);
    h.log.wait_for(&format!(
        "worker is unhealthy: sent no WATCHDOG=1 for 500ms generation=1 worker=1 pid={quiet}"
    ));
    wait_gone(&h, quiet);
    let summary = finish(load);
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "requests failed: {json}");
    let workers = serving_workers(&h);
    assert_eq!(workers.len(), 2, "{workers:#?}");
    assert!(
        workers
            .iter()
            .all(|w| w["health"]["watchdog_left_ms"].as_u64().is_some()),
        "{workers:#?}"
    );
    assert!(h.stop().success());
}

/// Three workers turn sick at once, with `max_replacing = 1`: they are replaced one after
/// the other, each only once the previous replacement is ready.
#[test]
fn sick_workers_are_replaced_no_more_than_the_cap_at_a_time() {
    let (mut h, _) = start(
        "health-cap",
        r#""--health-until", "{dir}/sick""#,
        "\n[health]\ncheck = \"connect\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfailures = 1\nmax_replacing = 1\n",
        3,
    );
    let pids: Vec<i64> = (0..3).map(|i| pid_of(&h, i)).collect();
    for &pid in &pids {
        make_sick(&h, "sick", pid);
    }
    for &pid in &pids {
        wait_gone(&h, pid);
    }
    let text = h.log.text();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            if l.contains("replacing unhealthy worker") {
                Some("replace")
            } else if l.contains("worker ready; its health check passed") {
                Some("ready")
            } else {
                None
            }
        })
        .collect();
    // The first generation's own three readies come first.
    let after_start: Vec<&str> = events.iter().skip(3).copied().collect();
    assert_eq!(
        after_start,
        ["replace", "ready", "replace", "ready", "replace", "ready"],
        "{text}"
    );
    let workers = serving_workers(&h);
    assert_eq!(workers.len(), 3, "{workers:#?}");
    assert!(h.stop().success());
}

/// A command check reaches the worker it is about through HANDOVER_WORKER_PID.
#[test]
fn a_command_check_gets_the_workers_pid() {
    let (mut h, _) = start(
        "health-command",
        r#""--marker", "x""#,
        "\n[health]\ncheck = \"command\"\ncommand = [\"sh\", \"-c\", \"test ! -e {dir}/down.$HANDOVER_WORKER_PID\"]\ninterval = \"100ms\"\nfailures = 2\n",
        2,
    );
    let down = pid_of(&h, 1);
    make_sick(&h, "down", down);
    h.log.wait_for(&format!(
        "worker is unhealthy: failed its health check 2 times in a row; last: exited with \
         code 1 generation=1 worker=1 pid={down}"
    ));
    wait_gone(&h, down);
    let text = h.log.text();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("worker is unhealthy") && l.contains("worker=0")),
        "the healthy worker was taken for sick:\n{text}"
    );
    assert_eq!(serving_workers(&h).len(), 2);
    assert!(h.stop().success());
}

/// The issue's last proof: a reload whose new workers fail their first check is aborted,
/// the old generation serves on, and `reload` says why with a non-zero exit, under load
/// without a failed request.
#[test]
fn a_reload_whose_workers_fail_their_check_is_aborted_and_loses_nothing() {
    let sections =
        "\n[health]\ncheck = \"http\"\npath = \"/ok\"\ninterval = \"200ms\"\nfailures = 2\n";
    let (mut h, port) = start(
        "health-reload",
        r#""--health-until", "{dir}/never""#,
        sections,
        2,
    );
    let before: Vec<i64> = (0..2).map(|i| pid_of(&h, i)).collect();
    // The new configuration expects a status the workers never answer.
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        text.replace("path = \"/ok\"", "path = \"/ok\"\nstatus = 204"),
    )
    .unwrap();
    let load = load(port);
    let (status, out, err) = h.ctl(&["reload"]);
    let summary = finish(load);
    assert!(!status.success(), "the reload succeeded: {out}{err}");
    assert!(
        format!("{out}{err}").contains(
            "reload aborted, generation 1 keeps serving: worker 0 of generation 2 failed: \
             unhealthy: failed its health check 2 times in a row; last: answered 200, expected 204"
        ) || format!("{out}{err}").contains(
            "worker 1 of generation 2 failed: unhealthy: failed its health check 2 times in a \
             row; last: answered 200, expected 204"
        ),
        "{out}{err}"
    );
    let json = serde_json::to_string(&summary).unwrap_or_default();
    assert_eq!(summary.failed(), 0, "requests failed: {json}");
    let after: Vec<i64> = (0..2).map(|i| pid_of(&h, i)).collect();
    assert_eq!(before, after, "the old generation was touched");
    assert!(h.stop().success());
}

/// The bundled example worker answers handover's HTTP check on its private socket, so a
/// configuration with `[health] check = "http"` works with it as it is, reloads included.
#[test]
fn the_example_worker_answers_its_health_checks() {
    let port = free_port();
    let config = format!(
        r#"
[[socket]]
name = "web"
listen = "127.0.0.1:{port}"

[worker]
command = ["{{http}}"]
count = 2

[health]
check = "http"
path = "/ok"
interval = "100ms"
"#
    );
    let mut h = Handover::start("health-example", &config, Options::default());
    h.log.wait_for("all 2 workers ready");
    h.log
        .wait_for_count("worker ready; its health check passed", 2);
    let (status, out, err) = h.ctl(&["reload"]);
    assert!(status.success(), "{out}{err}");
    h.log
        .wait_for_count("worker ready; its health check passed", 4);
    // Checks go on every 100ms; none fails.
    std::thread::sleep(Duration::from_millis(500));
    let workers = serving_workers(&h);
    assert_eq!(workers.len(), 2, "{workers:#?}");
    for w in &workers {
        assert_eq!(w["health"]["state"], "healthy", "{w:#}");
        assert_eq!(w["health"]["last_passed"], true, "{w:#}");
        assert!(
            w["health"]["last_check_ms_ago"].as_u64().unwrap() < 2_000,
            "{w:#}"
        );
    }
    assert!(
        !h.log.text().contains("health check failed"),
        "{}",
        h.log.text()
    );
    let (status, out, err) = h.ctl(&["status"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("is healthy, last check passed"), "{out}");
    assert!(h.stop().success());
}

/// A check command past its timeout is killed with its whole process group, and checks of
/// one worker never overlap: however long the hang lasts, at most one check's processes
/// exist at a time.
#[test]
fn hanging_check_commands_are_killed_with_their_group_and_never_overlap() {
    let (mut h, _) = start(
        "health-hang",
        r#""--marker", "x""#,
        "\n[health]\ncheck = \"command\"\ncommand = [\"sh\", \"-c\", \"if [ -e {dir}/hang ]; then sleep 31.7 & sleep 31.7; fi\"]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nfailures = 100\n",
        1,
    );
    std::fs::write(h.dir.path().join("hang"), "").unwrap();
    h.log.wait_for_count("timed out after 200ms", 3);
    let sleepers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0031.7\x00")
            })
            .count()
    };
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(sleepers());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each check starts two sleeps; killed checks that left theirs behind would pile up.
    assert!(most <= 2, "{most} sleeps of check commands at once");
    assert!(
        h.log.count("timed out after 200ms") >= 6,
        "{}",
        h.log.text()
    );
    assert!(h.stop().success());
    assert_eq!(sleepers(), 0, "a check's process outlived handover");
}
