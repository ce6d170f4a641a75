//! The `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` variables of socket activation, parsed
//! by the rules of systemd's `sd_listen_fds_with_names()`.

/// First fd number of passed sockets (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Longest file descriptor name systemd accepts.
pub const FDNAME_MAX: usize = 255;

/// The raw values of the three variables, as read from the environment (None = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenEnv {
    /// `LISTEN_PID`.
    pub pid: Option<String>,
    /// `LISTEN_FDS`.
    pub fds: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub fdnames: Option<String>,
}

/// Sockets passed to this process: fds `3..3+names.len()`, with one name each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// One name per fd, in fd order (fd 3 first). `"unknown"` when `LISTEN_FDNAMES` is unset.
    pub names: Vec<String>,
}

/// Why the variables were rejected. Each names the variable and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenEnvError {
    /// `LISTEN_PID` is not a positive integer.
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    /// `LISTEN_FDS` is not a positive integer that fits the fd range.
    #[error("LISTEN_FDS={0:?} is not a valid number of file descriptors")]
    BadFdCount(String),
    /// `LISTEN_FDS` is set but `LISTEN_PID` is not (or the reverse).
    #[error("{present} is set but {missing} is not")]
    Incomplete {
        /// The variable that is set.
        present: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` says.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS={fds}")]
    NameCountMismatch {
        /// Number of names.
        names: usize,
        /// Number of fds.
        fds: usize,
    },
    /// A name is not a valid fd name (printable ASCII without `:`, at most 255 bytes).
    #[error("LISTEN_FDNAMES entry {index} (fd {fd}) {name:?} is not a valid name: {why}")]
    BadName {
        /// Position in the list, from 0.
        index: usize,
        /// The fd it belongs to.
        fd: i32,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What the variables mean for a process whose pid is `own_pid`.
///
/// * `Ok(None)`: no sockets for us (variables unset, or `LISTEN_PID` names another process).
/// * `Ok(Some(spec))`: `spec.names.len()` sockets at fds 3.., named.
/// * `Err(_)`: the variables are malformed; the error names which and why.
///
/// Follows `sd_listen_fds_with_names()`: names are split on `:` without coalescing (so empty
/// names are legal), and fewer or more names than fds is an error.
pub fn parse(env: &ListenEnv, own_pid: u32) -> Result<Option<ListenSpec>, ListenEnvError> {
    let _ = (env, own_pid);
    todo!("implemented by the proto work package")
}

/// Checks a name the way systemd's `fdname_is_valid()` does, saying why it is not.
pub fn check_fdname(name: &str) -> Result<(), &'static str> {
    let _ = name;
    todo!("implemented by the proto work package")
}
