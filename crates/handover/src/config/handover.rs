//! `[handover]`: settings of the supervisor itself.

use std::path::PathBuf;

use super::document::{Res, Table};

/// The keys of `[handover]`.
pub(super) const KEYS: &[&str] = &[
    "fds_env",
    "runtime_dir",
    "watchdog_min_workers",
    "fd_store",
    "cgroups",
];

/// `[handover] cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupMode {
    /// A cgroup per worker where the host allows; else as without, said once.
    Auto,
    /// A cgroup per worker, or no start.
    Required,
    /// No cgroups.
    Off,
}

/// Default of `[handover] fds_env`.
pub(crate) const DEFAULT_FDS_ENV: &str = "HANDOVER_FDS";

/// Variables handover sets for every worker, besides `LISTEN_*`, `NOTIFY_SOCKET` and the
/// `fds_env` one.
const HANDOVER_SET: &[&str] = &[
    "HANDOVER_FD_NUMBERS",
    "HANDOVER_WORKER",
    "HANDOVER_GENERATION",
];

/// `[handover]`: settings of the supervisor itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HandoverSection {
    /// Name of the JSON name -> `/dev/fd/N` variable given to workers. Default `HANDOVER_FDS`.
    pub(crate) fds_env: String,
    /// Where per-worker notify sockets and the control socket live. Default: see docs.
    pub(crate) runtime_dir: Option<PathBuf>,
    /// Under a systemd watchdog (`WatchdogSec=`), send `WATCHDOG=1` only while at least this
    /// many workers of the serving generation are ready. Default 0 (the loop being alive is
    /// enough).
    pub(crate) watchdog_min_workers: u32,
    /// Under systemd, hand sockets handover bound itself to systemd's fd store (`FDSTORE=1`),
    /// so a restart gets them back. Default true.
    pub(crate) fd_store: bool,
    /// `cgroups`: a cgroup per worker. Default auto.
    pub(crate) cgroups: CgroupMode,
}

/// Validates `[handover]`.
pub(super) fn validate(table: &Table<'_>) -> Res<HandoverSection> {
    let fds_env = match table.get("fds_env") {
        None => DEFAULT_FDS_ENV.to_owned(),
        Some(v) => {
            let name = v.string()?;
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(v.bad(format!(
                    "{name:?} is not a valid variable name (letters, digits and '_', not \
                    starting with a digit)"
                )));
            }
            if name.starts_with("LISTEN_")
                || name == "NOTIFY_SOCKET"
                || name.starts_with("WATCHDOG_")
            {
                return Err(v.bad(format!(
                    "{name} is a variable of systemd's protocols; choose another name"
                )));
            }
            if HANDOVER_SET.contains(&name) {
                return Err(v.bad(format!(
                    "{name} is already set by handover; choose another name"
                )));
            }
            name.to_owned()
        }
    };
    let runtime_dir = table
        .get("runtime_dir")
        .map(|v| {
            let path = v.absolute_path()?;
            let len = path.as_os_str().len();
            let max = handover_sys::notify::MAX_BASE_LEN;
            if len > max {
                return Err(v.bad(format!(
                    "the path is {len} bytes; the notify sockets handover makes in it would not \
                     fit a unix socket address, so it may be at most {max}"
                )));
            }
            Ok(path)
        })
        .transpose()?;
    let watchdog_min_workers = table
        .get("watchdog_min_workers")
        .map_or(Ok(0), |v| v.integer(0, 1024))? as u32;
    let fd_store = table.get("fd_store").map_or(Ok(true), |v| v.boolean())?;
    let cgroups = match table.get("cgroups") {
        None => CgroupMode::Auto,
        Some(v) => match v.string()? {
            "auto" => CgroupMode::Auto,
            "required" => CgroupMode::Required,
            "off" => CgroupMode::Off,
            other => {
                return Err(v.bad(format!(
                    "expected \"auto\", \"required\" or \"off\", got {other:?}"
                )))
            }
        },
    };
    Ok(HandoverSection {
        fds_env,
        runtime_dir,
        watchdog_min_workers,
        fd_store,
        cgroups,
    })
}

#[cfg(test)]
mod tests;
