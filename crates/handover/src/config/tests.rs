//! Tests of the whole file: defaults, every key at once, TOML spellings, the document's
//! shape, syntax errors, positions, and reading files. Each section's own rules are tested
//! in its module; the helpers here serve them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::document::{line_col, MAX_FILE_SIZE};
use super::reload::Strategy;
use super::sockets::{ListenAddress, SocketConfig};
use super::worker::{InheritEnv, NotifyAccess, ReadyMode};
use super::*;

pub(super) const MIN: &str = "[worker]\ncommand = [\"app\"]\n";

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

pub(super) fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected {text:?} to be valid, got: {e}"))
}

pub(super) fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected {text:?} to be rejected, got {config:?}"),
        Err(e) => e,
    }
}

/// Asserts the error position and that the message contains every one of `parts`.
#[track_caller]
pub(super) fn assert_err(text: &str, line: usize, column: usize, parts: &[&str]) {
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

pub(super) fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A scratch file path, unique per test.
pub(super) fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handover-config-test-{}-{name}",
        std::process::id()
    ))
}

pub(super) type Case = (&'static str, usize, usize, &'static [&'static str]);

pub(super) fn check_cases(cases: &[Case]) {
    for &(text, line, column, parts) in cases {
        assert_err(text, line, column, parts);
    }
}

// ---------------------------------------------------------------------------------------------
// The whole file

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
            cgroups: CgroupMode::Auto,
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
            watchdog: None,
            user: None,
            group: None,
            no_new_privileges: None,
            umask: None,
            limit_nofile: None,
            start_nice: 0,
            limits: handover_sys::cgroup::Limits::default(),
        }
    );
    assert_eq!(
        config.reload,
        ReloadConfig {
            timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            strategy: Strategy::AllAtOnce,
            canary: false,
            canary_share: 0,
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
cgroups = "required"

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
steering = false

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
watchdog = "20s"
user = "www-data"
group = "1000"
no_new_privileges = true
umask = "0027"
limit_nofile = 65536
start_nice = 10
memory_max = "256MiB"
memory_high = "200M"
cpu_quota = "150%"
cpu_weight = 200
start_cpu_weight = 10
pids_max = 512

[reload]
timeout = "10m"
drain_timeout = "45s"
strategy = "rolling"
batch_size = 2
max_extra = 3
canary = true
canary_share = 10
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
            cgroups: CgroupMode::Required,
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
                steering: true,
            },
            SocketConfig {
                name: "admin".into(),
                listen: Some(ListenAddress::Unix("/run/myapp/admin.sock".into())),
                backlog: 4096,
                reuse_port: false,
                mode: Some(0o660),
                owner: Some("www-data:www-data".into()),
                from_systemd: false,
                steering: false,
            },
            SocketConfig {
                name: "v6".into(),
                listen: Some(ListenAddress::Tcp("[::1]:0".parse().unwrap())),
                backlog: 4096,
                reuse_port: false,
                mode: None,
                owner: None,
                from_systemd: false,
                steering: false,
            },
            SocketConfig {
                name: "metrics".into(),
                listen: None,
                backlog: 4096,
                reuse_port: false,
                mode: None,
                owner: None,
                from_systemd: true,
                steering: true,
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
            watchdog: Some(Duration::from_secs(20)),
            user: Some("www-data".into()),
            group: Some("1000".into()),
            no_new_privileges: Some(true),
            umask: Some(0o027),
            limit_nofile: Some(65536),
            start_nice: 10,
            limits: handover_sys::cgroup::Limits {
                memory_max: Some(256 << 20),
                memory_high: Some(200 << 20),
                cpu_quota: Some(150),
                cpu_weight: Some(200),
                start_cpu_weight: Some(10),
                pids_max: Some(512),
            },
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
            canary_share: 10,
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
            &["worker: expected a table, got an integer"],
        ),
        (
            "worker = [\"app\"]\n",
            1,
            10,
            &["worker: expected a table, got an array"],
        ),
        (
            "worker = [{ command = [\"app\"] }]\n",
            1,
            10,
            &[
                "worker: expected a table, got an array of tables",
                "[worker]",
            ],
        ),
        (
            "[[worker]]\ncommand = [\"app\"]\n",
            1,
            1,
            &[
                "worker: expected a table, got an array of tables",
                "not [[worker]]",
            ],
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
            1,
            &["worker.count: expected an integer, got a table"],
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
    // Positions and messages are the TOML parser's; the text it points at is quoted.
    check_cases(&[
        (
            "[worker]\ncommand = [\"app\"\n",
            2,
            17,
            &["unclosed array", "expected `]`"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = \n",
            3,
            9,
            &["string values must be quoted"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[worker]\n",
            3,
            2,
            &["duplicate key (`worker`)"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\ncount = 1\ncount = 2\n",
            4,
            1,
            &["duplicate key (`count`)"],
        ),
        (
            "[worker\ncommand = [\"app\"]\n",
            1,
            8,
            &["unclosed table", "expected `]`"],
        ),
        (
            "\u{e9}\u{e9} = 1\n",
            1,
            1,
            &["invalid unquoted key", "(`\u{e9}\u{e9}`)"],
        ),
        // Issue 11: a control character in a comment once gave an empty message.
        (
            "[worker]\ncommand = [\"app\"] # a \u{1} here\n",
            2,
            23,
            &["invalid comment character"],
        ),
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
    // Issue 11: the position of the invalid byte, not 0:0.
    assert_eq!((e.line, e.column), (2, 13));
    assert!(
        e.message.contains("not valid UTF-8") && e.message.contains("0xff"),
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
    // Issue 11: the position of the first byte past 1 MiB: MIN's 27 bytes on 2 lines, then
    // 15887 whole lines of 66 bytes and 7 bytes of the next one.
    assert_eq!((e.line, e.column), (15890, 8));
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
    // One line of NUL characters: the first byte past the limit is its 1048577th.
    assert_eq!((e.line, e.column), (1, MAX_FILE_SIZE + 1));
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
    let document = toml::de::DeTable::parse(&text).unwrap().into_inner();
    let keys: &[(&str, &[&str])] = &[
        (
            "handover",
            &[
                "fds_env",
                "runtime_dir",
                "watchdog_min_workers",
                "fd_store",
                "cgroups",
            ],
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
                "steering",
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
                "ready_socket",
                "ready_path",
                "ready_status",
                "ready_timeout",
                "notify_access",
                "restart_backoff_initial",
                "restart_backoff_max",
                "restart_backoff_reset",
                "watchdog",
                "user",
                "group",
                "no_new_privileges",
                "umask",
                "limit_nofile",
                "start_nice",
                "memory_max",
                "memory_high",
                "cpu_quota",
                "cpu_weight",
                "start_cpu_weight",
                "pids_max",
            ],
        ),
        (
            "health",
            &[
                "check",
                "interval",
                "timeout",
                "failures",
                "socket",
                "method",
                "path",
                "status",
                "command",
                "max_replacing",
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
                "canary_share",
                "max_draining",
            ],
        ),
        ("control", &["socket", "allow_uids"]),
        (
            "logs",
            &[
                "stdout", "stderr", "tag", "max_line", "max_size", "keep", "compress", "buffer",
                "format",
            ],
        ),
        ("endpoint", &["listen"]),
    ];
    for (section, names) in keys {
        let value = document
            .iter()
            .find(|(key, _)| key.get_ref() == section)
            .map(|(_, value)| value.get_ref())
            .unwrap_or_else(|| panic!("examples/handover.toml has no {section}"));
        let tables: Vec<&toml::de::DeTable<'_>> = match value {
            toml::de::DeValue::Table(t) => vec![t],
            toml::de::DeValue::Array(items) => items
                .iter()
                .filter_map(|i| i.get_ref().as_table())
                .collect(),
            other => panic!("{section}: {other:?}"),
        };
        let schema = match *section {
            "handover" => handover::KEYS,
            "socket" => sockets::KEYS,
            "worker" => worker::KEYS,
            "health" => health::KEYS,
            "reload" => reload::KEYS,
            "control" => control::KEYS,
            "endpoint" => endpoint::KEYS,
            _ => logs::KEYS,
        };
        assert_eq!(schema, *names, "the keys {section} validates");
        for name in *names {
            // The probe keys exclude ready_delay; the example shows them in a comment.
            let alternative = [
                "probe",
                "probe_interval",
                "probe_timeout",
                "ready_socket",
                "ready_path",
                "ready_status",
            ]
            .contains(name)
                || (*section == "health" && *name == "command");
            assert!(
                alternative || tables.iter().any(|t| t.keys().any(|k| k.get_ref() == name)),
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
                    names.contains(&key.get_ref().as_ref()),
                    "{section}.{key} is not in the schema list of this test"
                );
            }
        }
    }
}
