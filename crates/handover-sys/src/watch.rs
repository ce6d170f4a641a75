//! Registering fds with tokio's reactor without giving up ownership rules.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;

/// A shared fd owner, registered for readiness. The `Arc` keeps the fd open for as long as
/// the registration exists, which is what tokio requires.
#[derive(Debug)]
pub struct Shared<T>(Arc<T>);

impl<T: AsFd> AsRawFd for Shared<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `owner`'s fd for read readiness with the current tokio runtime.
pub fn readable<T: AsFd>(owner: Arc<T>) -> io::Result<AsyncFd<Shared<T>>> {
    // SAFETY: the AsyncFd owns an Arc to the fd's owner, so the fd stays open and refers to the
    // same open file description until the AsyncFd is dropped; `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Shared(owner), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
