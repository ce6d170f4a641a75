//! handover under a real systemd 252 (PID 1 of throw-away namespaces), checked the way a user
//! would: the shipped units in `systemd/` and `systemd/example.toml`, with only their paths
//! pointed at this build, `systemctl`, `journalctl`, and HTTP requests to the example worker.
//!
//! Each test boots its own manager (see `handover_tests::systemd`); ports are the shipped
//! ones (80, 443, 8080), inside the manager's own network namespace.

use std::collections::BTreeSet;
use std::time::Duration;

use handover_tests::loadgen::{LoadConfig, Mode, Summary};
use handover_tests::systemd::{
    handover_has, shipped, Builder, Lifecycle, Systemd, INSIDE_BIN, INSIDE_CONFIG,
};
use handover_tests::transcript;

const INSTANCE: &str = "web";
const SERVICE: &str = "handover@web.service";
const HTTP_SOCKET: &str = "handover-http@web.socket";
const HTTPS_SOCKET: &str = "handover-https@web.socket";
/// `ListenStream=` of the shipped HTTP socket.
const HTTP_PORT: u16 = 80;

/// The shipped example configuration.
fn example_config() -> String {
    shipped("example.toml")
}

/// The example configuration with the HTTPS socket the shipped file describes in a comment.
fn example_config_with_https() -> String {
    format!(
        "{}\n[[socket]]\nname = \"https\"\nfrom_systemd = true\n",
        example_config()
    )
}

/// The example configuration with extra arguments for the worker.
fn example_config_with_worker_args(args: &[&str]) -> String {
    let config = example_config();
    let original = r#""--socket", "http"]"#;
    assert!(config.contains(original), "example.toml's command changed");
    let extra: String = args.iter().map(|a| format!(", \"{a}\"")).collect();
    config.replace(original, &format!(r#""--socket", "http"{extra}]"#))
}

/// A manager with the shipped service and socket units, and `config` as
/// /etc/handover/web.toml.
fn builder(label: &str, config: &str) -> Builder {
    Systemd::builder(label)
        .shipped_unit("handover@.service")
        .shipped_unit("handover-http@.socket")
        .shipped_unit("handover-https@.socket")
        .config(INSTANCE, config)
}

/// Boots, or returns from the test (after saying why) where systemd cannot run.
macro_rules! boot {
    ($builder:expr) => {
        match $builder.boot() {
            Some(sd) => sd,
            None => return,
        }
    };
}

/// Starts the HTTP socket and activates the service with a first request; returns the pid of
/// the worker that answered.
fn activate(sd: &Systemd) -> i32 {
    sd.systemctl_ok(&["start", HTTP_SOCKET]);
    let (status, body) = sd
        .http_get(HTTP_PORT, "/")
        .unwrap_or_else(|e| panic!("first request: {e}\n{}", sd.diagnostics()));
    assert_eq!(status, 200, "{body}");
    sd.wait_property(SERVICE, "ActiveState", "active");
    pid_in(&body)
}

fn pid_in(body: &str) -> i32 {
    handover_tests::loadgen::pid_in_body(body.as_bytes()) as i32
}

/// handover's workers: every process of the service's cgroup but the main one and the
/// sentinel.
fn workers(sd: &Systemd, unit: &str) -> BTreeSet<i32> {
    let main = sd.main_pid(unit);
    let group = sd.show(unit, "ControlGroup");
    sd.cgroup_procs(&group)
        .into_iter()
        .filter(|&p| p != main && !sd.is_sentinel(p))
        .collect()
}

/// Waits until the service reports `count` ready workers in `generation` through STATUS=.
fn wait_generation(sd: &Systemd, unit: &str, count: u32, generation: u64) {
    sd.wait_property(
        unit,
        "StatusText",
        &format!("{count}/{count} workers ready, generation {generation}"),
    );
}

/// Load in bursts, new connection per request: the mode that catches refused and lost
/// connections. Small and bounded: the machine is shared.
fn burst() -> LoadConfig {
    LoadConfig {
        addr: ([127, 0, 0, 1], HTTP_PORT).into(),
        concurrency: 4,
        duration: Duration::from_millis(300),
        max_requests: 400,
        mode: Mode::NewConnection,
        request_timeout: Duration::from_secs(25),
        path: "/".into(),
    }
}

fn describe(summary: &Summary) -> String {
    format!(
        "{} requests, {} ok, failures {:?}, pids {:?}",
        summary.requests, summary.ok, summary.failures, summary.pids
    )
}

/// The manager boots hermetically: units come from the test's folder alone, /tmp inside is
/// not the host's, nothing of sysinit.target is loaded; and after the drop nothing is left.
#[test]
fn the_test_manager_is_hermetic_and_leaves_nothing() {
    let marker = std::env::temp_dir().join(format!("handover-sd-marker-{}", std::process::id()));
    std::fs::write(&marker, "host /tmp must survive").expect("write marker");
    let cgroup;
    {
        let Some(sd) = builder("hermetic", &example_config()).boot() else {
            let _ = std::fs::remove_file(&marker);
            return;
        };
        cgroup = sd.cgroup().expect("the manager has its own cgroup");
        assert!(cgroup.exists());
        let unit_path = sd.systemctl_ok(&["show", "-p", "UnitPath", "--value"]);
        assert_eq!(
            unit_path.trim(),
            handover_tests::systemd::INSIDE_UNITS,
            "units are loaded from the test folder only"
        );
        let (_, listing, _) = sd.run(&["ls", "-A", "/tmp"]);
        assert!(
            listing.trim().is_empty(),
            "/tmp inside is private: {listing}"
        );
        let units = sd.systemctl_ok(&["list-units", "--all", "--plain", "--no-legend"]);
        for host_unit in ["systemd-tmpfiles-setup.service", "sysinit.target"] {
            if let Some(line) = units.lines().find(|l| l.starts_with(host_unit)) {
                assert!(
                    line.contains("not-found"),
                    "{host_unit} must not be loaded: {line}"
                );
            }
        }
        // The test's folders are bound in read-only: nothing inside writes to the host.
        let (status, _, err) = sd.run(&["touch", "/run/handover-test/units/written-inside"]);
        assert!(!status.success(), "the unit folder is read-only inside");
        assert!(err.contains("Read-only file system"), "{err}");
        let (_, ip, _) = sd.run(&["ip", "-o", "addr", "show", "lo"]);
        assert!(ip.contains("127.0.0.1"), "lo is up inside: {ip}");
    }
    // A cgroup can only be removed once no process is left in it: the manager and
    // everything it started are gone.
    assert!(!cgroup.exists(), "{} was not removed", cgroup.display());
    assert!(marker.exists(), "the host's /tmp was touched");
    let _ = std::fs::remove_file(&marker);
}

/// (1) Socket activation: the socket units listen while the service is not running; the
/// first connection starts it; handover takes the sockets systemd passed by their names, and
/// the workers serve on them.
#[test]
fn first_connection_starts_the_service_with_the_named_sockets() {
    let sd = boot!(builder("activation", &example_config_with_https()));
    sd.systemctl_ok(&["start", HTTP_SOCKET, HTTPS_SOCKET]);
    assert_eq!(sd.show(HTTP_SOCKET, "SubState"), "listening");
    assert_eq!(sd.show(HTTPS_SOCKET, "SubState"), "listening");
    assert_eq!(
        sd.show(SERVICE, "ActiveState"),
        "inactive",
        "nothing runs before the first connection"
    );

    let (status, body) = sd.http_get(HTTP_PORT, "/").expect("first request");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from pid "), "{body}");
    sd.wait_property(SERVICE, "ActiveState", "active");
    wait_generation(&sd, SERVICE, 2, 1);

    let main = sd.main_pid(SERVICE);
    let workers = workers(&sd, SERVICE);
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    let pid = pid_in(&body);
    assert!(
        workers.contains(&pid),
        "a worker of the service answered: pid {pid}, workers {workers:?}, main {main}"
    );

    let journal = sd.wait_journal(SERVICE, "using the socket systemd passed");
    let passed: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("using the socket systemd passed"))
        .collect();
    assert_eq!(passed.len(), 2, "{passed:?}");
    // handover logs to the journal natively: the socket's name is a field of the entry.
    let fields = sd.journalctl(&[
        "-o",
        "verbose",
        "-u",
        SERVICE,
        "MESSAGE=using the socket systemd passed",
    ]);
    assert!(fields.contains("HANDOVER_SOCKET=http\n"), "{fields}");
    assert!(fields.contains("HANDOVER_SOCKET=https\n"), "{fields}");
    assert!(
        !journal.contains("binding") && !journal.contains("bound "),
        "handover bound nothing itself:\n{journal}"
    );

    // systemd accepted every line of the shipped units.
    let manager_log = sd.journalctl(&["-o", "cat", "_PID=1"]);
    for complaint in [
        "Unknown key",
        "Unknown section",
        "Failed to parse",
        "Ignoring",
    ] {
        assert!(
            !manager_log.contains(complaint),
            "systemd complained about a unit:\n{manager_log}"
        );
    }

    // Every worker serves.
    let mut seen = BTreeSet::new();
    sd.wait_until("both workers to answer", || {
        if let Ok((200, body)) = sd.http_get(HTTP_PORT, "/") {
            seen.insert(pid_in(&body));
        }
        seen.is_superset(&workers)
    });
}

/// (3) `systemctl stop` of the socket and the service: handover drains its workers, the
/// unit ends inactive with success (no SIGKILL at TimeoutStopSec), and no process is left in
/// its cgroup.
#[test]
fn systemctl_stop_leaves_no_process_behind() {
    let sd = boot!(builder("stop", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let group = sd.show(SERVICE, "ControlGroup");
    let before = sd.cgroup_procs(&group);
    assert_eq!(
        before.iter().filter(|&&p| sd.is_sentinel(p)).count(),
        1,
        "handover's sentinel runs in the unit: {before:?}"
    );
    assert_eq!(
        before.len(),
        4,
        "handover, its sentinel and two workers: {before:?}"
    );

    sd.systemctl_ok(&["stop", HTTP_SOCKET, SERVICE]);
    assert_eq!(sd.show(SERVICE, "ActiveState"), "inactive");
    assert_eq!(
        sd.show(SERVICE, "Result"),
        "success",
        "handover stopped within TimeoutStopSec, without being killed"
    );
    assert_eq!(sd.show(SERVICE, "ExecMainStatus"), "0");
    assert_eq!(sd.cgroup_procs(&group), Vec::<i32>::new(), "cgroup empty");
    for pid in before {
        assert!(!sd.alive(pid), "process {pid} survived the stop");
    }
    let journal = sd.wait_journal(SERVICE, "stopped");
    assert!(
        !journal.contains("Killing process"),
        "nothing was killed by systemd:\n{journal}"
    );
    assert!(
        sd.http_get(HTTP_PORT, "/").is_err(),
        "the port is closed with the socket unit"
    );
}

/// (4) `journalctl -u` shows handover's own lines and its workers' output.
#[test]
fn journal_holds_handover_and_worker_lines() {
    let sd = boot!(builder("journal", &example_config()));
    let pid = activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let journal = sd.wait_journal(SERVICE, "all 2 workers ready");
    assert!(
        journal.contains("using the socket systemd passed"),
        "{journal}"
    );
    let journal = sd.wait_journal(
        SERVICE,
        &format!("handover-example-http: pid {pid} serving on inherited socket"),
    );
    assert!(
        journal.contains("Started handover@web.service"),
        "{journal}"
    );
    // The worker's lines are attributed to the service, not to some other unit.
    let all = sd.journalctl(&["-o", "cat"]);
    assert!(all.contains("handover-example-http: pid"), "{all}");
    // ... and to the worker itself: generation, index, pid and stream as fields.
    // In verbose output an entry starts with an unindented line; its fields are indented.
    let line = format!("MESSAGE=handover-example-http: pid {pid} serving on inherited socket");
    let verbose = sd.journalctl(&["-o", "verbose", "-u", SERVICE]);
    let mut entries: Vec<String> = Vec::new();
    for text in verbose.lines() {
        if !text.starts_with(' ') || entries.is_empty() {
            entries.push(String::new());
        }
        let last = entries.last_mut().expect("pushed above");
        last.push_str(text.trim());
        last.push('\n');
    }
    let entry = entries
        .iter()
        .find(|e| e.contains(&line))
        .cloned()
        .unwrap_or_else(|| verbose.clone());
    assert!(entry.contains("HANDOVER_GENERATION=1"), "{entry}");
    assert!(entry.contains(&format!("HANDOVER_PID={pid}")), "{entry}");
    assert!(entry.contains("HANDOVER_STREAM=stderr"), "{entry}");
    assert!(entry.contains("HANDOVER_WORKER="), "{entry}");
    // Under the worker's own name, not handover's: a worker cannot pass for handover.
    assert!(
        entry.contains("SYSLOG_IDENTIFIER=handover-example-http\n"),
        "{entry}"
    );
    assert!(entry.contains(&format!("SYSLOG_PID={pid}\n")), "{entry}");
    let short = sd.journalctl(&["-o", "short", "-u", SERVICE]);
    let shown = short
        .lines()
        .find(|l| l.contains(&format!("pid {pid} serving on inherited socket")))
        .unwrap_or_else(|| panic!("{short}"));
    assert!(shown.contains(" handover-example-http["), "{shown}");
}

/// (5) kill -9 of handover: systemd restarts it (Restart=on-failure); the socket stays open
/// in systemd meanwhile, so connections made during the restart wait instead of being
/// refused; no worker of the old run remains.
#[test]
fn killed_handover_is_restarted_and_no_connection_is_refused() {
    let sd = boot!(builder("kill9", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let old_main = sd.main_pid(SERVICE);
    let old_workers = workers(&sd, SERVICE);
    assert_eq!(old_workers.len(), 2);

    let load = sd.start_load(burst(), 400);
    load.wait_bursts(2);
    let (status, _, err) = sd.run(&["kill", "-KILL", &old_main.to_string()]);
    assert!(status.success(), "kill: {err}");

    sd.wait_property(SERVICE, "NRestarts", "1");
    sd.wait_property(SERVICE, "ActiveState", "active");
    wait_generation(&sd, SERVICE, 2, 1);
    let new_main = sd.main_pid(SERVICE);
    assert_ne!(new_main, old_main);
    let new_workers = workers(&sd, SERVICE);
    load.wait_bursts(2);
    let summary = load.finish();
    eprintln!("load: {}", describe(&summary));

    assert_eq!(
        summary.failures.refused,
        0,
        "no connection refused: {}",
        describe(&summary)
    );
    // Only requests a dying worker had already accepted can fail: one per load loop.
    assert!(
        summary.failed() <= burst().concurrency as u64,
        "at most the in-flight requests fail: {}",
        describe(&summary)
    );
    let served_by = |pids: &BTreeSet<i32>| summary.pids.keys().any(|&p| pids.contains(&(p as i32)));
    assert!(served_by(&old_workers), "{}", describe(&summary));
    assert!(served_by(&new_workers), "{}", describe(&summary));

    for pid in old_workers.iter().chain([&old_main]) {
        assert!(!sd.alive(*pid), "process {pid} of the killed run remains");
    }
    assert!(new_workers.is_disjoint(&old_workers));
    let journal = sd.wait_journal(SERVICE, "status=9/KILL");
    assert!(journal.contains("Scheduled restart job"), "{journal}");
}

/// (2, SIGHUP-compatible part) `systemctl reload` under load: no request fails, the new
/// generation serves, the old one is gone, and `systemctl status` shows the STATUS= line.
#[test]
fn reload_under_load_fails_no_request() {
    let sd = boot!(builder("reload", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let main = sd.main_pid(SERVICE);
    let old_workers = workers(&sd, SERVICE);

    let load = sd.start_load(burst(), 400);
    load.wait_bursts(1);
    sd.systemctl_ok(&["reload", SERVICE]);
    wait_generation(&sd, SERVICE, 2, 2);
    sd.wait_until("the old generation to drain", || {
        old_workers.iter().all(|&p| !sd.alive(p))
    });
    let new_workers = workers(&sd, SERVICE);
    load.wait_bursts(2);
    let summary = load.finish();
    eprintln!("load: {}", describe(&summary));

    assert_eq!(summary.failed(), 0, "{}", describe(&summary));
    assert!(summary.ok > 0);
    assert_eq!(new_workers.len(), 2);
    assert!(new_workers.is_disjoint(&old_workers), "worker pids changed");
    for pids in [&old_workers, &new_workers] {
        assert!(
            summary.pids.keys().any(|&p| pids.contains(&(p as i32))),
            "both generations served: {}",
            describe(&summary)
        );
    }
    assert_eq!(sd.main_pid(SERVICE), main, "a reload keeps handover");
    assert_eq!(sd.show(SERVICE, "NRestarts"), "0");
    let (_, status, _) = sd.systemctl(&["status", SERVICE]);
    assert!(
        status.contains(r#"Status: "2/2 workers ready, generation 2""#),
        "{status}"
    );
}

/// (2, SIGHUP-compatible part) A new generation that fails: the unit stays active, the old
/// workers keep serving, and the status says why.
#[test]
fn failed_reload_keeps_the_old_generation_serving() {
    let sd = boot!(builder("reload-fail", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let main = sd.main_pid(SERVICE);
    let old_workers = workers(&sd, SERVICE);

    sd.write_config(
        INSTANCE,
        &example_config_with_worker_args(&["--crash-on-start", "3"]),
    );
    // The exit status is checked where ExecReload= waits for the outcome (below).
    let _ = sd.systemctl(&["reload", SERVICE]);
    sd.wait_until("the reload to be aborted", || {
        sd.show(SERVICE, "StatusText").contains("reload aborted")
    });
    assert_eq!(sd.show(SERVICE, "ActiveState"), "active");
    assert_eq!(sd.main_pid(SERVICE), main);
    assert_eq!(workers(&sd, SERVICE), old_workers, "the old workers remain");
    for _ in 0..4 {
        let (status, body) = sd.http_get(HTTP_PORT, "/").expect("request");
        assert_eq!(status, 200);
        assert!(old_workers.contains(&pid_in(&body)), "{body}");
    }
    sd.wait_journal(SERVICE, "reload aborted, generation 1 keeps serving");
}

/// (2) With `ExecReload=handover reload`, `systemctl reload` returns only once the new
/// generation serves, and it is under load without a failed request.
#[test]
fn systemctl_reload_returns_once_the_new_generation_serves() {
    assert!(handover_has("reload"), "handover has no reload command");
    let sd = boot!(builder("reload-wait", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let old_workers = workers(&sd, SERVICE);
    // A slow new generation makes returning early visible.
    sd.write_config(
        INSTANCE,
        &example_config_with_worker_args(&["--boot-ms", "1500"]),
    );

    let load = sd.start_load(burst(), 400);
    load.wait_bursts(1);
    sd.systemctl_ok(&["reload", SERVICE]);
    // No waiting here: when systemctl returns, generation 2 serves.
    assert_eq!(
        sd.show(SERVICE, "StatusText"),
        "2/2 workers ready, generation 2"
    );
    assert_eq!(sd.show(SERVICE, "ActiveState"), "active");
    let new_workers: BTreeSet<i32> = workers(&sd, SERVICE)
        .difference(&old_workers)
        .copied()
        .collect();
    assert_eq!(new_workers.len(), 2, "two new workers run");
    sd.wait_until("the old generation to drain", || {
        old_workers.iter().all(|&p| !sd.alive(p))
    });
    load.wait_bursts(1);
    let summary = load.finish();
    eprintln!("load: {}", describe(&summary));
    assert_eq!(summary.failed(), 0, "{}", describe(&summary));
    let (status, body) = sd.http_get(HTTP_PORT, "/").expect("request");
    assert_eq!(status, 200);
    assert!(new_workers.contains(&pid_in(&body)), "{body}");
}

/// (2) With `ExecReload=handover reload`, a failing new generation makes `systemctl reload`
/// fail, while the unit stays active and the old workers serve.
#[test]
fn failed_reload_makes_systemctl_reload_fail() {
    assert!(handover_has("reload"), "handover has no reload command");
    let sd = boot!(builder("reload-fail-exit", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let old_workers = workers(&sd, SERVICE);
    sd.write_config(
        INSTANCE,
        &example_config_with_worker_args(&["--crash-on-start", "3"]),
    );
    let (status, out, err) = sd.systemctl(&["reload", SERVICE]);
    assert!(
        !status.success(),
        "systemctl reload must fail: {out}{err}\n{}",
        sd.diagnostics()
    );
    assert_eq!(sd.show(SERVICE, "ActiveState"), "active");
    assert!(
        sd.show(SERVICE, "StatusText").contains("reload aborted"),
        "{}",
        sd.show(SERVICE, "StatusText")
    );
    assert_eq!(workers(&sd, SERVICE), old_workers);
    let (status, body) = sd.http_get(HTTP_PORT, "/").expect("request");
    assert_eq!(status, 200);
    assert!(old_workers.contains(&pid_in(&body)), "{body}");
    // A good configuration reloads again afterwards.
    sd.write_config(INSTANCE, &example_config());
    sd.systemctl_ok(&["reload", SERVICE]);
    assert_eq!(
        sd.show(SERVICE, "StatusText"),
        "2/2 workers ready, generation 3"
    );
}

/// Scenario 36: ActiveState=reloading until the new generation is ready; afterwards active.
#[test]
fn active_state_is_reloading_until_the_new_generation_is_ready() {
    assert!(handover_has("reload"), "handover has no reload command");
    let sd = boot!(builder("reloading-state", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    sd.write_config(
        INSTANCE,
        &example_config_with_worker_args(&["--boot-ms", "2000"]),
    );
    let (reload_status, seen_reloading) = std::thread::scope(|scope| {
        let reload = scope.spawn(|| sd.systemctl(&["reload", SERVICE]));
        // The status lines seen while systemd showed the unit as reloading.
        let mut seen = Vec::new();
        while !reload.is_finished() {
            if sd.show(SERVICE, "ActiveState") == "reloading" {
                seen.push(sd.show(SERVICE, "StatusText"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (reload.join().expect("reload thread"), seen)
    });
    assert!(
        reload_status.0.success(),
        "{}{}",
        reload_status.1,
        reload_status.2
    );
    assert!(
        !seen_reloading.is_empty(),
        "ActiveState=reloading was never seen"
    );
    // The new workers take 2 s to be ready, so the reload's progress shows meanwhile.
    assert!(
        seen_reloading
            .iter()
            .any(|s| s.contains("spawning generation 2")),
        "{seen_reloading:?}"
    );
    assert_eq!(sd.show(SERVICE, "ActiveState"), "active");
    assert_eq!(
        sd.show(SERVICE, "StatusText"),
        "2/2 workers ready, generation 2"
    );
}

/// (7) WatchdogSec=: handover pings systemd's watchdog, so the service outlives several
/// watchdog periods without a restart.
#[test]
fn watchdog_is_kept_happy() {
    let sd = boot!(builder("watchdog", &example_config()).dropin(
        "handover@.service",
        "watchdog",
        "[Service]\nWatchdogSec=2s\n",
    ));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let main = sd.main_pid(SERVICE);
    let first = sd.show(SERVICE, "WatchdogTimestampMonotonic");
    // Three watchdog periods must pass to show that nothing fires; there is no event to
    // wait for instead.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        sd.show(SERVICE, "NRestarts"),
        "0",
        "the watchdog never fired"
    );
    assert_eq!(sd.main_pid(SERVICE), main);
    let later = sd.show(SERVICE, "WatchdogTimestampMonotonic");
    assert_ne!(first, later, "WATCHDOG=1 pings arrive");
    assert_eq!(sd.show(SERVICE, "ActiveState"), "active");
    let journal = sd.journalctl(&["-o", "cat", "-u", SERVICE]);
    assert!(!journal.contains("Watchdog timeout"), "{journal}");
}

/// Several instances share one port with ReusePort= (the shipped
/// handover-shared-http@.socket): the kernel spreads connections over both, and each
/// instance is activated by its own first connection.
#[test]
fn instances_share_a_port_with_reuse_port() {
    let sd = boot!(Systemd::builder("reuseport")
        .shipped_unit("handover@.service")
        .shipped_unit("handover-shared-http@.socket")
        .config("blue", &example_config())
        .config("green", &example_config()));
    let sockets = [
        "handover-shared-http@blue.socket",
        "handover-shared-http@green.socket",
    ];
    let services = ["handover@blue.service", "handover@green.service"];
    sd.systemctl_ok(&["start", sockets[0], sockets[1]]);
    for socket in sockets {
        assert_eq!(sd.show(socket, "SubState"), "listening");
    }
    let shared = LoadConfig {
        addr: ([127, 0, 0, 1], 8080).into(),
        ..burst()
    };
    let load = sd.start_load(shared, 400);
    sd.wait_until("both instances to be active", || {
        services
            .iter()
            .all(|s| sd.show(s, "ActiveState") == "active")
    });
    for service in services {
        wait_generation(&sd, service, 2, 1);
        // The group is both instances': neither may steer it.
        let journal = sd.wait_journal(service, "shared by every generation");
        assert!(
            journal.contains("2 sockets listen on [::]:8080 with SO_REUSEPORT"),
            "{journal}"
        );
    }
    let blue = workers(&sd, services[0]);
    let green = workers(&sd, services[1]);
    load.wait_bursts(2);
    let summary = load.finish();
    eprintln!("load: {}", describe(&summary));
    assert_eq!(summary.failed(), 0, "{}", describe(&summary));
    for (name, pids) in [("blue", &blue), ("green", &green)] {
        assert!(
            summary.pids.keys().any(|&p| pids.contains(&(p as i32))),
            "{name} served: {}",
            describe(&summary)
        );
    }
}

/// (6) fd store: a socket handover bound itself (no socket unit) is handed to systemd's fd
/// store, so `systemctl restart` gets it back: connections made during the restart wait in
/// its queue instead of being refused.
#[test]
fn self_bound_socket_survives_systemctl_restart() {
    const PORT: u16 = 9090;
    let config = example_config()
        .replace("name = \"http\"", "name = \"own\"")
        .replace(
            "from_systemd = true",
            &format!("listen = \"127.0.0.1:{PORT}\""),
        )
        .replace(r#""--socket", "http""#, r#""--socket", "own""#);
    assert!(
        config.contains("name = \"own\""),
        "example.toml's socket table changed"
    );
    let sd = boot!(builder("fdstore", &config));
    sd.systemctl_ok(&["start", SERVICE]);
    wait_generation(&sd, SERVICE, 2, 1);
    sd.wait_journal(SERVICE, "handed to systemd's fd store");
    let old_main = sd.main_pid(SERVICE);

    let load = sd.start_load(
        LoadConfig {
            addr: ([127, 0, 0, 1], PORT).into(),
            ..burst()
        },
        400,
    );
    load.wait_bursts(2);
    sd.systemctl_ok(&["restart", SERVICE]);
    wait_generation(&sd, SERVICE, 2, 1);
    assert_ne!(sd.main_pid(SERVICE), old_main, "handover was restarted");
    load.wait_bursts(2);
    let summary = load.finish();
    eprintln!("load: {}", describe(&summary));
    assert_eq!(
        summary.failures.refused,
        0,
        "no connection refused across the restart: {}",
        describe(&summary)
    );
    // The restarted handover took the socket from the store instead of binding it again.
    let journal = sd.journalctl(&["-o", "cat", "-u", SERVICE]);
    assert!(
        journal.contains("using the socket systemd passed"),
        "{journal}"
    );
}

/// Issue 11: a worker's line larger than one datagram to journald can be (300 KiB; about
/// 200 KiB fit with the kernel's default buffers) reaches the journal whole, through a sealed
/// memfd, and the lines after it arrive too.
#[test]
fn a_line_larger_than_a_datagram_reaches_the_journal_whole() {
    const LEN: usize = 300 * 1024;
    let config = format!(
        r#"
[worker]
command = ["sh", "-c", "echo before-the-long-line; head -c {LEN} /dev/zero | tr '\\000' x; echo; echo after-the-long-line; exec sleep 1000"]
ready = "delay"
ready_delay = "0s"

[logs]
max_line = "1MiB"
"#
    );
    let sd = boot!(builder("long-line", &config));
    sd.systemctl_ok(&["start", SERVICE]);
    sd.wait_journal(SERVICE, "after-the-long-line");
    let messages = sd.journalctl(&["-o", "cat", "--all", "-u", SERVICE]);
    let lines: Vec<&str> = messages.lines().collect();
    let long = lines
        .iter()
        .position(|line| line.len() == LEN && line.bytes().all(|b| b == b'x'));
    let Some(long) = long else {
        let sizes: Vec<usize> = lines.iter().map(|l| l.len()).collect();
        panic!("no message of {LEN} x's; message sizes: {sizes:?}");
    };
    let before = lines.iter().position(|l| *l == "before-the-long-line");
    let after = lines.iter().position(|l| *l == "after-the-long-line");
    assert!(
        before < Some(long) && Some(long) < after,
        "in order: {before:?} {long} {after:?}"
    );
    // Whole, as one entry of the worker's: not split, not counted as dropped.
    let verbose = sd.journalctl(&["-o", "verbose", "-u", SERVICE, "HANDOVER_STREAM=stdout"]);
    assert!(
        verbose.contains("SYSLOG_IDENTIFIER=sh"),
        "{}",
        &verbose[..verbose.len().min(2000)]
    );
    let own = sd.journalctl(&["-o", "cat", "-u", SERVICE, "SYSLOG_IDENTIFIER=handover"]);
    assert!(!own.contains("dropped"), "{own}");
}

/// Issue 17: under systemd every `systemctl reload` wrote its progress twice into the
/// unit's journal: handover's own entries, and the same lines printed by `handover reload`
/// from ExecReload=. The client now says nothing on success when its stdout is the journal
/// (ExecStop='s `handover stop` neither), and still explains a failure.
#[test]
fn systemctl_reload_writes_its_progress_once() {
    assert!(handover_has("reload"), "handover has no reload command");
    let sd = boot!(builder("reload-once", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    sd.systemctl_ok(&["reload", SERVICE]);
    sd.wait_journal(SERVICE, "Reloaded handover@web.service");

    sd.write_config(
        INSTANCE,
        &example_config_with_worker_args(&["--crash-on-start", "3"]),
    );
    let (status, _, _) = sd.systemctl(&["reload", SERVICE]);
    assert!(!status.success(), "the second reload fails");
    sd.write_config(INSTANCE, &example_config());
    // The failure is explained by the client, under its own pid, from its output stream.
    let failure = "handover: reload failed: reload aborted, generation 2 keeps serving";
    sd.wait_journal(SERVICE, failure);
    sd.systemctl_ok(&["stop", HTTP_SOCKET, SERVICE]);
    let journal = sd.wait_journal(SERVICE, "Stopped handover@web.service");

    // What the clients (reload, stop) wrote: only the failure.
    let clients = sd.journalctl(&[
        "-o",
        "cat",
        "-u",
        SERVICE,
        "SYSLOG_IDENTIFIER=handover",
        "_TRANSPORT=stdout",
    ]);
    let lines: Vec<&str> = clients.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.starts_with(failure)),
        "the clients wrote only the failure:\n{clients}\n--- whole journal:\n{journal}"
    );
    // handover's own progress, once each.
    for line in [
        "spawning generation 2 (2 workers)",
        "2/2 ready in generation 2",
        "draining generation 1",
    ] {
        assert_eq!(
            journal.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} once:\n{journal}"
        );
    }
    assert_eq!(
        journal.lines().filter(|l| *l == "stopping").count(),
        0,
        "`handover stop` said nothing:\n{journal}"
    );
    assert!(
        !journal.contains("reload done: generation 2 serves"),
        "{journal}"
    );
}

/// Issue 17 (docs/cli.md, Logging): text lines that go to the journal stream anyway
/// (`--log-to-stdout` under systemd) carry no time of their own, since the journal adds its
/// own; the fields stay in the text.
#[test]
fn log_to_stdout_under_the_journal_leaves_the_time_out() {
    let dropin = format!(
        "[Service]\nExecStart=\nExecStart={INSIDE_BIN}/handover start --config \
         {INSIDE_CONFIG}/%i.toml --log-to-stdout\n"
    );
    let sd = boot!(builder("log-to-stdout", &example_config()).dropin(
        "handover@.service",
        "log-to-stdout",
        &dropin
    ));
    activate(&sd);
    sd.wait_journal(SERVICE, "INFO all 2 workers ready");
    let own = sd.journalctl(&[
        "-o",
        "cat",
        "-u",
        SERVICE,
        "SYSLOG_IDENTIFIER=handover",
        "_TRANSPORT=stdout",
    ]);
    let passed = own
        .lines()
        .find(|l| l.contains("using the socket systemd passed"))
        .unwrap_or_else(|| panic!("{own}"));
    assert!(
        passed.starts_with(" INFO using the socket systemd passed ")
            && passed.contains("socket=http"),
        "{passed:?}"
    );
    // Every line of handover's own starts with its level; workers' lines are tagged (with
    // the time they were read, `TIME gen=G worker=W pid=P STREAM: `).
    let is_worker_line = |line: &str| {
        line.split_once(' ')
            .is_some_and(|(_, rest)| rest.starts_with("gen="))
    };
    let levels = [" INFO ", " WARN ", "ERROR ", "DEBUG ", "TRACE "];
    for line in own.lines().filter(|l| !is_worker_line(l)) {
        assert!(
            levels.iter().any(|level| line.starts_with(level)),
            "a level first, no time: {line:?}\n{own}"
        );
    }
}

/// Issue 17: docs/systemd.md shows what `journalctl -u handover@web.service -o cat` prints
/// after the first connection, and it is what handover and systemd really write: every
/// line's text, and the order of systemd's lines and of handover's; only pids, durations
/// and ports are free, and how lines written at the same time interleave (see
/// `handover_tests::transcript`).
#[test]
fn the_journal_transcript_in_the_docs_is_real_output() {
    const COMMAND: &str = "journalctl -u handover@web.service -o cat";
    let docs = handover_tests::systemd::repo_file("docs/systemd.md");
    let expected = transcript::from_markdown(&docs, COMMAND)
        .unwrap_or_else(|| panic!("docs/systemd.md has no `$ {COMMAND}` transcript"));
    assert!(expected.len() > 3, "{expected:?}");
    let sd = boot!(builder("docs-journal", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    // The workers' own lines reach the journal from another thread of handover's: wait for
    // them rather than compare too early.
    let compared = std::time::Instant::now();
    loop {
        let json = sd.journalctl(&["-o", "json", "-u", SERVICE]);
        let entries = transcript::Entry::parse_json_lines(&json).expect("journal entries");
        let Err(why) = transcript::compare(&expected, &entries) else {
            break;
        };
        assert!(
            compared.elapsed() < Duration::from_secs(10),
            "docs/systemd.md's `$ {COMMAND}` is not what the journal holds: {why}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 17: `handover unit` writes the units a user would write by hand, and they are what
/// this manager boots: run inside, on the configuration at its real path, with `--output`,
/// they serve, reload under load without a failed request, and stop cleanly. A second
/// socket whose name needs escaping (a space, a `%`) reaches handover under its exact name:
/// the configuration requires it from systemd.
#[test]
fn generated_units_serve_reload_and_stop() {
    let config = example_config().replacen(
        "from_systemd = true",
        "from_systemd = true\nlisten = \"[::]:80\"",
        1,
    )
        + "\n[[socket]]\nname = \"admin 100%\"\nlisten = \"127.0.0.1:8081\"\nfrom_systemd = true\n";
    let out = handover_tests::harness::TempDir::new("unit-out");
    let (builder, inside_out) = Systemd::builder("unit")
        .config(INSTANCE, &config)
        .bind_writable(out.path(), "out");
    let sd = boot!(builder);
    let handover = format!("{INSIDE_BIN}/handover");
    let config_path = format!("{INSIDE_CONFIG}/{INSTANCE}.toml");
    let (status, printed, err) = sd.run(&[&handover, "unit", "--config", &config_path]);
    assert!(status.success(), "{err}");
    let (status, wrote, err) = sd.run(&[
        &handover,
        "unit",
        "--config",
        &config_path,
        "--output",
        &inside_out,
    ]);
    assert!(status.success(), "{err}");
    assert!(wrote.contains("next: systemctl daemon-reload"), "{wrote}");
    let names = [
        "handover-web-http.socket",
        "handover-web-admin\\x20100\\x25.socket",
        "handover-web.service",
    ];
    let mut written = Vec::new();
    for name in names {
        assert!(
            wrote.contains(&format!("wrote {inside_out}/{name}\n")),
            "{wrote}"
        );
        let text = std::fs::read_to_string(out.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        written.push(text);
    }
    // (The harness reads output line by line: the last newline is not in `printed`.)
    assert_eq!(
        printed.trim_end(),
        written.join("\n").trim_end(),
        "printed as written"
    );
    // An existing unit is not replaced without --force.
    let (status, _, err) = sd.run(&[
        &handover,
        "unit",
        "--config",
        &config_path,
        "--output",
        &inside_out,
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("exists; --force replaces it"), "{err}");

    for (name, text) in names.iter().zip(&written) {
        std::fs::write(
            sd.unit_dir().join(name),
            handover_tests::systemd::without_default_dependencies(text),
        )
        .expect("install unit");
    }
    sd.systemctl_ok(&["daemon-reload"]);
    sd.serve_reload_stop(&Lifecycle {
        service: "handover-web.service",
        socket: "handover-web-http.socket",
        port: HTTP_PORT,
        workers: 2,
    });
    let fields = sd.journalctl(&[
        "-o",
        "verbose",
        "-u",
        "handover-web.service",
        "MESSAGE=using the socket systemd passed",
    ]);
    assert!(fields.contains("HANDOVER_SOCKET=http\n"), "{fields}");
    assert!(fields.contains("HANDOVER_SOCKET=admin 100%\n"), "{fields}");
}

/// Issue 13, item 9: in the unit's journal, the lines each worker wrote before it exited
/// ("drained, exiting") come before handover's "worker stopped" about it.
#[test]
fn the_journal_has_each_workers_last_lines_before_its_exit() {
    let sd = boot!(builder("journal-order", &example_config()));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    sd.systemctl_ok(&["stop", HTTP_SOCKET, SERVICE]);
    sd.wait_journal(SERVICE, "stopped");
    let journal = sd.journalctl(&["-o", "json", "-u", SERVICE]);
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let message = |e: &serde_json::Value| e["MESSAGE"].as_str().unwrap_or_default().to_string();
    let mut checked = 0;
    for (stopped_at, entry) in entries.iter().enumerate() {
        if !message(entry).starts_with("worker stopped") {
            continue;
        }
        let pid = entry["HANDOVER_PID"].as_str().expect("HANDOVER_PID");
        let drained = format!("pid {pid} drained, exiting");
        let said = entries
            .iter()
            .position(|e| message(e).contains(&drained))
            .unwrap_or_else(|| panic!("no {drained:?} in the journal:\n{journal}"));
        assert!(
            said < stopped_at,
            "worker {pid}'s last line came after handover's line about its exit:\n{}",
            sd.journalctl(&["-o", "cat", "-u", SERVICE])
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "{journal}");
}

/// The example configuration with the test worker, given `args` after `--ready-after 0
/// --serve`, and further `[worker]` keys.
fn test_worker_config(args: &str, keys: &str) -> String {
    let worker = format!("{INSIDE_BIN}/handover-test-worker");
    let config = example_config().replace(
        r#"command = ["/usr/local/bin/handover-example-http", "--socket", "http"]"#,
        &format!("command = [\"{worker}\", \"--ready-after\", \"0\", \"--serve\", {args}]\n{keys}"),
    );
    assert!(config.contains(&worker), "example.toml's command changed");
    config
}

/// `handover status --json` of the instance, run inside.
fn ctl_status(sd: &Systemd) -> serde_json::Value {
    let handover = format!("{INSIDE_BIN}/handover");
    let socket = "/run/handover/handover@web/control.sock";
    let (ok, out, err) = sd.run(&[&handover, "status", "--json", "--socket", socket]);
    assert!(ok.success(), "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Issue 14 under a real systemd whose units have memory cgroups (on this host's hybrid
/// layout, the manager's own subtree of its cgroup v1 hierarchies; on a cgroup v2 host, its
/// cgroup2 tree): a worker that allocates past `memory_max` is OOM-killed, the journal and
/// `systemctl status` say so, it is replaced while its sibling serves on, status shows the
/// memory its cgroup counts, and after `systemctl stop` no cgroup of handover's is left.
#[test]
fn a_worker_past_its_memory_max_is_oom_killed_and_replaced_under_systemd() {
    let config = test_worker_config(
        r#""--hog-memory-at", "/run/hog""#,
        "memory_max = \"64MiB\"\npids_max = 64",
    );
    let sd = boot!(builder("oom", &config).hybrid_cgroups());
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let first = ctl_status(&sd);
    let controllers = first["cgroup_controllers"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        controllers.starts_with("memory") && controllers.contains("pids"),
        "the unit's cgroup has no memory and pids controllers: {controllers:?}\n{}",
        sd.journalctl(&["-u", SERVICE, "-o", "cat"])
    );
    let journal = sd.journalctl(&["-u", SERVICE, "-o", "cat"]);
    assert!(!journal.contains("is not applied"), "{journal}");
    let workers: Vec<serde_json::Value> = first["generations"][0]["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(workers.len(), 2, "{first:#}");
    let pid_of = |w: &serde_json::Value| w["pid"].as_i64().unwrap();
    let group = sd.show(SERVICE, "ControlGroup");
    for w in &workers {
        // The memory cgroup the worker is in, below the unit's, and its limit.
        let (_, cgroups, _) = sd.run(&["cat", &format!("/proc/{}/cgroup", pid_of(w))]);
        let memory = cgroups
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
            .or_else(|| {
                cgroups
                    .lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            })
            .unwrap_or_default();
        assert!(
            memory.starts_with(&format!("{group}/")) && memory.contains("/gen-1/worker-"),
            "{cgroups}"
        );
        let dir = if cgroups.contains(":memory:") {
            format!("/sys/fs/cgroup/memory{memory}")
        } else {
            format!("/sys/fs/cgroup{memory}")
        };
        let v1 = cgroups.contains(":memory:");
        let read = |file: &str| -> String {
            sd.run(&["cat", &format!("{dir}/{file}")])
                .1
                .trim()
                .to_owned()
        };
        let limit = read(if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        });
        assert_eq!(limit, (64u64 << 20).to_string(), "{dir}");
        let counted = read(if v1 {
            "memory.usage_in_bytes"
        } else {
            "memory.current"
        });
        let counted: u64 = counted
            .parse()
            .unwrap_or_else(|_| panic!("{dir}: {counted:?}"));
        let shown = w["cgroup"]["memory_bytes"].as_u64().unwrap();
        assert!(
            shown.abs_diff(counted) <= counted / 2 + (1 << 20),
            "status shows {shown} bytes, {dir} counts {counted}"
        );
    }
    let (victim, sibling) = (pid_of(&workers[0]), pid_of(&workers[1]));
    sd.run(&["touch", &format!("/run/hog.{victim}")]);
    sd.wait_journal(
        SERVICE,
        "worker died: killed by the OOM killer at memory.max 64MiB",
    );
    sd.wait_property(
        SERVICE,
        "StatusText",
        &format!(
            "2/2 workers ready, generation 1; worker {} killed by the OOM killer at memory.max \
             64MiB",
            workers[0]["index"]
        ),
    );
    let after = ctl_status(&sd);
    let pids: Vec<i64> = after["generations"][0]["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(pid_of)
        .collect();
    assert!(
        pids.contains(&sibling) && !pids.contains(&victim),
        "{after:#}"
    );
    for _ in 0..20 {
        let (code, body) = sd
            .http_get(HTTP_PORT, "/")
            .expect("a request after the OOM kill");
        assert_eq!(code, 200, "{body}");
    }

    sd.systemctl_ok(&["stop", HTTP_SOCKET, SERVICE]);
    assert_eq!(sd.show(SERVICE, "Result"), "success");
    assert_eq!(sd.cgroup_procs(&group), Vec::<i32>::new(), "cgroup empty");
    let (_, left, _) = sd.run(&[
        "sh",
        "-c",
        "find /sys/fs/cgroup -type d -name 'handover.*' -o -type d -name 'gen-*'",
    ]);
    assert_eq!(left.trim(), "", "cgroups of handover's left after the stop");
}

/// Issue 14 under systemd: with the shipped unit's `Delegate=yes`, handover sits in the
/// unit's `supervisor` leaf and each worker in `gen-1/worker-I-ID`; a worker's setsid
/// grandchild that ignores SIGTERM (out of reach of its process group) dies with its
/// worker's cgroup when the worker is stopped, so `systemctl stop` finds nothing left to kill;
/// the limits are applied, or named in the journal where the unit's cgroup lacks their
/// controllers.
#[test]
fn workers_get_cgroups_of_their_own_in_the_delegated_unit() {
    let config = test_worker_config(
        r#""--grandchild-ignores-term", "--marker", "cg", "--hog-memory-at", "/run/hog""#,
        "memory_max = \"64MiB\"\npids_max = 64",
    );
    let sd = boot!(builder("cgroups", &config));
    activate(&sd);
    wait_generation(&sd, SERVICE, 2, 1);
    let group = sd.show(SERVICE, "ControlGroup");
    let main = sd.main_pid(SERVICE);
    let cgroup_of = |pid: i32| -> String {
        let (_, out, _) = sd.run(&["cat", &format!("/proc/{pid}/cgroup")]);
        out.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(cgroup_of(main), format!("{group}/supervisor"));
    let procs = sd.cgroup_procs(&group);
    let in_workers: Vec<String> = procs
        .iter()
        .map(|&p| cgroup_of(p))
        .filter(|c| c.contains("/gen-1/"))
        .collect();
    // Two workers and their two grandchildren, two per worker cgroup.
    assert_eq!(in_workers.len(), 4, "{procs:?}: {in_workers:?}");
    // The grandchildren ignore SIGTERM: only the cgroup's kill can end them.
    let sleepers: Vec<i32> = procs
        .iter()
        .copied()
        .filter(|&p| sd.run(&["cat", &format!("/proc/{p}/comm")]).1.trim() == "sleep")
        .collect();
    assert_eq!(sleepers.len(), 2, "{procs:?}");
    for p in sleepers {
        let (_, status, _) = sd.run(&["cat", &format!("/proc/{p}/status")]);
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        assert_ne!(ignored & (1 << (libc::SIGTERM - 1)), 0, "{status}");
    }
    let distinct: BTreeSet<&String> = in_workers.iter().collect();
    assert_eq!(distinct.len(), 2, "{in_workers:?}");
    for cgroup in distinct {
        let rest = cgroup
            .strip_prefix(&format!("{group}/gen-1/worker-"))
            .unwrap_or_else(|| panic!("{cgroup} is not a worker's cgroup of {group}"));
        assert!(
            rest.split('-').all(|n| n.parse::<u32>().is_ok()),
            "{cgroup}"
        );
    }
    let journal = sd.wait_journal(SERVICE, "a cgroup for each worker");
    assert!(journal.contains("(delegated by systemd)"), "{journal}");

    // The limits: applied where the unit's cgroup has the controllers, else named in the
    // journal with the reason, and the workers serve all the same.
    let (_, controllers, _) =
        sd.run(&["cat", &format!("/sys/fs/cgroup{group}/cgroup.controllers")]);
    let status = ctl_status(&sd);
    let serving = |status: &serde_json::Value| -> Vec<serde_json::Value> {
        status["generations"][0]["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    if controllers.split_whitespace().any(|c| c == "memory") {
        let first = serving(&status)[0].clone();
        let dir = first["cgroup"]["path"].as_str().unwrap().to_owned();
        let (_, max, _) = sd.run(&["cat", &format!("{dir}/memory.max")]);
        assert_eq!(max.trim(), (64u64 << 20).to_string());
        let (_, current, _) = sd.run(&["cat", &format!("{dir}/memory.current")]);
        let shown = first["cgroup"]["memory_bytes"].as_u64().unwrap();
        let current: u64 = current.trim().parse().unwrap();
        assert!(
            shown.abs_diff(current) < current / 4 + (256 << 10),
            "{shown} vs {current}"
        );
        let pid = first["pid"].as_i64().unwrap();
        sd.run(&["touch", &format!("/run/hog.{pid}")]);
        sd.wait_journal(
            SERVICE,
            "worker died: killed by the OOM killer at memory.max 64MiB",
        );
        let (_, state, _) = sd.run(&["systemctl", "show", "-P", "StatusText", SERVICE]);
        assert!(state.contains("killed by the OOM killer"), "{state}");
        wait_generation(&sd, SERVICE, 2, 1);
    } else {
        let journal = sd.wait_journal(SERVICE, "worker.memory_max is not applied");
        assert!(
            journal.contains("worker.memory_max is not applied: the memory controller is"),
            "{journal}"
        );
        assert_eq!(serving(&status).len(), 2, "{status:#}");
        assert!(
            status["cgroup_controllers"].is_string(),
            "status says which controllers there are: {status:#}"
        );
    }

    sd.systemctl_ok(&["stop", HTTP_SOCKET, SERVICE]);
    assert_eq!(sd.show(SERVICE, "Result"), "success");
    let journal = sd.journalctl(&["-u", SERVICE, "-o", "cat"]);
    assert!(
        !journal.contains("Killing process"),
        "systemd had to kill what handover left:\n{journal}"
    );
    assert_eq!(sd.cgroup_procs(&group), Vec::<i32>::new(), "cgroup empty");
}
