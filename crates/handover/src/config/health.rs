//! `[health]`: the liveness check each ready worker gets, and when it counts as unhealthy.

use std::time::Duration;

use super::document::{Res, Table};

/// The keys of `[health]`.
pub(super) const KEYS: &[&str] = &[
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
];

/// `[health]`, when the file has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthConfig {
    /// `check`, and what goes with it.
    pub(crate) check: HealthCheckConfig,
    /// `interval`: from the end of one check to the start of the next. Default 10s.
    pub(crate) interval: Duration,
    /// `timeout`: a check still running after this failed. Default 5s.
    pub(crate) timeout: Duration,
    /// `failures`: this many failed checks in a row make a worker unhealthy. Default 3.
    pub(crate) failures: u32,
    /// `max_replacing`: workers replaced for their health at once, at most. Default 1.
    pub(crate) max_replacing: u32,
}

/// `check = "http" | "connect" | "command"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealthCheckConfig {
    /// An HTTP request on the worker's private socket.
    Http {
        socket: String,
        method: String,
        path: String,
        status: u16,
    },
    /// A connection to the worker's private socket, accepted.
    Connect { socket: String },
    /// A command that exits 0.
    Command { argv: Vec<String> },
}

/// Validates `[health]`. A key of another kind of check is an error, so a typo in `check`
/// cannot silently drop what was meant.
pub(super) fn validate(table: &Table<'_>) -> Res<HealthConfig> {
    let Some(check_v) = table.get("check") else {
        return Err(table.missing(
            "check",
            "say how a worker's health is checked: check = \"http\", \"connect\" or \"command\"",
        ));
    };
    let kind = match check_v.string()? {
        kind @ ("http" | "connect" | "command") => kind,
        other => {
            return Err(check_v.bad(format!(
                "expected \"http\", \"connect\" or \"command\", got {other:?}"
            )))
        }
    };
    let only = |keys: &[&str], kinds: &[&str], wanted: &str| -> Res<()> {
        table.only_with(keys, ("check", kind), kinds, wanted)
    };
    only(&["method", "path", "status"], &["http"], "check = \"http\"")?;
    only(
        &["socket"],
        &["http", "connect"],
        "check = \"http\" or \"connect\"",
    )?;
    only(&["command"], &["command"], "check = \"command\"")?;
    let socket = || -> Res<String> {
        let Some(v) = table.get("socket") else {
            return Ok("health".to_owned());
        };
        let name = v.string()?;
        super::sockets::check_socket_name(name).map_err(|why| v.bad(format!("the name {why}")))?;
        Ok(name.to_owned())
    };
    let check = match kind {
        "http" => {
            let method = match table.get("method") {
                None => "GET".to_owned(),
                Some(v) => {
                    let method = v.string()?;
                    if method.is_empty()
                        || method.len() > 32
                        || !method.bytes().all(|b| b.is_ascii_uppercase())
                    {
                        return Err(v.bad(format!(
                            "{method:?} is not an HTTP method; give one in capitals, like \
                             \"GET\" or \"HEAD\""
                        )));
                    }
                    method.to_owned()
                }
            };
            let path = match table.get("path") {
                None => "/".to_owned(),
                Some(v) => {
                    let path = v.string()?;
                    if !path.starts_with('/')
                        || path.len() > 1024
                        || path
                            .bytes()
                            .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
                    {
                        return Err(v.bad(
                            "a request path starts with '/', is at most 1024 bytes and holds \
                             no space, control or non-ASCII character, like \"/ok\"",
                        ));
                    }
                    path.to_owned()
                }
            };
            let status = table
                .get("status")
                .map_or(Ok(200), |v| v.integer(100, 599))? as u16;
            HealthCheckConfig::Http {
                socket: socket()?,
                method,
                path,
                status,
            }
        }
        "connect" => HealthCheckConfig::Connect { socket: socket()? },
        _ => {
            let Some(v) = table.get("command") else {
                return Err(table.missing(
                    "command",
                    "check = \"command\" runs a program: give it, like command = \
                     [\"/usr/local/bin/myapp-ping\"]",
                ));
            };
            HealthCheckConfig::Command {
                argv: super::worker::argv(&v)?,
            }
        }
    };
    let duration = |key: &str, default: Duration| -> Res<Duration> {
        table
            .get(key)
            .map_or(Ok(default), |v| v.positive_duration())
    };
    Ok(HealthConfig {
        check,
        interval: duration("interval", Duration::from_secs(10))?,
        timeout: duration("timeout", Duration::from_secs(5))?,
        failures: table.get("failures").map_or(Ok(3), |v| v.integer(1, 100))? as u32,
        max_replacing: table
            .get("max_replacing")
            .map_or(Ok(1), |v| v.integer(1, super::worker::MAX_WORKERS))?
            as u32,
    })
}

#[cfg(test)]
mod tests;
