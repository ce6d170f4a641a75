//! Requests to the running supervisor (from the control socket) and how it ends.
//!
//! A control request travels as the protocol's own [`Request`]; every answer, progress
//! included, is a protocol [`Response`] sent on the request's channel. There is no mirror of
//! either type here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use handover_proto::control::{Request, Response};
use tokio::sync::mpsc;

/// Per-reload changes, as naught's deploy has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOverrides {
    /// New worker count.
    pub workers: Option<u32>,
    /// Variables to set (override) in the new generation.
    pub env: Vec<(OsString, OsString)>,
    /// Replace the environment instead of overriding single variables.
    pub replace_env: bool,
    /// New working directory.
    pub cwd: Option<PathBuf>,
    /// Abort this reload if it has not finished after this long (instead of `reload.timeout`).
    pub timeout: Option<Duration>,
}

/// A control request and where its answers go. The final answer is the last one sent; a
/// `stop` is answered with `stopping`, and its connection stays open until handover exits.
#[derive(Debug)]
pub struct Command {
    /// What the client asked.
    pub request: Request,
    /// Every answer line, in order.
    pub reply: mpsc::UnboundedSender<Response>,
}

/// How the supervisor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request; every worker is gone.
    Stopped,
    /// The first generation never became ready.
    StartFailed(String),
    /// Stopped at once after repeated stop signals.
    Forced,
}

/// Why a reload did not happen or did not finish. In every case the generation that served
/// before keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// Asked before the first generation was ready.
    #[error("the first generation is not ready yet")]
    NotStarted,
    /// Asked while stopping, or the stop came during the reload.
    #[error("handover is stopping")]
    Stopping,
    /// `[reload] max_draining` old generations are still draining.
    #[error("{draining} generations are still draining (max_draining = {max})")]
    TooManyDraining {
        /// Generations draining now.
        draining: u32,
        /// The limit.
        max: u32,
    },
    /// No generation serves (cannot happen while running; kept as an answer, not a panic).
    #[error("no serving generation")]
    NoServingGeneration,
    /// The new generation's plan could not be made: the configuration does not parse, a
    /// socket cannot be bound, a user does not exist.
    #[error("reload failed, generation {serving} keeps serving: {reason}")]
    Plan {
        /// The generation that keeps serving.
        serving: u64,
        /// What the configuration step said.
        reason: String,
    },
    /// The new generation was started and then given up.
    #[error("reload aborted, generation {serving} keeps serving: {cause}")]
    Aborted {
        /// The generation that keeps serving.
        serving: u64,
        /// Why.
        cause: AbortCause,
    },
}

/// Why a started reload was aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortCause {
    /// A new worker exited, could not be started, or was not ready in time.
    #[error("worker {index} of generation {generation} failed: {reason}")]
    WorkerFailed {
        /// The new generation.
        generation: u64,
        /// The worker's index.
        index: u32,
        /// What happened to it.
        reason: String,
    },
    /// The whole reload took longer than its timeout.
    #[error("reload did not finish within {}", crate::core::humanize(*took))]
    Timeout {
        /// How long it ran.
        took: Duration,
    },
    /// `handover abort`.
    #[error("aborted on request")]
    Requested,
}

impl ReloadOverrides {
    /// The overrides a `reload` request carries.
    pub fn from_request(request: &Request) -> ReloadOverrides {
        match request {
            Request::Reload {
                workers,
                env,
                replace_env,
                cwd,
                timeout_ms,
            } => ReloadOverrides {
                workers: *workers,
                env: env
                    .iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                    .collect(),
                replace_env: *replace_env,
                cwd: cwd.as_ref().map(PathBuf::from),
                timeout: timeout_ms.map(Duration::from_millis),
            },
            _ => ReloadOverrides::default(),
        }
    }
}
