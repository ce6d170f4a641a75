//! `[control]`: the control socket.

use std::path::PathBuf;

use super::document::{Res, Table};
use super::grammar::UNIX_PATH_MAX;

/// The keys of `[control]`.
pub(super) const KEYS: &[&str] = &["socket", "allow_uids"];

/// `[control]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ControlConfig {
    /// `socket`: path of the control socket. Default: see docs/control-protocol.md.
    pub(crate) socket: Option<PathBuf>,
    /// `allow_uids`: uids besides handover's own and root allowed to use it.
    pub(crate) allow_uids: Vec<u32>,
}

/// Validates `[control]`.
pub(super) fn validate(table: &Table<'_>) -> Res<ControlConfig> {
    let socket = match table.get("socket") {
        None => None,
        Some(v) => {
            let path = v.absolute_path()?;
            let len = path.as_os_str().len();
            if len > UNIX_PATH_MAX {
                return Err(v.bad(format!(
                    "unix socket path is {len} bytes, the limit is {UNIX_PATH_MAX}"
                )));
            }
            Some(path)
        }
    };
    let mut allow_uids = Vec::new();
    if let Some(v) = table.get("allow_uids") {
        let Some(items) = v.items() else {
            return Err(v.expected("an array of uids like [1000]"));
        };
        for item in &items {
            // (uid_t)-1 means "no uid" to the kernel, so it is not a uid anybody has.
            let uid = item.integer(0, i64::from(u32::MAX - 1))?;
            allow_uids.push(uid as u32);
        }
    }
    Ok(ControlConfig { socket, allow_uids })
}

#[cfg(test)]
mod tests;
