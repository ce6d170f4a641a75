//! The sentinel: a tiny process that kills every worker's process group when handover dies.
//!
//! A SIGKILLed handover cannot clean up. Its workers get their parent-death signal, but their
//! children do not (not even those in the worker's own process group), and they live on with
//! the listening socket. So at start handover spawns its own binary as `__sentinel`, with the
//! read end of a pipe as fd 3. For every process it starts (worker or probe) handover writes
//! `+PGID`, and `-PGID` once it has killed that group and is about to reap its leader. When
//! the pipe reaches end of file (handover exited, or was killed) the sentinel sends SIGKILL to
//! every group still recorded and exits. After a clean stop nothing is recorded any more.
//!
//! The sentinel is in a process group of its own and ignores the signals a terminal or a
//! `pkill handover` sends, so it outlives handover long enough to act; it holds no fd but the
//! pipe and the standard ones, and never sets a parent-death signal.
//!
//! A group number is not reused while the group has members, so a recorded group that still
//! exists at end of file is the worker's. Descendants that left the worker's process group
//! (`setsid`, a double fork) are out of its reach, but not of the cgroup tree kill: with
//! cgroups made for the run, handover also writes `=PATH` for each, and at end of file the
//! sentinel kills them (`cgroup.kill`) too, then removes them once they are empty.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::fd::{pipe_cloexec, set_nonblocking};
use crate::process::Pidfd;

/// The hidden subcommand that runs the sentinel.
pub const SENTINEL_COMMAND: &str = "__sentinel";

/// The fd the sentinel reads its records from.
const RECORDS_FD: i32 = 3;

/// handover's side of its sentinel.
#[derive(Debug)]
pub struct Sentinel {
    live: Mutex<Option<Live>>,
    /// Every group recorded and not forgotten, to tell a restarted sentinel.
    groups: Mutex<BTreeSet<i32>>,
    /// The cgroups to kill and remove at end of file.
    cgroups: Mutex<Vec<std::path::PathBuf>>,
    /// Records that could not be written (the pipe was full or the sentinel gone).
    lost: AtomicU64,
}

#[derive(Debug)]
struct Live {
    pidfd: Pidfd,
    pipe: std::fs::File,
}

impl Sentinel {
    /// Starts a sentinel.
    pub fn start() -> io::Result<Sentinel> {
        let sentinel = Sentinel {
            live: Mutex::new(None),
            groups: Mutex::new(BTreeSet::new()),
            cgroups: Mutex::new(Vec::new()),
            lost: AtomicU64::new(0),
        };
        sentinel.restart()?;
        Ok(sentinel)
    }

    /// Starts a new sentinel process (after the last one died) and tells it every group
    /// recorded so far.
    pub fn restart(&self) -> io::Result<()> {
        let (read, write) = pipe_cloexec()?;
        set_nonblocking(write.as_fd())?;
        let pid = crate::spawn::spawn_sentinel(&read)?;
        drop(read);
        let pidfd = Pidfd::open(pid)?;
        let mut pipe = std::fs::File::from(write);
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for &group in groups.iter() {
            if pipe.write_all(format!("+{group}\n").as_bytes()).is_err() {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(groups);
        for line in self.cgroup_lines() {
            if pipe.write_all(line.as_bytes()).is_err() {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(Live { pidfd, pipe });
        Ok(())
    }

    /// The sentinel's pid, while one runs.
    pub fn pid(&self) -> Option<i32> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.pidfd.pid())
    }

    /// The sentinel with `pid` exited (the caller reaped it): forget it until [`restart`].
    ///
    /// [`restart`]: Sentinel::restart
    pub fn exited(&self, pid: i32) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.as_ref().is_some_and(|l| l.pidfd.pid() == pid) {
            *live = None;
        }
    }

    /// Closes the pipe, as at the end of a clean stop: the sentinel kills what is still
    /// recorded (nothing, if every worker was reaped) and exits. Returns its pid, for the
    /// caller to reap.
    pub fn close(&self) -> Option<i32> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|live| live.pidfd.pid())
    }

    /// Records a new process group (a process just spawned into a group of its own).
    pub fn record(&self, group: i32) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group);
        self.send(format!("+{group}\n"));
    }

    /// Forgets a group: its leader is about to be reaped, after the group got SIGKILL.
    pub fn forget(&self, group: i32) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        self.send(format!("-{group}\n"));
    }

    /// Records a cgroup (made for this run) whose every process dies with handover, and
    /// which is then removed. A path with a newline cannot be recorded and is ignored.
    pub fn record_cgroup(&self, path: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        if path.as_os_str().as_bytes().contains(&b'\n') || path.as_os_str().len() > 4000 {
            return;
        }
        self.cgroups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
        self.send(format!("={}\n", path.display()));
    }

    fn cgroup_lines(&self) -> Vec<String> {
        let cgroups = self.cgroups.lock().unwrap_or_else(|p| p.into_inner());
        cgroups
            .iter()
            .map(|p| format!("={}\n", p.display()))
            .collect()
    }

    /// How many records were lost since the last call.
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // A record is a few bytes, written whole or not at all (less than PIPE_BUF).
        let written = live
            .as_mut()
            .is_some_and(|l| l.pipe.write_all(line.as_bytes()).is_ok());
        if !written {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `__sentinel` process: reads records until end of file, then kills what is recorded.
/// Never returns.
pub fn run() -> ! {
    for signal in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        // SAFETY: setting a disposition to the constant SIG_IGN in a single-threaded process.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    // Shown in ps and top, instead of the `exe` of /proc/self/exe.
    let _ = nix::sys::prctl::set_name(c"handover-sentinel");
    // SAFETY: close_range with plain integers; only fds above the records pipe are closed.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    // SAFETY: fd 3 is the pipe handover's spawn put there for us; we are its only owner.
    let mut records = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(RECORDS_FD) });
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    let mut cgroups: Vec<std::path::PathBuf> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match records.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                    match partial[..end].strip_prefix(b"=") {
                        Some(path) => {
                            use std::os::unix::ffi::OsStrExt;
                            let path: std::path::PathBuf = std::ffi::OsStr::from_bytes(path).into();
                            if !cgroups.contains(&path) {
                                cgroups.push(path);
                            }
                        }
                        None => apply(&mut groups, &partial[..end]),
                    }
                    partial.drain(..=end);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    for group in groups {
        // A group <= 1 is never recorded (`apply` refuses it): -1 would mean everyone.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Everything in the run's cgroups, however it detached (the sentinel is not in them);
    // then the cgroups themselves, once the killed are gone (for up to two seconds).
    for cgroup in &cgroups {
        crate::cgroup::kill(cgroup);
    }
    crate::cgroup::remove_all(&cgroups, 200);
    std::process::exit(0)
}

/// Applies one record (`+N` or `-N`) to the set of groups; anything else is ignored.
fn apply(groups: &mut BTreeSet<i32>, record: &[u8]) {
    let Ok(text) = std::str::from_utf8(record) else {
        return;
    };
    let (add, number) = match text.split_at_checked(1) {
        Some(("+", n)) => (true, n),
        Some(("-", n)) => (false, n),
        _ => return,
    };
    let Ok(group) = number.parse::<i32>() else {
        return;
    };
    if group <= 1 {
        return;
    }
    if add {
        groups.insert(group);
    } else {
        groups.remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_add_and_remove_groups_and_junk_is_ignored() {
        let mut groups = BTreeSet::new();
        for record in [
            &b"+100"[..],
            b"+200",
            b"-100",
            b"+1",
            b"+0",
            b"+-5",
            b"*7",
            b"+",
            b"+99999999999",
            b"\xff",
        ] {
            apply(&mut groups, record);
        }
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), [200]);
    }
}
