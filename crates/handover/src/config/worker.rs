//! `[worker]`: the program handover runs, its environment, readiness, stop and restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::document::{Item, Res, Table};
use super::grammar::parse_stop_signal;

/// The keys of `[worker]`.
pub(super) const KEYS: &[&str] = &[
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
];

/// Largest `worker.count` (and `reload.batch_size`, `reload.max_extra`).
pub(super) const MAX_WORKERS: i64 = 1024;

/// How a worker tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadyMode {
    /// `ready = "notify"`: wait for `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// `ready = "delay"`: ready once alive for `ready_delay`.
    Delay(Duration),
    /// `ready = "probe"`: ready once `probe` exits 0.
    Probe(Probe),
    /// `ready = "http"` or `"connect"`: ready once handover's own request to the worker's
    /// generation, on its steered socket, is answered.
    Check(Check),
}

/// A readiness check handover makes itself, through the generation's steered socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// `ready_socket`: the `[[socket]]` to check; `None` for the first TCP socket.
    pub(crate) socket: Option<String>,
    /// For `ready = "http"`: `ready_path` (default "/") and `ready_status` (default 200).
    pub(crate) http: Option<(String, u16)>,
    /// `probe_interval`, default 500ms.
    pub(crate) interval: Duration,
    /// `probe_timeout`, default 5s.
    pub(crate) timeout: Duration,
}

/// A readiness probe: a command run until it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// `probe`: argv, run with the worker's environment plus `HANDOVER_WORKER_PID`.
    pub(crate) command: Vec<String>,
    /// `probe_interval`, default 500ms: the pause between the end of one attempt and the
    /// start of the next.
    pub(crate) interval: Duration,
    /// `probe_timeout`, default 5s: an attempt still running then is killed and failed.
    pub(crate) timeout: Duration,
}

/// Who may send notifications for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyAccess {
    /// `notify_access = "all"` (default): the worker and any process it started.
    All,
    /// `notify_access = "main"`: only the worker's own pid.
    Main,
}

/// Which of handover's environment variables a worker inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InheritEnv {
    /// `inherit_env = true` (default): all, minus the reserved ones.
    All,
    /// `inherit_env = false`: none.
    Nothing,
    /// `inherit_env = ["PATH", "HOME"]`: only these.
    Only(Vec<String>),
}

/// `[worker]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerConfig {
    /// `command`: argv, at least one element; the first is looked up in `PATH` when it has no `/`.
    pub(crate) command: Vec<String>,
    /// `env`: extra variables. Keys are validated: non-empty, no `=` or NUL, not reserved
    /// (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `HANDOVER_*`, the `fds_env` name).
    pub(crate) env: BTreeMap<String, String>,
    /// `inherit_env`.
    pub(crate) inherit_env: InheritEnv,
    /// `cwd`.
    pub(crate) cwd: Option<PathBuf>,
    /// `count`, 1..=1024, default 1.
    pub(crate) count: u32,
    /// `stop_signal`, a signal name like "SIGTERM" or "TERM"; default SIGTERM. Stored as number.
    pub(crate) stop_signal: i32,
    /// `stop_timeout`, default 10s.
    pub(crate) stop_timeout: Duration,
    /// `ready` (+ `ready_delay` for delay mode, default 1s).
    pub(crate) ready: ReadyMode,
    /// `ready_timeout`, default 60s.
    pub(crate) ready_timeout: Duration,
    /// `notify_access`.
    pub(crate) notify_access: NotifyAccess,
    /// `restart_backoff_initial`, default 100ms.
    pub(crate) backoff_initial: Duration,
    /// `restart_backoff_max`, default 30s.
    pub(crate) backoff_max: Duration,
    /// `restart_backoff_reset`: a worker ready this long resets its backoff. Default 10s.
    pub(crate) backoff_reset: Duration,
    /// `watchdog`: once ready, a worker sends `WATCHDOG=1` at least this often. Default: none.
    pub(crate) watchdog: Option<Duration>,
    /// `user`: name or numeric uid to run as (only when handover runs as root).
    pub(crate) user: Option<String>,
    /// `group`: name or numeric gid (default: the user's primary group).
    pub(crate) group: Option<String>,
    /// `no_new_privileges`: `PR_SET_NO_NEW_PRIVS` for the workers. Default: on when handover
    /// drops privileges for them (`user` or `group`), else off.
    pub(crate) no_new_privileges: Option<bool>,
    /// `umask`: an octal string like "0027". Default: handover's.
    pub(crate) umask: Option<u32>,
    /// `limit_nofile`: `RLIMIT_NOFILE` (soft and hard). Default: handover's.
    pub(crate) limit_nofile: Option<u64>,
    /// `start_nice`: workers start at this nice value, and get handover's back once ready.
    /// Default 0 (off).
    pub(crate) start_nice: i32,
    /// `memory_max`, `memory_high`, `cpu_quota`, `cpu_weight`, `start_cpu_weight`,
    /// `pids_max`: the limits of each worker's cgroup. Default: none.
    pub(crate) limits: handover_sys::cgroup::Limits,
}

/// Validates `[worker]`; `fds_env` is the variable `[handover]` reserved for the fd map.
pub(super) fn validate(table: &Table<'_>, fds_env: &str) -> Res<WorkerConfig> {
    let Some(command) = table.get("command") else {
        return Err(table.missing(
            "command",
            "give the program and its arguments, like command = [\"/usr/bin/myapp\", \
            \"--port\", \"8080\"]",
        ));
    };
    let command = argv(&command)?;
    let env = match table.get("env") {
        None => BTreeMap::new(),
        Some(v) => environment(&v, fds_env)?,
    };
    let inherit_env = match table.get("inherit_env") {
        None => InheritEnv::All,
        Some(v) => inherit_env(&v, fds_env)?,
    };
    let cwd = table.get("cwd").map(|v| v.absolute_path()).transpose()?;
    let count = table
        .get("count")
        .map_or(Ok(1), |v| v.integer(1, MAX_WORKERS))? as u32;
    let stop_signal = match table.get("stop_signal") {
        None => libc::SIGTERM,
        Some(v) => stop_signal(&v)?,
    };
    let stop_timeout = duration(table, "stop_timeout", Duration::from_secs(10))?;
    let ready = ready(table)?;
    let ready_timeout = positive_duration(table, "ready_timeout", Duration::from_secs(60))?;
    let notify_access = match table.get("notify_access") {
        None => NotifyAccess::All,
        Some(v) => match v.string()? {
            "all" => NotifyAccess::All,
            "main" => NotifyAccess::Main,
            other => return Err(v.bad(format!("expected \"all\" or \"main\", got {other:?}"))),
        },
    };
    let (backoff_initial, backoff_max) = backoff(table)?;
    let backoff_reset = duration(table, "restart_backoff_reset", Duration::from_secs(10))?;
    let watchdog = table
        .get("watchdog")
        .map(|v| v.positive_duration())
        .transpose()?;
    let user = match table.get("user") {
        None => None,
        Some(v) => {
            let user = v.non_empty_string()?;
            if user.contains(':') {
                return Err(
                    v.bad("a user name cannot contain ':'; set the group with group = \"...\"")
                );
            }
            Some(user.to_owned())
        }
    };
    let group = table
        .get("group")
        .map(|v| v.non_empty_string().map(str::to_owned))
        .transpose()?;
    let no_new_privileges = table
        .get("no_new_privileges")
        .map(|v| v.boolean())
        .transpose()?;
    let umask = match table.get("umask") {
        None => None,
        Some(v) => {
            let text = v.string()?;
            match u32::from_str_radix(text, 8) {
                Ok(mask) if !text.is_empty() && text.len() <= 4 && mask <= 0o777 => Some(mask),
                _ => {
                    return Err(v.bad(format!(
                        "{text:?} is not a umask; give octal digits as a string, like \"0027\""
                    )))
                }
            }
        }
    };
    let limit_nofile = table
        .get("limit_nofile")
        .map(|v| v.integer(1, 1 << 30))
        .transpose()?
        .map(|n| n as u64);
    let start_nice = table
        .get("start_nice")
        .map_or(Ok(0), |v| v.integer(0, 19))? as i32;
    let limits = limits(table)?;
    Ok(WorkerConfig {
        command,
        env,
        inherit_env,
        cwd,
        count,
        stop_signal,
        stop_timeout,
        ready,
        ready_timeout,
        notify_access,
        backoff_initial,
        backoff_max,
        backoff_reset,
        watchdog,
        user,
        group,
        no_new_privileges,
        umask,
        limit_nofile,
        start_nice,
        limits,
    })
}

/// Largest `pids_max` (the kernel's own limit, `pid_max`, is at most 2^22).
const MAX_PIDS: i64 = 1 << 22;

/// Largest `cpu_quota`: 1024 CPUs.
const MAX_CPU_PERCENT: u32 = 102_400;

/// The cgroup limits of `[worker]`.
fn limits(table: &Table<'_>) -> Res<handover_sys::cgroup::Limits> {
    // Below a mebibyte a worker cannot even load its program.
    const MIN_MEMORY: u64 = 1 << 20;
    const MAX_MEMORY: u64 = 1 << 60;
    let memory = |key: &str| {
        table
            .get(key)
            .map(|v| v.size(MIN_MEMORY, MAX_MEMORY, false))
            .transpose()
    };
    let memory_max = memory("memory_max")?;
    let memory_high = memory("memory_high")?;
    if let (Some(max), Some(high), Some(item)) = (memory_max, memory_high, table.get("memory_high"))
    {
        if high > max {
            return Err(item.bad(format!(
                "must not be above memory_max ({}), got {}",
                super::grammar::show_size(max),
                super::grammar::show_size(high)
            )));
        }
    }
    let cpu_quota = match table.get("cpu_quota") {
        None => None,
        Some(v) => {
            let text = v.string()?;
            let percent = text
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=MAX_CPU_PERCENT).contains(n));
            match percent {
                Some(p) => Some(p),
                None => {
                    return Err(v.bad(format!(
                        "{text:?} is not a CPU quota; give a percentage of one CPU from 1% to                          {MAX_CPU_PERCENT}%, like \"50%\" or \"200%\" (two CPUs)"
                    )))
                }
            }
        }
    };
    let weight = |key: &str| {
        table
            .get(key)
            .map(|v| v.integer(1, 10_000).map(|n| n as u32))
            .transpose()
    };
    let cpu_weight = weight("cpu_weight")?;
    let start_cpu_weight = weight("start_cpu_weight")?;
    let pids_max = table
        .get("pids_max")
        .map(|v| v.integer(1, MAX_PIDS).map(|n| n as u64))
        .transpose()?;
    Ok(handover_sys::cgroup::Limits {
        memory_max,
        memory_high,
        cpu_quota,
        cpu_weight,
        start_cpu_weight,
        pids_max,
    })
}

/// An optional duration key.
fn duration(table: &Table<'_>, key: &str, default: Duration) -> Res<Duration> {
    table.get(key).map_or(Ok(default), |v| v.duration())
}

/// An optional duration key that must be more than 0.
fn positive_duration(table: &Table<'_>, key: &str, default: Duration) -> Res<Duration> {
    table
        .get(key)
        .map_or(Ok(default), |v| v.positive_duration())
}

/// `command` or `probe`: a non-empty array of strings whose first one is not empty.
pub(super) fn argv(v: &Item<'_>) -> Res<Vec<String>> {
    let Some(items) = v.items() else {
        return Err(v.expected("an array of strings like [\"/usr/bin/myapp\", \"--flag\"]"));
    };
    if items.is_empty() {
        return Err(v.bad("must not be empty; give the program and its arguments"));
    }
    let mut argv = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let arg = item.string()?;
        if j == 0 && arg.is_empty() {
            return Err(item.bad("the program must not be empty"));
        }
        argv.push(arg.to_owned());
    }
    Ok(argv)
}

/// Why a variable name cannot be set or inherited for workers, if it cannot.
fn reserved_variable(name: &str, fds_env: &str) -> Option<String> {
    if name.starts_with("LISTEN_") {
        Some("LISTEN_* variables describe each worker's sockets and are set by handover".into())
    } else if name == "NOTIFY_SOCKET" {
        Some("NOTIFY_SOCKET is set by handover to each worker's own notification socket".into())
    } else if name.starts_with("WATCHDOG_") {
        Some(
            "WATCHDOG_* variables belong to systemd's watchdog protocol and are never passed \
            to workers"
                .into(),
        )
    } else if name.starts_with("HANDOVER_") {
        Some("HANDOVER_* variables are reserved for handover".into())
    } else if name == fds_env {
        Some(format!(
            "{name} is the [handover] fds_env variable, set by handover for each worker"
        ))
    } else {
        None
    }
}

/// `env`: a table of string variables, checked in the order they are written.
fn environment(v: &Item<'_>, fds_env: &str) -> Res<BTreeMap<String, String>> {
    let Some(table) = v.table() else {
        return Err(v.expected("a table of variables like { RUST_LOG = \"info\" }"));
    };
    let mut env = BTreeMap::new();
    for (key, value) in table.items() {
        let name: &str = key.get_ref();
        let why = if name.is_empty() {
            Some("a variable name must not be empty".to_owned())
        } else if name.contains('=') {
            Some("a variable name must not contain '='".to_owned())
        } else if name.contains('\0') {
            Some("a variable name must not contain a NUL character".to_owned())
        } else {
            reserved_variable(name, fds_env)
        };
        if let Some(why) = why {
            return Err(table.bad_key(key, why));
        }
        env.insert(name.to_owned(), value.string()?.to_owned());
    }
    Ok(env)
}

/// `inherit_env`: true, false or an array of names.
fn inherit_env(v: &Item<'_>, fds_env: &str) -> Res<InheritEnv> {
    let items = match (v.value(), v.items()) {
        (DeValue::Boolean(true), _) => return Ok(InheritEnv::All),
        (DeValue::Boolean(false), _) => return Ok(InheritEnv::Nothing),
        (_, Some(items)) => items,
        (_, None) => return Err(v.expected("true, false or an array of variable names")),
    };
    let mut names = Vec::with_capacity(items.len());
    for item in &items {
        let name = item.non_empty_string()?;
        if name.contains('=') {
            return Err(item.bad("a variable name must not contain '='"));
        }
        if let Some(why) = reserved_variable(name, fds_env) {
            return Err(item.bad(format!("{name} cannot be inherited: {why}")));
        }
        names.push(name.to_owned());
    }
    Ok(InheritEnv::Only(names))
}

/// `stop_signal`: a signal name.
fn stop_signal(v: &Item<'_>) -> Res<i32> {
    match v.value() {
        DeValue::String(name) => parse_stop_signal(name).map_err(|why| v.bad(why)),
        DeValue::Integer(_) => Err(v.bad("write a signal name like \"SIGTERM\", not a number")),
        _ => Err(v.expected("a signal name like \"SIGTERM\"")),
    }
}

/// `ready` and the keys of its modes: `ready_delay` for "delay"; `probe` for "probe";
/// `probe_interval` and `probe_timeout` for "probe", "http" and "connect"; `ready_socket` for
/// "http" and "connect"; `ready_path` and `ready_status` for "http". A key of another mode is
/// an error.
fn ready(table: &Table<'_>) -> Res<ReadyMode> {
    let ready = table.get("ready");
    let mode = match &ready {
        None => "notify",
        Some(v) => match v.string()? {
            mode @ ("notify" | "delay" | "probe" | "http" | "connect") => mode,
            other => {
                return Err(v.bad(format!(
                "expected \"notify\", \"delay\", \"probe\", \"http\" or \"connect\", got {other:?}"
            )))
            }
        },
    };
    let only = |keys: &[&str], modes: &[&str], wanted: &str| -> Res<()> {
        table.only_with(keys, ("ready", mode), modes, wanted)
    };
    only(&["probe"], &["probe"], "ready = \"probe\"")?;
    only(
        &["probe_interval", "probe_timeout"],
        &["probe", "http", "connect"],
        "ready = \"probe\", \"http\" or \"connect\"",
    )?;
    only(
        &["ready_socket"],
        &["http", "connect"],
        "ready = \"http\" or \"connect\"",
    )?;
    only(
        &["ready_path", "ready_status"],
        &["http"],
        "ready = \"http\"",
    )?;
    only(&["ready_delay"], &["delay"], "ready = \"delay\"")?;
    let interval = || positive_duration(table, "probe_interval", Duration::from_millis(500));
    let timeout = || positive_duration(table, "probe_timeout", Duration::from_secs(5));
    match (mode, ready) {
        ("probe", Some(ready)) => {
            let Some(probe) = table.get("probe") else {
                return Err(ready.bad_as(
                    &table.key_path("probe"),
                    "ready = \"probe\" needs probe = [\"program\", \"args\"...]",
                ));
            };
            Ok(ReadyMode::Probe(Probe {
                command: argv(&probe)?,
                interval: interval()?,
                timeout: timeout()?,
            }))
        }
        ("http" | "connect", _) => {
            let socket = match table.get("ready_socket") {
                Some(v) => Some(v.string()?.to_owned()),
                None => None,
            };
            let http = if mode == "http" {
                let path = match table.get("ready_path") {
                    Some(v) => {
                        let path = v.string()?;
                        if !path.starts_with('/')
                            || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                        {
                            return Err(v.bad(
                                "a request path starts with '/' and holds no space or control \
                                 character, like \"/health\"",
                            ));
                        }
                        path.to_owned()
                    }
                    None => "/".to_owned(),
                };
                let status = table
                    .get("ready_status")
                    .map_or(Ok(200), |v| v.integer(100, 599))? as u16;
                Some((path, status))
            } else {
                None
            };
            Ok(ReadyMode::Check(Check {
                socket,
                http,
                interval: interval()?,
                timeout: timeout()?,
            }))
        }
        ("delay", _) => Ok(ReadyMode::Delay(duration(
            table,
            "ready_delay",
            Duration::from_secs(1),
        )?)),
        _ => Ok(ReadyMode::Notify),
    }
}

/// `restart_backoff_initial` and `restart_backoff_max`, which must be in order.
fn backoff(table: &Table<'_>) -> Res<(Duration, Duration)> {
    let initial_v = table.get("restart_backoff_initial");
    let max_v = table.get("restart_backoff_max");
    let initial = initial_v
        .as_ref()
        .map_or(Ok(Duration::from_millis(100)), |v| v.positive_duration())?;
    let max = max_v
        .as_ref()
        .map_or(Ok(Duration::from_secs(30)), |v| v.duration())?;
    if max >= initial {
        return Ok((initial, max));
    }
    Err(match (max_v, initial_v) {
        (Some(v), _) => v.bad(format!(
            "must be at least restart_backoff_initial ({initial:?}), got {max:?}"
        )),
        (None, Some(v)) => v.bad(format!(
            "{initial:?} is more than restart_backoff_max ({max:?}, the default); raise \
            restart_backoff_max too"
        )),
        // The defaults are in order, so one of the two is set.
        (None, None) => table.missing(
            "restart_backoff_max",
            "it must be at least restart_backoff_initial",
        ),
    })
}

#[cfg(test)]
mod tests;
