//! Issue 3: reload strategies (all at once, rolling, canary), rolling aborts, and socket
//! changes on reload. Reloads are driven with `handover reload`, which waits for the outcome.

use std::collections::BTreeSet;

use handover_tests::harness::{self, wait_gone, Handover, Options};

fn serving_pids(h: &Handover) -> BTreeSet<i64> {
    let status = h.status_json();
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "serving")
        .flat_map(|g| {
            g["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|w| w["pid"].as_i64())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The log lines of starts and stops, in order, to replay how many workers were alive.
fn max_alive_during_reload(log: &str) -> usize {
    let mut alive: i64 = 0;
    let mut max = 0;
    let mut in_reload = false;
    for line in log.lines() {
        if line.contains("spawning generation 2") {
            in_reload = true;
        }
        if line.contains("worker started") {
            alive += 1;
        } else if line.contains("worker stopped") || line.contains("worker died") {
            alive -= 1;
        }
        if in_reload {
            max = max.max(alive);
        }
        if line.contains("reload done") {
            break;
        }
    }
    max as usize
}

const ROLLING: &str = r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "100"]
count = 4

[reload]
strategy = "rolling"
batch_size = 1
max_extra = 1
drain_timeout = "5s"
"#;

/// Rolling with batch 1 and max_extra 1: never more than 5 workers alive, every old worker
/// replaced, `reload` exits 0.
#[test]
fn rolling_reload_stays_within_max_extra() {
    let h = Handover::start("rolling", ROLLING, Options::default());
    h.log.wait_for("all 4 workers ready");
    let before = serving_pids(&h);
    let (st, out, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{out}\n{err}\n{}", h.log.text());
    assert!(out.contains("reload done: generation 2 serves"), "{out}");
    let after = serving_pids(&h);
    assert_eq!(after.len(), 4);
    assert!(after.is_disjoint(&before), "every worker was replaced");
    wait_gone(&before.iter().map(|&p| p as i32).collect::<Vec<_>>());
    let max = max_alive_during_reload(&h.log.text());
    assert!(
        max <= 5,
        "at most count + max_extra workers alive, saw {max}\n{}",
        h.log.text()
    );
}

/// A rolling reload whose new workers crash is aborted, and the old generation is back to
/// its full count.
#[test]
fn aborted_rolling_reload_restores_the_old_generation() {
    let h = Handover::start("rolling-abort", ROLLING, Options::default());
    h.log.wait_for("all 4 workers ready");
    // The second new worker fails: by then one old worker has been retired.
    let broken = ROLLING.replace(
        r#"command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "100"]"#,
        r#"command = ["sh", "-c", "if [ \"$HANDOVER_WORKER\" = 1 ]; then exit 9; fi; exec '{worker}' --ready-after 100"]"#,
    );
    h.rewrite_config(&broken);
    let (st, _, err) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(
        err.contains("aborted") && err.contains("exited with code 9"),
        "{err}"
    );
    let deadline = std::time::Instant::now() + harness::GUARD;
    loop {
        let status = h.status_json();
        let serving = status["generations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["state"] == "serving")
            .cloned()
            .unwrap();
        assert_eq!(serving["generation"], 1, "generation 1 still serves");
        let ready = serving["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready" && w["retiring"] == false)
            .count();
        if ready == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old generation not back to 4 ready workers: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// With a canary, one new worker starts alone; the rest start only once it is ready.
#[test]
fn canary_starts_alone() {
    let h = Handover::start(
        "canary",
        r#"
[worker]
command = ["{worker}", "--ready-after", "200"]
count = 3

[reload]
canary = true
"#,
        Options::default(),
    );
    h.log.wait_for("all 3 workers ready");
    let (st, out, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{out}{err}");
    let log = h.log.text();
    let canary_at = log
        .find("starting a canary worker in generation 2")
        .expect("canary announced");
    let after_canary = &log[canary_at..];
    let first_ready = after_canary
        .find("1/3 ready in generation 2")
        .expect("canary ready");
    let started_before_ready = after_canary[..first_ready]
        .matches("worker started generation=2")
        .count();
    assert_eq!(
        started_before_ready, 1,
        "only the canary starts before it is ready:\n{after_canary}"
    );
}

/// A failing canary aborts the reload without starting the others.
#[test]
fn failing_canary_aborts_early() {
    let h = Handover::start(
        "canary-fail",
        r#"
[worker]
command = ["{worker}", "--ready-after", "50"]
count = 3

[reload]
canary = true
"#,
        Options::default(),
    );
    h.log.wait_for("all 3 workers ready");
    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace(r#""--ready-after", "50""#, r#""--exit-after", "0", "4""#);
    std::fs::write(&h.config, text).unwrap();
    let (st, _, err) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert_eq!(
        h.log.count("worker started generation=2"),
        1,
        "{}",
        h.log.text()
    );
}

/// Self-bound sockets can be added on reload (the new generation gets them, in config
/// order) and removed (closed once no generation uses them).
#[test]
fn reload_adds_and_removes_self_bound_sockets() {
    let (p1, p2) = (harness::free_port(), harness::free_port());
    let config = |sockets: &str| {
        format!(
            r#"{sockets}
[worker]
command = ["{{worker}}", "--report", "{{dir}}/reports", "--ready-after", "0"]

[reload]
drain_timeout = "2s"
"#
        )
    };
    let one = format!("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:{p1}\"\n");
    let two = format!("{one}\n[[socket]]\nname = \"b\"\nlisten = \"127.0.0.1:{p2}\"\n");
    let h = Handover::start("socket-change", &config(&one), Options::default());
    h.reports(1);
    let write = |text: &str| h.rewrite_config(text);
    write(&config(&two));
    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    let reports = h.reports(2);
    let newest = reports
        .values()
        .max_by_key(|r| {
            r["env"]["HANDOVER_GENERATION"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .unwrap();
    assert_eq!(newest["env"]["LISTEN_FDNAMES"], "a:b");
    std::net::TcpStream::connect(("127.0.0.1", p2)).expect("the added socket listens");

    write(&config(&one));
    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    // Once generation 2 has drained away, nobody holds socket b any more.
    h.log
        .wait_for("generation draining has no workers left generation=2");
    std::net::TcpListener::bind(("127.0.0.1", p2)).expect("the removed socket was closed");
    std::net::TcpStream::connect(("127.0.0.1", p1)).expect("socket a still listens");

    // Moving socket a: the new generation gets the new address; the old one closes after the
    // old generation has drained.
    let p3 = harness::free_port();
    write(&config(&format!(
        "[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:{p3}\"\n"
    )));
    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    let reports = h.reports(4);
    let newest = reports
        .values()
        .find(|r| r["env"]["HANDOVER_GENERATION"] == "4")
        .expect("generation 4 report");
    assert_eq!(
        newest["sockets"][0]["local"].as_str(),
        Some(format!("127.0.0.1:{p3}").as_str())
    );
    h.log
        .wait_for("generation draining has no workers left generation=3");
    std::net::TcpListener::bind(("127.0.0.1", p1)).expect("the old address was closed");
}

/// Sockets from systemd cannot be added by a reload: the reload fails with an explanation and
/// nothing changes.
#[test]
fn reload_refuses_a_new_systemd_socket() {
    let port = harness::free_port();
    let h = Handover::start(
        "socket-systemd",
        r#"
[[socket]]
name = "http"
from_systemd = true

[worker]
command = ["{worker}", "--ready-after", "0"]
"#,
        Options {
            activate: vec![(format!("127.0.0.1:{port}"), "http".into())],
            ..Default::default()
        },
    );
    h.log.wait_for("all 1 workers ready");
    let text = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        text.replacen(
            "[worker]",
            "[[socket]]\nname = \"extra\"\nfrom_systemd = true\n\n[worker]",
            1,
        ),
    )
    .unwrap();
    let (st, _, err) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(
        err.contains("sockets from systemd change only with a restart"),
        "{err}"
    );
    assert_eq!(h.status_json()["generations"][0]["generation"], 1);
}

/// A worker restarted inside a generation runs that generation's resolved command and
/// environment, not whatever the configuration file says now.
#[test]
fn respawns_use_their_generations_spec() {
    let template = |greeting: &str| {
        format!(
            r#"
[worker]
command = ["{{worker}}", "--report", "{{dir}}/reports", "--ready-after", "0"]
env = {{ GREETING = "{greeting}" }}
restart_backoff_initial = "10ms"
"#
        )
    };
    let h = Handover::start("respawn-spec", &template("one"), Options::default());
    let first = h.reports(1);
    let write = |text: &str| h.rewrite_config(text);
    write(&template("two"));
    harness::kill(*first.keys().next().unwrap(), libc::SIGKILL);
    let all = h.reports(2);
    let respawned = all
        .iter()
        .find(|(pid, _)| !first.contains_key(pid))
        .map(|(_, r)| r.clone())
        .unwrap();
    assert_eq!(
        respawned["env"]["GREETING"], "one",
        "the restarted worker keeps generation 1's environment"
    );
    assert_eq!(respawned["env"]["HANDOVER_GENERATION"], "1");

    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    let all = h.reports(3);
    let newest = all
        .values()
        .find(|r| r["env"]["HANDOVER_GENERATION"] == "2")
        .unwrap();
    assert_eq!(newest["env"]["GREETING"], "two", "the reload read the file");
}

/// A SIGTERM in the middle of a SIGHUP storm is honoured: handover stops, and exits 0.
#[test]
fn sigterm_inside_a_sighup_storm_stops() {
    let mut h = Handover::start(
        "storm-stop",
        r#"
[worker]
command = ["{worker}", "--report", "{dir}/reports", "--ready-after", "50"]
count = 2
"#,
        Options::default(),
    );
    let pids: Vec<i32> = h.reports(2).keys().copied().collect();
    h.log.wait_for("all 2 workers ready");
    for _ in 0..2000 {
        h.signal(libc::SIGHUP);
    }
    h.signal(libc::SIGTERM);
    for _ in 0..2000 {
        h.signal(libc::SIGHUP);
    }
    assert!(h.wait().success(), "{}", h.log.text());
    wait_gone(&pids);
}

/// With max_draining = 1 and an old generation that does not go away, the next reload is
/// refused and says why; nothing else changes.
#[test]
fn max_draining_refuses_another_reload() {
    let h = Handover::start(
        "max-draining",
        r#"
[worker]
command = ["{worker}", "--ready-after", "0", "--ignore-term"]
stop_timeout = "1m"

[reload]
drain_timeout = "1m"
max_draining = 1
"#,
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    let (st, _, err) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(
        err.contains("1 generations are still draining (max_draining = 1)"),
        "{err}"
    );
    let status = h.status_json();
    let states: Vec<&str> = status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["draining", "serving"], "{status}");
}

/// Scenario 6 at scale: eight sockets from the real `systemd-socket-activate`, and twenty
/// reloads each listing them in another order, with fifty workers per generation: in every
/// one of the 1000 workers, fd 3+i is the socket LISTEN_FDNAMES names at position i.
#[test]
fn socket_permutations_hold_over_a_thousand_spawns() {
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let ports: Vec<u16> = (0..8).map(|_| harness::free_port()).collect();
    let address_of: std::collections::BTreeMap<String, String> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| (n.clone(), format!("127.0.0.1:{p}")))
        .collect();
    // A fixed pseudo-random sequence of permutations (a simple LCG: reproducible).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut permutation = |round: usize| -> Vec<String> {
        let mut order = names.clone();
        if round > 0 {
            for i in (1..order.len()).rev() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (seed >> 33) as usize % (i + 1));
            }
        }
        order
    };
    let config = |order: &[String]| {
        let sockets: String = order
            .iter()
            .map(|n| format!("[[socket]]\nname = \"{n}\"\nfrom_systemd = true\n\n"))
            .collect();
        format!(
            "{sockets}[worker]\ncommand = [\"{{worker}}\", \"--report\", \"{{dir}}/reports\", \"--ready-after\", \"0\"]\ncount = 50\n\n[reload]\ndrain_timeout = \"5s\"\nmax_draining = 64\n"
        )
    };
    let h = Handover::start(
        "permutations",
        &config(&permutation(0)),
        Options {
            activate: names
                .iter()
                .map(|n| (address_of[n].clone(), n.clone()))
                .collect(),
            ..Default::default()
        },
    );
    h.log.wait_for("all 50 workers ready");
    for round in 1..20 {
        h.rewrite_config(&config(&permutation(round)));
        let (st, _, err) = h.ctl(&["reload"]);
        assert!(st.success(), "round {round}: {err}");
    }
    let reports = h.reports(1000);
    assert_eq!(reports.len(), 1000);
    for (pid, report) in &reports {
        let fdnames: Vec<&str> = report["env"]["LISTEN_FDNAMES"]
            .as_str()
            .unwrap()
            .split(':')
            .collect();
        assert_eq!(fdnames.len(), 8, "worker {pid}");
        let sockets = report["sockets"].as_array().unwrap();
        for (i, name) in fdnames.iter().enumerate() {
            assert_eq!(sockets[i]["fd"].as_i64(), Some(3 + i as i64));
            assert_eq!(
                sockets[i]["local"].as_str(),
                Some(address_of[*name].as_str()),
                "worker {pid}: fd {} should be {name}",
                3 + i
            );
        }
        let fds: Vec<i64> = report["fds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["fd"].as_i64().unwrap())
            .collect();
        assert_eq!(
            fds,
            (0..11).collect::<Vec<i64>>(),
            "worker {pid}: exactly 0-2 and its 8 sockets"
        );
    }
}

/// Scenario 37: a storm of SIGUSR2 neither disturbs handover nor floods the disk with dumps.
#[test]
fn sigusr2_storm_is_harmless() {
    let h = Handover::start(
        "usr2-storm",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    for _ in 0..10_000 {
        h.signal(libc::SIGUSR2);
    }
    let (st, out, err) = h.ctl(&["status"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("1/1 workers ready"), "{out}");
    let dumps = std::fs::read_dir(h.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("handover-state-")
        })
        .count();
    assert!(
        (1..=3).contains(&dumps),
        "{dumps} dump files for a storm lasting well under a second or two"
    );
}

/// Towards systemd, a reload is RELOADING=1 with MONOTONIC_USEC= (newer systemd waits for
/// it), STATUS= per phase, then READY=1; an aborted one ends with READY=1 too.
#[test]
fn reload_is_reported_to_systemd() {
    let mut h = Handover::start(
        "reload-notify",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options {
            notify: true,
            ..Default::default()
        },
    );
    h.notify.as_mut().unwrap().wait_for("READY=1");
    let (st, _, err) = h.ctl(&["reload"]);
    assert!(st.success(), "{err}");
    let notify = h.notify.as_mut().unwrap();
    let reloading = notify.wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.wait_for("STATUS=spawning generation 2");
    let done = notify.wait_for("STATUS=1/1 workers ready, generation 2");
    assert!(done.lines().any(|l| l == "READY=1"), "{done}");

    let text = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace(r#""--ready-after", "0""#, r#""--exit-after", "0", "5""#);
    std::fs::write(&h.config, text).unwrap();
    notify.received.clear();
    let (st, _, _) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6));
    let notify = h.notify.as_mut().unwrap();
    let aborted = notify.wait_for("STATUS=reload aborted, generation 2 keeps serving");
    assert!(aborted.lines().any(|l| l == "READY=1"), "{aborted}");
}
