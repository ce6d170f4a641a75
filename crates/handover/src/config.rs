//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing and validation make no syscalls (so `handover check` has no side effects); turning
//! user and group names into ids and binding sockets happen later, in `main`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[cfg(test)]
mod tests;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[handover]` settings.
    pub handover: HandoverSection,
    /// `[[socket]]` entries, in file order. This order is the fd order workers see.
    pub sockets: Vec<SocketConfig>,
    /// `[worker]`.
    pub worker: WorkerConfig,
    /// `[reload]`.
    pub reload: ReloadConfig,
    /// `[control]`.
    pub control: ControlConfig,
    /// `[logs]`.
    pub logs: LogsConfig,
}

/// `[handover]`: settings of the supervisor itself.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoverSection {
    /// Name of the JSON name -> `/dev/fd/N` variable given to workers. Default `HANDOVER_FDS`.
    pub fds_env: String,
    /// Where per-worker notify sockets and the control socket live. Default: see docs.
    pub runtime_dir: Option<PathBuf>,
    /// Under a systemd watchdog (`WatchdogSec=`), send `WATCHDOG=1` only while at least this
    /// many workers of the serving generation are ready. Default 0 (the loop being alive is
    /// enough).
    pub watchdog_min_workers: u32,
    /// Under systemd, hand sockets handover bound itself to systemd's fd store (`FDSTORE=1`),
    /// so a restart gets them back. Default true.
    pub fd_store: bool,
}

/// One `[[socket]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketConfig {
    /// `name`: matched against `LISTEN_FDNAMES`; passed to workers.
    pub name: String,
    /// `listen`: where to bind when systemd did not pass a socket of that name. `None` only
    /// when `from_systemd = true` and no `listen` was given.
    pub listen: Option<ListenAddress>,
    /// `backlog`, default 4096 (systemd's default, SOMAXCONN).
    pub backlog: u32,
    /// `reuse_port`, default false.
    pub reuse_port: bool,
    /// `mode` of a unix socket file (octal string in the file, e.g. "0660"). Unix only.
    pub mode: Option<u32>,
    /// `owner` of a unix socket file: "user" or "user:group". Unix only.
    pub owner: Option<String>,
    /// `from_systemd = true`: this socket must come from systemd; never bind it.
    pub from_systemd: bool,
}

/// A `listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `host:port` or `[v6]:port`; `host` is an IP literal (no name lookups).
    Tcp(std::net::SocketAddr),
    /// An absolute path (starting with `/`), at most 107 bytes.
    Unix(PathBuf),
}

/// How a worker tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// `ready = "notify"`: wait for `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// `ready = "delay"`: ready once alive for `ready_delay`.
    Delay(Duration),
    /// `ready = "probe"`: ready once `probe` exits 0.
    Probe(Probe),
}

/// A readiness probe: a command run until it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `probe`: argv, run with the worker's environment plus `HANDOVER_WORKER_PID`.
    pub command: Vec<String>,
    /// `probe_interval`, default 500ms: the pause between the end of one attempt and the
    /// start of the next.
    pub interval: Duration,
    /// `probe_timeout`, default 5s: an attempt still running then is killed and failed.
    pub timeout: Duration,
}

/// Who may send notifications for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyAccess {
    /// `notify_access = "all"` (default): the worker and any process it started.
    All,
    /// `notify_access = "main"`: only the worker's own pid.
    Main,
}

/// Which of handover's environment variables a worker inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InheritEnv {
    /// `inherit_env = true` (default): all, minus the reserved ones.
    All,
    /// `inherit_env = false`: none.
    Nothing,
    /// `inherit_env = ["PATH", "HOME"]`: only these.
    Only(Vec<String>),
}

/// `[worker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// `command`: argv, at least one element; the first is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// `env`: extra variables. Keys are validated: non-empty, no `=` or NUL, not reserved
    /// (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `HANDOVER_*`, the `fds_env` name).
    pub env: BTreeMap<String, String>,
    /// `inherit_env`.
    pub inherit_env: InheritEnv,
    /// `cwd`.
    pub cwd: Option<PathBuf>,
    /// `count`, 1..=1024, default 1.
    pub count: u32,
    /// `stop_signal`, a signal name like "SIGTERM" or "TERM"; default SIGTERM. Stored as number.
    pub stop_signal: i32,
    /// `stop_timeout`, default 10s.
    pub stop_timeout: Duration,
    /// `ready` (+ `ready_delay` for delay mode, default 1s).
    pub ready: ReadyMode,
    /// `ready_timeout`, default 60s.
    pub ready_timeout: Duration,
    /// `notify_access`.
    pub notify_access: NotifyAccess,
    /// `restart_backoff_initial`, default 100ms.
    pub backoff_initial: Duration,
    /// `restart_backoff_max`, default 30s.
    pub backoff_max: Duration,
    /// `restart_backoff_reset`: a worker ready this long resets its backoff. Default 10s.
    pub backoff_reset: Duration,
    /// `user`: name or numeric uid to run as (only when handover runs as root).
    pub user: Option<String>,
    /// `group`: name or numeric gid (default: the user's primary group).
    pub group: Option<String>,
}

/// How a reload replaces workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `strategy = "all-at-once"` (default): start every new worker, then drain every old one.
    AllAtOnce,
    /// `strategy = "rolling"`: `batch_size` new workers at a time, at most `max_extra` more
    /// workers alive than `count`.
    Rolling {
        /// `batch_size`, default 1.
        batch_size: u32,
        /// `max_extra`, default = batch_size.
        max_extra: u32,
    },
}

/// `[reload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    /// `timeout`: a whole reload must finish within this. Default 5 minutes.
    pub timeout: Duration,
    /// `drain_timeout`: an old generation gets this long after its stop signal. Default 30s.
    pub drain_timeout: Duration,
    /// `strategy` (+ `batch_size`, `max_extra`).
    pub strategy: Strategy,
    /// `canary`: start one new worker first, the rest once it is ready. Default false.
    pub canary: bool,
    /// `max_draining`: generations allowed to drain at once. Default 4.
    pub max_draining: u32,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// `socket`: path of the control socket. Default: see docs/control-protocol.md.
    pub socket: Option<PathBuf>,
    /// `allow_uids`: uids besides handover's own and root allowed to use it.
    pub allow_uids: Vec<u32>,
}

/// Where one of workers' output streams goes (`[logs] stdout`, `stderr`): the supervisor's
/// own type, which holds nothing of TOML.
pub use handover_supervisor::Sink as LogSink;

/// `[logs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    /// `stdout`. Default inherit.
    pub stdout: LogSink,
    /// `stderr`. Default inherit.
    pub stderr: LogSink,
    /// `tag`: tag lines in files. Default true.
    pub tag: bool,
    /// `max_line` in bytes. Default 16 KiB.
    pub max_line: u64,
    /// `max_size` in bytes; 0 never rotates. Default 10 MiB.
    pub max_size: u64,
    /// `keep`. Default 10.
    pub keep: u32,
    /// `compress`. Default true.
    pub compress: bool,
    /// `buffer` in bytes. Default 1 MiB.
    pub buffer: u64,
}

impl Default for LogsConfig {
    fn default() -> LogsConfig {
        LogsConfig {
            stdout: LogSink::Inherit,
            stderr: LogSink::Inherit,
            tag: true,
            max_line: 16 * KIB,
            max_size: 10 * MIB,
            keep: 10,
            compress: true,
            buffer: MIB,
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Parses a size: a number of bytes, optionally followed directly by a unit (`B`, `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB`; all powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{text:?} is not a size: write a number of bytes, optionally with a unit, like \"16KiB\" or \"10MiB\""
        ));
    }
    let (number, unit) = text.split_at(digits);
    let unit_size = match unit {
        "" | "B" => 1,
        "K" | "KiB" => KIB,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "T" | "TiB" => TIB,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB, MiB, GiB or TiB (K, M, G, T for short)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_size))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when the error has no position, e.g. an unreadable file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Largest configuration file [`Config::load`] reads, in bytes (1 MiB).
pub const MAX_FILE_SIZE: usize = 1024 * 1024;

/// Longest unix socket path in bytes: `sun_path` holds 108 bytes including the final NUL.
pub const UNIX_PATH_MAX: usize = 107;

/// Default of `[handover] fds_env`.
pub const DEFAULT_FDS_ENV: &str = "HANDOVER_FDS";

/// Longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest socket name (systemd's `FDNAME_MAX`).
const FDNAME_MAX: usize = 255;

/// Largest `worker.count` (and `reload.batch_size`, `reload.max_extra`).
const MAX_WORKERS: i64 = 1024;

/// The signals `stop_signal` accepts.
const STOP_SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGCONT", libc::SIGCONT),
    ("SIGALRM", libc::SIGALRM),
];

/// Variables handover sets for every worker, besides `LISTEN_*`, `NOTIFY_SOCKET` and the
/// `fds_env` one.
const HANDOVER_SET: &[&str] = &[
    "HANDOVER_FD_NUMBERS",
    "HANDOVER_WORKER",
    "HANDOVER_GENERATION",
];

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "{addr}"),
            ListenAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file. No side effects besides reading `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = read_capped(path).map_err(|message| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message,
        })?;
        Config::parse(path, &text)
    }

    /// Validates configuration text as if read from `path`.
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Cx { path, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
        cx.build(raw)
    }
}

/// Parses a duration: a non-negative decimal number and a unit, `ms`, `s`, `m` or `h`, such as
/// `"250ms"`, `"10s"`, `"1.5s"` or `"5m"`, at most 24 hours. The error says what is wrong
/// (without a key name).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str =
        "expected a number followed by a unit (ms, s, m or h), like \"10s\" or \"1.5s\"";
    if text.starts_with('-') {
        return Err(format!("{text:?}: a duration cannot be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration; {HINT}"));
    }
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "" => {
            return Err(format!(
                "{text:?} has no unit; write \"{number}s\" for seconds (or use ms, m, h)"
            ))
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!("{text:?} is not a duration; {HINT}"));
    }
    let too_long = || format!("{text:?} is too long; the maximum is 24h");
    // 20 digits keep `whole * unit_ns` far below u128::MAX.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return Err(too_long());
    }
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = nanos * 10 + u128::from(digit - b'0');
    }
    nanos *= unit_ns;
    // Digits beyond nanosecond precision do not matter; 18 of them are plenty.
    let fraction = &fraction[..fraction.len().min(18)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes() {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    nanos += numerator * unit_ns / denominator;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// The number of a signal `stop_signal` accepts, from its name: `"SIGTERM"`, `"TERM"` and
/// `"sigterm"` all give `libc::SIGTERM`. `None` for any other name.
pub fn stop_signal_from_name(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    STOP_SIGNALS
        .iter()
        .find(|(full, _)| &full[3..] == bare)
        .map(|&(_, number)| number)
}

// ---------------------------------------------------------------------------------------------
// Reading

fn read_capped(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read the configuration file: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > MAX_FILE_SIZE {
        return Err(format!(
            "the configuration file is too large: more than {MAX_FILE_SIZE} bytes (1 MiB)"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        format!("the configuration file is not valid UTF-8 (first invalid byte on line {line})")
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

// ---------------------------------------------------------------------------------------------
// The file as deserialized: every key optional, every value with its position.

type Val = Spanned<toml::Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFile {
    handover: Option<Table<RawHandover>>,
    socket: Option<Vec<Spanned<Table<RawSocket>>>>,
    worker: Option<Table<RawWorker>>,
    reload: Option<Table<RawReload>>,
    control: Option<Table<RawControl>>,
    logs: Option<Table<RawLogs>>,
}

/// A struct that must be written as a TOML table. (A derived `Deserialize` would also take
/// an array, filling the fields in order.)
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Table<T>, D::Error> {
        deserializer.deserialize_map(TableVisitor(std::marker::PhantomData))
    }
}

struct TableVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHandover {
    fds_env: Option<Val>,
    runtime_dir: Option<Val>,
    watchdog_min_workers: Option<Val>,
    fd_store: Option<Val>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSocket {
    name: Option<Val>,
    listen: Option<Val>,
    backlog: Option<Val>,
    reuse_port: Option<Val>,
    mode: Option<Val>,
    owner: Option<Val>,
    from_systemd: Option<Val>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawWorker {
    command: Option<Spanned<List>>,
    env: Option<BTreeMap<Spanned<String>, Val>>,
    inherit_env: Option<Spanned<List>>,
    cwd: Option<Val>,
    count: Option<Val>,
    stop_signal: Option<Val>,
    stop_timeout: Option<Val>,
    ready: Option<Val>,
    ready_delay: Option<Val>,
    probe: Option<Spanned<List>>,
    probe_interval: Option<Val>,
    probe_timeout: Option<Val>,
    ready_timeout: Option<Val>,
    notify_access: Option<Val>,
    restart_backoff_initial: Option<Val>,
    restart_backoff_max: Option<Val>,
    restart_backoff_reset: Option<Val>,
    user: Option<Val>,
    group: Option<Val>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawReload {
    timeout: Option<Val>,
    drain_timeout: Option<Val>,
    strategy: Option<Val>,
    batch_size: Option<Val>,
    max_extra: Option<Val>,
    canary: Option<Val>,
    max_draining: Option<Val>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLogs {
    stdout: Option<Val>,
    stderr: Option<Val>,
    tag: Option<Val>,
    max_line: Option<Val>,
    max_size: Option<Val>,
    keep: Option<Val>,
    compress: Option<Val>,
    buffer: Option<Val>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawControl {
    socket: Option<Val>,
    allow_uids: Option<Spanned<List>>,
}

/// A value expected to be an array: its items with their positions, or what it is instead.
enum List {
    Items(Vec<Val>),
    Other(toml::Value),
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<List, D::Error> {
        deserializer.deserialize_any(ListVisitor)
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = List;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<List, E> {
        Ok(List::Other(toml::Value::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<List, E> {
        Ok(List::Other(toml::Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<List, E> {
        Ok(List::Other(i64::try_from(v).map_or(
            toml::Value::Float(v as f64),
            toml::Value::Integer,
        )))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<List, E> {
        Ok(List::Other(toml::Value::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<List, E> {
        Ok(List::Other(toml::Value::String(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Val>()? {
            items.push(item);
        }
        Ok(List::Items(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<List, A::Error> {
        toml::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(List::Other)
    }
}

// ---------------------------------------------------------------------------------------------
// Where keys are, for errors serde reports only by position, and for tables (which carry no
// position of their own when they are dotted or implicit).

struct KeyEntry {
    /// Display path, such as `worker.env.PATH` or `socket[1].name`.
    path: String,
    /// Path of the table or array holding it (empty at the top level).
    parent: String,
    /// Where the key is written (none for array items).
    key: Option<Range<usize>>,
    /// Where the value is written (only for values that are neither tables nor arrays).
    value: Option<Range<usize>>,
}

struct KeyIndex {
    entries: Vec<KeyEntry>,
}

impl KeyIndex {
    /// Indexes every key of a syntactically valid document (None if it is not).
    fn build(text: &str) -> Option<KeyIndex> {
        let shape: toml::Table = text.parse().ok()?;
        let mut entries = Vec::new();
        let seed = TableSeed {
            shape: &shape,
            prefix: "",
            out: &mut entries,
        };
        seed.deserialize(toml::Deserializer::new(text)).ok()?;
        Some(KeyIndex { entries })
    }

    /// The entry an error at `span` of `text` is about: the key written exactly there, else
    /// the table whose `[header]` starts there, else the innermost value containing it, else
    /// the last key before it.
    fn entry_at(&self, text: &str, span: &Range<usize>) -> Option<&KeyEntry> {
        if let Some(entry) = self.entries.iter().find(|e| e.key.as_ref() == Some(span)) {
            return Some(entry);
        }
        let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        if text[span.start..].starts_with('[') && text[line_start..span.start].trim().is_empty() {
            let header_end = text[span.start..]
                .find(']')
                .map_or(span.end, |i| span.start + i);
            let named = self
                .entries
                .iter()
                .filter(|e| {
                    e.key
                        .as_ref()
                        .is_some_and(|k| span.start < k.start && k.start < header_end)
                })
                .max_by_key(|e| e.key.as_ref().map_or(0, |k| k.start));
            if named.is_some() {
                return named;
            }
        }
        let containing = self
            .entries
            .iter()
            .filter(|e| {
                e.value
                    .as_ref()
                    .is_some_and(|v| v.start <= span.start && span.start < v.end.max(v.start + 1))
            })
            .min_by_key(|e| e.value.as_ref().map_or(usize::MAX, |v| v.len()));
        if containing.is_some() {
            return containing;
        }
        self.entries
            .iter()
            .filter(|e| e.key.as_ref().is_some_and(|k| k.start <= span.start))
            .max_by_key(|e| e.key.as_ref().map_or(0, |k| k.start))
    }

    fn key_of(&self, path: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .and_then(|e| e.key.clone())
    }
}

/// A key as it appears in a path: bare when it can be written bare in TOML, quoted otherwise.
fn path_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        path_key(key)
    } else {
        format!("{prefix}.{}", path_key(key))
    }
}

struct TableSeed<'a> {
    shape: &'a toml::Table,
    prefix: &'a str,
    out: &'a mut Vec<KeyEntry>,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let path = join(self.prefix, key.get_ref());
            let mut entry = KeyEntry {
                path: path.clone(),
                parent: self.prefix.to_owned(),
                key: Some(key.span()),
                value: None,
            };
            match self.shape.get(key.get_ref()) {
                Some(toml::Value::Table(table)) => {
                    self.out.push(entry);
                    map.next_value_seed(TableSeed {
                        shape: table,
                        prefix: &path,
                        out: self.out,
                    })?;
                }
                Some(toml::Value::Array(array)) => {
                    self.out.push(entry);
                    map.next_value_seed(ArraySeed {
                        shape: array,
                        prefix: &path,
                        out: self.out,
                    })?;
                }
                _ => {
                    entry.value = Some(map.next_value::<Spanned<IgnoredAny>>()?.span());
                    self.out.push(entry);
                }
            }
        }
        Ok(())
    }
}

struct ArraySeed<'a> {
    shape: &'a [toml::Value],
    prefix: &'a str,
    out: &'a mut Vec<KeyEntry>,
}

impl<'de> DeserializeSeed<'de> for ArraySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for (i, item) in self.shape.iter().enumerate() {
            let path = format!("{}[{i}]", self.prefix);
            let mut entry = KeyEntry {
                path: path.clone(),
                parent: self.prefix.to_owned(),
                key: None,
                value: None,
            };
            match item {
                toml::Value::Table(table) => {
                    self.out.push(entry);
                    seq.next_element_seed(TableSeed {
                        shape: table,
                        prefix: &path,
                        out: self.out,
                    })?;
                }
                toml::Value::Array(array) => {
                    self.out.push(entry);
                    seq.next_element_seed(ArraySeed {
                        shape: array,
                        prefix: &path,
                        out: self.out,
                    })?;
                }
                _ => {
                    entry.value = seq.next_element::<Spanned<IgnoredAny>>()?.map(|v| v.span());
                    self.out.push(entry);
                }
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

type Res<T> = Result<T, ConfigError>;

/// What a value is, for "expected X, got Y" messages.
/// `16KiB`, `1MiB`, `4096B`: a size in the largest unit that divides it.
fn show_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
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

/// Checks a socket name the way systemd's `fdname_is_valid()` does.
fn check_socket_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > FDNAME_MAX {
        return Err(format!(
            "is {} bytes long, the limit is {FDNAME_MAX}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "contains {c:?}; a socket name is printable ASCII (space to '~')"
        ));
    }
    if name.contains(':') {
        return Err("must not contain ':', which separates the names in LISTEN_FDNAMES".into());
    }
    Ok(())
}

/// Parses a `listen` value, saying what is wrong and how to write it instead.
fn parse_listen(text: &str) -> Result<ListenAddress, String> {
    if text.starts_with('/') {
        if text.len() > UNIX_PATH_MAX {
            return Err(format!(
                "unix socket path is {} bytes, the limit is {UNIX_PATH_MAX}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err("unix socket path contains a NUL character".into());
        }
        if text.ends_with('/') {
            return Err(format!(
                "{text:?} ends with '/'; give the path of the socket file itself"
            ));
        }
        return Ok(ListenAddress::Unix(PathBuf::from(text)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ListenAddress::Tcp(addr));
    }
    const FORMS: &str = "use \"IP:port\" (like \"127.0.0.1:8080\" or \"[::1]:8080\") or an \
        absolute unix socket path";
    if text.is_empty() {
        return Err(format!("must not be empty; {FORMS}"));
    }
    if text.starts_with('@') {
        return Err(format!("abstract unix sockets are not supported; {FORMS}"));
    }
    if text.parse::<u16>().is_ok() {
        return Err(format!(
            "{text:?} has no address; write \"0.0.0.0:{text}\" (every IPv4 address), \
                \"[::]:{text}\" (every IPv6 address) or \"127.0.0.1:{text}\" (this machine only)"
        ));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("{text:?} has no port; write \"{text}:PORT\""),
            IpAddr::V6(_) => match text.rsplit_once(':') {
                // "::1:8080" is an IPv6 address, but more likely meant as [::1]:8080.
                Some((host, port))
                    if host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() =>
                {
                    format!(
                        "{text:?} is an IPv6 address without a port; an IPv6 address needs \
                        brackets, as in \"[{host}]:{port}\""
                    )
                }
                _ => format!("{text:?} has no port; write \"[{text}]:PORT\""),
            },
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is neither an address nor a path; {FORMS}"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "{text:?}: {port:?} is not a port; a port is a number from 0 to 65535"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Err(format!("{text:?}: {inner:?} is not an IPv6 address"));
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "{text:?}: an IPv6 address needs brackets, as in \"[{host}]:{port}\""
        ));
    }
    if host == "localhost" {
        return Err(format!(
            "{text:?}: the host must be an IP address, not a name (handover does no DNS \
                lookups); for localhost write \"127.0.0.1:{port}\" or \"[::1]:{port}\""
        ));
    }
    if host.is_empty() || host == "*" {
        return Err(format!(
            "{text:?} has no address; write \"0.0.0.0:{port}\" (every IPv4 address) or \
                \"[::]:{port}\" (every IPv6 address)"
        ));
    }
    Err(format!(
        "{text:?}: the host {host:?} must be an IP address, not a name (handover does no DNS \
            lookups); write the address to listen on, like \"127.0.0.1:{port}\", or \
            \"0.0.0.0:{port}\" for every interface"
    ))
}

/// Turns a toml message into one line.
fn tidy(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Cx<'_> {
    fn at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about the value `v` of `key`.
    fn bad<T>(&self, v: &Spanned<T>, key: &str, what: impl fmt::Display) -> ConfigError {
        self.at(v.span().start, format!("{key}: {what}"))
    }

    /// Where a table starts: its `[header]` when it has one, else where its name is first
    /// written (a dotted key or inline table), else the start of the file.
    fn table_offset(&self, name: &str) -> usize {
        let Some(key) = KeyIndex::build(self.text).and_then(|index| index.key_of(name)) else {
            return 0;
        };
        let before = self.text[..key.start].trim_end_matches([' ', '\t']);
        if before.ends_with("[[") {
            before.len() - 2
        } else if before.ends_with('[') {
            before.len() - 1
        } else {
            key.start
        }
    }

    /// A deserialization error: TOML syntax, an unknown key, or a value of a shape serde
    /// could not take (a table where a value belongs, an array where a table belongs...).
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        if let Err(syntax) = self.text.parse::<toml::Table>() {
            return self.at(syntax.span().map_or(0, |s| s.start), tidy(syntax.message()));
        }
        let message = tidy(error.message());
        let Some(span) = error.span() else {
            return self.at(0, message);
        };
        let index = KeyIndex::build(self.text);
        let entry = index
            .as_ref()
            .and_then(|index| index.entry_at(self.text, &span));
        let Some(entry) = entry else {
            return self.at(span.start, message);
        };
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let expected = rest.split_once('`').map_or("", |(_, tail)| tail);
            return self.at(span.start, format!("{}: unknown key{expected}", entry.path));
        }
        if message.contains("expected a borrowed string") {
            // toml's way of failing a positioned value that is a table written with dotted
            // keys: the error sits on the first key below it.
            return self.at(
                span.start,
                format!("{}: expected a value, got a table", entry.parent),
            );
        }
        if entry.path == "socket" && message.contains("expected a sequence") {
            return self.at(
                span.start,
                "socket: sockets are an array of tables: write [[socket]] (double brackets), \
                    not [socket]",
            );
        }
        self.at(span.start, format!("{}: {message}", entry.path))
    }

    fn string<'v>(&self, key: &str, v: &'v Val) -> Res<&'v str> {
        match v.get_ref() {
            toml::Value::String(s) if s.contains('\0') => {
                Err(self.bad(v, key, "contains a NUL character"))
            }
            toml::Value::String(s) => Ok(s),
            other => Err(self.bad(v, key, format!("expected a string, got {}", kind(other)))),
        }
    }

    fn non_empty_string<'v>(&self, key: &str, v: &'v Val) -> Res<&'v str> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            return Err(self.bad(v, key, "must not be empty"));
        }
        Ok(s)
    }

    fn boolean(&self, key: &str, v: &Val) -> Res<bool> {
        match v.get_ref() {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(self.bad(
                v,
                key,
                format!("expected true or false, got {}", kind(other)),
            )),
        }
    }

    fn integer(&self, key: &str, v: &Val, min: i64, max: i64) -> Res<i64> {
        match v.get_ref() {
            toml::Value::Integer(n) if (min..=max).contains(n) => Ok(*n),
            toml::Value::Integer(n) => {
                Err(self.bad(v, key, format!("must be between {min} and {max}, got {n}")))
            }
            other => Err(self.bad(v, key, format!("expected an integer, got {}", kind(other)))),
        }
    }

    fn duration(&self, key: &str, v: &Val) -> Res<Duration> {
        match v.get_ref() {
            toml::Value::String(s) => parse_duration(s).map_err(|why| self.bad(v, key, why)),
            toml::Value::Integer(n) if *n < 0 => Err(self.bad(
                v,
                key,
                "a duration cannot be \
                negative",
            )),
            toml::Value::Integer(n) => Err(self.bad(
                v,
                key,
                format!(
                    "a duration needs a unit: write \"{n}s\" for seconds (or \"{n}ms\", \
                    \"{n}m\", \"{n}h\")"
                ),
            )),
            toml::Value::Float(x) => Err(self.bad(
                v,
                key,
                format!(
                    "a duration is a string with a unit: write \"{x}s\" for seconds (or ms, \
                    m, h)"
                ),
            )),
            other => Err(self.bad(
                v,
                key,
                format!(
                    "expected a duration like \"10s\", got \
                {}",
                    kind(other)
                ),
            )),
        }
    }

    fn opt_duration(&self, key: &str, v: Option<&Val>, default: Duration) -> Res<Duration> {
        v.map_or(Ok(default), |v| self.duration(key, v))
    }

    fn positive_duration(&self, key: &str, v: Option<&Val>, default: Duration) -> Res<Duration> {
        let d = self.opt_duration(key, v, default)?;
        match v {
            Some(v) if d.is_zero() => Err(self.bad(v, key, "must be more than 0")),
            _ => Ok(d),
        }
    }

    fn absolute_path(&self, key: &str, v: &Val) -> Res<PathBuf> {
        let s = self.string(key, v)?;
        if !s.starts_with('/') {
            return Err(self.bad(
                v,
                key,
                format!("{s:?} is not an absolute path (it must start with /)"),
            ));
        }
        Ok(PathBuf::from(s))
    }

    fn build(&self, raw: RawFile) -> Res<Config> {
        let handover = self.handover(raw.handover.map(|t| t.0).unwrap_or_default())?;
        let sockets = self.sockets(raw.socket.unwrap_or_default())?;
        let Some(Table(worker)) = raw.worker else {
            return Err(self.at(
                0,
                "worker: the [worker] table is missing; it needs at least command = \
                    [\"/path/to/program\"]",
            ));
        };
        let worker = self.worker(worker, &handover.fds_env)?;
        let reload = self.reload(raw.reload.map(|t| t.0).unwrap_or_default())?;
        let control = self.control(raw.control.map(|t| t.0).unwrap_or_default())?;
        let logs = self.logs(raw.logs.map(|t| t.0).unwrap_or_default())?;
        Ok(Config {
            path: self.path.to_path_buf(),
            handover,
            sockets,
            worker,
            reload,
            control,
            logs,
        })
    }

    fn handover(&self, raw: RawHandover) -> Res<HandoverSection> {
        let fds_env = match &raw.fds_env {
            None => DEFAULT_FDS_ENV.to_owned(),
            Some(v) => {
                const KEY: &str = "handover.fds_env";
                let name = self.string(KEY, v)?;
                let mut chars = name.chars();
                let valid = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(self.bad(
                        v,
                        KEY,
                        format!(
                            "{name:?} is not a valid variable name (letters, digits and \
                            '_', not starting with a digit)"
                        ),
                    ));
                }
                if name.starts_with("LISTEN_")
                    || name == "NOTIFY_SOCKET"
                    || name.starts_with("WATCHDOG_")
                {
                    return Err(self.bad(
                        v,
                        KEY,
                        format!("{name} is a variable of systemd's protocols; choose another name"),
                    ));
                }
                if HANDOVER_SET.contains(&name) {
                    return Err(self.bad(
                        v,
                        KEY,
                        format!("{name} is already set by handover; choose another name"),
                    ));
                }
                name.to_owned()
            }
        };
        let runtime_dir = raw
            .runtime_dir
            .as_ref()
            .map(|v| self.absolute_path("handover.runtime_dir", v))
            .transpose()?;
        let watchdog_min_workers = match &raw.watchdog_min_workers {
            None => 0,
            Some(v) => self.integer("handover.watchdog_min_workers", v, 0, 1024)? as u32,
        };
        let fd_store = match &raw.fd_store {
            None => true,
            Some(v) => self.boolean("handover.fd_store", v)?,
        };
        Ok(HandoverSection {
            fds_env,
            runtime_dir,
            watchdog_min_workers,
            fd_store,
        })
    }

    fn sockets(&self, raw: Vec<Spanned<Table<RawSocket>>>) -> Res<Vec<SocketConfig>> {
        let mut sockets: Vec<SocketConfig> = Vec::with_capacity(raw.len());
        let mut name_offsets: Vec<usize> = Vec::with_capacity(raw.len());
        for (i, item) in raw.iter().enumerate() {
            let table = item.span().start;
            let s = &item.get_ref().0;
            let key = |k: &str| format!("socket[{i}].{k}");

            let Some(name_v) = &s.name else {
                return Err(self.at(
                    table,
                    format!(
                        "{}: missing; every socket needs a name (matched against systemd's \
                        FileDescriptorName=, passed to workers in LISTEN_FDNAMES)",
                        key("name")
                    ),
                ));
            };
            let name = self.string(&key("name"), name_v)?;
            check_socket_name(name).map_err(|why| self.bad(name_v, &key("name"), why))?;
            if let Some(j) = sockets.iter().position(|other| other.name == name) {
                let first = line_col(self.text, name_offsets[j]).0;
                let this = line_col(self.text, name_v.span().start).0;
                return Err(self.bad(
                    name_v,
                    &key("name"),
                    format!(
                        "duplicate socket name {name:?} (lines {first} and {this}); socket \
                        names must be unique"
                    ),
                ));
            }

            let from_systemd = s
                .from_systemd
                .as_ref()
                .map(|v| self.boolean(&key("from_systemd"), v))
                .transpose()?
                .unwrap_or(false);
            let listen = match &s.listen {
                Some(v) => {
                    let text = self.string(&key("listen"), v)?;
                    Some(parse_listen(text).map_err(|why| self.bad(v, &key("listen"), why))?)
                }
                None if from_systemd => None,
                None => {
                    return Err(self.at(
                        table,
                        format!(
                            "{}: missing; give an address like \"127.0.0.1:8080\" or a unix \
                            socket path, or set from_systemd = true",
                            key("listen")
                        ),
                    ));
                }
            };
            let is_unix = matches!(listen, Some(ListenAddress::Unix(_)));
            let unix_only = |k: &str, v: &Val| -> Res<()> {
                match &listen {
                    Some(ListenAddress::Unix(_)) => Ok(()),
                    Some(ListenAddress::Tcp(_)) => Err(self.bad(
                        v,
                        &key(k),
                        "only applies to unix sockets, and listen is a TCP address",
                    )),
                    None => Err(self.bad(
                        v,
                        &key(k),
                        "only applies to unix sockets, and this socket has no listen path",
                    )),
                }
            };

            let backlog = s
                .backlog
                .as_ref()
                .map(|v| self.integer(&key("backlog"), v, 1, 65535))
                .transpose()?
                .unwrap_or(4096) as u32;
            let reuse_port = match &s.reuse_port {
                None => false,
                Some(v) => {
                    let on = self.boolean(&key("reuse_port"), v)?;
                    if on && is_unix {
                        return Err(self.bad(
                            v,
                            &key("reuse_port"),
                            "only applies to TCP sockets, and listen is a unix socket path",
                        ));
                    }
                    on
                }
            };
            let mode = match &s.mode {
                None => None,
                Some(v) => {
                    let text = match v.get_ref() {
                        toml::Value::String(text) => text,
                        toml::Value::Integer(_) => {
                            return Err(self.bad(
                                v,
                                &key("mode"),
                                "write the mode as a string of octal digits, like \"0660\"",
                            ));
                        }
                        other => {
                            return Err(self.bad(
                                v,
                                &key("mode"),
                                format!(
                                    "expected a string of octal digits like \"0660\", got {}",
                                    kind(other)
                                ),
                            ));
                        }
                    };
                    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                        return Err(self.bad(
                            v,
                            &key("mode"),
                            format!("{text:?} is not an octal mode like \"0660\""),
                        ));
                    }
                    let mode = u32::from_str_radix(text, 8)
                        .ok()
                        .filter(|&m| m <= 0o7777)
                        .ok_or_else(|| {
                            self.bad(
                                v,
                                &key("mode"),
                                format!("{text:?} is too large; the largest mode is \"7777\""),
                            )
                        })?;
                    unix_only("mode", v)?;
                    Some(mode)
                }
            };
            let owner = match &s.owner {
                None => None,
                Some(v) => {
                    let text = self.string(&key("owner"), v)?;
                    let valid = match text.split_once(':') {
                        None => !text.is_empty(),
                        Some((_, group)) => !group.is_empty() && !group.contains(':'),
                    };
                    if !valid {
                        return Err(self.bad(
                            v,
                            &key("owner"),
                            format!("{text:?} is not \"user\", \"user:group\" or \":group\""),
                        ));
                    }
                    unix_only("owner", v)?;
                    Some(text.to_owned())
                }
            };

            name_offsets.push(name_v.span().start);
            sockets.push(SocketConfig {
                name: name.to_owned(),
                listen,
                backlog,
                reuse_port,
                mode,
                owner,
                from_systemd,
            });
        }
        Ok(sockets)
    }

    fn worker(&self, w: RawWorker, fds_env: &str) -> Res<WorkerConfig> {
        let Some(command_v) = &w.command else {
            return Err(self.at(
                self.table_offset("worker"),
                "worker.command: missing; give the program and its arguments, like command = \
                    [\"/usr/bin/myapp\", \"--port\", \"8080\"]",
            ));
        };
        let command = self.command("worker.command", command_v)?;

        let mut env = BTreeMap::new();
        let mut entries: Vec<_> = w.env.iter().flatten().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (name_s, value) in entries {
            let name = name_s.get_ref();
            let key = format!("worker.env.{}", path_key(name));
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
                return Err(self.bad(name_s, &key, why));
            }
            env.insert(name.clone(), self.string(&key, value)?.to_owned());
        }

        let inherit_env = match &w.inherit_env {
            None => InheritEnv::All,
            Some(v) => self.inherit_env(v, fds_env)?,
        };
        let cwd = w
            .cwd
            .as_ref()
            .map(|v| self.absolute_path("worker.cwd", v))
            .transpose()?;
        let count = w
            .count
            .as_ref()
            .map(|v| self.integer("worker.count", v, 1, MAX_WORKERS))
            .transpose()?
            .unwrap_or(1) as u32;

        let stop_signal = match &w.stop_signal {
            None => libc::SIGTERM,
            Some(v) => self.stop_signal(v)?,
        };
        let stop_timeout = self.opt_duration(
            "worker.stop_timeout",
            w.stop_timeout.as_ref(),
            Duration::from_secs(10),
        )?;

        let mode = match &w.ready {
            None => "notify",
            Some(v) => match self.string("worker.ready", v)? {
                mode @ ("notify" | "delay" | "probe") => mode,
                other => {
                    return Err(self.bad(
                        v,
                        "worker.ready",
                        format!("expected \"notify\", \"delay\" or \"probe\", got {other:?}"),
                    ))
                }
            },
        };
        if mode != "probe" {
            if let Some(v) = &w.probe {
                return Err(self.bad(
                    v,
                    "worker.probe",
                    format!("only applies with ready = \"probe\" (ready is {mode:?})"),
                ));
            }
            for (key, v) in [
                ("worker.probe_interval", &w.probe_interval),
                ("worker.probe_timeout", &w.probe_timeout),
            ] {
                if let Some(v) = v {
                    return Err(self.bad(
                        v,
                        key,
                        format!("only applies with ready = \"probe\" (ready is {mode:?})"),
                    ));
                }
            }
        }
        let delay_mode = mode == "delay";
        let ready = if mode == "probe" {
            if let Some(v) = &w.ready_delay {
                return Err(self.bad(
                    v,
                    "worker.ready_delay",
                    "only applies with ready = \"delay\" (ready is \"probe\")",
                ));
            }
            let Some(probe) = &w.probe else {
                return Err(self.bad(
                    w.ready.as_ref().expect("mode probe comes from a value"),
                    "worker.probe",
                    "ready = \"probe\" needs probe = [\"program\", \"args\"...]",
                ));
            };
            ReadyMode::Probe(Probe {
                command: self.command("worker.probe", probe)?,
                interval: self.positive_duration(
                    "worker.probe_interval",
                    w.probe_interval.as_ref(),
                    Duration::from_millis(500),
                )?,
                timeout: self.positive_duration(
                    "worker.probe_timeout",
                    w.probe_timeout.as_ref(),
                    Duration::from_secs(5),
                )?,
            })
        } else if delay_mode {
            ReadyMode::Delay(self.opt_duration(
                "worker.ready_delay",
                w.ready_delay.as_ref(),
                Duration::from_secs(1),
            )?)
        } else {
            if let Some(v) = &w.ready_delay {
                return Err(self.bad(
                    v,
                    "worker.ready_delay",
                    "only applies with ready = \"delay\" (ready is \"notify\")",
                ));
            }
            ReadyMode::Notify
        };
        let ready_timeout = self.positive_duration(
            "worker.ready_timeout",
            w.ready_timeout.as_ref(),
            Duration::from_secs(60),
        )?;
        let notify_access = match &w.notify_access {
            None => NotifyAccess::All,
            Some(v) => match self.string("worker.notify_access", v)? {
                "all" => NotifyAccess::All,
                "main" => NotifyAccess::Main,
                other => {
                    return Err(self.bad(
                        v,
                        "worker.notify_access",
                        format!("expected \"all\" or \"main\", got {other:?}"),
                    ));
                }
            },
        };

        let backoff_initial = self.positive_duration(
            "worker.restart_backoff_initial",
            w.restart_backoff_initial.as_ref(),
            Duration::from_millis(100),
        )?;
        let backoff_max = self.opt_duration(
            "worker.restart_backoff_max",
            w.restart_backoff_max.as_ref(),
            Duration::from_secs(30),
        )?;
        if backoff_max < backoff_initial {
            return Err(match (&w.restart_backoff_max, &w.restart_backoff_initial) {
                (Some(v), _) => self.bad(
                    v,
                    "worker.restart_backoff_max",
                    format!(
                        "must be at least restart_backoff_initial ({backoff_initial:?}), \
                        got {backoff_max:?}"
                    ),
                ),
                (None, Some(v)) => self.bad(
                    v,
                    "worker.restart_backoff_initial",
                    format!(
                        "{backoff_initial:?} is more than restart_backoff_max \
                        ({backoff_max:?}, the default); raise restart_backoff_max too"
                    ),
                ),
                (None, None) => unreachable!("the defaults are ordered"),
            });
        }
        let backoff_reset = self.opt_duration(
            "worker.restart_backoff_reset",
            w.restart_backoff_reset.as_ref(),
            Duration::from_secs(10),
        )?;

        let user = match &w.user {
            None => None,
            Some(v) => {
                let user = self.non_empty_string("worker.user", v)?;
                if user.contains(':') {
                    return Err(self.bad(
                        v,
                        "worker.user",
                        "a user name cannot contain ':'; set the group with group = \"...\"",
                    ));
                }
                Some(user.to_owned())
            }
        };
        let group = w
            .group
            .as_ref()
            .map(|v| self.non_empty_string("worker.group", v).map(str::to_owned))
            .transpose()?;

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
            user,
            group,
        })
    }

    fn command(&self, key: &str, v: &Spanned<List>) -> Res<Vec<String>> {
        let key_name = key.to_string();
        let key: &str = &key_name;
        let items = match v.get_ref() {
            List::Items(items) => items,
            List::Other(other) => {
                return Err(self.bad(
                    v,
                    key,
                    format!(
                        "expected an array of strings like [\"/usr/bin/myapp\", \
                        \"--flag\"], got {}",
                        kind(other)
                    ),
                ));
            }
        };
        if items.is_empty() {
            return Err(self.bad(
                v,
                key,
                "must not be empty; give the program and its arguments",
            ));
        }
        let mut command = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let arg = self.string(&format!("{key}[{j}]"), item)?;
            if j == 0 && arg.is_empty() {
                return Err(self.bad(item, &format!("{key}[0]"), "the program must not be empty"));
            }
            command.push(arg.to_owned());
        }
        Ok(command)
    }

    fn inherit_env(&self, v: &Spanned<List>, fds_env: &str) -> Res<InheritEnv> {
        const KEY: &str = "worker.inherit_env";
        let items = match v.get_ref() {
            List::Other(toml::Value::Boolean(true)) => return Ok(InheritEnv::All),
            List::Other(toml::Value::Boolean(false)) => return Ok(InheritEnv::Nothing),
            List::Items(items) => items,
            List::Other(other) => {
                return Err(self.bad(
                    v,
                    KEY,
                    format!(
                        "expected true, false or an array of variable names, got {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut names = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let key = format!("{KEY}[{j}]");
            let name = self.non_empty_string(&key, item)?;
            if name.contains('=') {
                return Err(self.bad(item, &key, "a variable name must not contain '='"));
            }
            if let Some(why) = reserved_variable(name, fds_env) {
                return Err(self.bad(item, &key, format!("{name} cannot be inherited: {why}")));
            }
            names.push(name.to_owned());
        }
        Ok(InheritEnv::Only(names))
    }

    fn stop_signal(&self, v: &Val) -> Res<i32> {
        const KEY: &str = "worker.stop_signal";
        let name = match v.get_ref() {
            toml::Value::String(name) => name,
            toml::Value::Integer(_) => {
                return Err(self.bad(v, KEY, "write a signal name like \"SIGTERM\", not a number"))
            }
            other => {
                return Err(self.bad(
                    v,
                    KEY,
                    format!(
                        "expected a signal name like \"SIGTERM\", got {}",
                        kind(other)
                    ),
                ))
            }
        };
        if let Some(number) = stop_signal_from_name(name) {
            return Ok(number);
        }
        let upper = name.to_ascii_uppercase();
        if upper == "KILL" || upper == "SIGKILL" {
            return Err(self.bad(
                v,
                KEY,
                "SIGKILL cannot be caught, so it cannot ask a worker to finish its work; \
                    handover sends it by itself after stop_timeout",
            ));
        }
        let names: Vec<&str> = STOP_SIGNALS.iter().map(|&(n, _)| n).collect();
        Err(self.bad(
            v,
            KEY,
            format!(
                "{name:?} is not a supported stop signal; use one of {}",
                names.join(", ")
            ),
        ))
    }

    fn reload(&self, r: RawReload) -> Res<ReloadConfig> {
        let timeout = self.positive_duration(
            "reload.timeout",
            r.timeout.as_ref(),
            Duration::from_secs(300),
        )?;
        let drain_timeout = self.opt_duration(
            "reload.drain_timeout",
            r.drain_timeout.as_ref(),
            Duration::from_secs(30),
        )?;
        let rolling = match &r.strategy {
            None => false,
            Some(v) => match self.string("reload.strategy", v)? {
                "all-at-once" => false,
                "rolling" => true,
                other => {
                    return Err(self.bad(
                        v,
                        "reload.strategy",
                        format!("expected \"all-at-once\" or \"rolling\", got {other:?}"),
                    ));
                }
            },
        };
        let strategy = if rolling {
            let batch_size = r
                .batch_size
                .as_ref()
                .map(|v| self.integer("reload.batch_size", v, 1, MAX_WORKERS))
                .transpose()?
                .unwrap_or(1);
            let max_extra = match &r.max_extra {
                None => batch_size,
                Some(v) => {
                    let max_extra = self.integer("reload.max_extra", v, 1, MAX_WORKERS)?;
                    if max_extra < batch_size {
                        return Err(self.bad(
                            v,
                            "reload.max_extra",
                            format!("must be at least batch_size ({batch_size}), got {max_extra}"),
                        ));
                    }
                    max_extra
                }
            };
            Strategy::Rolling {
                batch_size: batch_size as u32,
                max_extra: max_extra as u32,
            }
        } else {
            for (key, v) in [
                ("reload.batch_size", &r.batch_size),
                ("reload.max_extra", &r.max_extra),
            ] {
                if let Some(v) = v {
                    return Err(self.bad(v, key, "only applies with strategy = \"rolling\""));
                }
            }
            Strategy::AllAtOnce
        };
        let canary = r
            .canary
            .as_ref()
            .map(|v| self.boolean("reload.canary", v))
            .transpose()?
            .unwrap_or(false);
        let max_draining = r
            .max_draining
            .as_ref()
            .map(|v| self.integer("reload.max_draining", v, 1, 64))
            .transpose()?
            .unwrap_or(4) as u32;
        Ok(ReloadConfig {
            timeout,
            drain_timeout,
            strategy,
            canary,
            max_draining,
        })
    }

    /// A size: an integer (bytes) or a string with a unit; within `min..=max`, or 0 when
    /// `zero_ok`.
    fn size(&self, key: &str, v: &Val, min: u64, max: u64, zero_ok: bool) -> Res<u64> {
        let bytes = match v.get_ref() {
            toml::Value::Integer(n) if *n < 0 => {
                return Err(self.bad(v, key, "a size cannot be negative"))
            }
            toml::Value::Integer(n) => *n as u64,
            toml::Value::String(s) => parse_size(s).map_err(|why| self.bad(v, key, why))?,
            other => {
                return Err(self.bad(
                    v,
                    key,
                    format!("expected a size like \"16KiB\", got {}", kind(other)),
                ))
            }
        };
        if (zero_ok && bytes == 0) || (min..=max).contains(&bytes) {
            return Ok(bytes);
        }
        let zero = if zero_ok { "0 or " } else { "" };
        Err(self.bad(
            v,
            key,
            format!(
                "must be {zero}between {} and {}, got {bytes} bytes",
                show_size(min),
                show_size(max)
            ),
        ))
    }

    fn log_sink(&self, key: &str, v: &Val) -> Res<LogSink> {
        let text = self.string(key, v)?;
        Ok(match text {
            "inherit" => LogSink::Inherit,
            "-" => LogSink::Own,
            "/dev/null" => LogSink::Null,
            "" => return Err(self.bad(v, key, "must not be empty: use \"/dev/null\" to discard")),
            path if path.starts_with('/') => {
                if path.ends_with('/') {
                    return Err(self.bad(v, key, format!("{path:?} is a directory, not a file")));
                }
                LogSink::File(PathBuf::from(path))
            }
            other => {
                return Err(self.bad(
                    v,
                    key,
                    format!(
                        "{other:?} is neither \"inherit\", \"-\", \"/dev/null\" nor an absolute \
                        path (it must start with /)"
                    ),
                ))
            }
        })
    }

    fn logs(&self, l: RawLogs) -> Res<LogsConfig> {
        let d = LogsConfig::default();
        Ok(LogsConfig {
            stdout: l
                .stdout
                .as_ref()
                .map_or(Ok(d.stdout), |v| self.log_sink("logs.stdout", v))?,
            stderr: l
                .stderr
                .as_ref()
                .map_or(Ok(d.stderr), |v| self.log_sink("logs.stderr", v))?,
            tag: l
                .tag
                .as_ref()
                .map_or(Ok(d.tag), |v| self.boolean("logs.tag", v))?,
            max_line: l.max_line.as_ref().map_or(Ok(d.max_line), |v| {
                self.size("logs.max_line", v, 256, MIB, false)
            })?,
            max_size: l.max_size.as_ref().map_or(Ok(d.max_size), |v| {
                self.size("logs.max_size", v, 4 * KIB, TIB, true)
            })?,
            keep: l.keep.as_ref().map_or(Ok(d.keep), |v| {
                self.integer("logs.keep", v, 0, 10_000).map(|n| n as u32)
            })?,
            compress: l
                .compress
                .as_ref()
                .map_or(Ok(d.compress), |v| self.boolean("logs.compress", v))?,
            buffer: l.buffer.as_ref().map_or(Ok(d.buffer), |v| {
                self.size("logs.buffer", v, 64 * KIB, GIB, false)
            })?,
        })
    }

    fn control(&self, c: RawControl) -> Res<ControlConfig> {
        let socket = match &c.socket {
            None => None,
            Some(v) => {
                let path = self.absolute_path("control.socket", v)?;
                let len = path.as_os_str().len();
                if len > UNIX_PATH_MAX {
                    return Err(self.bad(
                        v,
                        "control.socket",
                        format!("unix socket path is {len} bytes, the limit is {UNIX_PATH_MAX}"),
                    ));
                }
                Some(path)
            }
        };
        let mut allow_uids = Vec::new();
        if let Some(v) = &c.allow_uids {
            let items = match v.get_ref() {
                List::Items(items) => items,
                List::Other(other) => {
                    return Err(self.bad(
                        v,
                        "control.allow_uids",
                        format!("expected an array of uids like [1000], got {}", kind(other)),
                    ));
                }
            };
            for (j, item) in items.iter().enumerate() {
                // (uid_t)-1 means "no uid" to the kernel, so it is not a uid anybody has.
                let uid = self.integer(
                    &format!("control.allow_uids[{j}]"),
                    item,
                    0,
                    i64::from(u32::MAX - 1),
                )?;
                allow_uids.push(uid as u32);
            }
        }
        Ok(ControlConfig { socket, allow_uids })
    }
}
