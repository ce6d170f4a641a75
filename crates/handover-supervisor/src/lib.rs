//! handover's supervisor: generations of workers, readiness, restarts, reloads and stop.
//!
//! Two layers. The core (`core`) is a state machine without I/O: it takes the time and one input
//! (an exit, a notification, a request, a deadline) and returns actions. The driver
//! (`driver`, behind [`run`]) owns the OS (signals, the reaper, fd watchers, the spawning
//! thread) and turns what happens into inputs and the actions into syscalls. The loop is
//! driven only by events and by deadlines the core names; it never polls. It takes all its
//! resources as arguments ([`Plan`], a [`Spawner`](handover_sys::spawn::Spawner)), so tests
//! and the binary hand it whatever sockets they like.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod control;
pub mod control_server;
mod core;
mod driver;
pub mod endpoint;
pub mod output;
pub mod plan;
pub mod steering;
mod systemd;
mod worker;

use std::sync::Arc;

pub use control::{AbortCause, Command, Outcome, ReloadError, ReloadOverrides};
pub use driver::{run, RunResult};
pub use output::{Output, OutputConfig, Rotation, Sink};
pub use plan::{
    GenerationSpec, HealthCheck, HealthSpec, ListenSocket, Plan, ReadyMode, ReloadPolicy,
    SocketMode,
};
pub use worker::is_reserved_var;

/// Makes the plan of a reload's new generation (re-reading the configuration, binding new
/// sockets): given the reload's overrides and the serving generation's spec, the new spec and
/// reload settings, or why not. It runs on a blocking thread, off the event loop.
pub type Reloader =
    Arc<dyn Fn(&ReloadOverrides, &Arc<GenerationSpec>) -> core::Resolved + Send + Sync + 'static>;
