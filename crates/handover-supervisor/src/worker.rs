//! What a worker is given (its environment) and what handover keeps of what it says (the
//! stderr lines that explain a death).

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

use crate::plan::GenerationSpec;

/// How many stderr lines of a worker handover remembers, to explain its death.
pub(crate) const STDERR_TAIL_LINES: usize = 10;
/// Longest stderr line kept in that tail.
pub(crate) const STDERR_TAIL_LINE_MAX: usize = 512;

/// Keeps a line of stderr (without its newline) among the last few, which explain a death,
/// escaped as in a tagged log line so that it cannot disturb the log message quoting it.
pub(crate) fn remember(tail: &mut VecDeque<String>, line: &[u8]) {
    let line = &line[..line.len().min(STDERR_TAIL_LINE_MAX)];
    let mut escaped = Vec::with_capacity(line.len());
    crate::output::escape(&mut escaped, line);
    let mut text = String::from_utf8_lossy(&escaped).into_owned();
    if text.len() > STDERR_TAIL_LINE_MAX {
        let mut cut = STDERR_TAIL_LINE_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text);
}

/// Variables handover itself defines for workers; they never pass through from its own
/// environment or the configuration.
pub fn is_reserved_var(key: &[u8]) -> bool {
    key.starts_with(b"LISTEN_")
        || key == b"NOTIFY_SOCKET"
        || key.starts_with(b"WATCHDOG_")
        || key.starts_with(b"HANDOVER_")
}

/// The complete environment of a worker, except `LISTEN_PID` and `WATCHDOG_PID` (the stub
/// adds its own pid). `private`: the name of the health check socket passed after the
/// others.
pub(crate) fn worker_env(
    spec: &GenerationSpec,
    generation: u64,
    index: u32,
    notify_path: &std::path::Path,
    private: Option<&str>,
) -> Vec<CString> {
    let names: Vec<&str> = spec
        .sockets
        .iter()
        .map(|s| s.name.as_str())
        .chain(private)
        .collect();
    let fds = handover_proto::fdmap::build(&names);
    let mut env: Vec<CString> = Vec::with_capacity(spec.env.len() + 8);
    let mut push = |key: &[u8], value: &[u8]| {
        let mut kv = key.to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value);
        // Keys and values were validated when the spec was built; a NUL here would be a bug,
        // and dropping the variable is better than a panic.
        if let Ok(c) = CString::new(kv) {
            env.push(c);
        }
    };
    for (key, value) in &spec.env {
        let key_bytes = key.clone().into_vec();
        if is_reserved_var(&key_bytes) || key_bytes == spec.fds_env.as_bytes() {
            continue;
        }
        push(&key_bytes, &OsString::from(value).into_vec());
    }
    push(b"LISTEN_FDS", fds.listen_fds.as_bytes());
    push(b"LISTEN_FDNAMES", fds.listen_fdnames.as_bytes());
    push(spec.fds_env.as_bytes(), fds.paths_json.as_bytes());
    if spec.fds_env != "HANDOVER_FDS" {
        push(b"HANDOVER_FDS", fds.paths_json.as_bytes());
    }
    push(b"HANDOVER_FD_NUMBERS", fds.numbers_json.as_bytes());
    push(b"HANDOVER_WORKER", index.to_string().as_bytes());
    push(b"HANDOVER_GENERATION", generation.to_string().as_bytes());
    push(b"NOTIFY_SOCKET", notify_path.as_os_str().as_encoded_bytes());
    if let Some(watchdog) = spec.watchdog {
        push(
            b"WATCHDOG_USEC",
            watchdog.as_micros().to_string().as_bytes(),
        );
    }
    env
}
