//! `handover start --daemon`: detaching from the terminal, naught-style.
//!
//! Must run before any thread exists. The calling process waits on a pipe until the daemon
//! reports that its first generation is ready (exit 0) or failed (exit 1, with the reason on
//! stderr), so scripts know whether the start worked.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::fd::{dev_null, pipe_cloexec};

/// Which side of the fork this is.
#[derive(Debug)]
pub enum Daemonized {
    /// The original process: exit with this code.
    Parent(u8),
    /// The daemon: write `ready\n` or `failed: REASON\n` to this pipe once known.
    Daemon(std::fs::File),
}

/// Detaches: double fork, new session, stdin from /dev/null, stdout and stderr to `log_file`
/// (appended) or /dev/null.
pub fn daemonize(log_file: Option<&Path>) -> io::Result<Daemonized> {
    let output: OwnedFd = match log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .into(),
        None => dev_null()?,
    };
    let null = dev_null()?;
    let (read_end, write_end) = pipe_cloexec()?;
    // SAFETY: the process is single-threaded (documented precondition), so the child may run
    // arbitrary code after fork.
    let first = unsafe { libc::fork() };
    if first < 0 {
        return Err(io::Error::last_os_error());
    }
    if first > 0 {
        drop(write_end);
        // The first line decides; the daemon keeps its end open while it runs.
        let mut status = String::new();
        let _ = std::io::BufReader::new(std::fs::File::from(read_end).take(64 * 1024))
            .read_line(&mut status);
        // Reaping the intermediate child, which exits at once.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(first), None);
        return Ok(Daemonized::Parent(match status.lines().next() {
            Some("ready") => 0,
            Some(line) => {
                eprintln!(
                    "handover: {}",
                    line.strip_prefix("failed: ").unwrap_or(line)
                );
                1
            }
            None => {
                eprintln!("handover: the daemon exited before it was ready");
                1
            }
        }));
    }
    drop(read_end);
    // The child: setsid and a second fork, so the daemon is no session leader and can never
    // regain a controlling terminal.
    if nix::unistd::setsid().is_err() {
        exit_child(1);
    }
    // SAFETY: this child of a single-threaded process is single-threaded too, so its own
    // child may run arbitrary code after fork.
    let second = unsafe { libc::fork() };
    if second < 0 {
        exit_child(1);
    }
    if second > 0 {
        exit_child(0);
    }
    for (fd, target) in [(&null, 0), (&output, 1), (&output, 2)] {
        let _ = nix::unistd::dup2(fd.as_raw_fd(), target);
    }
    Ok(Daemonized::Daemon(std::fs::File::from(write_end)))
}

/// Ends a forked child at once, without running exit handlers or flushing buffers it shares
/// with the parent.
fn exit_child(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// Reports the daemon's start outcome to the waiting parent.
pub fn report(pipe: &std::fs::File, outcome: Result<(), &str>) {
    let mut pipe = pipe;
    let _ = match outcome {
        Ok(()) => pipe.write_all(b"ready\n"),
        Err(reason) => writeln!(pipe, "failed: {reason}"),
    };
}
