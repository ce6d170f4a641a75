//! Stopping handover: the stop signal to every worker, SIGKILL at the timeout, the fourth
//! signal, and a stop that meets a reload.

use super::*;

#[test]
fn stop_signals_every_worker_and_ends_when_the_last_is_gone() {
    let mut sim = serving(spec(2), policy());
    assert_eq!(
        sim.input(Input::Stop("SIGTERM")),
        [
            "systemd STOPPING=1 STATUS=stopping",
            "systemd EXTEND_TIMEOUT 10s",
            "signal w1 SIGTERM",
            "signal w2 SIGTERM"
        ]
    );
    assert!(sim.logged("SIGTERM: stopping"));
    sim.exited(1, 0);
    assert_eq!(sim.finished(), None);
    // A worker that exits while stopping is not restarted.
    assert_eq!(sim.exited(2, 0), Vec::<String>::new());
    assert_eq!(sim.finished(), Some(Outcome::Stopped));
}

#[test]
fn a_worker_that_ignores_its_stop_signal_is_killed_at_the_stop_timeout() {
    let mut spec = spec(1);
    spec.stop_signal = libc::SIGINT;
    let mut sim = serving(spec, policy());
    assert_eq!(
        only(&sim.input(Input::Stop("SIGTERM")), "signal"),
        ["signal w1 SIGINT"]
    );
    assert_eq!(sim.next_in_ms(), Some(5_000));
    assert_eq!(sim.after(ms(4_999)), Vec::<String>::new());
    assert_eq!(sim.after(ms(1)), ["kill w1"]);
    assert!(sim.logged("worker did not stop in time; sending SIGKILL to its process group"));
    // Further signals change nothing but counting, until the fourth.
    assert_eq!(sim.input(Input::Stop("SIGTERM")), Vec::<String>::new());
    assert!(sim.logged("SIGTERM again (2 of 4): already stopping"));
    assert_eq!(sim.finished(), None);
}

#[test]
fn the_fourth_stop_signal_kills_everything_at_once() {
    let mut sim = serving(spec(2), policy());
    for _ in 0..3 {
        sim.input(Input::Stop("SIGINT"));
    }
    assert_eq!(sim.finished(), None);
    assert_eq!(sim.input(Input::Stop("SIGINT")), ["kill w1", "kill w2"]);
    assert!(sim.logged("4 stop signals in a row: killing every worker now"));
    assert_eq!(sim.finished(), Some(Outcome::Forced));
}

#[test]
fn stop_during_a_reload_gives_it_up_and_stops_both_generations() {
    let mut sim = serving(spec(1), policy());
    let (client, _) = sim.reload();
    sim.resolved(1, spec(1), policy());
    sim.spawned(2);
    let admin = sim.client();
    assert_eq!(
        sim.control(admin, Request::Stop),
        [
            format!("reply c{admin} stopping"),
            format!("reply c{client} failed: handover is stopping"),
            "systemd STOPPING=1 STATUS=stopping".into(),
            "systemd EXTEND_TIMEOUT 10s".into(),
            "signal w1 SIGTERM".into(),
            "signal w2 SIGTERM".into(),
        ]
    );
    assert!(sim.logged("reload aborted: handover is stopping"));
    // The new worker's READY=1 now changes nothing.
    assert_eq!(sim.ready(2), Vec::<String>::new());
    sim.exited_all(&[1, 2]);
    assert_eq!(sim.finished(), Some(Outcome::Stopped));
}

#[test]
fn stop_while_the_plan_is_made_drops_the_plan() {
    let mut sim = serving(spec(1), policy());
    sim.reload();
    sim.input(Input::Stop("SIGTERM"));
    assert_eq!(sim.resolved(1, spec(1), policy()), Vec::<String>::new());
    sim.exited(1, 0);
    assert_eq!(sim.finished(), Some(Outcome::Stopped));
}

#[test]
fn a_worker_waiting_to_restart_is_dropped_and_one_being_spawned_is_stopped_once_it_exists() {
    let mut sim = serving(spec(2), policy());
    sim.exited(1, 1); // waits 100ms to restart
    let lines = sim.input(Input::Stop("SIGTERM"));
    assert_eq!(only(&lines, "signal"), ["signal w2 SIGTERM"]);
    assert_eq!(
        sim.after(ms(100)),
        Vec::<String>::new(),
        "no restart while stopping"
    );
    sim.exited(2, 0);
    assert_eq!(sim.finished(), Some(Outcome::Stopped));

    let mut sim = serving(spec(1), policy());
    let client = sim.client();
    sim.control(client, Request::Scale { count: 2 }); // w2 is being spawned
    let lines = sim.input(Input::Stop("SIGTERM"));
    assert_eq!(only(&lines, "signal"), ["signal w1 SIGTERM"]);
    assert_eq!(sim.spawned(2), ["signal w2 SIGTERM"]);
    sim.exited_all(&[1, 2]);
    assert_eq!(sim.finished(), Some(Outcome::Stopped));
}
