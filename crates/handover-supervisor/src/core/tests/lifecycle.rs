//! Start, readiness, restarts and their backoff, notifications, scale, watchdog, status.

use super::*;

#[test]
fn ready_is_told_once_every_worker_of_the_first_generation_is_ready() {
    let (mut sim, start) = Sim::start(spec(2), policy());
    assert_eq!(
        start,
        [
            "systemd EXTEND_TIMEOUT 15s",
            "spawn w1 g1/0",
            "spawn w2 g1/1"
        ]
    );
    assert!(sim.logged("starting 2 workers"));
    assert_eq!(sim.spawned_all(&[1, 2]), Vec::<String>::new());
    assert_eq!(sim.ready(1), Vec::<String>::new());
    assert_eq!(
        sim.ready(2),
        [
            "systemd READY=1 STATUS=2/2 workers ready, generation 1",
            "started"
        ]
    );
    assert!(sim.logged("all 2 workers ready"));
    // A second READY=1 changes nothing.
    assert_eq!(sim.ready(2), Vec::<String>::new());
    assert_eq!(sim.next_in_ms(), None, "nothing is due: the loop sleeps");
}

#[test]
fn a_worker_that_dies_before_ready_fails_the_start_and_the_rest_are_stopped() {
    let (mut sim, _) = Sim::start(spec(2), policy());
    sim.spawned_all(&[1, 2]);
    sim.ready(2);
    assert_eq!(
        sim.exited(1, 3),
        [
            "systemd STOPPING=1 STATUS=stopping",
            "systemd EXTEND_TIMEOUT 10s",
            "signal w2 SIGTERM"
        ]
    );
    assert!(sim.logged("worker died before it was ready: exited with code 3"));
    assert!(sim.logged("the first generation failed to start: worker 0: exited with code 3"));
    assert_eq!(sim.finished(), None, "w2 is still running");
    sim.exited(2, 0);
    assert_eq!(
        sim.finished(),
        Some(Outcome::StartFailed("worker 0: exited with code 3".into()))
    );
}

#[test]
fn a_worker_not_ready_in_time_fails_the_start_and_is_killed_after_its_stop_timeout() {
    let (mut sim, _) = Sim::start(spec(2), policy());
    sim.spawned_all(&[1, 2]);
    sim.ready(2);
    assert_eq!(sim.next_in_ms(), Some(10_000));
    assert_eq!(sim.after(ms(9_999)), Vec::<String>::new());
    assert_eq!(
        sim.after(ms(1)),
        [
            "signal w1 SIGTERM",
            "systemd STOPPING=1 STATUS=stopping",
            "systemd EXTEND_TIMEOUT 10s",
            "signal w2 SIGTERM"
        ]
    );
    assert!(sim.logged("not ready within 10.0s"));
    assert_eq!(sim.after(ms(5_000)), ["kill w1", "kill w2"]);
    sim.input(Input::Exited {
        worker: 1,
        status: ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
        stderr_tail: vec!["oops".into()],
        oom_kills: 0,
    });
    sim.exited(2, 0);
    assert!(matches!(sim.finished(), Some(Outcome::StartFailed(_))));
}

#[test]
fn a_spawn_that_fails_at_start_fails_the_start() {
    let (mut sim, _) = Sim::start(spec(1), policy());
    let lines = sim.input(Input::SpawnFailed {
        worker: 1,
        error: "Resource temporarily unavailable (os error 11)".into(),
    });
    assert_eq!(
        lines,
        [
            "systemd STOPPING=1 STATUS=stopping",
            "systemd EXTEND_TIMEOUT 8s"
        ]
    );
    assert_eq!(
        sim.finished(),
        Some(Outcome::StartFailed(
            "worker 0: could not start worker: Resource temporarily unavailable (os error 11)"
                .into()
        ))
    );
}

#[test]
fn an_exec_failure_is_reported_with_its_error() {
    let (mut sim, _) = Sim::start(spec(1), policy());
    sim.input(Input::Spawned {
        worker: 1,
        pid: 1001,
        exec_error: Some("executing /test/worker: No such file or directory (os error 2)".into()),
    });
    sim.exited(1, 127);
    assert!(sim.logged(
        "worker died before it was ready: could not start: executing /test/worker: No such file"
    ));
    assert!(
        matches!(sim.finished(), Some(Outcome::StartFailed(r)) if r.contains("could not start: executing"))
    );
}

#[test]
fn ready_by_delay_comes_when_the_delay_has_passed() {
    let mut spec = spec(1);
    spec.ready = ReadyMode::Delay(ms(500));
    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    assert_eq!(sim.next_in_ms(), Some(500));
    assert_eq!(sim.after(ms(499)), Vec::<String>::new());
    assert_eq!(
        sim.after(ms(1)),
        [
            "systemd READY=1 STATUS=1/1 workers ready, generation 1",
            "started"
        ]
    );
    assert!(sim.logged("worker ready (alive for the ready delay)"));
}

#[test]
fn probes_run_one_at_a_time_are_killed_at_their_timeout_and_ready_on_success() {
    let mut spec = spec(1);
    spec.ready = ReadyMode::Probe {
        argv: vec!["/test/probe".into()],
        interval: ms(200),
        timeout: ms(100),
    };
    spec.ready_timeout = ms(5_000);
    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    assert_eq!(sim.next_in_ms(), Some(200));
    assert_eq!(sim.after(ms(200)), ["probe w1"]);
    // Until the driver reports it, no second probe and no probe deadline.
    assert_eq!(sim.next_in_ms(), Some(4_800));
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    assert_eq!(sim.next_in_ms(), Some(100));
    // Fails: the next one starts an interval later.
    sim.input(Input::ProbeExited {
        worker: 1,
        status: ExitStatus::Exited(1),
    });
    assert_eq!(sim.next_in_ms(), Some(200));
    assert_eq!(sim.after(ms(200)), ["probe w1"]);
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    // Hangs: killed at its timeout, and its end does not count even if it is a success.
    assert_eq!(sim.after(ms(100)), ["kill probe w1"]);
    assert_eq!(
        sim.input(Input::ProbeExited {
            worker: 1,
            status: ExitStatus::Exited(0),
        }),
        Vec::<String>::new()
    );
    assert_eq!(sim.after(ms(200)), ["probe w1"]);
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    assert_eq!(
        sim.input(Input::ProbeExited {
            worker: 1,
            status: ExitStatus::Exited(0),
        }),
        [
            "systemd READY=1 STATUS=1/1 workers ready, generation 1",
            "started"
        ]
    );
    assert!(sim.logged("worker ready (probe succeeded)"));
    assert_eq!(sim.next_in_ms(), None);
}

#[test]
fn a_ready_timeout_in_probe_mode_says_how_the_last_probe_ended() {
    let mut spec = spec(1);
    spec.ready = ReadyMode::Probe {
        argv: vec!["/test/probe".into()],
        interval: ms(200),
        timeout: ms(100),
    };
    spec.ready_timeout = ms(1_000);
    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    sim.after(ms(200));
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    sim.after(ms(100));
    sim.after(ms(700));
    assert!(
        sim.logged("not ready within 1.0s; last probe: timed out after 100ms"),
        "{:#?}",
        sim.messages(Level::Warn)
    );
    // The worker is gone before its probe is reported: the probe is killed at once.
    sim.exited(1, 0);
    assert_eq!(
        sim.input(Input::ProbeStarted {
            worker: 1,
            exec_error: None
        }),
        ["kill probe w1"]
    );
}

#[test]
fn checks_are_paced_like_probes_and_say_why_they_failed() {
    let mut spec = spec(1);
    spec.ready = ReadyMode::Check {
        socket: "web".into(),
        http: Some(("/health".into(), 200)),
        interval: ms(200),
        timeout: ms(100),
    };
    spec.ready_timeout = ms(1_000);
    let (mut sim, _) = Sim::start(spec.clone(), policy());
    sim.spawned(1);
    assert_eq!(sim.after(ms(200)), ["probe w1"]);
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    sim.input(Input::ProbeChecked {
        worker: 1,
        result: Err("answered 503, expected 200".into()),
    });
    assert_eq!(sim.next_in_ms(), Some(200));
    assert_eq!(sim.after(ms(200)), ["probe w1"]);
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    // A hung check is given up at its timeout; a late success does not count.
    assert_eq!(sim.after(ms(100)), ["kill probe w1"]);
    assert_eq!(
        sim.input(Input::ProbeChecked {
            worker: 1,
            result: Ok(()),
        }),
        Vec::<String>::new()
    );
    sim.after(ms(200));
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    sim.input(Input::ProbeChecked {
        worker: 1,
        result: Err("answered 503, expected 200".into()),
    });
    sim.after(ms(400));
    assert!(
        sim.logged("not ready within 1.0s; last probe: answered 503, expected 200"),
        "{:#?}",
        sim.messages(Level::Warn)
    );

    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    sim.after(ms(200));
    sim.input(Input::ProbeStarted {
        worker: 1,
        exec_error: None,
    });
    assert_eq!(
        sim.input(Input::ProbeChecked {
            worker: 1,
            result: Ok(()),
        }),
        [
            "systemd READY=1 STATUS=1/1 workers ready, generation 1",
            "started"
        ]
    );
    assert!(sim.logged("worker ready (check succeeded)"));
}

#[test]
fn a_failed_probe_spawn_is_retried_an_interval_later_not_at_once() {
    let mut spec = spec(1);
    spec.ready = ReadyMode::Probe {
        argv: vec!["/test/probe".into()],
        interval: ms(200),
        timeout: ms(100),
    };
    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    sim.after(ms(200));
    sim.input(Input::ProbeFailed {
        worker: 1,
        error: "could not start: Too many open files (os error 24)".into(),
    });
    assert_eq!(sim.next_in_ms(), Some(200));
}

#[test]
fn a_crashing_worker_is_restarted_with_doubling_delays_and_called_crash_looping() {
    let mut sim = serving(spec(1), policy());
    // Dies after being ready: restarted after the first delay.
    assert_eq!(sim.exited(1, 1), Vec::<String>::new());
    assert!(sim.logged("worker died: exited with code 1"));
    let mut delays = Vec::new();
    let mut worker = 2;
    for failure in 1..=6u32 {
        let waited = sim.next_in_ms().unwrap();
        delays.push(waited);
        assert_eq!(
            sim.after(ms(waited as u64 - 1)),
            Vec::<String>::new(),
            "not before its delay"
        );
        assert_eq!(sim.after(ms(1)), [format!("spawn w{worker} g1/0")]);
        sim.spawned(worker);
        let lines = sim.exited(worker, 1);
        if failure + 1 >= 5 {
            assert_eq!(
                lines,
                [format!(
                    "systemd STATUS=crash-looping: worker 0 failed {} times in a row; \
                     0/1 workers ready, generation 1",
                    failure + 1
                )]
            );
        } else {
            assert_eq!(lines, Vec::<String>::new());
        }
        worker += 1;
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200]);
    assert!(sim.logged("crash-looping: 5 failures in a row; restarting in 1.6s"));
    // Status says so too (issue 13, item 10).
    let status = sim.core.snapshot(sim.now);
    let looping = &status.generations[0].workers[0];
    assert!(looping.crash_looping, "{looping:?}");
    assert_eq!(looping.failures_in_a_row, 7);
    // Ready for at least backoff_reset: the next failure starts again at the first delay.
    sim.after(ms(6_400));
    sim.spawned(worker);
    sim.ready(worker);
    assert!(sim.core.snapshot(sim.now).generations[0].workers[0].crash_looping);
    sim.after(ms(10_000));
    let worker_status = &sim.core.snapshot(sim.now).generations[0].workers[0];
    assert!(
        !worker_status.crash_looping,
        "ready long enough: {worker_status:?}"
    );
    sim.exited(worker, 1);
    assert_eq!(sim.next_in_ms(), Some(100));
}

#[test]
fn a_restart_that_cannot_spawn_backs_off_like_a_crash() {
    let mut sim = serving(spec(1), policy());
    sim.exited(1, 1);
    sim.after(ms(100));
    assert_eq!(
        sim.input(Input::SpawnFailed {
            worker: 2,
            error: "Resource temporarily unavailable (os error 11)".into()
        }),
        Vec::<String>::new()
    );
    assert_eq!(sim.next_in_ms(), Some(200));
    assert!(sim.logged("could not start worker: Resource temporarily unavailable"));
}

/// Issue 13, item 3: a worker that says STOPPING=1 is replaced at once, and gets its stop
/// signal (then the drain timeout) once the replacement is ready, never a bare SIGKILL.
#[test]
fn a_worker_going_offline_gets_its_stop_signal_once_its_replacement_is_ready() {
    let mut sim = serving(spec(2), policy());
    assert_eq!(sim.notify(1, "STOPPING=1"), ["spawn w3 g1/0"]);
    assert!(sim.logged("worker is going offline; starting its replacement"));
    assert_eq!(
        sim.next_in_ms(),
        None,
        "it keeps serving meanwhile, with no deadline"
    );
    sim.spawned(3);
    assert_eq!(
        sim.ready(3),
        [
            "signal w1 SIGTERM",
            "systemd STATUS=2/2 workers ready, generation 1"
        ]
    );
    assert_eq!(sim.next_in_ms(), Some(3_000), "the drain timeout");
    assert_eq!(sim.exited(1, 0), Vec::<String>::new());
    assert!(sim.logged("worker stopped: exited with code 0"));
    assert!(!sim.logged("did not stop in time"));
}

#[test]
fn a_worker_going_offline_whose_replacement_crashes_waits_for_the_next_one() {
    let mut sim = serving(spec(1), policy());
    sim.notify(1, "STOPPING=1");
    sim.spawned(2);
    assert_eq!(
        sim.exited(2, 1),
        Vec::<String>::new(),
        "restarted after 100ms"
    );
    assert_eq!(sim.after(ms(100)), ["spawn w3 g1/0"]);
    sim.spawned(3);
    assert_eq!(only(&sim.ready(3), "signal"), ["signal w1 SIGTERM"]);
}

#[test]
fn stopping_before_the_first_generation_serves_fails_the_start() {
    let (mut sim, _) = Sim::start(spec(2), policy());
    sim.spawned_all(&[1, 2]);
    let lines = sim.notify(1, "STOPPING=1");
    assert_eq!(lines[0], "signal w1 SIGTERM");
    sim.exited_all(&[1, 2]);
    assert_eq!(
        sim.finished(),
        Some(Outcome::StartFailed(
            "worker 0: it said STOPPING=1 before its generation served".into()
        ))
    );
}

#[test]
fn with_notify_access_main_only_the_worker_itself_may_say_ready() {
    let mut spec = spec(1);
    spec.notify_main_only = true;
    let (mut sim, _) = Sim::start(spec, policy());
    sim.spawned(1);
    let child = sim.input(Input::Notify {
        worker: 1,
        sender_pid: 4242,
        sender: Sender::Descendant,
        payload: b"READY=1".to_vec(),
    });
    assert_eq!(child, Vec::<String>::new());
    assert!(sim.logged("ignored a notification from pid 4242: only the worker's own pid"));
    assert_eq!(
        sim.ready(1),
        [
            "systemd READY=1 STATUS=1/1 workers ready, generation 1",
            "started"
        ]
    );
}

/// Issue 13, item 2: with `notify_access = "all"`, the worker's own processes may notify,
/// strangers (any process of the same uid) may not: a forged READY=1 would finish a reload
/// with a generation that never serves, a forged STOPPING=1 retire a healthy worker.
#[test]
fn strangers_cannot_make_a_worker_ready_or_retire_it() {
    let (mut sim, _) = Sim::start(spec(2), policy());
    sim.spawned_all(&[1, 2]);
    let forged = |sim: &mut Sim, worker, text: &str| {
        sim.input(Input::Notify {
            worker,
            sender_pid: 666,
            sender: Sender::Stranger,
            payload: text.as_bytes().to_vec(),
        })
    };
    assert_eq!(forged(&mut sim, 1, "READY=1"), Vec::<String>::new());
    assert!(sim.logged("ignored a notification from pid 666: it is neither the worker"));
    assert_eq!(sim.ready(1), Vec::<String>::new(), "1 of 2");
    // A child of the worker may say it.
    let by_child = sim.input(Input::Notify {
        worker: 2,
        sender_pid: 2002,
        sender: Sender::Descendant,
        payload: b"READY=1".to_vec(),
    });
    assert!(by_child.contains(&"started".to_string()), "{by_child:?}");
    assert_eq!(forged(&mut sim, 2, "STOPPING=1"), Vec::<String>::new());
    assert!(!sim.core.model.workers[&2].retiring);
}

/// Issue 13, item 4: a flood of bad datagrams logs its first one, then a count every 10 s,
/// and a last count when the worker goes; the loop wakes only while there is a count to give.
#[test]
fn dropped_notifications_are_counted_not_logged_one_by_one() {
    let (mut sim, _) = Sim::start(spec(1), policy());
    sim.spawned(1);
    sim.ready(1);
    assert_eq!(sim.next_in_ms(), None);
    for _ in 0..100_000 {
        sim.notify(1, "READY=1\0junk");
    }
    for _ in 0..5 {
        sim.input(Input::NotifyDropped {
            worker: 1,
            sender_pid: Some(1001),
            reason: "larger than 4096 bytes",
            fds_closed: 0,
        });
    }
    let warnings = sim.messages(Level::Warn);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("dropped a notification: "));
    assert_eq!(sim.next_in_ms(), Some(10_000));
    sim.after(ms(10_000));
    assert_eq!(
        sim.messages(Level::Warn).last().copied(),
        Some(
            "100004 more notifications dropped in the last 10.0s; the last: dropped a \
             notification from pid 1001: larger than 4096 bytes"
        )
    );
    // Quiet for a window: the next drop is logged in full again, and nothing is due.
    sim.after(ms(10_000));
    assert_eq!(sim.next_in_ms(), None);
    sim.notify(1, "");
    assert_eq!(sim.messages(Level::Warn).len(), 3);
    sim.notify(1, "");
    sim.exited(1, 0);
    assert!(sim.logged("1 more notifications dropped in the last 10.0s"));
}

#[test]
fn scale_adds_workers_at_once_and_stops_the_ones_it_removes() {
    let mut sim = serving(spec(2), policy());
    let client = sim.client();
    assert_eq!(
        sim.control(client, Request::Scale { count: 4 }),
        [
            "spawn w3 g1/2",
            "spawn w4 g1/3",
            "systemd STATUS=2/4 workers ready, generation 1",
            "reply c1 ok: scaling to 4 workers"
        ]
    );
    sim.up(&[3, 4]);
    assert_eq!(
        sim.control(client, Request::Scale { count: 1 }),
        [
            "signal w2 SIGTERM",
            "signal w3 SIGTERM",
            "signal w4 SIGTERM",
            "systemd STATUS=1/1 workers ready, generation 1",
            "reply c1 ok: scaling to 1 workers"
        ]
    );
    // Removed workers are not restarted when they go.
    assert_eq!(sim.exited_all(&[2, 3, 4]), Vec::<String>::new());
    for bad in [0, 1025] {
        assert_eq!(
            sim.control(client, Request::Scale { count: bad }),
            [format!(
                "reply c1 error: worker count must be between 1 and 1024, got {bad}"
            )]
        );
    }
}

#[test]
fn watchdog_pings_only_while_enough_serving_workers_are_ready() {
    let (mut sim, start) = Sim::start_with(spec(2), policy(), Some(ms(10_000)), 2);
    assert_eq!(start[0], "systemd WATCHDOG=1");
    // While starting, the loop running is enough.
    assert_eq!(sim.next_in_ms(), Some(5_000));
    sim.spawned_all(&[1, 2]);
    assert_eq!(sim.after(ms(5_000)), ["systemd WATCHDOG=1"]);
    sim.ready_all(&[1, 2]);
    assert_eq!(sim.after(ms(5_000)), ["systemd WATCHDOG=1"]);
    sim.exited(1, 1);
    assert_eq!(sim.next_in_ms(), Some(100), "the restart comes first");
    sim.after(ms(100));
    assert_eq!(sim.after(ms(4_900)), Vec::<String>::new(), "1 of 2 ready");
    assert!(sim.logged("fewer than 2 workers ready and healthy: not sending WATCHDOG=1"));
    sim.spawned(3);
    sim.ready(3);
    assert_eq!(sim.after(ms(5_000)), ["systemd WATCHDOG=1"]);
}

#[test]
fn status_shows_generations_workers_and_why_a_slot_restarted() {
    let mut sim = serving(spec(2), policy());
    sim.after(ms(1_500));
    sim.exited(2, 7);
    let client = sim.client();
    let status = sim.core.handle(
        sim.now,
        Input::Control {
            client,
            request: Request::Status,
        },
    );
    let Some(Action::Reply {
        response: Response::Status { status },
        ..
    }) = status
        .into_iter()
        .find(|a| matches!(a, Action::Reply { .. }))
    else {
        panic!("no status reply");
    };
    assert_eq!(status.status, "1/2 workers ready, generation 1");
    assert_eq!(status.uptime_ms, 1_500);
    let generation = &status.generations[0];
    assert_eq!((generation.generation, generation.count), (1, 2));
    let worker = &generation.workers[0];
    assert_eq!(worker.pid, Some(1001));
    assert_eq!(worker.ready_for_ms, Some(1_500));
    let restarting = &generation.workers[1];
    assert_eq!((restarting.index, restarting.pid), (1, None));
    assert_eq!(restarting.restarts, 1);
    assert_eq!(restarting.last_exit.as_deref(), Some("exited with code 7"));
}

#[test]
fn sigusr2_dumps_at_most_once_a_second() {
    let mut sim = serving(spec(1), policy());
    assert_eq!(sim.input(Input::Dump), ["dump"]);
    assert_eq!(sim.input(Input::Dump), Vec::<String>::new());
    sim.after(ms(999));
    assert_eq!(sim.input(Input::Dump), Vec::<String>::new());
    sim.after(ms(1));
    assert_eq!(sim.input(Input::Dump), ["dump"]);
}

/// A worker's exit as the driver reports it: `signal` (or exit code 0 when `None`), and how
/// many processes of its cgroup the OOM killer killed.
fn died(sim: &mut Sim, worker: WorkerId, signal: Option<i32>, oom_kills: u64) -> Vec<String> {
    sim.input(Input::Exited {
        worker,
        status: match signal {
            Some(signal) => ExitStatus::Signaled {
                signal,
                core_dumped: false,
            },
            None => ExitStatus::Exited(1),
        },
        stderr_tail: Vec::new(),
        oom_kills,
    })
}

fn limited(count: u32) -> GenerationSpec {
    GenerationSpec {
        limits: handover_sys::cgroup::Limits {
            memory_max: Some(64 << 20),
            ..Default::default()
        },
        ..spec(count)
    }
}

#[test]
fn a_worker_the_oom_killer_ended_is_reported_as_such_and_replaced() {
    let mut sim = serving(limited(2), policy());
    assert_eq!(
        died(&mut sim, 1, Some(libc::SIGKILL), 1),
        ["systemd STATUS=1/2 workers ready, generation 1; worker 0 killed by the OOM killer at memory.max 64MiB"]
    );
    assert!(sim.logged("worker died: killed by the OOM killer at memory.max 64MiB"));
    let status = sim.core.snapshot(sim.now);
    let slot = status.generations[0]
        .workers
        .iter()
        .find(|w| w.index == 0)
        .unwrap();
    assert_eq!(
        slot.last_exit.as_deref(),
        Some("killed by the OOM killer at memory.max 64MiB")
    );
    // Replaced after the restart delay, while its sibling serves on.
    assert_eq!(sim.after(ms(100)), ["spawn w3 g1/0"]);
    sim.spawned(3);
    assert_eq!(
        sim.ready(3),
        ["systemd STATUS=2/2 workers ready, generation 1; worker 0 killed by the OOM killer at memory.max 64MiB"]
    );
    // A second one is counted.
    died(&mut sim, 2, Some(libc::SIGKILL), 1);
    assert!(sim
        .core
        .snapshot(sim.now)
        .status
        .contains("2 OOM kills, last: worker 1 killed by the OOM killer at memory.max 64MiB"));
}

#[test]
fn an_oom_kill_of_a_child_or_without_a_limit_says_what_it_was() {
    let mut sim = serving(spec(3), policy());
    // No memory_max: the OOM killer of the host (or a parent's limit).
    died(&mut sim, 1, Some(libc::SIGKILL), 1);
    assert!(sim.logged("worker died: killed by the OOM killer"));
    // The worker exited on its own after a child of it was killed.
    died(&mut sim, 2, None, 2);
    assert!(sim
        .logged("worker died: exited with code 1, after the OOM killer killed 2 of its processes"));
    // A SIGKILL with nothing counted is not blamed on the OOM killer.
    died(&mut sim, 3, Some(libc::SIGKILL), 0);
    assert!(sim.logged("worker died: killed by SIGKILL"));
    assert_eq!(sim.messages(Level::Warn).len(), 3);
}

#[test]
fn a_retiring_worker_the_oom_killer_ended_is_logged_by_that_cause() {
    let mut sim = serving(limited(1), policy());
    sim.reload();
    let lines = sim.resolved(1, limited(1), policy());
    assert_eq!(only(&lines, "spawn"), ["spawn w2 g2/0"]);
    sim.spawned(2);
    assert!(sim.ready(2).contains(&"signal w1 SIGTERM".to_string()));
    died(&mut sim, 1, Some(libc::SIGKILL), 1);
    assert!(
        sim.logged("worker stopped: killed by the OOM killer at memory.max 64MiB"),
        "{:#?}",
        sim.messages(Level::Info)
    );
}
