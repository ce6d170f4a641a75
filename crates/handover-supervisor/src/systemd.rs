//! Telling the service manager about handover itself, when `NOTIFY_SOCKET` is set.
//!
//! Workers never see this socket: they get their own. On systemd 252 a reload is reported as
//! `RELOADING=1` with `MONOTONIC_USEC=` (newer systemd waits for the timestamp), `STATUS=`
//! lines while it runs, and `READY=1` when it ends, whether it succeeded or not.

use sd_notify::NotifyState;

/// Reports to systemd, if handover runs under it.
#[derive(Debug)]
pub struct Systemd {
    enabled: bool,
}

impl Systemd {
    /// `enabled` when `NOTIFY_SOCKET` was set at startup.
    pub fn new(enabled: bool) -> Systemd {
        Systemd { enabled }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(false, states) {
            tracing::warn!("could not notify systemd: {err}");
        }
    }

    /// The service is ready (after start, or at the end of a reload).
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins.
    pub fn reloading(&self, status: &str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status(status)]),
        }
    }

    /// A new status line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The watchdog keep-alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Asks for `by` more time before systemd's start, reload or stop timeout fires.
    pub fn extend_timeout(&self, by: std::time::Duration) {
        let usec = by.as_micros().min(u32::MAX as u128) as u32;
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// handover is stopping.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}
