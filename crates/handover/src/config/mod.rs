//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! The text is parsed once, into a document that keeps where every key and value is written
//! (`document`). Validation walks that document: first its shape (the known tables, each a
//! table, with only known keys), then each section in its own module (`handover`, `sockets`,
//! `worker`, `reload`, `control`, `logs`, `endpoint`), with the value grammars they share in `grammar`.
//! Every error carries the position of what it is about.
//!
//! Parsing and validation make no syscalls (so `handover check` has no side effects); turning
//! user and group names into ids and binding sockets happen later, in `main`.

mod control;
mod document;
mod endpoint;
mod grammar;
mod handover;
mod health;
mod logs;
mod reload;
mod sockets;
mod worker;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

pub(crate) use control::ControlConfig;
pub(crate) use document::ConfigError;
pub(crate) use endpoint::EndpointConfig;
pub(crate) use grammar::parse_cli_duration;
pub(crate) use handover::{CgroupMode, HandoverSection};
pub(crate) use health::{HealthCheckConfig, HealthConfig};
pub(crate) use logs::{LogFormat, LogSink, LogsConfig};
pub(crate) use reload::{ReloadConfig, Strategy};
pub(crate) use sockets::{ListenAddress, SocketConfig};
pub(crate) use worker::{Check, InheritEnv, NotifyAccess, ReadyMode, WorkerConfig};

use document::{Cx, Item, Res, Table};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    /// The file it was read from.
    pub(crate) path: PathBuf,
    /// `[handover]` settings.
    pub(crate) handover: HandoverSection,
    /// `[[socket]]` entries, in file order. This order is the fd order workers see.
    pub(crate) sockets: Vec<SocketConfig>,
    /// `[worker]`.
    pub(crate) worker: WorkerConfig,
    /// `[health]`, if the file has one.
    pub(crate) health: Option<HealthConfig>,
    /// `[reload]`.
    pub(crate) reload: ReloadConfig,
    /// `[control]`.
    pub(crate) control: ControlConfig,
    /// `[logs]`.
    pub(crate) logs: LogsConfig,
    /// `[endpoint]`.
    pub(crate) endpoint: EndpointConfig,
}

/// The top-level tables, in the order the documentation lists them.
const SECTIONS: &[&str] = &[
    "handover", "socket", "worker", "health", "reload", "control", "logs", "endpoint",
];

impl Config {
    /// Reads and validates a configuration file. No side effects besides reading `path`.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = document::read(path)?;
        Config::parse(path, &text)
    }

    /// Validates configuration text as if read from `path`.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Cx { path, text };
        let document = cx.parse()?;
        let root = cx.root(&document);
        let empty = DeTable::new();
        let sections = Sections::of(&root)?;
        let absent = |name: &str| cx.absent(name, &empty);

        let handover =
            handover::validate(&sections.handover.unwrap_or_else(|| absent("handover")))?;
        let sockets = sockets::validate(&sections.sockets)?;
        let Some(worker) = &sections.worker else {
            return Err(cx.at(
                0,
                "worker: the [worker] table is missing; it needs at least command = \
                    [\"/path/to/program\"]",
            ));
        };
        let worker = worker::validate(worker, &handover.fds_env)?;
        let health = sections.health.as_ref().map(health::validate).transpose()?;
        let reload = reload::validate(&sections.reload.unwrap_or_else(|| absent("reload")))?;
        let control = control::validate(&sections.control.unwrap_or_else(|| absent("control")))?;
        let logs = logs::validate(&sections.logs.unwrap_or_else(|| absent("logs")))?;
        let endpoint = match &sections.endpoint {
            Some(table) => endpoint::validate(table, true)?,
            None => endpoint::validate(&absent("endpoint"), false)?,
        };
        Ok(Config {
            path: path.to_path_buf(),
            handover,
            sockets,
            worker,
            health,
            reload,
            control,
            logs,
            endpoint,
        })
    }
}

/// The document's top-level tables, once its shape is known to be right: every table is a
/// table (`[[socket]]` an array of them) and has only the keys its section knows.
struct Sections<'d> {
    handover: Option<Table<'d>>,
    sockets: Vec<Table<'d>>,
    worker: Option<Table<'d>>,
    health: Option<Table<'d>>,
    reload: Option<Table<'d>>,
    control: Option<Table<'d>>,
    logs: Option<Table<'d>>,
    endpoint: Option<Table<'d>>,
}

impl<'d> Sections<'d> {
    /// Checks the shape in the order the file is written, so the first error is the first
    /// one in the file.
    fn of(root: &Table<'d>) -> Res<Sections<'d>> {
        let mut sections = Sections {
            handover: None,
            sockets: Vec::new(),
            worker: None,
            health: None,
            reload: None,
            control: None,
            logs: None,
            endpoint: None,
        };
        for (key, _) in root.entries() {
            let name: &str = key.get_ref();
            if !SECTIONS.contains(&name) {
                return Err(root.unknown(key, SECTIONS));
            }
            let Some(item) = root.get(name) else {
                continue;
            };
            if name == "socket" {
                sections.sockets = socket_tables(&item)?;
                continue;
            }
            let (slot, keys) = match name {
                "handover" => (&mut sections.handover, handover::KEYS),
                "worker" => (&mut sections.worker, worker::KEYS),
                "health" => (&mut sections.health, health::KEYS),
                "reload" => (&mut sections.reload, reload::KEYS),
                "control" => (&mut sections.control, control::KEYS),
                "endpoint" => (&mut sections.endpoint, endpoint::KEYS),
                _ => (&mut sections.logs, logs::KEYS),
            };
            let table = section_table(&item)?;
            table.only_keys(keys)?;
            *slot = Some(table);
        }
        Ok(sections)
    }
}

/// A top-level value that must be a table.
fn section_table<'d>(item: &Item<'d>) -> Res<Table<'d>> {
    match (item.table(), item.value()) {
        (Some(table), _) => Ok(table),
        (None, DeValue::Array(array)) if array.iter().all(|v| v.get_ref().is_table()) => Err(item
            .bad(format!(
                "expected a table, got an array of tables: write [{0}] (single brackets), \
                not [[{0}]]",
                item.key
            ))),
        (None, _) => Err(item.expected("a table")),
    }
}

/// `socket`: an array of tables, each with only the keys of a socket.
fn socket_tables<'d>(item: &Item<'d>) -> Res<Vec<Table<'d>>> {
    let Some(items) = item.items() else {
        return Err(item.bad(
            "sockets are an array of tables: write [[socket]] (double brackets), not [socket]",
        ));
    };
    let mut tables = Vec::with_capacity(items.len());
    for socket in &items {
        let Some(table) = socket.table() else {
            return Err(socket.expected("a table"));
        };
        table.only_keys(sockets::KEYS)?;
        tables.push(table);
    }
    Ok(tables)
}
