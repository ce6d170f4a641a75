//! `[worker]`: command, environment, signals, readiness, backoff, credentials.

use crate::config::grammar::stop_signal_from_name;
use crate::config::tests::{check_cases, ok, MIN};

use super::*;

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
fn check_readiness_parses() {
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"http\"\n");
    assert_eq!(
        config.worker.ready,
        ReadyMode::Check(Check {
            socket: None,
            http: Some(("/".into(), 200)),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        })
    );
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_socket = \"api\"\nready_path = \"/health?full=1\"\nready_status = 204\nprobe_interval = \"50ms\"\nprobe_timeout = \"1s\"\n");
    assert_eq!(
        config.worker.ready,
        ReadyMode::Check(Check {
            socket: Some("api".into()),
            http: Some(("/health?full=1".into(), 204)),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
        })
    );
    let config = ok("[worker]\ncommand = [\"app\"]\nready = \"connect\"\n");
    assert_eq!(
        config.worker.ready,
        ReadyMode::Check(Check {
            socket: None,
            http: None,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
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
        ("[worker]\ncommand = [\"app\"]\numask = \"0999\"\n", 3, 9, &["worker.umask: \"0999\" is not a umask", "like \"0027\""]),
        ("[worker]\ncommand = [\"app\"]\numask = \"07777\"\n", 3, 9, &["worker.umask: \"07777\" is not a umask"]),
        ("[worker]\ncommand = [\"app\"]\numask = 22\n", 3, 9, &["worker.umask: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\nlimit_nofile = 0\n", 3, 16, &["worker.limit_nofile: must be between 1 and 1073741824, got 0"]),
        ("[worker]\ncommand = [\"app\"]\nstart_nice = 20\n", 3, 14, &["worker.start_nice: must be between 0 and 19, got 20"]),
        ("[worker]\ncommand = [\"app\"]\nstart_nice = -5\n", 3, 14, &["worker.start_nice: must be between 0 and 19, got -5"]),
        ("[worker]\ncommand = [\"app\"]\nmemory_max = \"512K\"\n", 3, 14, &["worker.memory_max: must be between 1MiB and 1048576TiB, got 524288 bytes"]),
        ("[worker]\ncommand = [\"app\"]\nmemory_max = \"256 MB\"\n", 3, 14, &["worker.memory_max: unknown size unit \" MB\" in \"256 MB\""]),
        ("[worker]\ncommand = [\"app\"]\nmemory_max = -1\n", 3, 14, &["worker.memory_max: a size cannot be negative"]),
        ("[worker]\ncommand = [\"app\"]\nmemory_max = \"64M\"\nmemory_high = \"128M\"\n", 4, 15, &["worker.memory_high: must not be above memory_max (64MiB), got 128MiB"]),
        ("[worker]\ncommand = [\"app\"]\ncpu_quota = 50\n", 3, 13, &["worker.cpu_quota: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\ncpu_quota = \"0%\"\n", 3, 13, &["worker.cpu_quota: \"0%\" is not a CPU quota", "like \"50%\""]),
        ("[worker]\ncommand = [\"app\"]\ncpu_quota = \"1.5\"\n", 3, 13, &["worker.cpu_quota: \"1.5\" is not a CPU quota"]),
        ("[worker]\ncommand = [\"app\"]\ncpu_weight = 0\n", 3, 14, &["worker.cpu_weight: must be between 1 and 10000, got 0"]),
        ("[worker]\ncommand = [\"app\"]\nstart_cpu_weight = 10001\n", 3, 20, &["worker.start_cpu_weight: must be between 1 and 10000, got 10001"]),
        ("[worker]\ncommand = [\"app\"]\npids_max = 0\n", 3, 12, &["worker.pids_max: must be between 1 and 4194304, got 0"]),
        ("[worker]\ncommand = [\"app\"]\npids_max = \"64\"\n", 3, 12, &["worker.pids_max: expected an integer, got a string"]),
        ("[worker]\ncommand = [\"app\"]\nno_new_privileges = \"yes\"\n", 3, 21, &["worker.no_new_privileges: expected true or false, got a string"]),
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
        ("[worker]\ncommand = [\"app\"]\nready = \"socket\"\n", 3, 9, &["worker.ready: expected \"notify\", \"delay\", \"probe\", \"http\" or \"connect\", got \"socket\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\n", 3, 9, &["worker.probe", "needs probe = "]),
        ("[worker]\ncommand = [\"app\"]\nprobe = [\"true\"]\n", 3, 9, &["worker.probe: only applies with ready = \"probe\""]),
        ("[worker]\ncommand = [\"app\"]\nprobe_timeout = \"1s\"\n", 3, 17, &["worker.probe_timeout: only applies with ready = \"probe\", \"http\" or \"connect\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nprobe = [\"true\"]\n", 4, 9, &["worker.probe: only applies with ready = \"probe\" (ready is \"http\")"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"probe\"\nprobe = [\"true\"]\nready_socket = \"web\"\n", 5, 16, &["worker.ready_socket: only applies with ready = \"http\" or \"connect\""]),
        ("[worker]\ncommand = [\"app\"]\nready = \"connect\"\nready_path = \"/x\"\n", 4, 14, &["worker.ready_path: only applies with ready = \"http\" (ready is \"connect\")"]),
        ("[worker]\ncommand = [\"app\"]\nready_status = 200\n", 3, 16, &["worker.ready_status: only applies with ready = \"http\" (ready is \"notify\")"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_path = \"health\"\n", 4, 14, &["worker.ready_path: a request path starts with '/'"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_path = \"/a b\"\n", 4, 14, &["worker.ready_path: a request path starts with '/' and holds no space"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_path = \"/a\\r\\nX: y\"\n", 4, 14, &["worker.ready_path: a request path"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_status = 99\n", 4, 16, &["worker.ready_status: must be between 100 and 599, got 99"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_status = \"200\"\n", 4, 16, &["worker.ready_status: expected an integer, got a string"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"http\"\nready_socket = 1\n", 4, 16, &["worker.ready_socket: expected a string, got an integer"]),
        ("[worker]\ncommand = [\"app\"]\nready = \"connect\"\nprobe_interval = \"0s\"\n", 4, 18, &["worker.probe_interval: must be more than 0"]),
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
        ("[worker]\ncommand = [\"app\"]\nenv = \"A=1\"\n", 3, 7, &["worker.env: expected a table of variables", "got a string"]),
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
