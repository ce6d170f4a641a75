//! Wire formats handover speaks, as pure functions over bytes and strings.
//!
//! Nothing here touches the operating system: no syscalls, no tokio, no nix. That keeps every
//! parser of outside input testable in isolation and fuzzable.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod control;
pub mod endpoint;
pub mod fdmap;
pub mod listen;
pub mod logline;
pub mod logtag;
pub mod notify;
pub mod status;
