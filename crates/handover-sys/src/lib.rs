//! handover's OS plumbing: the only crate of the workspace that contains `unsafe` code.
//!
//! It takes sockets systemd passed (checking each), binds sockets, receives sd_notify
//! datagrams with their sender's credentials, spawns workers through a re-executed stub and
//! reaps them. Every fd it creates is created close-on-exec and held as an [`OwnedFd`];
//! raw fd numbers appear only at the syscall line.
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd
#![deny(missing_docs)]

pub mod bind;
pub mod cgroup;
mod clone3;
pub mod control;
pub mod daemon;
pub mod fd;
pub mod inherit;
pub mod journal;
pub mod notify;
pub mod process;
pub mod sentinel;
pub mod sockaddr;
pub mod spawn;
pub mod steer;
pub mod stub;
pub mod users;
pub mod watch;
