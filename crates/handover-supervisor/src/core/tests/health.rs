//! Health: checks gate readiness, failures in a row make a worker unhealthy, an unhealthy
//! worker is replaced before it is stopped (at most `max_replacing` at once), the watchdog,
//! and a reload whose workers fail their check.

use super::*;
use crate::plan::{HealthCheck, HealthSpec};

/// `count` workers checked over HTTP every second, given up after 500ms, unhealthy after
/// `failures` failures in a row, `max_replacing` replaced at once.
fn checked(count: u32, failures: u32, max_replacing: u32) -> GenerationSpec {
    GenerationSpec {
        health: Some(HealthSpec {
            check: HealthCheck::Http {
                socket: "health".into(),
                method: "GET".into(),
                path: "/ok".into(),
                status: 200,
            },
            interval: ms(1_000),
            timeout: ms(500),
            failures,
            max_replacing,
        }),
        ..spec(count)
    }
}

/// A started sim whose first generation of `spec` is up: each worker said READY=1 and
/// passed its first check.
fn healthy(spec: GenerationSpec) -> Sim {
    let count = spec.count as u64;
    let (mut sim, _) = Sim::start(spec, policy());
    let ids: Vec<WorkerId> = (1..=count).collect();
    sim.spawned_all(&ids);
    let mut lines = Vec::new();
    for &id in &ids {
        assert_eq!(sim.ready(id), [format!("health w{id}")]);
        lines.extend(sim.checked(id, Ok(())));
    }
    assert!(lines.contains(&"started".to_string()), "{lines:#?}");
    sim
}

#[test]
fn with_a_check_a_worker_counts_as_ready_once_its_first_check_passes() {
    let (mut sim, _) = Sim::start(checked(1, 2, 1), policy());
    sim.spawned(1);
    assert_eq!(
        sim.ready(1),
        ["health w1"],
        "checked at once, not ready yet"
    );
    assert_eq!(
        sim.checked(1, Err("answered 503, expected 200")),
        Vec::<String>::new()
    );
    assert!(sim.logged("health check failed (1 of 2): answered 503, expected 200"));
    assert_eq!(
        sim.next_in_ms(),
        Some(1_000),
        "the next try, an interval later"
    );
    assert_eq!(sim.after(ms(1_000)), ["health w1"]);
    assert_eq!(
        sim.checked(1, Ok(())),
        [
            "systemd READY=1 STATUS=1/1 workers ready, generation 1",
            "started"
        ]
    );
    assert!(sim.logged("worker ready; its health check passed"));
    assert_eq!(
        sim.next_in_ms(),
        Some(1_000),
        "checked every interval from now on"
    );
}

#[test]
fn a_first_generation_that_fails_its_checks_fails_the_start() {
    let (mut sim, _) = Sim::start(checked(1, 2, 1), policy());
    sim.spawned(1);
    sim.ready(1);
    sim.checked(1, Err("cannot connect: Connection refused"));
    sim.after(ms(1_000));
    let lines = sim.checked(1, Err("cannot connect: Connection refused"));
    assert_eq!(lines[0], "signal w1 SIGTERM");
    sim.exited(1, 0);
    assert_eq!(
        sim.finished(),
        Some(Outcome::StartFailed(
            "worker 0: unhealthy: failed its health check 2 times in a row; last: cannot \
             connect: Connection refused"
                .into()
        ))
    );
}

#[test]
fn an_unhealthy_worker_serves_until_its_replacement_is_ready_then_gets_its_stop_signal() {
    let mut sim = healthy(checked(2, 2, 1));
    assert_eq!(sim.after(ms(1_000)), ["health w1", "health w2"]);
    sim.checked(2, Ok(()));
    assert_eq!(
        sim.checked(1, Err("answered 500, expected 200")),
        Vec::<String>::new()
    );
    sim.after(ms(1_000));
    sim.checked(2, Ok(()));
    assert_eq!(
        sim.checked(1, Err("answered 500, expected 200")),
        [
            "spawn w3 g1/0",
            "systemd STATUS=1/2 workers ready, 1 unhealthy, generation 1"
        ]
    );
    assert!(sim.logged(
        "worker is unhealthy: failed its health check 2 times in a row; last: answered 500, \
         expected 200"
    ));
    assert!(sim.logged("replacing unhealthy worker"));
    // w1 is not checked any more, and not stopped yet.
    let lines = sim.after(ms(1_000));
    assert_eq!(lines, ["health w2"]);
    sim.checked(2, Ok(()));
    sim.spawned(3);
    assert_eq!(sim.ready(3), ["health w3"]);
    assert_eq!(
        sim.checked(3, Ok(())),
        [
            "signal w1 SIGTERM",
            "systemd STATUS=2/2 workers ready, 1 unhealthy, generation 1"
        ]
    );
    assert_eq!(sim.exited(1, 0), Vec::<String>::new(), "no restart for it");
    let status = sim.core.status_line();
    assert_eq!(status, "2/2 workers ready, generation 1");
}

#[test]
fn a_check_past_its_timeout_is_killed_counts_as_failed_and_checks_never_overlap() {
    let mut sim = healthy(checked(1, 3, 1));
    assert_eq!(sim.after(ms(1_000)), ["health w1"]);
    assert_eq!(sim.next_in_ms(), Some(500));
    assert_eq!(sim.after(ms(500)), ["kill health w1"]);
    assert!(sim.logged("health check failed (1 of 3): timed out after 500ms"));
    // Its end has not been reported: no next check, however long that takes.
    assert_eq!(sim.next_in_ms(), None);
    assert_eq!(sim.after(ms(5_000)), Vec::<String>::new());
    assert_eq!(sim.checked(1, Err("given up")), Vec::<String>::new());
    assert!(!sim.logged("(2 of 3)"), "the killed check counted once");
    assert_eq!(sim.next_in_ms(), Some(1_000));
    let status = sim.core.snapshot(sim.now);
    let health = status.generations[0].workers[0].health.clone().unwrap();
    assert_eq!(health.state, "healthy");
    assert_eq!(health.failures_in_a_row, 1);
    assert_eq!(health.last_passed, Some(false));
    assert_eq!(health.reason.as_deref(), Some("timed out after 500ms"));
}

#[test]
fn no_more_than_max_replacing_workers_are_replaced_at_once() {
    let mut sim = healthy(checked(3, 1, 1));
    sim.after(ms(1_000));
    let mut lines = sim.checked(1, Err("answered 500, expected 200"));
    lines.extend(sim.checked(2, Err("answered 500, expected 200")));
    lines.extend(sim.checked(3, Ok(())));
    assert_eq!(only(&lines, "spawn"), ["spawn w4 g1/0"], "one at a time");
    // A flapping worker that recovers is still replaced once its turn comes: it was
    // found unhealthy, and unhealthy stays.
    sim.spawned(4);
    sim.ready(4);
    let lines = sim.checked(4, Ok(()));
    assert_eq!(only(&lines, "signal"), ["signal w1 SIGTERM"]);
    assert_eq!(only(&lines, "spawn"), ["spawn w5 g1/1"], "then the next");
    sim.spawned(5);
    sim.ready(5);
    assert_eq!(
        only(&sim.checked(5, Ok(())), "signal"),
        ["signal w2 SIGTERM"]
    );
}

#[test]
fn with_max_replacing_two_two_are_replaced_together() {
    let mut sim = healthy(checked(3, 1, 2));
    sim.after(ms(1_000));
    let mut lines = sim.checked(1, Err("x"));
    lines.extend(sim.checked(2, Err("x")));
    lines.extend(sim.checked(3, Err("x")));
    assert_eq!(only(&lines, "spawn"), ["spawn w4 g1/0", "spawn w5 g1/1"]);
}

#[test]
fn a_replacement_that_fails_its_check_is_restarted_and_the_sick_worker_keeps_serving() {
    let mut sim = healthy(checked(1, 1, 1));
    sim.after(ms(1_000));
    assert_eq!(only(&sim.checked(1, Err("x")), "spawn"), ["spawn w2 g1/0"]);
    sim.spawned(2);
    sim.ready(2);
    let lines = sim.checked(2, Err("answered 500, expected 200"));
    assert_eq!(lines.first().map(String::as_str), Some("signal w2 SIGTERM"));
    assert!(!lines.iter().any(|l| l.contains("w1")), "{lines:?}");
    sim.exited(2, 0);
    assert_eq!(
        sim.after(ms(100)),
        ["spawn w3 g1/0"],
        "after the restart delay"
    );
}

/// A spec with a 2s watchdog and no check.
fn watched(count: u32) -> GenerationSpec {
    GenerationSpec {
        watchdog: Some(ms(2_000)),
        ..spec(count)
    }
}

#[test]
fn a_worker_that_stops_sending_watchdog_is_replaced() {
    let mut sim = serving(watched(1), policy());
    assert_eq!(sim.next_in_ms(), Some(2_000), "armed once ready");
    sim.after(ms(1_500));
    assert_eq!(sim.notify(1, "WATCHDOG=1"), Vec::<String>::new());
    assert_eq!(
        sim.next_in_ms(),
        Some(2_000),
        "a ping starts the interval again"
    );
    assert_eq!(sim.after(ms(1_999)), Vec::<String>::new());
    assert_eq!(
        sim.after(ms(1)),
        [
            "spawn w2 g1/0",
            "systemd STATUS=0/1 workers ready, 1 unhealthy, generation 1"
        ]
    );
    assert!(sim.logged("worker is unhealthy: sent no WATCHDOG=1 for 2.0s"));
    sim.spawned(2);
    assert_eq!(only(&sim.ready(2), "signal"), ["signal w1 SIGTERM"]);
}

#[test]
fn watchdog_trigger_and_watchdog_usec_work_as_under_systemd() {
    let mut sim = serving(watched(2), policy());
    assert_eq!(
        only(&sim.notify(1, "WATCHDOG=trigger"), "spawn"),
        ["spawn w3 g1/0"]
    );
    assert!(sim.logged("worker is unhealthy: it sent WATCHDOG=trigger"));
    // A longer interval from now on; 0 turns it off.
    sim.notify(2, "WATCHDOG_USEC=10000000");
    assert_eq!(sim.after(ms(9_999)), Vec::<String>::new());
    sim.notify(2, "WATCHDOG_USEC=0");
    assert_eq!(sim.after(ms(60_000)), Vec::<String>::new());
    // Any number a worker sends is taken without harm: more than a day counts as a day.
    sim.notify(2, "WATCHDOG_USEC=18446744073709551615");
    assert_eq!(sim.next_in_ms(), Some(24 * 60 * 60 * 1000));
    let status = sim.core.snapshot(sim.now);
    let w2 = &status.generations[0]
        .workers
        .iter()
        .find(|w| w.index == 1)
        .unwrap();
    assert_eq!(w2.health.as_ref().unwrap().state, "healthy");
}

#[test]
fn the_watchdog_fan_in_to_systemd_counts_only_healthy_workers() {
    let spec = GenerationSpec {
        watchdog: Some(ms(60_000)),
        ..spec(2)
    };
    let (mut sim, _) = Sim::start_with(spec, policy(), Some(ms(10_000)), 1);
    sim.up(&[1, 2]);
    assert_eq!(sim.after(ms(5_000)), ["systemd WATCHDOG=1"]);
    // w1 is being replaced; w2, unhealthy too, waits its turn in its slot, ready.
    sim.notify(1, "WATCHDOG=trigger");
    sim.notify(2, "WATCHDOG=trigger");
    assert_eq!(sim.core.model.ready_count(1), 1);
    assert_eq!(
        only(&sim.after(ms(5_000)), "systemd WATCHDOG"),
        Vec::<&str>::new()
    );
    assert!(sim.logged("fewer than 1 workers ready and healthy: not sending WATCHDOG=1"));
}

#[test]
fn a_health_failure_during_a_reload_aborts_it_and_the_old_generation_keeps_serving() {
    let mut sim = serving(spec(1), policy());
    let (client, _) = sim.reload();
    sim.resolved(1, checked(1, 1, 1), policy());
    sim.spawned(2);
    assert_eq!(sim.ready(2), ["health w2"]);
    let lines = sim.checked(2, Err("answered 500, expected 200"));
    let message = "reload aborted, generation 1 keeps serving: worker 0 of generation 2 failed: \
                   unhealthy: failed its health check; last: answered 500, expected 200";
    assert_eq!(
        lines,
        [
            "signal w2 SIGTERM".to_string(),
            format!("systemd READY=1 STATUS={message}"),
            format!("reply c{client} failed: {message}"),
        ]
    );
}

#[test]
fn a_new_worker_that_passed_then_fails_its_check_while_the_reload_runs_aborts_it() {
    let mut sim = serving(spec(1), policy());
    let (client, _) = sim.reload();
    sim.resolved(1, checked(2, 1, 1), policy());
    sim.spawned_all(&[2, 3]);
    sim.ready(2);
    sim.checked(2, Ok(()));
    assert!(sim.logged("worker ready; its health check passed"));
    // w3 is still starting, so the reload goes on; w2's next check fails.
    assert_eq!(sim.after(ms(1_000)), ["health w2"]);
    let lines = sim.checked(2, Err("answered 500, expected 200"));
    assert_eq!(lines.first().map(String::as_str), Some("signal w2 SIGTERM"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("reply c{client} failed: reload aborted"))),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("w1")), "{lines:?}");
}
