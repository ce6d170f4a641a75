use super::*;

use std::path::Path;

const MIN: &str = "[worker]\ncommand = [\"app\"]\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected {text:?} to be valid, got: {e}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected {text:?} to be rejected, got {config:?}"),
        Err(e) => e,
    }
}

/// Asserts the error position and that the message contains every one of `parts`.
#[track_caller]
fn assert_err(text: &str, line: usize, column: usize, parts: &[&str]) {
    let e = err(text);
    assert_eq!(
        (e.line, e.column),
        (line, column),
        "position of {:?} for {text:?}",
        e.message
    );
    for part in parts {
        assert!(
            e.message.contains(part),
            "message {:?} lacks {part:?} (input {text:?})",
            e.message
        );
    }
    assert_eq!(e.path, Path::new("test.toml"));
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A scratch file path, unique per test.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handover-config-test-{}-{name}",
        std::process::id()
    ))
}

// ---------------------------------------------------------------------------------------------
// Valid input

#[test]
fn minimal_config_gets_the_defaults() {
    let config = ok(MIN);
    assert_eq!(config.path, Path::new("test.toml"));
    assert_eq!(
        config.handover,
        HandoverSection {
            fds_env: "HANDOVER_FDS".into(),
            runtime_dir: None,
            watchdog_min_workers: 0,
            fd_store: true,
        }
    );
    assert!(config.sockets.is_empty());
    assert_eq!(
        config.worker,
        WorkerConfig {
            command: vec!["app".into()],
            env: BTreeMap::new(),
            inherit_env: InheritEnv::All,
            cwd: None,
            count: 1,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            ready: ReadyMode::Notify,
            ready_timeout: Duration::from_secs(60),
            notify_access: NotifyAccess::All,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(10),
            user: None,
            group: None,
        }
    );
    assert_eq!(
        config.reload,
        ReloadConfig {
            timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            strategy: Strategy::AllAtOnce,
            canary: false,
            max_draining: 4,
        }
    );
    assert_eq!(
        config.control,
        ControlConfig {
            socket: None,
            allow_uids: vec![]
        }
    );
}

const FULL: &str = r#"
[handover]
fds_env = "LACTOSERV_FDS"
runtime_dir = "/run/myapp"
watchdog_min_workers = 1
fd_store = false

[[socket]]
name = "http"
listen = "0.0.0.0:80"
backlog = 1024
reuse_port = true

[[socket]]
name = "admin"
listen = "/run/myapp/admin.sock"
mode = "0660"
owner = "www-data:www-data"

[[socket]]
name = "v6"
listen = "[::1]:0"

[[socket]]
name = "metrics"
from_systemd = true

[worker]
command = ["/usr/bin/myapp", "--serve", ""]
env = { RUST_LOG = "info", "weird-name" = "x y" }
inherit_env = ["PATH", "HOME"]
cwd = "/srv/myapp"
count = 8
stop_signal = "sigint"
stop_timeout = "1.5s"
ready = "delay"
ready_delay = "250ms"
ready_timeout = "2m"
notify_access = "main"
restart_backoff_initial = "1s"
restart_backoff_max = "1h"
restart_backoff_reset = "30s"
user = "www-data"
group = "1000"

[reload]
timeout = "10m"
drain_timeout = "45s"
strategy = "rolling"
batch_size = 2
max_extra = 3
canary = true
max_draining = 64

[control]
socket = "/run/myapp/control.sock"
allow_uids = [0, 1000, 4294967294]
"#;

#[test]
fn full_config() {
    let config = ok(FULL);
    assert_eq!(
        config.handover,
        HandoverSection {
            fds_env: "LACTOSERV_FDS".into(),
            runtime_dir: Some("/run/myapp".into()),
            watchdog_min_workers: 1,
            fd_store: false,
        }
    );
    assert_eq!(
        config.sockets,
        vec![
            SocketConfig {
                name: "http".into(),
                listen: Some(ListenAddress::Tcp("0.0.0.0:80".parse().unwrap())),
                backlog: 1024,
                reuse_port: true,
                mode: None,
                owner: None,
                from_systemd: false,
            },
            SocketConfig {
                name: "admin".into(),
                listen: Some(ListenAddress::Unix("/run/myapp/admin.sock".into())),
                backlog: 4096,
                reuse_port: false,
                mode: Some(0o660),
                owner: Some("www-data:www-data".into()),
                from_systemd: false,
            },
            SocketConfig {
                name: "v6".into(),
                listen: Some(ListenAddress::Tcp("[::1]:0".parse().unwrap())),
                backlog: 4096,
                reuse_port: false,
                mode: None,
                owner: None,
                from_systemd: false,
            },
            SocketConfig {
                name: "metrics".into(),
                listen: None,
                backlog: 4096,
                reuse_port: false,
                mode: None,
                owner: None,
                from_systemd: true,
            },
        ]
    );
    let env: BTreeMap<String, String> = [("RUST_LOG", "info"), ("weird-name", "x y")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert_eq!(
        config.worker,
        WorkerConfig {
            command: vec!["/usr/bin/myapp".into(), "--serve".into(), "".into()],
            env,
            inherit_env: InheritEnv::Only(vec!["PATH".into(), "HOME".into()]),
            cwd: Some("/srv/myapp".into()),
            count: 8,
            stop_signal: libc::SIGINT,
            stop_timeout: Duration::from_millis(1500),
            ready: ReadyMode::Delay(Duration::from_millis(250)),
            ready_timeout: Duration::from_secs(120),
            notify_access: NotifyAccess::Main,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            backoff_reset: Duration::from_secs(30),
            user: Some("www-data".into()),
            group: Some("1000".into()),
        }
    );
    assert_eq!(
        config.reload,
        ReloadConfig {
            timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(45),
            strategy: Strategy::Rolling {
                batch_size: 2,
                max_extra: 3
            },
            canary: true,
            max_draining: 64,
        }
    );
    assert_eq!(
        config.control,
        ControlConfig {
            socket: Some("/run/myapp/control.sock".into()),
            allow_uids: vec![0, 1000, 4294967294]
        }
    );
}

#[test]
fn alternative_spellings() {
    // Dotted keys and inline tables are the same TOML as headers.
    let config = ok("worker.command = [\"app\"]\nworker.count = 3\nworker.env.A = \"1\"\nreload = { strategy = \"rolling\" }\n");
    assert_eq!(config.worker.count, 3);
    assert_eq!(config.worker.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(
        config.reload.strategy,
        Strategy::Rolling {
            batch_size: 1,
            max_extra: 1
        }
    );

    let config = ok(
        "socket = [{ name = \"a\", listen = \"127.0.0.1:1\" }]\n[worker]\ncommand = [\"app\"]\n",
    );
    assert_eq!(
        config.sockets[0].listen,
        Some(ListenAddress::Tcp("127.0.0.1:1".parse().unwrap()))
    );

    let config = ok("[worker]\ncommand = [\"app\"]\ninherit_env = false\n");
    assert_eq!(config.worker.inherit_env, InheritEnv::Nothing);
    let config = ok("[worker]\ncommand = [\"app\"]\ninherit_env = true\n");
    assert_eq!(config.worker.inherit_env, InheritEnv::All);
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"delay\"\n");
    assert_eq!(
        config.worker.ready,
        ReadyMode::Delay(Duration::from_secs(1))
    );
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"notify\"\n");
    assert_eq!(config.worker.ready, ReadyMode::Notify);
    let config =
        ok("[reload]\nstrategy = \"rolling\"\nbatch_size = 3\n[worker]\ncommand = [\"app\"]\n");
    assert_eq!(
        config.reload.strategy,
        Strategy::Rolling {
            batch_size: 3,
            max_extra: 3
        }
    );
    let config = ok("[reload]\nstrategy = \"all-at-once\"\n[worker]\ncommand = [\"app\"]\n");
    assert_eq!(config.reload.strategy, Strategy::AllAtOnce);
    let config = ok("[[socket]]\nname = \"s\"\nlisten = \"/run/s.sock\"\nowner = \":adm\"\n[worker]\ncommand = [\"app\"]\n");
    assert_eq!(config.sockets[0].owner.as_deref(), Some(":adm"));
    // from_systemd with a listen keeps it.
    let config = ok("[[socket]]\nname = \"s\"\nlisten = \"/run/s.sock\"\nfrom_systemd = true\n[worker]\ncommand = [\"app\"]\n");
    assert_eq!(
        config.sockets[0].listen,
        Some(ListenAddress::Unix("/run/s.sock".into()))
    );
    assert!(config.sockets[0].from_systemd);
    // An empty file name list, an empty socket array, an empty env table.
    let config = ok("socket = []\n[worker]\ncommand = [\"app\"]\nenv = {}\ninherit_env = []\n");
    assert!(config.sockets.is_empty());
    assert_eq!(config.worker.inherit_env, InheritEnv::Only(vec![]));
}

#[test]
fn listen_addresses() {
    let listen = |value: &str| {
        let text = format!("[[socket]]\nname = \"s\"\nlisten = {value:?}\n{MIN}");
        ok(&text).sockets.remove(0).listen.unwrap()
    };
    assert_eq!(
        listen("127.0.0.1:8080"),
        ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(
        listen("[::1]:8080"),
        ListenAddress::Tcp("[::1]:8080".parse().unwrap())
    );
    assert_eq!(
        listen("0.0.0.0:80"),
        ListenAddress::Tcp("0.0.0.0:80".parse().unwrap())
    );
    assert_eq!(
        listen("[::]:0"),
        ListenAddress::Tcp("[::]:0".parse().unwrap())
    );
    assert_eq!(
        listen("/run/a.sock"),
        ListenAddress::Unix("/run/a.sock".into())
    );
    let longest = format!("/{}", "a".repeat(106));
    assert_eq!(
        listen(&longest),
        ListenAddress::Unix(longest.clone().into())
    );
    assert_eq!(listen("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
    assert_eq!(listen("[::1]:8080").to_string(), "[::1]:8080");
    assert_eq!(listen("/run/a.sock").to_string(), "/run/a.sock");
}

#[test]
fn stop_signals() {
    for (name, number) in [
        ("SIGTERM", libc::SIGTERM),
        ("TERM", libc::SIGTERM),
        ("sigterm", libc::SIGTERM),
        ("hup", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("SigUsr2", libc::SIGUSR2),
        ("WINCH", libc::SIGWINCH),
        ("CONT", libc::SIGCONT),
        ("ALRM", libc::SIGALRM),
    ] {
        let config = ok(&format!("{MIN}stop_signal = {name:?}\n"));
        assert_eq!(config.worker.stop_signal, number, "{name}");
        assert_eq!(stop_signal_from_name(name), Some(number));
    }
    assert_eq!(stop_signal_from_name("KILL"), None);
    assert_eq!(stop_signal_from_name("SIG"), None);
    assert_eq!(stop_signal_from_name(""), None);
}

#[test]
fn durations() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("10s", Duration::from_secs(10)),
        ("1.5s", Duration::from_millis(1500)),
        ("5m", Duration::from_secs(300)),
        ("2h", Duration::from_secs(7200)),
        ("24h", Duration::from_secs(86400)),
        ("1440m", Duration::from_secs(86400)),
        ("0s", Duration::ZERO),
        ("0ms", Duration::ZERO),
        ("0.5ms", Duration::from_micros(500)),
        ("0.000000001s", Duration::from_nanos(1)),
        ("0.0000000019s", Duration::from_nanos(1)),
        ("007s", Duration::from_secs(7)),
        ("1.25m", Duration::from_secs(75)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for (text, why) in [
        ("", "not a duration"),
        ("s", "not a duration"),
        ("10", "no unit"),
        ("1.5", "no unit"),
        ("-1s", "negative"),
        ("10x", "unknown unit"),
        ("10 s", "unknown unit"),
        ("1m30s", "unknown unit"),
        ("10S", "unknown unit"),
        ("10us", "unknown unit"),
        (".5s", "not a duration"),
        ("5.s", "not a duration"),
        ("1.2.3s", "not a duration"),
        ("+1s", "not a duration"),
        ("24.000001h", "too long"),
        ("86401s", "too long"),
        ("99999999999999999999999999999999h", "too long"),
    ] {
        let e = parse_duration(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e:?} lacks {why:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: (input, line, column, parts of the message)

type Case = (&'static str, usize, usize, &'static [&'static str]);

fn check_cases(cases: &[Case]) {
    for &(text, line, column, parts) in cases {
        assert_err(text, line, column, parts);
    }
}

#[test]
fn probe_readiness_parses() {
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"probe\"\nprobe = [\"check\", \"--fast\"]\nprobe_timeout = \"2s\"\n");
    assert_eq!(
        config.worker.ready,
        ReadyMode::Probe(Probe {
            command: vec!["check".into(), "--fast".into()],
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
        })
    );
}

#[test]
fn worker_errors() {
    check_cases(&[
        ("", 1, 1, &["worker: the [worker] table is missing"]),
        ("# nothing\n[reload]\n", 1, 1, &["[worker] table is missing"]),
        ("[reload]\n\n[worker]\ncount = 2\n", 3, 1, &["worker.command: missing"]),
        ("[reload]\n\n  [worker]  # x\ncount = 2\n", 3, 3, &["worker.command: missing"]),
        ("# c\nworker.count = 2\n", 2, 1, &["worker.command: missing"]),
        ("[worker.env]\nA = \"b\"\n", 1, 1, &["worker.command: missing"]),
        ("x = 1\n", 1, 1, &["x: unknown key"]),
        ("[worker]\ncommand = []\n", 2, 11, &["worker.command: must not be empty"]),
        ("[worker]\ncommand = \"app --flag\"\n", 2, 11, &["worker.command: expected an array of strings", "got a string"]),
        ("[worker]\ncommand = [\"app\", 1]\n", 2, 19, &["worker.command[1]: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"\", \"x\"]\n", 2, 12, &["worker.command[0]: the program must not be empty"]),
        ("[worker]\ncommand = [\"app\", \"a\\u0000b\"]\n", 2, 19, &["worker.command[1]: contains a NUL character"]),
        ("[worker]\ncommand = { a = 1 }\n", 2, 11, &["worker.command", "got a table"]),
        (
            "[worker]\ncommand = [\n  \"app\",\n  [\"nested\"],\n]\n",
            4,
            3,
            &["worker.command[1]: expected a string, got an array"],
        ),
        ("[worker]\ncommand = [\"app\"]\ncount = 0\n", 3, 9, &["worker.count: must be between 1 and 1024, got 0"]),
        ("[worker]\ncommand = [\"app\"]\ncount = 1025\n", 3, 9, &["worker.count: must be between 1 and 1024, got 1025"]),
        ("[worker]\ncommand = [\"app\"]\ncount = -3\n", 3, 9, &["worker.count: must be between 1 and 1024, got -3"]),
        ("[worker]\ncommand = [\"app\"]\ncount = \"2\"\n", 3, 9, &["worker.count: expected an integer, got a string"]),
        ("[worker]\ncommand = [\"app\"]\ncount = 2.0\n", 3, 9, &["worker.count: expected an integer, got a float"]),
        ("[worker]\ncommand = [\"app\"]\ncwd = \"srv\"\n", 3, 7, &["worker.cwd: \"srv\" is not an absolute path"]),
        ("[worker]\ncommand = [\"app\"]\ncwd = 1\n", 3, 7, &["worker.cwd: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\nstop_signal = \"KILL\"\n", 3, 15, &["worker.stop_signal: SIGKILL cannot be caught"]),
        ("[worker]\ncommand = [\"app\"]\nstop_signal = \"SIGSTOP\"\n", 3, 15, &["worker.stop_signal: \"SIGSTOP\" is not a supported stop signal", "SIGTERM"]),
        ("[worker]\ncommand = [\"app\"]\nstop_signal = 15\n", 3, 15, &["worker.stop_signal: write a signal name"]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = 10\n", 3, 16, &["worker.stop_timeout: a duration needs a unit", "\"10s\""]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = -10\n", 3, 16, &["worker.stop_timeout: a duration cannot be negative"]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = 1.5\n", 3, 16, &["worker.stop_timeout: a duration is a string with a unit", "\"1.5s\""]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = \"-1s\"\n", 3, 16, &["worker.stop_timeout: \"-1s\": a duration cannot be negative"]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = \"soon\"\n", 3, 16, &["worker.stop_timeout: \"soon\" is not a duration"]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = \"10\"\n", 3, 16, &["worker.stop_timeout: \"10\" has no unit", "\"10s\""]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = \"10sec\"\n", 3, 16, &["worker.stop_timeout: \"10sec\" has an unknown unit \"sec\""]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = \"25h\"\n", 3, 16, &["worker.stop_timeout: \"25h\" is too long; the maximum is 24h"]),
        ("[worker]\ncommand = [\"app\"]\nstop_timeout = true\n", 3, 16, &["worker.stop_timeout: expected a duration like \"10s\", got a boolean"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"socket\"\n", 3, 9, &["worker.ready: expected \"notify\", \"delay\" or \"probe\", got \"socket\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\n", 3, 9, &["worker.probe", "needs probe = "]),
        ("[worker]\ncommand = [\"app\"]\nprobe = [\"true\"]\n", 3, 9, &["worker.probe: only applies with ready = \"probe\""]),
        ("[worker]\ncommand = [\"app\"]\nprobe_timeout = \"1s\"\n", 3, 17, &["worker.probe_timeout: only applies with ready = \"probe\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\nprobe = []\n", 4, 9, &["worker.probe: must not be empty"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\nprobe = [\"true\"]\nprobe_timeout = \"0s\"\n", 5, 17, &["worker.probe_timeout"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\nprobe = [\"true\"]\nready_delay = \"1s\"\n", 5, 15, &["worker.ready_delay: only applies with ready = \"delay\""]),
        ("[worker]\ncommand = [\"app\"]\nready_delay = \"1s\"\n", 3, 15, &["worker.ready_delay: only applies with ready = \"delay\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"notify\"\nready_delay = \"1s\"\n", 4, 15, &["worker.ready_delay: only applies"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"delay\"\nready_delay = \"1\"\n", 4, 15, &["worker.ready_delay: \"1\" has no unit"]),
        ("[worker]\ncommand = [\"app\"]\nready_timeout = \"0s\"\n", 3, 17, &["worker.ready_timeout: must be more than 0"]),
        ("[worker]\ncommand = [\"app\"]\nnotify_access = \"none\"\n", 3, 17, &["worker.notify_access: expected \"all\" or \"main\", got \"none\""]),
        (
            "[worker]\ncommand = [\"app\"]\nrestart_backoff_initial = \"5s\"\nrestart_backoff_max = \"1s\"\n",
            4,
            23,
            &["worker.restart_backoff_max: must be at least restart_backoff_initial (5s), got 1s"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\nrestart_backoff_initial = \"1m\"\n",
            3,
            27,
            &["worker.restart_backoff_initial: 60s is more than restart_backoff_max (30s, the default)"],
        ),
        ("[worker]\ncommand = [\"app\"]\nrestart_backoff_initial = \"0ms\"\n", 3, 27, &["worker.restart_backoff_initial: must be more than 0"]),
        ("[worker]\ncommand = [\"app\"]\nrestart_backoff_reset = \"1d\"\n", 3, 25, &["worker.restart_backoff_reset: \"1d\" has an unknown unit"]),
        ("[worker]\ncommand = [\"app\"]\nuser = \"\"\n", 3, 8, &["worker.user: must not be empty"]),
        ("[worker]\ncommand = [\"app\"]\nuser = \"www:www\"\n", 3, 8, &["worker.user: a user name cannot contain ':'"]),
        ("[worker]\ncommand = [\"app\"]\nuser = 33\n", 3, 8, &["worker.user: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\ngroup = \"\"\n", 3, 9, &["worker.group: must not be empty"]),
        ("[worker]\ncommand = [\"app\"]\ngroup = [\"a\"]\n", 3, 9, &["worker.group: expected a string, got an array"]),
    ]);
}

#[test]
fn environment_errors() {
    check_cases(&[
        ("[worker]\ncommand = [\"app\"]\nenv = { LISTEN_FDS = \"1\" }\n", 3, 9, &["worker.env.LISTEN_FDS: LISTEN_*"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { LISTEN_PID = \"1\" }\n", 3, 9, &["worker.env.LISTEN_PID"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { LISTEN_FDNAMES = \"a\" }\n", 3, 9, &["worker.env.LISTEN_FDNAMES"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { LISTEN_PIDFDID = \"1\" }\n", 3, 9, &["worker.env.LISTEN_PIDFDID"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { LISTEN_ANYTHING = \"1\" }\n", 3, 9, &["worker.env.LISTEN_ANYTHING"]),
        ("[worker]\ncommand = [\"app\"]\n[worker.env]\nOK = \"1\"\nNOTIFY_SOCKET = \"/x\"\n", 5, 1, &["worker.env.NOTIFY_SOCKET: NOTIFY_SOCKET is set by handover"]),
        ("[worker]\ncommand = [\"app\"]\nenv.WATCHDOG_USEC = \"1\"\n", 3, 5, &["worker.env.WATCHDOG_USEC: WATCHDOG_*"]),
        ("[worker]\ncommand = [\"app\"]\nenv.WATCHDOG_PID = \"1\"\n", 3, 5, &["worker.env.WATCHDOG_PID"]),
        ("[worker]\ncommand = [\"app\"]\nenv.HANDOVER_WORKER = \"1\"\n", 3, 5, &["worker.env.HANDOVER_WORKER: HANDOVER_* variables are reserved"]),
        ("[worker]\ncommand = [\"app\"]\nenv.HANDOVER_FDS = \"1\"\n", 3, 5, &["worker.env.HANDOVER_FDS"]),
        (
            "[handover]\nfds_env = \"LACTOSERV_FDS\"\n[worker]\ncommand = [\"app\"]\nenv.LACTOSERV_FDS = \"1\"\n",
            5,
            5,
            &["worker.env.LACTOSERV_FDS: LACTOSERV_FDS is the [handover] fds_env variable"],
        ),
        ("[worker]\ncommand = [\"app\"]\nenv = { \"A=B\" = \"1\" }\n", 3, 9, &["worker.env.\"A=B\": a variable name must not contain '='"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { \"\" = \"1\" }\n", 3, 9, &["worker.env.\"\": a variable name must not be empty"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { \"A\\u0000\" = \"1\" }\n", 3, 9, &["a variable name must not contain a NUL"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { A = 1 }\n", 3, 13, &["worker.env.A: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\nenv = { A = \"x\\u0000\" }\n", 3, 13, &["worker.env.A: contains a NUL character"]),
        ("[worker]\ncommand = [\"app\"]\nenv = \"A=1\"\n", 3, 7, &["worker.env: invalid type: string \"A=1\", expected a map"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = \"PATH\"\n", 3, 15, &["worker.inherit_env: expected true, false or an array of variable names, got a string"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"PATH\", 3]\n", 3, 24, &["worker.inherit_env[1]: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"PATH\", \"\"]\n", 3, 24, &["worker.inherit_env[1]: must not be empty"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"A=B\"]\n", 3, 16, &["worker.inherit_env[0]: a variable name must not contain '='"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"LISTEN_FDS\"]\n", 3, 16, &["worker.inherit_env[0]: LISTEN_FDS cannot be inherited"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"NOTIFY_SOCKET\"]\n", 3, 16, &["worker.inherit_env[0]: NOTIFY_SOCKET cannot be inherited"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"WATCHDOG_USEC\"]\n", 3, 16, &["worker.inherit_env[0]: WATCHDOG_USEC cannot be inherited"]),
        ("[worker]\ncommand = [\"app\"]\ninherit_env = [\"HANDOVER_FDS\"]\n", 3, 16, &["worker.inherit_env[0]: HANDOVER_FDS cannot be inherited"]),
    ]);
}

#[test]
fn socket_errors() {
    check_cases(&[
        ("[[socket]]\nlisten = \"127.0.0.1:1\"\n", 1, 1, &["socket[0].name: missing"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[socket]]\nlisten = \"127.0.0.1:2\"\n", 5, 1, &["socket[1].name: missing"]),
        ("socket = [{ name = \"a\", listen = \"/a\" }, { listen = \"/b\" }]\n", 1, 42, &["socket[1].name: missing"]),
        ("[[socket]]\nname = \"\"\n", 2, 8, &["socket[0].name: must not be empty"]),
        ("[[socket]]\nname = \"a:b\"\n", 2, 8, &["socket[0].name: must not contain ':'"]),
        ("[[socket]]\nname = \"caf\u{e9}\"\n", 2, 8, &["socket[0].name: contains '\u{e9}'", "printable ASCII"]),
        ("[[socket]]\nname = \"a\\tb\"\n", 2, 8, &["socket[0].name: contains '\\t'"]),
        ("[[socket]]\nname = 1\n", 2, 8, &["socket[0].name: expected a string, got an integer"]),
        (
            "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:1\"\n\n[[socket]]\nname = \"api\"\nlisten = \"127.0.0.1:2\"\n\n[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:3\"\n",
            10,
            8,
            &["socket[2].name: duplicate socket name \"http\" (lines 2 and 10)", "unique"],
        ),
        ("[[socket]]\nname = \"a\"\n", 1, 1, &["socket[0].listen: missing", "from_systemd = true"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = false\n", 1, 1, &["socket[0].listen: missing"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = \"yes\"\n", 3, 16, &["socket[0].from_systemd: expected true or false, got a string"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"localhost:80\"\n", 3, 10, &["socket[0].listen:", "IP address", "127.0.0.1:80"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"example.com:80\"\n", 3, 10, &["socket[0].listen:", "\"example.com\" must be an IP address", "DNS"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"8080\"\n", 3, 10, &["socket[0].listen: \"8080\" has no address", "0.0.0.0:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \":8080\"\n", 3, 10, &["socket[0].listen: \":8080\" has no address", "0.0.0.0:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1\"\n", 3, 10, &["socket[0].listen: \"127.0.0.1\" has no port"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"::1\"\n", 3, 10, &["socket[0].listen: \"::1\" has no port", "[::1]:PORT"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"::1:8080\"\n", 3, 10, &["socket[0].listen:", "brackets", "[::1]:8080"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"[nope]:80\"\n", 3, 10, &["socket[0].listen:", "\"nope\" is not an IPv6 address"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:65536\"\n", 3, 10, &["socket[0].listen:", "\"65536\" is not a port"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"run/app.sock\"\n", 3, 10, &["socket[0].listen:", "neither an address nor a path"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"@abstract\"\n", 3, 10, &["socket[0].listen: abstract unix sockets are not supported"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"\"\n", 3, 10, &["socket[0].listen: must not be empty"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/run/\"\n", 3, 10, &["socket[0].listen:", "ends with '/'"]),
        ("[[socket]]\nname = \"a\"\nlisten = 8080\n", 3, 10, &["socket[0].listen: expected a string, got an integer"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbacklog = 0\n", 4, 11, &["socket[0].backlog: must be between 1 and 65535, got 0"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbacklog = 65536\n", 4, 11, &["socket[0].backlog: must be between 1 and 65535, got 65536"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nreuse_port = 1\n", 4, 14, &["socket[0].reuse_port: expected true or false, got an integer"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/run/a.sock\"\nreuse_port = true\n", 4, 14, &["socket[0].reuse_port: only applies to TCP sockets"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"0660\"\n", 4, 8, &["socket[0].mode: only applies to unix sockets", "TCP"]),
        ("[[socket]]\nname = \"a\"\nfrom_systemd = true\nmode = \"0660\"\n", 4, 8, &["socket[0].mode: only applies to unix sockets", "no listen path"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"0968\"\n", 4, 8, &["socket[0].mode: \"0968\" is not an octal mode"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"\"\n", 4, 8, &["socket[0].mode: \"\" is not an octal mode"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"17777\"\n", 4, 8, &["socket[0].mode: \"17777\" is too large"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = \"7777777777777777777777\"\n", 4, 8, &["socket[0].mode:", "too large"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = 660\n", 4, 8, &["socket[0].mode: write the mode as a string of octal digits"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nmode = 0o660\n", 4, 8, &["socket[0].mode: write the mode as a string"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nowner = \"www\"\n", 4, 9, &["socket[0].owner: only applies to unix sockets"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"a:b:c\"\n", 4, 9, &["socket[0].owner: \"a:b:c\" is not \"user\", \"user:group\""]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"a:\"\n", 4, 9, &["socket[0].owner: \"a:\" is not"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nowner = \"\"\n", 4, 9, &["socket[0].owner: \"\" is not"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\nport = 80\n", 4, 1, &["socket[0].port: unknown key", "`listen`"]),
        ("[socket]\nname = \"a\"\nlisten = \"/a\"\n", 1, 1, &["socket:", "[[socket]]"]),
        ("[worker]\ncommand = [\"app\"]\n\n  [socket]\nname = \"a\"\n", 4, 3, &["socket:", "[[socket]]"]),
        ("[[socket]]\nname = \"a\"\nlisten = \"/a\"\n[socket.x]\n", 4, 9, &["socket[0].x: unknown key"]),
        ("socket = 5\n", 1, 10, &["socket:", "[[socket]]"]),
        ("socket = [{ name = \"a\", listen = \"/a\" }, 5]\n", 1, 42, &["socket[1]: invalid type: integer `5`, expected a table"]),
    ]);
}

#[test]
fn unix_path_limit() {
    let path = format!("/{}", "a".repeat(107));
    let text = format!("[[socket]]\nname = \"a\"\nlisten = \"{path}\"\n{MIN}");
    assert_err(
        &text,
        3,
        10,
        &["socket[0].listen: unix socket path is 108 bytes, the limit is 107"],
    );
    let text = format!("{MIN}[control]\nsocket = \"{path}\"\n");
    assert_err(
        &text,
        4,
        10,
        &["control.socket: unix socket path is 108 bytes, the limit is 107"],
    );
    let name = "n".repeat(256);
    let text = format!("[[socket]]\nname = \"{name}\"\nlisten = \"/a\"\n{MIN}");
    assert_err(
        &text,
        2,
        8,
        &["socket[0].name: is 256 bytes long, the limit is 255"],
    );
    let name = "n".repeat(255);
    ok(&format!(
        "[[socket]]\nname = \"{name}\"\nlisten = \"/a\"\n{MIN}"
    ));
}

#[test]
fn handover_reload_and_control_errors() {
    check_cases(&[
        ("[handover]\nfds_env = \"1FDS\"\n", 2, 11, &["handover.fds_env: \"1FDS\" is not a valid variable name"]),
        ("[handover]\nfds_env = \"\"\n", 2, 11, &["handover.fds_env: \"\" is not a valid variable name"]),
        ("[handover]\nfds_env = \"MY-FDS\"\n", 2, 11, &["handover.fds_env: \"MY-FDS\" is not a valid variable name"]),
        ("[handover]\nfds_env = \"LISTEN_FDS\"\n", 2, 11, &["handover.fds_env: LISTEN_FDS is a variable of systemd's protocols"]),
        ("[handover]\nfds_env = \"NOTIFY_SOCKET\"\n", 2, 11, &["handover.fds_env: NOTIFY_SOCKET"]),
        ("[handover]\nfds_env = \"WATCHDOG_FDS\"\n", 2, 11, &["handover.fds_env: WATCHDOG_FDS"]),
        ("[handover]\nfds_env = \"HANDOVER_WORKER\"\n", 2, 11, &["handover.fds_env: HANDOVER_WORKER is already set by handover"]),
        ("[handover]\nfds_env = 3\n", 2, 11, &["handover.fds_env: expected a string, got an integer"]),
        ("[handover]\nruntime_dir = \"run\"\n", 2, 15, &["handover.runtime_dir: \"run\" is not an absolute path"]),
        ("[handover]\nrundir = \"/run\"\n", 2, 1, &["handover.rundir: unknown key", "`runtime_dir`"]),
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nbatch_size = 2\n",
            4,
            14,
            &["reload.batch_size: only applies with strategy = \"rolling\""],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"all-at-once\"\nmax_extra = 2\n",
            5,
            13,
            &["reload.max_extra: only applies with strategy = \"rolling\""],
        ),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"blue-green\"\n", 4, 12, &["reload.strategy: expected \"all-at-once\" or \"rolling\""]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nbatch_size = 0\n", 5, 14, &["reload.batch_size: must be between 1 and 1024, got 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nmax_extra = 0\n", 5, 13, &["reload.max_extra: must be between 1 and 1024, got 0"]),
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nbatch_size = 4\nmax_extra = 2\n",
            6,
            13,
            &["reload.max_extra: must be at least batch_size (4), got 2"],
        ),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nmax_draining = 0\n", 4, 16, &["reload.max_draining: must be between 1 and 64, got 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nmax_draining = 65\n", 4, 16, &["reload.max_draining: must be between 1 and 64, got 65"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ncanary = \"yes\"\n", 4, 10, &["reload.canary: expected true or false, got a string"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ntimeout = \"0s\"\n", 4, 11, &["reload.timeout: must be more than 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ntimeout = 300\n", 4, 11, &["reload.timeout: a duration needs a unit"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ndrain_timeout = \"forever\"\n", 4, 17, &["reload.drain_timeout: \"forever\" is not a duration"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nbatchsize = 2\n", 4, 1, &["reload.batchsize: unknown key"]),
        ("[worker]\ncommand = [\"app\"]\n[control]\nsocket = \"control.sock\"\n", 4, 10, &["control.socket: \"control.sock\" is not an absolute path"]),
        ("[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = 1000\n", 4, 14, &["control.allow_uids: expected an array of uids", "got an integer"]),
        ("[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [1000, -1]\n", 4, 21, &["control.allow_uids[1]: must be between 0 and 4294967294, got -1"]),
        ("[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [4294967295]\n", 4, 15, &["control.allow_uids[0]: must be between 0 and 4294967294, got 4294967295"]),
        ("[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [\"root\"]\n", 4, 15, &["control.allow_uids[0]: expected an integer, got a string"]),
    ]);
}

#[test]
fn unknown_keys() {
    check_cases(&[
        (
            "foo = 1\n[worker]\ncommand = [\"app\"]\n",
            1,
            1,
            &["foo: unknown key", "`worker`"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n\n[workers]\ncount = 2\n",
            4,
            2,
            &["workers: unknown key"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncountx = 2\n",
            3,
            1,
            &["worker.countx: unknown key", "`count`"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n  \"spaced key\" = 2\n",
            3,
            3,
            &["worker.\"spaced key\": unknown key"],
        ),
        (
            "worker = { command = [\"app\"], bad = 1 }\n",
            1,
            31,
            &["worker.bad: unknown key"],
        ),
        (
            "worker.command = [\"app\"]\nworker.bad.deeper = 1\n",
            2,
            8,
            &["worker.bad: unknown key"],
        ),
    ]);
}

#[test]
fn values_of_the_wrong_shape() {
    check_cases(&[
        (
            "worker = 5\n",
            1,
            10,
            &["worker: invalid type: integer `5`, expected a table"],
        ),
        (
            "worker = [\"app\"]\n",
            1,
            10,
            &["worker: invalid type: sequence, expected a table"],
        ),
        (
            "worker = [{ command = [\"app\"] }]\n",
            1,
            10,
            &["worker: invalid type: sequence, expected a table"],
        ),
        (
            "[reload]\ncanary = true\n[reload.x]\ny = 1\n",
            3,
            9,
            &["reload.x: unknown key"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[worker.env.X]\ny = \"1\"\n",
            3,
            1,
            &["worker.env.X: expected a string, got a table"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount.x = 1\n",
            3,
            7,
            &["worker.count: expected a value, got a table"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[worker.count]\nx = 1\n",
            3,
            1,
            &["worker.count: expected an integer, got a table"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = { x = 1 }\n",
            3,
            9,
            &["worker.count: expected an integer, got a table"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = 1979-05-27\n",
            3,
            9,
            &["worker.count: expected an integer, got a date-time"],
        ),
        (
            "[worker]\ncommand = 1979-05-27\n",
            2,
            11,
            &["worker.command:", "got a date-time"],
        ),
    ]);
}

#[test]
fn toml_syntax_errors() {
    check_cases(&[
        (
            "[worker]\ncommand = [\"app\"\n",
            3,
            1,
            &["invalid array", "expected `]`"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = \n",
            3,
            9,
            &["invalid string"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[worker]\n",
            3,
            1,
            &["duplicate key `worker`"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = 1\ncount = 2\n",
            4,
            1,
            &["duplicate key `count`"],
        ),
        (
            "[worker\ncommand = [\"app\"]\n",
            1,
            8,
            &["invalid table header"],
        ),
        ("\u{e9}\u{e9} = 1\n", 1, 1, &["invalid"]),
    ]);
    // No message spans more than one line.
    let e = err("[worker]\ncommand = [\"app\"\n");
    assert!(!e.message.contains('\n'), "{:?}", e.message);
}

#[test]
fn columns_count_characters() {
    // 'é' is two bytes: the column counts it once.
    assert_err(
        "worker = { command = [\"\u{e9}\u{e9}\"], count = 0 }\n",
        1,
        38,
        &["worker.count: must be between"],
    );
    // Tabs count as one column; \r\n line ends are one line each.
    assert_err(
        "[worker]\r\ncommand = [\"app\"]\r\n\tcount = 0\r\n",
        3,
        10,
        &["worker.count"],
    );
    assert_eq!(line_col("", 0), (1, 1));
    assert_eq!(line_col("a\nb", 2), (2, 1));
    assert_eq!(line_col("a\nb", 99), (2, 2));
    assert_eq!(line_col("\u{e9}x", 1), (1, 1));
}

#[test]
fn error_display() {
    let e = err("[worker]\ncommand = [\"app\"]\ncount = 0\n");
    assert_eq!(
        e.to_string(),
        "test.toml:3:9: worker.count: must be between 1 and 1024, got 0"
    );
}

// ---------------------------------------------------------------------------------------------
// Files

#[test]
fn load_reads_a_file() {
    let path = scratch("valid.toml");
    std::fs::write(&path, FULL).unwrap();
    let config = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    let config = config.unwrap();
    assert_eq!(config.path, path);
    assert_eq!(config.worker.count, 8);

    let path = scratch("invalid.toml");
    std::fs::write(&path, "[worker]\ncommand = [\"app\"]\ncount = 0\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!((e.path.as_path(), e.line, e.column), (path.as_path(), 3, 9));
}

#[test]
fn unreadable_files() {
    let missing = scratch("does-not-exist.toml");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(
        (e.path.as_path(), e.line, e.column),
        (missing.as_path(), 0, 0)
    );
    assert!(
        e.message.contains("No such file or directory"),
        "{}",
        e.message
    );

    let dir = scratch("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let e = Config::load(&dir).unwrap_err();
    std::fs::remove_dir(&dir).unwrap();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(e.message.contains("Is a directory"), "{}", e.message);

    let binary = scratch("binary.toml");
    std::fs::write(&binary, b"[worker]\ncommand = [\"\xff\"]\n").unwrap();
    let e = Config::load(&binary).unwrap_err();
    std::fs::remove_file(&binary).unwrap();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.message.contains("not valid UTF-8") && e.message.contains("line 2"),
        "{}",
        e.message
    );
}

#[test]
fn files_over_one_mebibyte_are_refused() {
    let big = scratch("big.toml");
    let mut text = String::from(MIN);
    while text.len() < 2 * 1024 * 1024 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    let e = Config::load(&big).unwrap_err();
    std::fs::remove_file(&big).unwrap();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(e.message.contains("too large"), "{}", e.message);

    // Exactly 1 MiB is fine.
    let edge = scratch("edge.toml");
    let mut text = String::from(MIN);
    text.push('#');
    text.push_str(&"x".repeat(MAX_FILE_SIZE - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len(), MAX_FILE_SIZE);
    std::fs::write(&edge, &text).unwrap();
    let result = Config::load(&edge);
    std::fs::remove_file(&edge).unwrap();
    result.unwrap();
}

#[test]
fn endless_input_is_refused() {
    let zero = Path::new("/dev/zero");
    if !zero.exists() {
        return;
    }
    let e = Config::load(zero).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(e.message.contains("too large"), "{}", e.message);
}

#[test]
fn example_files_validate() {
    let full = Config::load(&example("handover.toml")).unwrap_or_else(|e| panic!("{e}"));
    // The full example sets every key; spot-check that the values were not just defaults.
    assert!(!full.sockets.is_empty());
    assert!(!full.worker.env.is_empty());
    assert!(full.control.socket.is_some());
    assert!(matches!(full.reload.strategy, Strategy::Rolling { .. }));

    let demo = Config::load(&example("demo.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(demo.sockets.len(), 1);
    assert_eq!(demo.sockets[0].name, "http");
    assert_eq!(
        demo.sockets[0].listen,
        Some(ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()))
    );
    assert_eq!(
        demo.worker.command,
        vec!["handover-example-http".to_string()]
    );
    assert_eq!(demo.worker.count, 2);
    assert_eq!(demo.worker.ready, ReadyMode::Notify);
}

/// Every key the full example uses, so a key added to the schema without being shown in
/// the example (or documented) is noticed.
#[test]
fn full_example_uses_every_key() {
    let text = std::fs::read_to_string(example("handover.toml")).unwrap();
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let table: toml::Table = text.parse().unwrap();
    let keys: &[(&str, &[&str])] = &[
        (
            "handover",
            &["fds_env", "runtime_dir", "watchdog_min_workers", "fd_store"],
        ),
        (
            "socket",
            &[
                "name",
                "listen",
                "backlog",
                "reuse_port",
                "mode",
                "owner",
                "from_systemd",
            ],
        ),
        (
            "worker",
            &[
                "command",
                "env",
                "inherit_env",
                "cwd",
                "count",
                "stop_signal",
                "stop_timeout",
                "ready",
                "ready_delay",
                "probe",
                "probe_interval",
                "probe_timeout",
                "ready_timeout",
                "notify_access",
                "restart_backoff_initial",
                "restart_backoff_max",
                "restart_backoff_reset",
                "user",
                "group",
            ],
        ),
        (
            "reload",
            &[
                "timeout",
                "drain_timeout",
                "strategy",
                "batch_size",
                "max_extra",
                "canary",
                "max_draining",
            ],
        ),
        ("control", &["socket", "allow_uids"]),
        (
            "logs",
            &[
                "stdout", "stderr", "tag", "max_line", "max_size", "keep", "compress", "buffer",
            ],
        ),
    ];
    for (section, names) in keys {
        let tables: Vec<&toml::Table> = match &table[*section] {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(|i| i.as_table()).collect(),
            other => panic!("{section}: {other:?}"),
        };
        for name in *names {
            // The probe keys exclude ready_delay; the example shows them in a comment.
            let alternative = ["probe", "probe_interval", "probe_timeout"].contains(name);
            assert!(
                alternative || tables.iter().any(|t| t.contains_key(*name)),
                "examples/handover.toml does not set {section}.{name}"
            );
            assert!(
                docs.contains(&format!("`{name}`")),
                "docs/configuration.md does not document `{name}`"
            );
        }
        // And nothing else: the key lists above are the whole schema.
        for t in &tables {
            for key in t.keys() {
                assert!(
                    names.contains(&key.as_str()),
                    "{section}.{key} is not in the schema list of this test"
                );
            }
        }
    }
}

#[test]
fn logs_default_to_inherit_with_rotation_settings() {
    let logs = ok(MIN).logs;
    assert_eq!(logs, LogsConfig::default());
    assert_eq!(logs.stdout, LogSink::Inherit);
    assert_eq!(logs.max_line, 16 * 1024);
    assert_eq!(logs.max_size, 10 * 1024 * 1024);
    assert_eq!((logs.keep, logs.compress, logs.tag), (10, true, true));
    assert_eq!(logs.buffer, 1024 * 1024);
}

#[test]
fn logs_sinks_and_sizes_are_parsed() {
    let logs = ok(&format!(
        "{MIN}[logs]\nstdout = \"/var/log/app.log\"\nstderr = \"-\"\ntag = false\n\
         max_line = \"1KiB\"\nmax_size = 0\nkeep = 0\ncompress = false\nbuffer = \"64K\"\n"
    ))
    .logs;
    assert_eq!(logs.stdout, LogSink::File("/var/log/app.log".into()));
    assert_eq!(logs.stderr, LogSink::Own);
    assert_eq!(
        (logs.max_line, logs.max_size, logs.buffer),
        (1024, 0, 65536)
    );
    assert_eq!((logs.keep, logs.compress, logs.tag), (0, false, false));
    let logs = ok(&format!(
        "{MIN}[logs]\nstdout = \"/dev/null\"\nstderr = \"inherit\"\nmax_size = 4096\n"
    ))
    .logs;
    assert_eq!(
        (logs.stdout, logs.stderr),
        (LogSink::Null, LogSink::Inherit)
    );
    assert_eq!(logs.max_size, 4096);
}

#[test]
fn bad_logs_settings_are_located_and_explained() {
    let at = |body: &str| format!("{MIN}[logs]\n{body}\n");
    assert_err(
        &at("stdout = \"app.log\""),
        4,
        10,
        &["logs.stdout", "absolute path"],
    );
    assert_err(&at("stderr = \"\""), 4, 10, &["logs.stderr", "/dev/null"]);
    assert_err(&at("stdout = \"/var/log/\""), 4, 10, &["directory"]);
    assert_err(&at("stdout = 1"), 4, 10, &["expected a string"]);
    assert_err(
        &at("max_line = \"10\""),
        4,
        12,
        &["logs.max_line", "between 256B and 1MiB"],
    );
    assert_err(&at("max_line = \"2MiB\""), 4, 12, &["got 2097152 bytes"]);
    assert_err(
        &at("max_size = \"1KiB\""),
        4,
        12,
        &["0 or between 4KiB and 1TiB"],
    );
    assert_err(
        &at("max_size = \"10MB\""),
        4,
        12,
        &["unknown size unit \"MB\""],
    );
    assert_err(&at("max_size = -1"), 4, 12, &["negative"]);
    assert_err(
        &at("max_size = \"99999999999999999999T\""),
        4,
        12,
        &["too large"],
    );
    assert_err(&at("max_size = 1.5"), 4, 12, &["expected a size"]);
    assert_err(&at("buffer = \"1KiB\""), 4, 10, &["logs.buffer", "64KiB"]);
    assert_err(
        &at("keep = 10001"),
        4,
        8,
        &["logs.keep", "between 0 and 10000"],
    );
    assert_err(&at("tag = \"yes\""), 4, 7, &["logs.tag", "true or false"]);
    assert_err(&at("rotate = 3"), 4, 1, &["rotate"]);
}

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("16K"), Ok(16384));
    assert_eq!(parse_size("16KiB"), Ok(16384));
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    for bad in ["", "K", "1.5M", "10 MiB", "10mb", "-1", "10kib"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}
