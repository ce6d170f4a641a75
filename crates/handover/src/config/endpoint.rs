//! `[endpoint]`: the optional HTTP endpoint for orchestrators' probes (`/ready`, `/live`).

use super::document::{Res, Table};
use super::grammar::parse_listen;
use super::ListenAddress;

/// The keys of `[endpoint]`.
pub(super) const KEYS: &[&str] = &["listen"];

/// `[endpoint]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EndpointConfig {
    /// `listen`: where the endpoint listens; `None` (no `[endpoint]`) serves none.
    pub(crate) listen: Option<ListenAddress>,
}

/// Validates `[endpoint]`; `present` is whether the file has the table at all.
pub(super) fn validate(table: &Table<'_>, present: bool) -> Res<EndpointConfig> {
    let listen = match table.get("listen") {
        Some(v) => Some(parse_listen(v.string()?).map_err(|why| v.bad(why))?),
        None if present => {
            return Err(table.missing(
                "listen",
                "give the endpoint an address of its own, like \"0.0.0.0:8081\" or a unix \
                 socket path (leave out [endpoint] to serve none)",
            ))
        }
        None => None,
    };
    Ok(EndpointConfig { listen })
}

#[cfg(test)]
mod tests;
