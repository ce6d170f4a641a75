//! A destination for workers' output, written by a thread of its own.
//!
//! The supervisor's loop formats each line straight into the writer's buffer and never waits:
//! when the buffer is full, the line is dropped and counted. The thread takes the whole
//! buffer at once, writes it, and on an error (a full disk, say) keeps what is left and tries
//! again a second later, so a line is either written whole, in order, or counted as dropped.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use handover_sys::journal::{send_sealed, JOURNAL_SOCKET};

use super::file::LogFile;

/// How long a failed write waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A writer's own buffers are given back to the allocator beyond this size once written.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What a writer writes to.
pub(crate) enum Target {
    /// A log file, rotated and reopened.
    File(LogFile),
    /// handover's own stdout or stderr (a duplicate of the fd).
    Stream(std::fs::File),
    /// journald: the buffer holds datagrams, each preceded by its length (u32, native order).
    Journal(UnixDatagram),
}

impl Target {
    /// The journal's socket, for [`Target::Journal`].
    pub(crate) fn journal() -> io::Result<Target> {
        Ok(Target::Journal(UnixDatagram::unbound()?))
    }

    /// Writes `data` (whole records), returning how much was written and the error that
    /// stopped it, if any. A journal entry too large for one datagram goes through a sealed
    /// memfd, as journald's native protocol provides. `skipped` counts records thrown away as
    /// unwritable; they are dropped lines, not an error that stops writing.
    fn write(&mut self, data: &[u8], skipped: &mut u64) -> (usize, Option<io::Error>) {
        match self {
            Target::File(file) => file.write(data),
            Target::Stream(stream) => write_some(stream, data),
            Target::Journal(socket) => {
                let mut done = 0;
                while data.len() - done >= 4 {
                    let len =
                        u32::from_ne_bytes(data[done..done + 4].try_into().expect("four bytes"))
                            as usize;
                    let record = &data[done + 4..done + 4 + len];
                    match socket.send_to(record, JOURNAL_SOCKET) {
                        Ok(_) => done += 4 + len,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                            let path = std::path::Path::new(JOURNAL_SOCKET);
                            match send_sealed(socket.as_fd(), path, record) {
                                Ok(()) => done += 4 + len,
                                // Larger than journald takes even so: this entry alone.
                                Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                                    *skipped += 1;
                                    done += 4 + len;
                                }
                                Err(err) => return (done, Some(err)),
                            }
                        }
                        Err(err) => return (done, Some(err)),
                    }
                }
                (done, None)
            }
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        match self {
            Target::File(file) => file.reopen(),
            Target::Stream(_) | Target::Journal(_) => Ok(()),
        }
    }

    fn rotations(&self) -> u64 {
        match self {
            Target::File(file) => file.rotations(),
            Target::Stream(_) | Target::Journal(_) => 0,
        }
    }

    /// Lines (or journal entries) in unwritten data, to count them as dropped.
    fn count_lines(&self, data: &[u8]) -> u64 {
        match self {
            Target::Journal(_) => {
                let mut count = 0;
                let mut at = 0;
                while data.len() - at >= 4 {
                    let len = u32::from_ne_bytes(data[at..at + 4].try_into().expect("four bytes"));
                    at += 4 + len as usize;
                    count += 1;
                }
                count
            }
            _ => {
                let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
                newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
            }
        }
    }
}

fn write_some(out: &mut impl Write, data: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < data.len() {
        match out.write(&data[done..]) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return (done, Some(err)),
        }
    }
    (done, None)
}

#[derive(Default)]
struct State {
    /// Formatted lines waiting for the thread.
    buf: Vec<u8>,
    /// Lines dropped since start.
    dropped: u64,
    /// Lines dropped since writing last worked.
    unreported: u64,
    /// Why the last write failed, while it fails.
    failure: Option<String>,
    /// "dropping" was logged for the current run of drops.
    warned: bool,
    /// SIGUSR1: open the file again.
    reopen: bool,
    /// handover is exiting: write what is left, once.
    finish: bool,
    /// The thread is done.
    finished: bool,
    /// Rotations so far (copied from the file after each write).
    rotations: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread.
    wake: Condvar,
    /// Tells `finish` the thread is done.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent beyond a line.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One destination with its thread.
pub(crate) struct Writer {
    name: String,
    limit: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("name", &self.name).finish()
    }
}

impl Writer {
    /// Starts the thread. `name` is what logs call the destination (a path, `stdout`, ...);
    /// `limit` is the buffer size beyond which lines are dropped.
    pub(crate) fn start(name: String, limit: usize, target: Target) -> io::Result<Writer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name("handover-log".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&thread_name, &thread_shared, target))?;
        Ok(Writer {
            name,
            limit,
            shared,
        })
    }

    /// What logs call it.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Appends one record, formatted by `format` straight into the buffer; drops it (and
    /// counts it) when the buffer would grow past its limit. Never blocks on the destination.
    pub(crate) fn push(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.shared.lock();
        if state.finished {
            return;
        }
        let start = state.buf.len();
        format(&mut state.buf);
        // A record alone in the buffer always goes, however long: otherwise it never could.
        if state.buf.len() <= self.limit || start == 0 {
            drop(state);
            if start == 0 {
                self.shared.wake.notify_one();
            }
            return;
        }
        state.buf.truncate(start);
        state.dropped += 1;
        state.unreported += 1;
        if !state.warned {
            state.warned = true;
            let reason = state.failure.clone().unwrap_or_else(|| {
                "the buffer is full (the destination does not keep up)".to_string()
            });
            drop(state);
            warn!("{}: dropping workers' output: {reason}", self.name);
        }
    }

    /// Asks the thread to open the file again (SIGUSR1, after logrotate renamed it).
    pub(crate) fn reopen(&self) {
        self.shared.lock().reopen = true;
        self.shared.wake.notify_one();
    }

    /// Lines dropped so far, and rotations.
    pub(crate) fn counters(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.dropped, state.rotations)
    }

    /// Writes what is left and stops the thread; gives up waiting after `within`.
    pub(crate) fn finish(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut state = self.shared.lock();
        state.finish = true;
        self.shared.wake.notify_one();
        while !state.finished {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = match self.shared.done.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The thread.
fn run(name: &str, shared: &Shared, mut target: Target) {
    // Bytes taken from the buffer and not written yet (after an error).
    let mut pending: Vec<u8> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        let (reopen, finish) = {
            let mut state = shared.lock();
            loop {
                if state.reopen || state.finish {
                    break;
                }
                match retry_at {
                    Some(at) => {
                        let now = Instant::now();
                        if now >= at {
                            break;
                        }
                        state = match shared.wake.wait_timeout(state, at - now) {
                            Ok((state, _)) => state,
                            Err(poisoned) => poisoned.into_inner().0,
                        };
                    }
                    None if !state.buf.is_empty() => break,
                    None => {
                        state = match shared.wake.wait(state) {
                            Ok(state) => state,
                            Err(poisoned) => poisoned.into_inner(),
                        };
                    }
                }
            }
            // New lines only once the old ones are out, so memory stays within two buffers.
            if pending.is_empty() {
                std::mem::swap(&mut pending, &mut state.buf);
            }
            (std::mem::take(&mut state.reopen), state.finish)
        };
        if reopen {
            match target.reopen() {
                Ok(()) => info!("{name}: reopened"),
                Err(err) => warn!("{name}: cannot reopen: {err}; writing on to the old file"),
            }
        }
        let mut skipped = 0;
        let (written, error) = target.write(&pending, &mut skipped);
        pending.drain(..written);
        let mut state = shared.lock();
        state.rotations = target.rotations();
        state.dropped += skipped;
        state.unreported += skipped;
        match error {
            Some(err) => {
                if finish {
                    let lost = target.count_lines(&pending) + target.count_lines(&state.buf);
                    state.dropped += lost;
                    let unreported = state.unreported + lost;
                    // Said before `finish` may return: handover exits right after it.
                    warn!("{name}: {unreported} lines were dropped: {err}");
                    finished(shared, state);
                    return;
                }
                let first = state.failure.is_none();
                state.failure = Some(err.to_string());
                drop(state);
                retry_at = Some(Instant::now() + RETRY_AFTER);
                if first {
                    warn!(
                        "{name}: cannot write: {err}; holding output and trying again every second"
                    );
                }
            }
            None => {
                retry_at = None;
                let recovered = state.failure.take();
                let unreported = std::mem::take(&mut state.unreported);
                state.warned = false;
                if pending.capacity() > KEEP_CAPACITY {
                    pending = Vec::new();
                }
                // Held through the last words only when finishing (handover exits as soon as
                // `finish` returns); otherwise the loop must never wait on this log line.
                let done = (finish && state.buf.is_empty()).then_some(state);
                if unreported > 0 {
                    warn!("{name}: writing again; {unreported} lines were dropped");
                } else if let Some(reason) = recovered {
                    info!("{name}: writing again after: {reason}");
                }
                if let Some(state) = done {
                    finished(shared, state);
                    return;
                }
            }
        }
    }
}

fn finished(shared: &Shared, mut state: MutexGuard<'_, State>) {
    state.finished = true;
    state.buf = Vec::new();
    drop(state);
    shared.done.notify_all();
}
