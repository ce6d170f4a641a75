//! Processes: pidfds for signalling, process-group signals, and the one reaper.
//!
//! Signals to a single process go through its pidfd, so a pid the kernel recycled is never
//! hit. Signals to a worker's process group are sent only while its leader is unreaped (a
//! zombie leader pins both pid and pgid), which the supervisor guarantees by reaping a leader
//! only after it has signalled the group. Reaping is done in one place, with `waitid(P_ALL)`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A process handle that cannot outlive its process's identity.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for a child of ours that has not been reaped yet.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open returns a new close-on-exec fd (pidfds always are) or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is the new fd pidfd_open just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        Ok(Pidfd { fd, pid })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to exactly this process. `Ok(false)` if it is already gone.
    pub fn send_signal(&self, signal: i32) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(true)
    }
}

/// Sends `signal` to process group `pgid`. `Ok(false)` if the group is empty.
///
/// Call only while the group's leader is a child of ours that is not yet reaped. `signal` is
/// one of the standard signals (handover sends no real-time signal to a group).
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<bool> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal process group <= 1",
        ));
    }
    let signal = Signal::try_from(signal).map_err(io::Error::from)?;
    match nix::sys::signal::killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// A core was dumped.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Whether the child exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(*signal))?;
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// The conventional name of a signal number ("SIGTERM"), or "signal N".
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGWINCH => "SIGWINCH",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// `waitid(idtype, id, WEXITED | WNOHANG | extra)`: the pid and status of an exited child,
/// `None` when none has exited yet.
///
/// Raw, because nix 0.29's `waitid` fails with `EINVAL` for a child killed by a signal its
/// `Signal` enum lacks (any real-time signal), and under `WNOWAIT` that child would stay
/// unreadable forever.
fn wait_exited(
    idtype: libc::idtype_t,
    id: libc::id_t,
    extra: libc::c_int,
) -> io::Result<Option<(i32, ExitStatus)>> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is a zeroed siginfo_t we own, valid for waitid to write; waitid takes no
    // other pointer.
    let rc = unsafe {
        libc::waitid(
            idtype,
            id,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOHANG | extra,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then filled by a successful waitid: every field is initialized, and for
    // WEXITED the pid and status union members are the ones the kernel set (a zero pid when
    // no child had exited, as WNOHANG leaves it).
    let (pid, code, status) = unsafe {
        let info = info.assume_init();
        (info.si_pid(), info.si_code, info.si_status())
    };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some((pid, decode(code, status))))
}

/// Looks at the next exited child without reaping it (`waitid(P_ALL, WNOWAIT)`).
///
/// Leaving it a zombie keeps its pid and process group pinned, so the caller can still signal
/// the group safely before calling [`reap`].
pub fn peek_exited() -> io::Result<Option<(i32, ExitStatus)>> {
    match wait_exited(libc::P_ALL, 0, libc::WNOWAIT) {
        Err(err) if err.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        other => other,
    }
}

/// Whether child `pid` has exited, without reaping it (`waitid(P_PID, WNOWAIT)`).
pub fn peek_exited_pid(pid: i32) -> io::Result<Option<ExitStatus>> {
    Ok(wait_exited(libc::P_PID, pid as libc::id_t, libc::WNOWAIT)?.map(|(_, status)| status))
}

fn decode(code: i32, status: i32) -> ExitStatus {
    match code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        libc::CLD_DUMPED => ExitStatus::Signaled {
            signal: status,
            core_dumped: true,
        },
        _ => ExitStatus::Signaled {
            signal: status,
            core_dumped: false,
        },
    }
}

/// Reaps the exited child `pid` (after [`peek_exited`] reported it).
pub fn reap(pid: i32) -> io::Result<()> {
    wait_exited(libc::P_PID, pid as libc::id_t, 0)?;
    Ok(())
}

/// Unblocks every signal for this thread (call before any other thread exists, so they all
/// inherit it). A signal mask is inherited across exec: started by a program that blocked
/// SIGTERM or SIGHUP, handover would otherwise never see them.
pub fn unblock_all_signals() -> io::Result<()> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(io::Error::from)
}

/// Makes this process a child subreaper: orphans of its descendants become its children, so
/// they can be found and killed on stop, and reaped.
pub fn set_child_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}

/// A process's parent and process group, from `/proc/PID/stat`; `None` if it is gone or
/// the file cannot be read.
pub fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((ppid, pgid))
}

/// Whether `pid` was started by `ancestor` (its parent, or its parent's parent, and so on)
/// or belongs to `ancestor`'s process group, as `/proc` shows it now. A process that has
/// already exited, or whose ancestry ends before `ancestor` (at pid 1, a subreaper such as
/// `stop_at`, or an unreadable entry), is not.
pub fn descends_from(pid: i32, ancestor: i32, stop_at: i32) -> bool {
    let Some((parent, group)) = parent_and_group(pid) else {
        return false;
    };
    if group == ancestor || parent == ancestor {
        return true;
    }
    let mut current = parent;
    // Deep trees are rare; a bound keeps a hostile chain from costing more than a moment.
    for _ in 0..64 {
        if current <= 1 || current == stop_at {
            return false;
        }
        match parent_and_group(current) {
            Some((parent, _)) if parent == ancestor => return true,
            Some((parent, _)) => current = parent,
            None => return false,
        }
    }
    false
}

/// The pids whose parent is `parent`, read from /proc. Best effort: unreadable entries are
/// skipped (a process may exit while we look).
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if parent_and_group(pid).is_some_and(|(ppid, _)| ppid == parent) {
            children.push(pid);
        }
    }
    children
}

/// Sets the nice value of every process in process group `pgid` (`setpriority(PRIO_PGRP)`);
/// lowering it needs `CAP_SYS_NICE`.
pub fn set_group_nice(pgid: i32, nice: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: setpriority takes plain integers; pgid > 1 names one process group.
    if unsafe { libc::setpriority(libc::PRIO_PGRP, pgid as libc::id_t, nice) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's nice value.
pub fn own_nice() -> i32 {
    // getpriority can return -1 legitimately; clear errno to tell it from a failure, which
    // for the calling process cannot happen anyway.
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes plain integers; 0 means the calling process.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if nice == -1 && nix::errno::Errno::last_raw() != 0 {
        return 0;
    }
    nice
}

#[cfg(test)]
mod descent_tests {
    use super::*;

    #[test]
    fn a_grandchild_descends_and_a_stranger_does_not() {
        // sh (our child) starts sleep (our grandchild).
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let me = std::process::id() as i32;
        let sh = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let sleep = loop {
            if let Some(&pid) = children_of(sh).first() {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "no grandchild");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(descends_from(sleep, sh, 0));
        assert!(descends_from(sleep, me, 0));
        assert!(descends_from(sh, me, 0));
        assert!(
            !descends_from(me, sh, 0),
            "a parent does not descend from its child"
        );
        assert!(!descends_from(sleep, me + 1_000_000, 0));
        assert!(!descends_from(sleep, me, sh), "the chain stops at stop_at");
        let _ = std::process::Command::new("kill")
            .arg(sleep.to_string())
            .status();
        let _ = child.wait();
        assert!(
            !descends_from(sleep, sh, 0),
            "gone processes descend from nobody"
        );
    }
}
