//! handover's exit codes (documented in docs/cli.md).

/// Stopped cleanly.
pub(crate) const OK: u8 = 0;
/// The first generation never became ready (a worker exited, failed to start, or timed out),
/// or a stop was forced by repeated signals.
pub(crate) const START_FAILED: u8 = 1;
/// `handover logs`: a log file could not be read, or stdout could not be written;
/// `handover unit`: a unit file exists or could not be written. The same value as
/// [`START_FAILED`], which only `handover start` returns.
pub(crate) const IO: u8 = 1;
/// The command line is wrong.
pub(crate) const USAGE: u8 = 2;
/// The configuration file is invalid.
pub(crate) const CONFIG: u8 = 3;
/// A listening socket could not be set up: bind failed (address in use, permission denied,
/// address not available, path too long or occupied) or the sockets systemd passed are
/// invalid (malformed `LISTEN_*`, wrong pid, fd not a listening stream socket).
pub(crate) const SOCKETS: u8 = 4;
/// The control socket could not be used (another instance runs, or none runs).
pub(crate) const CONTROL: u8 = 5;
/// A reload or stop requested through the control socket failed or timed out.
pub(crate) const REQUEST_FAILED: u8 = 6;
/// Anything else: an OS error while setting up (runtime directory, spawning thread).
pub(crate) const INTERNAL: u8 = 70;
