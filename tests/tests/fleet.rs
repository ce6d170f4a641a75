//! docs/fleet.md's gates, against a real handover: the exit status of `handover reload` and
//! the jq filter over `handover status --json` that the page gives, taken from the page
//! itself, so that what a rollout trusts is what handover does.

use std::process::{Command, Stdio};

use handover_tests::harness::{self, Handover, Options};

/// The first ```jq block of docs/fleet.md.
fn gate_filter() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fleet.md");
    let text = std::fs::read_to_string(&path).expect("read docs/fleet.md");
    let start = text.find("```jq\n").expect("docs/fleet.md has a jq block") + "```jq\n".len();
    let end = start + text[start..].find("```").expect("the jq block ends");
    text[start..end].to_string()
}

/// Runs the gate with `$gen`; whether jq -e says true.
fn gate(h: &Handover, generation: u64) -> bool {
    let (status, out, err) = h.ctl(&["status", "--json"]);
    assert!(status.success(), "status: {out}{err}");
    let mut jq = Command::new("jq")
        .args([
            "-e",
            "--argjson",
            "gen",
            &generation.to_string(),
            &gate_filter(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jq (package jq)");
    use std::io::Write;
    jq.stdin.take().unwrap().write_all(out.as_bytes()).unwrap();
    let result = jq.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.is_empty(), "jq: {stderr}");
    match result.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("jq exited {other:?}: the filter is broken"),
    }
}

const GOOD: &str = r#"
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"

[worker]
command = ["{http}"]
count = 2
"#;

#[test]
fn the_documented_gates_pass_after_a_good_reload_and_fail_after_an_aborted_one() {
    let port = harness::free_port().to_string();
    let good = GOOD.replace("{port}", &port);
    let h = Handover::start("fleet-gates", &good, Options::default());
    h.log.wait_for("all 2 workers ready");
    assert!(
        gate(&h, 1),
        "the gate fails on a handover that serves generation 1"
    );
    assert!(
        !gate(&h, 2),
        "the gate passes for a generation that does not exist"
    );

    let (status, out, err) = h.ctl(&["reload"]);
    assert_eq!(status.code(), Some(0), "{out}{err}");
    assert!(gate(&h, 2), "the gate fails after a reload that worked");

    // A release whose workers die before they are ready: the reload exits 6 and the gate
    // for the generation it would have made fails, while generation 2 serves on.
    h.rewrite_config(&good.replace(
        "command = [\"{http}\"]",
        "command = [\"sh\", \"-c\", \"exit 1\"]",
    ));
    let (status, out, err) = h.ctl(&["reload"]);
    assert_eq!(status.code(), Some(6), "{out}{err}");
    assert!(!gate(&h, 3), "the gate passes after an aborted reload");
    assert!(
        gate(&h, 2),
        "the old generation no longer passes after an aborted reload"
    );

    // A configuration that no longer parses: exit 3 from --config, before anything is sent.
    std::fs::write(&h.config, "[worker]\ncount = 2\n").unwrap();
    let (status, out, err) =
        harness::run_handover(&["reload", "--config", h.config.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(3), "{out}{err}");
    // Through the control socket the same file is refused by handover itself: exit 6.
    let (status, out, err) = h.ctl(&["reload"]);
    assert_eq!(status.code(), Some(6), "{out}{err}");
    assert!(gate(&h, 2));
}
