//! Parsing of sd_notify datagrams, by the rules systemd's own receiver applies.
//!
//! A datagram is newline-separated `KEY=VALUE` assignments. The receiver drops a whole message
//! that is empty, contains a NUL byte, or is longer than [`NOTIFY_BUFFER_MAX`]; single lines it
//! does not understand are ignored, never fatal.

/// Largest datagram accepted, as in systemd (`PIPE_BUF`). Longer messages are dropped whole.
pub const NOTIFY_BUFFER_MAX: usize = 4096;

/// Longest STATUS= text kept after sanitising.
pub const STATUS_MAX: usize = 256;

/// What one datagram said, field by field. Fields absent from the datagram are `None`/`false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    /// `READY=1`.
    pub ready: bool,
    /// `RELOADING=1`.
    pub reloading: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`.
    pub watchdog_trigger: bool,
    /// `BARRIER=1`: the sender passed an fd and waits until the receiver closes it.
    pub barrier: bool,
    /// `STATUS=` text, with control characters replaced and cut to [`STATUS_MAX`] bytes
    /// on a char boundary.
    pub status: Option<String>,
    /// `ERRNO=` as a non-negative number.
    pub errno: Option<i32>,
    /// `MAINPID=` (recorded, never acted upon for workers).
    pub main_pid: Option<u32>,
    /// `EXTEND_TIMEOUT_USEC=`.
    pub extend_timeout_usec: Option<u64>,
    /// `MONOTONIC_USEC=`.
    pub monotonic_usec: Option<u64>,
    /// `FDSTORE=1`.
    pub fdstore: bool,
    /// `FDNAME=`.
    pub fdname: Option<String>,
}

/// Why a whole datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The datagram had no bytes.
    #[error("empty notification datagram")]
    Empty,
    /// The datagram exceeded [`NOTIFY_BUFFER_MAX`] bytes.
    #[error("notification datagram of {0} bytes exceeds the {NOTIFY_BUFFER_MAX}-byte limit")]
    TooLong(usize),
    /// The datagram contained a NUL byte.
    #[error("notification datagram contains a NUL byte")]
    EmbeddedNul,
    /// The datagram is not valid UTF-8.
    #[error("notification datagram is not valid UTF-8")]
    NotUtf8,
}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<NotifyMessage, NotifyError> {
    let _ = datagram;
    todo!("implemented by the proto work package")
}
