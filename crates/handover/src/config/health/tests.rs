//! `[health]`: kinds of check, their keys, and the numbers around them.

use std::path::Path;
use std::time::Duration;

use super::{HealthCheckConfig, HealthConfig};
use crate::config::tests::assert_err;
use crate::config::Config;

fn health(text: &str) -> Option<HealthConfig> {
    let text = format!("[worker]\ncommand = [\"app\"]\n{text}");
    Config::parse(Path::new("h.toml"), &text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .health
}

#[test]
fn health_checks_parse_with_their_defaults() {
    assert_eq!(health(""), None);
    assert_eq!(
        health("[health]\ncheck = \"http\"\n"),
        Some(HealthConfig {
            check: HealthCheckConfig::Http {
                socket: "health".into(),
                method: "GET".into(),
                path: "/".into(),
                status: 200,
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            failures: 3,
            max_replacing: 1,
        })
    );
    assert_eq!(
        health(
            "[health]\ncheck = \"http\"\nsocket = \"ok\"\nmethod = \"HEAD\"\npath = \"/ok?deep=1\"\n\
             status = 204\ninterval = \"1s\"\ntimeout = \"250ms\"\nfailures = 2\nmax_replacing = 4\n"
        ),
        Some(HealthConfig {
            check: HealthCheckConfig::Http {
                socket: "ok".into(),
                method: "HEAD".into(),
                path: "/ok?deep=1".into(),
                status: 204,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(250),
            failures: 2,
            max_replacing: 4,
        })
    );
    assert_eq!(
        health("[health]\ncheck = \"connect\"\n").map(|h| h.check),
        Some(HealthCheckConfig::Connect {
            socket: "health".into()
        })
    );
    assert_eq!(
        health("[health]\ncheck = \"command\"\ncommand = [\"/bin/ping-app\", \"-q\"]\n")
            .map(|h| h.check),
        Some(HealthCheckConfig::Command {
            argv: vec!["/bin/ping-app".into(), "-q".into()]
        })
    );
}

#[test]
fn health_errors() {
    let w = "[worker]\ncommand = [\"app\"]\n";
    let cases: Vec<(String, usize, usize, &[&str])> = vec![
        (
            format!("{w}[health]\ninterval = \"1s\"\n"),
            3,
            1,
            &[
                "health.check: missing",
                "\"http\", \"connect\" or \"command\"",
            ],
        ),
        (
            format!("{w}[health]\ncheck = \"tcp\"\n"),
            4,
            9,
            &["health.check: expected \"http\", \"connect\" or \"command\", got \"tcp\""],
        ),
        (
            format!("{w}[health]\ncheck = \"connect\"\npath = \"/ok\"\n"),
            5,
            8,
            &["health.path: only applies with check = \"http\" (check is \"connect\")"],
        ),
        (
            format!("{w}[health]\ncheck = \"command\"\nsocket = \"h\"\ncommand = [\"x\"]\n"),
            5,
            10,
            &["health.socket: only applies with check = \"http\" or \"connect\""],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\ncommand = [\"x\"]\n"),
            5,
            11,
            &["health.command: only applies with check = \"command\""],
        ),
        (
            format!("{w}[health]\ncheck = \"command\"\n"),
            3,
            1,
            &["health.command: missing", "runs a program"],
        ),
        (
            format!("{w}[health]\ncheck = \"command\"\ncommand = []\n"),
            5,
            11,
            &["health.command"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nsocket = \"a:b\"\n"),
            5,
            10,
            &["health.socket: the name must not contain ':'"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nmethod = \"get\"\n"),
            5,
            10,
            &["health.method: \"get\" is not an HTTP method"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\npath = \"ok\"\n"),
            5,
            8,
            &["health.path: a request path starts with '/'"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\npath = \"/o k\"\n"),
            5,
            8,
            &["health.path: a request path"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nstatus = 99\n"),
            5,
            10,
            &["health.status: must be between 100 and 599, got 99"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\ninterval = \"0s\"\n"),
            5,
            12,
            &["health.interval"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\ntimeout = \"-1s\"\n"),
            5,
            11,
            &["health.timeout"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nfailures = 0\n"),
            5,
            12,
            &["health.failures: must be between 1 and 100, got 0"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nmax_replacing = 0\n"),
            5,
            17,
            &["health.max_replacing: must be between 1 and 1024, got 0"],
        ),
        (
            format!("{w}[health]\ncheck = \"http\"\nretries = 3\n"),
            5,
            1,
            &["health.retries: unknown key", "`failures`"],
        ),
        (format!("{w}[worker.health]\n"), 3, 9, &["worker.health"]),
        (
            format!("{w}watchdog = \"0s\"\n"),
            3,
            12,
            &["worker.watchdog"],
        ),
    ];
    for (text, line, column, parts) in &cases {
        assert_err(text, *line, *column, parts);
    }
}
