//! The environment a worker gets describing its sockets: `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! the JSON maps of names to `/dev/fd/N` paths and to fd numbers.
//!
//! Duplicate names (systemd allows them: one `.socket` unit with two `ListenStream=` lines and
//! one `FileDescriptorName=`) never collide silently: a name that occurs once maps to a single
//! value, a name that occurs more than once maps to an array of values in fd order.

/// The socket-describing variables of one worker, except `LISTEN_PID` (set by the worker's
/// exec stub to its own pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEnv {
    /// `LISTEN_FDS`.
    pub listen_fds: String,
    /// `LISTEN_FDNAMES`: the names joined with `:`.
    pub listen_fdnames: String,
    /// JSON object: name -> `"/dev/fd/N"` (or an array of such strings for repeated names).
    pub paths_json: String,
    /// JSON object: name -> N (or an array of numbers for repeated names).
    pub numbers_json: String,
}

/// Builds the variables for sockets at fds `3..3+names.len()`, in the given order.
pub fn build(names: &[&str]) -> FdEnv {
    let _ = names;
    todo!("implemented by the proto work package")
}
