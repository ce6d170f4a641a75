//! `[reload]`: how a reload replaces the workers.

use std::time::Duration;

use super::document::{Res, Table};
use super::worker::MAX_WORKERS;

/// The keys of `[reload]`.
pub(super) const KEYS: &[&str] = &[
    "timeout",
    "drain_timeout",
    "strategy",
    "batch_size",
    "max_extra",
    "canary",
    "canary_share",
    "max_draining",
];

/// How a reload replaces workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
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
pub(crate) struct ReloadConfig {
    /// `timeout`: a whole reload must finish within this. Default 5 minutes.
    pub(crate) timeout: Duration,
    /// `drain_timeout`: an old generation gets this long after its stop signal. Default 30s.
    pub(crate) drain_timeout: Duration,
    /// `strategy` (+ `batch_size`, `max_extra`).
    pub(crate) strategy: Strategy,
    /// `canary`: start one new worker first, the rest once it is ready. Default false.
    pub(crate) canary: bool,
    /// `canary_share`: with steered sockets, the percentage of new connections a ready canary
    /// gets before the rest start. Default 0.
    pub(crate) canary_share: u32,
    /// `max_draining`: generations allowed to drain at once. Default 4.
    pub(crate) max_draining: u32,
}

/// Validates `[reload]`.
pub(super) fn validate(table: &Table<'_>) -> Res<ReloadConfig> {
    let timeout = table
        .get("timeout")
        .map_or(Ok(Duration::from_secs(300)), |v| v.positive_duration())?;
    let drain_timeout = table
        .get("drain_timeout")
        .map_or(Ok(Duration::from_secs(30)), |v| v.duration())?;
    let rolling = match table.get("strategy") {
        None => false,
        Some(v) => match v.string()? {
            "all-at-once" => false,
            "rolling" => true,
            other => {
                return Err(v.bad(format!(
                    "expected \"all-at-once\" or \"rolling\", got {other:?}"
                )));
            }
        },
    };
    let strategy = if rolling {
        let batch_size = table
            .get("batch_size")
            .map_or(Ok(1), |v| v.integer(1, MAX_WORKERS))?;
        let max_extra = match table.get("max_extra") {
            None => batch_size,
            Some(v) => {
                let max_extra = v.integer(1, MAX_WORKERS)?;
                if max_extra < batch_size {
                    return Err(v.bad(format!(
                        "must be at least batch_size ({batch_size}), got {max_extra}"
                    )));
                }
                max_extra
            }
        };
        Strategy::Rolling {
            batch_size: batch_size as u32,
            max_extra: max_extra as u32,
        }
    } else {
        for key in ["batch_size", "max_extra"] {
            if let Some(v) = table.get(key) {
                return Err(v.bad("only applies with strategy = \"rolling\""));
            }
        }
        Strategy::AllAtOnce
    };
    let canary = table.get("canary").map_or(Ok(false), |v| v.boolean())?;
    let canary_share = match table.get("canary_share") {
        None => 0,
        Some(v) => {
            let share = v.integer(0, 100)? as u32;
            if !canary {
                return Err(v.bad("only applies with canary = true"));
            }
            share
        }
    };
    let max_draining = table
        .get("max_draining")
        .map_or(Ok(4), |v| v.integer(1, 64))? as u32;
    Ok(ReloadConfig {
        timeout,
        drain_timeout,
        strategy,
        canary,
        canary_share,
        max_draining,
    })
}

#[cfg(test)]
mod tests;
