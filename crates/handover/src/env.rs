//! The process environment, read once in `main` before any thread starts.
//!
//! handover never changes its own environment; workers get theirs built explicitly.

use std::ffi::OsString;
use std::path::PathBuf;

use handover_proto::listen::ListenEnv;

/// What handover needs from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Environment {
    /// Every variable, in order, as inherited.
    pub vars: Vec<(OsString, OsString)>,
    /// `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`.
    pub listen: ListenEnv,
    /// `NOTIFY_SOCKET` is set: report to systemd.
    pub notify_socket: bool,
    /// `JOURNAL_STREAM` is set: stderr goes to the journal.
    pub journal_stream: Option<String>,
    /// `RUNTIME_DIRECTORY` (first entry).
    pub runtime_directory: Option<PathBuf>,
    /// `XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// The watchdog interval from `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or ours.
    pub watchdog: Option<std::time::Duration>,
    /// `INVOCATION_ID` is set: handover runs as a systemd service.
    pub systemd_service: bool,
}

impl Environment {
    /// Reads the process environment.
    pub(crate) fn read() -> Environment {
        let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let get = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let text = |key: &str| get(key).map(|v| v.to_string_lossy().into_owned());
        let path = |key: &str| {
            get(key).filter(|v| !v.is_empty()).map(|v| {
                let s = v.to_string_lossy().into_owned();
                PathBuf::from(s.split(':').next().unwrap_or_default())
            })
        };
        Environment {
            listen: ListenEnv {
                pid: text("LISTEN_PID"),
                fds: text("LISTEN_FDS"),
                fdnames: text("LISTEN_FDNAMES"),
            },
            notify_socket: get("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()),
            journal_stream: text("JOURNAL_STREAM"),
            runtime_directory: path("RUNTIME_DIRECTORY"),
            xdg_runtime_dir: path("XDG_RUNTIME_DIR"),
            watchdog: text("WATCHDOG_USEC")
                .and_then(|usec| usec.parse::<u64>().ok())
                .filter(|&usec| usec > 0)
                .filter(|_| {
                    text("WATCHDOG_PID").is_none_or(|pid| pid == std::process::id().to_string())
                })
                .map(std::time::Duration::from_micros),
            systemd_service: get("INVOCATION_ID").is_some_and(|v| !v.is_empty()),
            vars,
        }
    }
}
