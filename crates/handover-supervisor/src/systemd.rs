//! Telling the service manager about handover itself, when `NOTIFY_SOCKET` is set.
//!
//! Workers never see this socket: they get their own. On systemd 252 a reload is reported as
//! `RELOADING=1` with `MONOTONIC_USEC=` (newer systemd waits for the timestamp), `STATUS=`
//! lines while it runs, and `READY=1` when it ends, whether it succeeded or not.

use sd_notify::NotifyState;

use crate::core::Notice;

/// Reports to systemd, if handover runs under it.
#[derive(Debug)]
pub(crate) struct Systemd {
    enabled: bool,
}

impl Systemd {
    /// `enabled` when `NOTIFY_SOCKET` was set at startup.
    pub(crate) fn new(enabled: bool) -> Systemd {
        Systemd { enabled }
    }

    fn notify(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(false, states) {
            tracing::warn!("could not notify systemd: {err}");
        }
    }

    /// Sends what the core asked for.
    pub(crate) fn send(&self, notice: &Notice) {
        match notice {
            Notice::Ready(status) => {
                self.notify(&[NotifyState::Ready, NotifyState::Status(status)])
            }
            Notice::Reloading(status) => match NotifyState::monotonic_usec_now() {
                Ok(now) => self.notify(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
                Err(_) => self.notify(&[NotifyState::Reloading, NotifyState::Status(status)]),
            },
            Notice::Status(status) => self.notify(&[NotifyState::Status(status)]),
            Notice::Watchdog => self.notify(&[NotifyState::Watchdog]),
            Notice::ExtendTimeout(by) => {
                let usec = by.as_micros().min(u32::MAX as u128) as u32;
                self.notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
            }
            Notice::Stopping(status) => {
                self.notify(&[NotifyState::Stopping, NotifyState::Status(status)])
            }
        }
    }
}
