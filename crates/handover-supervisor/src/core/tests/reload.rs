//! Reloads: the strategies, every way a reload is aborted, and reloads that meet reloads.

use super::*;
use crate::control::{AbortCause, ReloadError};

/// No action of `lines` signals or kills one of `workers`.
fn untouched(lines: &[String], workers: &[WorkerId]) {
    for line in lines {
        for w in workers {
            assert!(
                !line.starts_with(&format!("signal w{w} ")) && line != &format!("kill w{w}"),
                "{line} touches an old worker"
            );
        }
    }
}

#[test]
fn all_at_once_the_old_generation_drains_only_once_every_new_worker_is_ready() {
    let mut sim = serving(spec(2), policy());
    let (client, lines) = sim.reload();
    assert_eq!(
        lines,
        [
            "systemd RELOADING=1 STATUS=reloading: preparing generation 2",
            "resolve r1 g2"
        ]
    );
    assert_eq!(
        sim.resolved(1, spec(2), policy()),
        [
            "systemd EXTEND_TIMEOUT 65s",
            "reply c1 progress: spawning generation 2 (2 workers)",
            "systemd STATUS=spawning generation 2 (2 workers)",
            "spawn w3 g2/0",
            "spawn w4 g2/1"
        ]
    );
    let mut before_ready = sim.spawned_all(&[3, 4]);
    before_ready.extend(sim.ready(3));
    assert_eq!(
        before_ready,
        [
            "reply c1 progress: 1/2 ready in generation 2",
            "systemd STATUS=1/2 ready in generation 2"
        ]
    );
    untouched(&before_ready, &[1, 2]);
    assert_eq!(
        sim.ready(4),
        [
            "reply c1 progress: 2/2 ready in generation 2",
            "systemd STATUS=2/2 ready in generation 2",
            "reply c1 progress: draining generation 1",
            "systemd STATUS=draining generation 1",
            "signal w1 SIGTERM",
            "signal w2 SIGTERM",
            "systemd READY=1 STATUS=2/2 workers ready, generation 2",
            format!("reply c{client} done: 2").as_str(),
        ]
    );
    assert!(sim
        .logs
        .iter()
        .any(|l| l.message.starts_with("reload done in ")
            && l.outcome == Some("done")
            && l.generation == Some(2)));
    // The drain timeout, then SIGKILL.
    assert_eq!(sim.after(ms(3_000)), ["kill w1", "kill w2"]);
    sim.exited_all(&[1, 2]);
    assert!(sim.logged("generation draining has no workers left"));
    assert_eq!(sim.core.model.generations.len(), 1);
}

#[test]
fn rolling_starts_batches_retires_one_old_worker_per_ready_new_one_and_keeps_the_cap() {
    let mut sim = serving(spec(3), policy());
    let rolling = ReloadPolicy {
        batch_size: Some(1),
        max_extra: 1,
        ..policy()
    };
    sim.reload();
    let mut all = Vec::new();
    let mut step = |sim: &mut Sim, lines: Vec<String>| {
        assert!(
            sim.core.model.workers.len() <= 4,
            "more than count + max_extra workers: {:?}",
            sim.core.model.workers.keys()
        );
        all.extend(lines.clone());
        lines
    };
    let lines = sim.resolved(1, spec(3), rolling);
    assert_eq!(only(&step(&mut sim, lines), "spawn"), ["spawn w4 g2/0"]);
    let lines = sim.spawned(4);
    step(&mut sim, lines);
    let lines = sim.ready(4);
    assert_eq!(
        only(&step(&mut sim, lines), "s"),
        [
            "systemd STATUS=1/3 ready in generation 2",
            "signal w1 SIGTERM",
        ]
    );
    // No room until the retired worker is gone.
    let lines = sim.exited(1, 0);
    assert_eq!(only(&step(&mut sim, lines), "spawn"), ["spawn w5 g2/1"]);
    let lines = sim.up(&[5]);
    assert_eq!(
        only(&step(&mut sim, lines), "signal"),
        ["signal w2 SIGTERM"]
    );
    let lines = sim.exited(2, 0);
    assert_eq!(only(&step(&mut sim, lines), "spawn"), ["spawn w6 g2/2"]);
    let lines = sim.up(&[6]);
    let last = step(&mut sim, lines);
    assert_eq!(only(&last, "signal"), ["signal w3 SIGTERM"]);
    assert!(last.contains(&"systemd READY=1 STATUS=3/3 workers ready, generation 2".to_string()));
    // Old workers were retired only after a new one was ready: each `signal` of an old
    // worker comes after one more "ready in generation 2".
    let mut ready = 0;
    let mut retired = 0;
    for line in &all {
        if line.starts_with("systemd STATUS=") && line.contains("ready in generation 2") {
            ready += 1;
        }
        if line.starts_with("signal w") {
            retired += 1;
            assert!(retired <= ready, "{line} before its replacement was ready");
        }
    }
}

#[test]
fn a_canary_starts_alone_and_the_rest_follow_once_it_is_ready() {
    let mut sim = serving(spec(3), policy());
    sim.reload();
    let canary = ReloadPolicy {
        canary: true,
        ..policy()
    };
    let lines = sim.resolved(1, spec(3), canary);
    assert_eq!(only(&lines, "spawn"), ["spawn w4 g2/0"]);
    assert!(lines.contains(&"reply c1 progress: starting a canary worker in generation 2".into()));
    sim.spawned(4);
    let lines = sim.ready(4);
    assert_eq!(only(&lines, "spawn"), ["spawn w5 g2/1", "spawn w6 g2/2"]);
    untouched(&lines, &[1, 2, 3]);
    let lines = sim.up(&[5, 6]);
    assert_eq!(
        only(&lines, "signal"),
        [
            "signal w1 SIGTERM",
            "signal w2 SIGTERM",
            "signal w3 SIGTERM"
        ]
    );
}

#[test]
fn a_canary_that_dies_aborts_before_any_other_worker_starts() {
    let mut sim = serving(spec(3), policy());
    sim.reload();
    sim.resolved(
        1,
        spec(3),
        ReloadPolicy {
            canary: true,
            ..policy()
        },
    );
    sim.spawned(4);
    let lines = sim.exited(4, 1);
    untouched(&lines, &[1, 2, 3]);
    assert_eq!(only(&lines, "spawn"), Vec::<&str>::new());
    assert!(lines.contains(
        &"reply c1 failed: reload aborted, generation 1 keeps serving: worker 0 of generation 2 \
          failed: exited with code 1"
            .to_string()
    ));
}

/// A reload to generation 2 of 2 workers (w3, w4) spawned but not ready, on top of a
/// serving generation 1 (w1, w2).
fn reloading() -> Sim {
    let mut sim = serving(spec(2), policy());
    sim.reload();
    sim.resolved(1, spec(2), policy());
    sim.spawned_all(&[3, 4]);
    sim
}

/// The lines every abort ends with, after the new workers' stop signals.
fn aborted(cause: &str) -> Vec<String> {
    let message = format!("reload aborted, generation 1 keeps serving: {cause}");
    vec![
        format!("systemd READY=1 STATUS={message}"),
        format!("reply c1 failed: {message}"),
    ]
}

#[test]
fn a_new_worker_that_exits_aborts_the_reload_and_the_old_generation_is_untouched() {
    let mut sim = reloading();
    let lines = sim.exited(3, 1);
    let mut expected = vec!["signal w4 SIGTERM".to_string()];
    expected.extend(aborted(
        "worker 0 of generation 2 failed: exited with code 1",
    ));
    assert_eq!(lines, expected);
    assert!(sim
        .logs
        .iter()
        .any(|l| l.outcome == Some("aborted") && l.generation == Some(2)));
    // The aborted generation goes once its last worker does; generation 1 serves on.
    sim.exited(4, 0);
    assert!(sim.logged("generation aborted has no workers left"));
    assert_eq!(sim.core.model.generations.keys().collect::<Vec<_>>(), [&1]);
    let lines = sim.after(ms(60_000));
    untouched(&lines, &[1, 2]);
}

#[test]
fn a_new_worker_that_cannot_exec_aborts_the_reload_with_the_exec_error() {
    let mut sim = serving(spec(1), policy());
    sim.reload();
    sim.resolved(1, spec(1), policy());
    sim.input(Input::Spawned {
        worker: 2,
        pid: 1002,
        exec_error: Some("executing /test/new: Permission denied (os error 13)".into()),
    });
    let lines = sim.exited(2, 127);
    assert_eq!(
        lines[1],
        "reply c1 failed: reload aborted, generation 1 keeps serving: worker 0 of generation 2 \
         failed: could not start: executing /test/new: Permission denied (os error 13)"
    );
    untouched(&lines, &[1]);
}

#[test]
fn a_new_worker_not_ready_in_time_aborts_the_reload() {
    let mut sim = reloading();
    sim.ready(4);
    let lines = sim.after(ms(10_000));
    let mut expected = vec![
        "signal w3 SIGTERM".to_string(),
        "signal w4 SIGTERM".to_string(),
    ];
    expected.extend(aborted(
        "worker 0 of generation 2 failed: not ready within 10.0s",
    ));
    assert_eq!(lines, expected);
    assert_eq!(sim.after(ms(5_000)), ["kill w3", "kill w4"]);
}

#[test]
fn a_reload_longer_than_its_timeout_is_aborted() {
    let mut sim = serving(spec(2), policy());
    sim.reload();
    let quick = ReloadPolicy {
        timeout: ms(1_000),
        ..policy()
    };
    let lines = sim.resolved(1, spec(2), quick);
    assert_eq!(lines[0], "systemd EXTEND_TIMEOUT 6s");
    sim.spawned_all(&[3, 4]);
    assert_eq!(sim.next_in_ms(), Some(1_000));
    let lines = sim.after(ms(1_000));
    let mut expected = vec![
        "signal w3 SIGTERM".to_string(),
        "signal w4 SIGTERM".to_string(),
    ];
    expected.extend(aborted("reload did not finish within 1.0s"));
    assert_eq!(lines, expected);
}

#[test]
fn reload_timeout_override_wins_over_the_configured_one() {
    let mut sim = serving(spec(1), policy());
    let client = sim.client();
    sim.control(
        client,
        Request::Reload {
            workers: None,
            env: Vec::new(),
            replace_env: false,
            cwd: None,
            timeout_ms: Some(500),
        },
    );
    sim.resolved(1, spec(1), policy());
    assert_eq!(sim.next_in_ms(), Some(500));
}

#[test]
fn abort_on_request_answers_both_clients() {
    let mut sim = reloading();
    let admin = sim.client();
    let mut expected = vec![
        "signal w3 SIGTERM".to_string(),
        "signal w4 SIGTERM".to_string(),
    ];
    expected.extend(aborted("aborted on request"));
    expected.push(format!("reply c{admin} ok: reload aborted"));
    assert_eq!(sim.control(admin, Request::Abort), expected);
    assert_eq!(
        sim.control(admin, Request::Abort),
        [format!("reply c{admin} error: no reload is running")]
    );
}

#[test]
fn a_rolling_reload_that_aborts_gives_the_old_generation_back_its_retired_slots() {
    let mut sim = serving(spec(2), policy());
    sim.reload();
    let rolling = ReloadPolicy {
        batch_size: Some(1),
        max_extra: 1,
        ..policy()
    };
    sim.resolved(1, spec(2), rolling);
    sim.up(&[3]);
    sim.exited(1, 0); // retired by the rolling reload
    sim.spawned(4);
    let lines = sim.exited(4, 1);
    assert_eq!(
        only(&lines, "s"),
        ["signal w3 SIGTERM", "spawn w5 g1/0", "systemd READY=1 STATUS=reload aborted, generation 1 keeps serving: worker 1 of generation 2 failed: exited with code 1"]
    );
}

#[test]
fn a_control_reload_during_a_reload_is_busy_and_signals_coalesce_into_one_more() {
    let mut sim = reloading();
    let second = sim.client();
    assert_eq!(
        sim.control(
            second,
            Request::Reload {
                workers: None,
                env: Vec::new(),
                replace_env: false,
                cwd: None,
                timeout_ms: None
            }
        ),
        [format!("reply c{second} busy: 2")]
    );
    for _ in 0..100 {
        assert_eq!(sim.input(Input::Reload), Vec::<String>::new());
    }
    let lines = sim.ready_all(&[3, 4]);
    let tail = &lines[lines.len() - 2..];
    assert_eq!(
        tail,
        [
            "systemd RELOADING=1 STATUS=reloading: preparing generation 3",
            "resolve r2 g3"
        ]
    );
    sim.resolved(2, spec(2), policy());
    sim.up(&[5, 6]);
    // Exactly one more: nothing follows the second.
    assert_eq!(sim.core.reload.as_ref().map(|r| r.generation), None);
    assert_eq!(sim.input(Input::Tick), Vec::<String>::new());
}

#[test]
fn signals_during_the_plan_coalesce_too_and_the_next_waits_a_second() {
    let mut sim = serving(spec(1), policy());
    sim.input(Input::Reload);
    sim.input(Input::Reload);
    sim.input(Input::Reload);
    sim.resolved(1, spec(1), policy());
    let lines = sim.up(&[2]);
    assert!(!lines.iter().any(|l| l.starts_with("resolve")), "{lines:?}");
    assert_eq!(sim.next_in_ms(), Some(1_000));
    assert_eq!(sim.after(ms(999)), Vec::<String>::new());
    let lines = sim.after(ms(1));
    assert_eq!(lines.last().map(String::as_str), Some("resolve r2 g3"));
}

/// Issue 13, item 7 (scenario 37): 10,000 SIGHUPs spread over one second cost at most two
/// reloads, here with reloads that take 5 ms each.
#[test]
fn a_storm_of_sighups_costs_at_most_two_reloads() {
    let mut sim = serving(spec(1), policy());
    let mut reloads = 0u64;
    let mut next_worker = 2;
    // Reloads in progress: (when they finish, their new worker).
    let mut running: Vec<(u128, u64)> = Vec::new();
    let mut clock_ms = 0u128;
    let mut handle = |sim: &mut Sim, lines: Vec<String>, running: &mut Vec<(u128, u64)>, at| {
        for line in lines {
            if let Some(rest) = line.strip_prefix("resolve r") {
                let id: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                reloads += 1;
                sim.resolved(id, spec(1), policy());
                sim.spawned(next_worker);
                running.push((at + 5, next_worker));
                next_worker += 1;
            }
        }
    };
    for step in 0..13_000u64 {
        if step % 10 == 0 {
            // One millisecond passes: finish what is due, then the clock's own deadlines.
            clock_ms += 1;
            let due: Vec<u64> = running
                .iter()
                .filter(|(at, _)| *at <= clock_ms)
                .map(|(_, w)| *w)
                .collect();
            running.retain(|(at, _)| *at > clock_ms);
            for worker in due {
                let lines = sim.ready(worker);
                handle(&mut sim, lines, &mut running, clock_ms);
                sim.exited(worker - 1, 0);
            }
            let lines = sim.after(ms(1));
            handle(&mut sim, lines, &mut running, clock_ms);
        }
        // 10 signals a millisecond for the first second.
        if step < 10_000 {
            let lines = sim.input(Input::Reload);
            handle(&mut sim, lines, &mut running, clock_ms);
        }
    }
    assert_eq!(reloads, 2);
    assert!(running.is_empty() && sim.core.reload.is_none());
    assert_eq!(sim.next_in_ms(), None, "nothing more is pending");
}

/// SIGHUPs a second or more apart each reload at once; one sooner waits out the second.
#[test]
fn signal_reloads_start_at_most_once_a_second() {
    let mut sim = serving(spec(1), policy());
    for reload in 1..=3u64 {
        let lines = sim.input(Input::Reload);
        assert_eq!(
            lines.last().map(String::as_str),
            Some(format!("resolve r{reload} g{}", reload + 1).as_str())
        );
        sim.resolved(reload, spec(1), policy());
        sim.up(&[reload + 1]);
        sim.exited(reload, 0); // the old worker drains and goes
        sim.after(ms(1_000));
    }
    sim.input(Input::Reload);
    sim.resolved(4, spec(1), policy());
    sim.up(&[5]);
    sim.exited(4, 0);
    assert_eq!(
        sim.input(Input::Reload),
        Vec::<String>::new(),
        "too soon: it waits"
    );
    assert_eq!(sim.next_in_ms(), Some(1_000));
    let lines = sim.after(ms(1_000));
    assert!(lines.contains(&"resolve r5 g6".to_string()), "{lines:?}");
}

#[test]
fn a_plan_that_fails_keeps_the_old_generation_and_uses_no_generation_number() {
    let mut sim = serving(spec(1), policy());
    sim.reload();
    let lines = sim.input(Input::Resolved {
        reload: 1,
        plan: Err("/etc/app.toml:3:9: unknown key \"cuont\"".into()),
    });
    let message =
        "reload failed, generation 1 keeps serving: /etc/app.toml:3:9: unknown key \"cuont\"";
    assert_eq!(
        lines,
        [
            format!("systemd READY=1 STATUS={message}"),
            format!("reply c1 failed: {message}")
        ]
    );
    let (_, lines) = sim.reload();
    assert_eq!(lines[1], "resolve r2 g2");
}

#[test]
fn the_plan_of_a_reload_that_ended_meanwhile_is_dropped() {
    let mut sim = serving(spec(1), policy());
    sim.reload();
    let admin = sim.client();
    let lines = sim.control(admin, Request::Abort);
    assert!(lines.contains(&format!("reply c{admin} ok: reload aborted")));
    // The next reload reuses number 2; the late plan of the first must not start it.
    let (_, lines) = sim.reload();
    assert_eq!(lines[1], "resolve r2 g2");
    assert_eq!(sim.resolved(1, spec(5), policy()), Vec::<String>::new());
    assert_eq!(
        only(&sim.resolved(2, spec(1), policy()), "spawn"),
        ["spawn w2 g2/0"]
    );
}

#[test]
fn reloads_are_refused_before_the_start_while_stopping_and_past_max_draining() {
    let (mut sim, _) = Sim::start(spec(1), policy());
    let (c1, lines) = sim.reload();
    assert_eq!(
        lines,
        [format!("reply c{c1} failed: {}", ReloadError::NotStarted)]
    );
    sim.up(&[1]);
    let strict = ReloadPolicy {
        max_draining: 1,
        ..policy()
    };
    sim.reload();
    sim.resolved(1, spec(1), strict);
    sim.up(&[2]); // generation 1 drains
    let (c3, lines) = sim.reload();
    assert_eq!(
        lines,
        [format!(
            "reply c{c3} failed: 1 generations are still draining (max_draining = 1)"
        )]
    );
    sim.exited(1, 0);
    let (_, lines) = sim.reload();
    assert_eq!(lines[1], "resolve r2 g3");
    sim.input(Input::Stop("SIGTERM"));
    let (c5, lines) = sim.reload();
    assert_eq!(lines, [format!("reply c{c5} failed: handover is stopping")]);
}

#[test]
fn reload_errors_read_as_before() {
    let error = ReloadError::Aborted {
        serving: 4,
        cause: AbortCause::Timeout { took: ms(2_500) },
    };
    assert_eq!(
        error.to_string(),
        "reload aborted, generation 4 keeps serving: reload did not finish within 2.5s"
    );
}
