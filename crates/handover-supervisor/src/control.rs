//! Requests to the running supervisor (from signals and the control socket) and its answers.

use std::ffi::OsString;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

/// Per-reload changes, as naught's deploy has them.
#[derive(Debug, Clone, Default)]
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
    pub timeout: Option<std::time::Duration>,
}

/// Progress and outcome of a reload, streamed to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadReply {
    /// A progress line ("spawning generation 3", "2/4 ready", "draining generation 2").
    Progress(String),
    /// The reload finished: the new generation serves.
    Done {
        /// The generation now serving.
        generation: u64,
    },
    /// The reload failed; the previous generation keeps serving.
    Failed {
        /// Why.
        reason: String,
    },
    /// Another reload is running.
    Busy {
        /// The generation being started.
        generation: u64,
    },
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Start a new generation; progress and the outcome go to `reply`.
    Reload {
        /// Changes for the new generation.
        overrides: ReloadOverrides,
        /// Where to report.
        reply: Option<mpsc::UnboundedSender<ReloadReply>>,
    },
    /// Abort the running reload.
    Abort {
        /// Whether there was one.
        reply: oneshot::Sender<bool>,
    },
    /// Stop everything and exit.
    Stop,
    /// Change the number of workers of the serving generation.
    Scale {
        /// New count.
        count: u32,
        /// Ok or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A JSON snapshot of the state.
    Status {
        /// The snapshot.
        reply: oneshot::Sender<serde_json::Value>,
    },
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
