//! Steered reloads: the selector moves only at the end of a reload, the old generation is
//! stopped only once its queue has stayed empty, and aborts and stops behave.

use super::*;

fn queued(sim: &mut Sim, generation: u64, waiting: u32) -> Vec<String> {
    sim.input(Input::Queued {
        generation,
        waiting,
    })
}

/// A steered generation 1 (w1, w2) serving, and a reload to a steered generation 2 (w3, w4)
/// whose workers are spawned and w3 ready.
fn steered_reload(policy: ReloadPolicy) -> Sim {
    let mut sim = serving(steered_spec(2, "g1"), policy.clone());
    sim.reload();
    sim.resolved(1, steered_spec(2, "g2"), policy);
    sim.spawned_all(&[3, 4]);
    sim.ready(3);
    sim
}

#[test]
fn the_old_generation_gets_its_stop_signal_only_once_its_queue_stayed_empty() {
    let mut sim = steered_reload(policy());
    let lines = sim.ready(4);
    assert_eq!(
        lines,
        [
            "reply c1 progress: 2/2 ready in generation 2",
            "systemd STATUS=2/2 ready in generation 2",
            "steer to g2",
            "reply c1 progress: draining generation 1",
            "systemd STATUS=draining generation 1",
            "systemd READY=1 STATUS=2/2 workers ready, generation 2",
            "reply c1 done: 2"
        ],
        "new connections go to generation 2 first; nobody is told to stop yet"
    );
    assert_eq!(sim.after(ms(0)), ["measure g1 g1"]);
    // Connections still wait: the old workers take them, untouched.
    assert_eq!(queued(&mut sim, 1, 3), Vec::<String>::new());
    assert_eq!(sim.next_in_ms(), Some(10));
    assert_eq!(sim.after(ms(10)), ["measure g1 g1"]);
    assert_eq!(
        queued(&mut sim, 1, 0),
        Vec::<String>::new(),
        "empty: the grace starts"
    );
    for _ in 0..19 {
        assert_eq!(sim.after(ms(10)), ["measure g1 g1"]);
        assert_eq!(queued(&mut sim, 1, 0), Vec::<String>::new());
    }
    // A handshake in flight arrived: the grace starts again.
    sim.after(ms(10));
    assert_eq!(queued(&mut sim, 1, 1), Vec::<String>::new());
    for _ in 0..20 {
        sim.after(ms(10));
        assert_eq!(queued(&mut sim, 1, 0), Vec::<String>::new());
    }
    sim.after(ms(10));
    assert_eq!(
        queued(&mut sim, 1, 0),
        ["signal w1 SIGTERM", "signal w2 SIGTERM"],
        "200 ms without a connection waiting"
    );
    // One second later, workers still there are woken in case they wait in accept().
    assert_eq!(sim.after(ms(1_000)), ["wake 2 on g1"]);
    sim.exited(1, 0);
    assert_eq!(sim.after(ms(1_000)), ["wake 1 on g1"]);
    sim.exited(2, 0);
    assert!(sim.logged("generation draining has no workers left"));
    assert_eq!(sim.next_in_ms(), None, "nothing more to do");
}

#[test]
fn old_workers_that_never_empty_their_queue_are_stopped_after_a_while() {
    let mut sim = steered_reload(policy());
    sim.ready(4);
    let mut stopped = Vec::new();
    for _ in 0..600 {
        sim.after(ms(10));
        stopped = queued(&mut sim, 1, 5);
        if !stopped.is_empty() {
            break;
        }
    }
    assert_eq!(stopped, ["signal w1 SIGTERM", "signal w2 SIGTERM"]);
    assert!(sim.logged("5 connection(s) still wait for the old workers after 5.0s"));
}

#[test]
fn an_aborted_steered_reload_never_moves_the_selector() {
    let mut sim = steered_reload(policy());
    let lines = sim.exited(4, 1);
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("steer") || l.starts_with("share")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"signal w3 SIGTERM".to_string()),
        "{lines:?}"
    );
    // The old generation is never handed over.
    assert!(only(&sim.after(ms(60_000)), "measure").is_empty());
}

#[test]
fn a_ready_canary_gets_its_share_and_loses_it_when_it_fails() {
    let canary = ReloadPolicy {
        canary: true,
        canary_share: 10,
        ..policy()
    };
    let mut sim = serving(steered_spec(3, "g1"), canary.clone());
    sim.reload();
    sim.resolved(1, steered_spec(3, "g2"), canary);
    sim.spawned(4);
    let lines = sim.ready(4);
    assert_eq!(only(&lines, "share"), ["share 10% to g2"]);
    assert_eq!(only(&lines, "spawn"), ["spawn w5 g2/1", "spawn w6 g2/2"]);
    sim.spawned_all(&[5, 6]);
    // The canary dies: the reload is aborted and everything goes back to generation 1.
    let lines = sim.exited(4, 1);
    assert_eq!(only(&lines, "steer"), ["steer to g1"]);
}

#[test]
fn a_rolling_reload_gives_the_new_generation_its_ready_workers_share() {
    let rolling = ReloadPolicy {
        batch_size: Some(1),
        max_extra: 1,
        ..policy()
    };
    let mut sim = serving(steered_spec(2, "g1"), rolling.clone());
    sim.reload();
    sim.resolved(1, steered_spec(2, "g2"), rolling);
    sim.spawned(3);
    assert_eq!(only(&sim.ready(3), "share"), ["share 50% to g2"]);
    sim.exited(1, 0);
    sim.spawned(4);
    assert_eq!(
        only(&sim.ready(4), "s"),
        [
            "systemd STATUS=2/2 ready in generation 2",
            "steer to g2",
            "systemd STATUS=draining generation 1",
            "systemd READY=1 STATUS=2/2 workers ready, generation 2",
        ]
    );
}

#[test]
fn a_stop_while_handing_over_stops_everyone_at_once() {
    let mut sim = steered_reload(policy());
    sim.ready(4);
    sim.after(ms(0));
    let lines = sim.input(Input::Stop("SIGTERM"));
    assert_eq!(
        only(&lines, "signal"),
        [
            "signal w1 SIGTERM",
            "signal w2 SIGTERM",
            "signal w3 SIGTERM",
            "signal w4 SIGTERM"
        ]
    );
    // A measurement that was on its way changes nothing.
    assert_eq!(queued(&mut sim, 1, 0), Vec::<String>::new());
    assert!(only(&sim.after(ms(10)), "measure").is_empty());
}

#[test]
fn a_shared_old_generation_is_stopped_at_once_as_before() {
    let mut sim = serving(spec(2), policy());
    sim.reload();
    sim.resolved(1, spec(2), policy());
    sim.up(&[3, 4]);
    assert!(sim.after(ms(0)).is_empty());
    // (the signals came with the last READY=1, as the all-at-once test shows)
    assert!(sim.core.model.workers[&1].retiring);
}
