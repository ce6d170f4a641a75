//! One worker process: its state, its environment, and the pipes handover reads from it.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use std::time::Instant;

use handover_sys::notify::NotifySocket;
use handover_sys::process::Pidfd;

use crate::plan::GenerationSpec;

/// How many stderr lines of a worker handover remembers, to explain its death.
pub const STDERR_TAIL_LINES: usize = 10;
/// Longest stderr line kept in that tail.
pub const STDERR_TAIL_LINE_MAX: usize = 512;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting out a restart delay.
    Waiting { until: Instant },
    /// Handed to the spawning thread.
    Spawning,
    /// Running, not ready yet.
    Starting {
        ready_deadline: Instant,
        ready_at: Option<Instant>,
    },
    /// Ready.
    Ready { since: Instant },
    /// Asked to stop; killed at `kill_at`.
    Stopping { kill_at: Instant },
    /// SIGKILL sent to its process group; waiting for the exit.
    Killed,
}

impl State {
    /// A short name for status output.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting { .. } => "waiting",
            State::Spawning => "spawning",
            State::Starting { .. } => "starting",
            State::Ready { .. } => "ready",
            State::Stopping { .. } => "stopping",
            State::Killed => "killed",
        }
    }
}

/// A worker.
#[derive(Debug)]
pub struct Worker {
    /// Unique for the supervisor's lifetime.
    pub id: u64,
    /// Its generation.
    pub generation: u64,
    /// Its slot index in the generation (`HANDOVER_WORKER`).
    pub index: u32,
    /// The spec it was started from.
    pub spec: Arc<GenerationSpec>,
    /// Its state.
    pub state: State,
    /// Set once the process exists.
    pub pidfd: Option<Pidfd>,
    /// Its notify socket.
    pub notify: Option<Arc<NotifySocket>>,
    /// Read end of its stderr pipe.
    pub stderr: Option<Arc<std::fs::File>>,
    /// Read end of its stdout pipe (none when `[logs] stdout` is `/dev/null`).
    pub stdout: Option<Arc<std::fs::File>>,
    /// Its stdout, split into lines.
    pub stdout_lines: crate::output::Lines,
    /// Tasks watching its fds; aborted when it is gone.
    pub watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Last lines written to stderr.
    pub stderr_tail: VecDeque<String>,
    /// Its stderr, split into lines.
    pub stderr_lines: crate::output::Lines,
    /// Going away for good: its exit starts no replacement.
    pub retiring: bool,
    /// When its current process was spawned.
    pub spawned_at: Option<Instant>,
    /// The last `STATUS=` it sent.
    pub status: Option<String>,
    /// Set when the stub could not exec it.
    pub exec_error: Option<String>,
    /// Probe mode: when the next readiness probe may start.
    pub next_probe: Option<Instant>,
    /// Probe mode: an attempt is running (they never overlap).
    pub probe_running: bool,
    /// Probe mode: how the last attempt ended, to explain a ready timeout.
    pub last_probe: Option<String>,
}

impl Worker {
    /// Its pid, once spawned.
    pub fn pid(&self) -> Option<i32> {
        self.pidfd.as_ref().map(|p| p.pid())
    }
}

/// Keeps a line of stderr (without its newline) among the last few, which explain a death,
/// escaped as in a tagged log line so that it cannot disturb the log message quoting it.
pub fn remember(tail: &mut VecDeque<String>, line: &[u8]) {
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

/// The complete environment of a worker, except `LISTEN_PID` (the stub adds its own pid).
pub fn worker_env(
    spec: &GenerationSpec,
    generation: u64,
    index: u32,
    notify_path: &std::path::Path,
) -> Vec<CString> {
    let names: Vec<&str> = spec.sockets.iter().map(|s| s.name.as_str()).collect();
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
    env
}
