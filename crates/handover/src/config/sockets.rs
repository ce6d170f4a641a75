//! `[[socket]]`: the listening sockets, in the order workers get them.

use std::fmt;
use std::path::PathBuf;

use toml::de::DeValue;

use super::document::{Item, Res, Table};
use super::grammar::parse_listen;

/// The keys of a `[[socket]]`.
pub(super) const KEYS: &[&str] = &[
    "name",
    "listen",
    "backlog",
    "reuse_port",
    "mode",
    "owner",
    "from_systemd",
    "steering",
];

/// Longest socket name (systemd's `FDNAME_MAX`).
const FDNAME_MAX: usize = 255;

/// One `[[socket]]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SocketConfig {
    /// `name`: matched against `LISTEN_FDNAMES`; passed to workers.
    pub(crate) name: String,
    /// `listen`: where to bind when systemd did not pass a socket of that name. `None` only
    /// when `from_systemd = true` and no `listen` was given.
    pub(crate) listen: Option<ListenAddress>,
    /// `backlog`, default 4096 (systemd's default, SOMAXCONN).
    pub(crate) backlog: u32,
    /// `reuse_port`, default false.
    pub(crate) reuse_port: bool,
    /// `mode` of a unix socket file (octal string in the file, e.g. "0660"). Unix only.
    pub(crate) mode: Option<u32>,
    /// `owner` of a unix socket file: "user" or "user:group". Unix only.
    pub(crate) owner: Option<String>,
    /// `from_systemd = true`: this socket must come from systemd; never bind it.
    pub(crate) from_systemd: bool,
    /// `steering`, default true: each generation gets its own member of a `SO_REUSEPORT`
    /// group and new connections go only to the generation that should get them. TCP only.
    pub(crate) steering: bool,
}

/// A `listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenAddress {
    /// `host:port` or `[v6]:port`; `host` is an IP literal (no name lookups).
    Tcp(std::net::SocketAddr),
    /// An absolute path (starting with `/`), at most 107 bytes.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "{addr}"),
            ListenAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Validates every `[[socket]]`; names must be unique.
pub(super) fn validate(tables: &[Table<'_>]) -> Res<Vec<SocketConfig>> {
    let mut sockets: Vec<SocketConfig> = Vec::with_capacity(tables.len());
    let mut names: Vec<Item<'_>> = Vec::with_capacity(tables.len());
    for table in tables {
        let (socket, name) = socket(table)?;
        if let Some(j) = sockets.iter().position(|other| other.name == socket.name) {
            let (first, this) = (names[j].line(), name.line());
            return Err(name.bad(format!(
                "duplicate socket name {:?} (lines {first} and {this}); socket names must be \
                unique",
                socket.name
            )));
        }
        names.push(name);
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Checks a socket name the way systemd's `fdname_is_valid()` does.
pub(super) fn check_socket_name(name: &str) -> Result<(), String> {
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

/// One socket, and its `name` value (for the duplicate check).
fn socket<'d>(table: &Table<'d>) -> Res<(SocketConfig, Item<'d>)> {
    let Some(name_v) = table.get("name") else {
        return Err(table.missing(
            "name",
            "every socket needs a name (matched against systemd's FileDescriptorName=, passed \
            to workers in LISTEN_FDNAMES)",
        ));
    };
    let name = name_v.string()?;
    check_socket_name(name).map_err(|why| name_v.bad(why))?;

    let from_systemd = table
        .get("from_systemd")
        .map_or(Ok(false), |v| v.boolean())?;
    let listen = match table.get("listen") {
        Some(v) => Some(parse_listen(v.string()?).map_err(|why| v.bad(why))?),
        None if from_systemd => None,
        None => {
            return Err(table.missing(
                "listen",
                "give an address like \"127.0.0.1:8080\" or a unix socket path, or set \
                from_systemd = true",
            ));
        }
    };
    let unix_only = |v: &Item<'_>| -> Res<()> {
        match &listen {
            Some(ListenAddress::Unix(_)) => Ok(()),
            Some(ListenAddress::Tcp(_)) => {
                Err(v.bad("only applies to unix sockets, and listen is a TCP address"))
            }
            None => Err(v.bad("only applies to unix sockets, and this socket has no listen path")),
        }
    };

    let backlog = table
        .get("backlog")
        .map_or(Ok(4096), |v| v.integer(1, 65535))? as u32;
    let reuse_port = match table.get("reuse_port") {
        None => false,
        Some(v) => {
            let on = v.boolean()?;
            if on && matches!(listen, Some(ListenAddress::Unix(_))) {
                return Err(v.bad("only applies to TCP sockets, and listen is a unix socket path"));
            }
            on
        }
    };
    let steering = match table.get("steering") {
        None => !matches!(listen, Some(ListenAddress::Unix(_))),
        Some(v) => {
            let on = v.boolean()?;
            if on && matches!(listen, Some(ListenAddress::Unix(_))) {
                return Err(v.bad(
                    "only applies to TCP sockets, and listen is a unix socket path (unix \
                     sockets are shared by every generation)",
                ));
            }
            on
        }
    };
    let mode = match table.get("mode") {
        None => None,
        Some(v) => {
            let mode = mode(&v)?;
            unix_only(&v)?;
            Some(mode)
        }
    };
    let owner = match table.get("owner") {
        None => None,
        Some(v) => {
            let text = v.string()?;
            let valid = match text.split_once(':') {
                None => !text.is_empty(),
                Some((_, group)) => !group.is_empty() && !group.contains(':'),
            };
            if !valid {
                return Err(v.bad(format!(
                    "{text:?} is not \"user\", \"user:group\" or \":group\""
                )));
            }
            unix_only(&v)?;
            Some(text.to_owned())
        }
    };
    let socket = SocketConfig {
        name: name.to_owned(),
        listen,
        backlog,
        reuse_port,
        mode,
        owner,
        from_systemd,
        steering,
    };
    Ok((socket, name_v))
}

/// `mode`: a string of octal digits, at most `"7777"`.
fn mode(v: &Item<'_>) -> Res<u32> {
    let text = match v.value() {
        DeValue::String(text) => text,
        DeValue::Integer(_) => {
            return Err(v.bad("write the mode as a string of octal digits, like \"0660\""));
        }
        _ => return Err(v.expected("a string of octal digits like \"0660\"")),
    };
    if text.is_empty() || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(v.bad(format!("{text:?} is not an octal mode like \"0660\"")));
    }
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| {
            v.bad(format!(
                "{text:?} is too large; the largest mode is \"7777\""
            ))
        })
}

#[cfg(test)]
mod tests;
