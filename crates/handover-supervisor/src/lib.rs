//! handover's supervisor: one event loop that owns every worker of every generation.
//!
//! The loop is driven only by events (signals, child exits, readable notify sockets and
//! worker pipes, control requests) and by named deadlines; it never polls. It takes all its
//! resources as arguments ([`Plan`], a [`Spawner`](handover_sys::spawn::Spawner)), so tests
//! and the binary hand it whatever sockets they like.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod control;
pub mod control_server;
pub mod output;
pub mod plan;
mod supervisor;
mod systemd;
mod worker;

pub use control::{Command, Outcome, ReloadOverrides, ReloadReply};
pub use output::{Output, OutputConfig, Rotation, Sink};
pub use plan::{GenerationSpec, ListenSocket, Plan, ReadyMode, ReloadPolicy};
pub use supervisor::{run, Reloader, RunResult};
pub use worker::is_reserved_var;
