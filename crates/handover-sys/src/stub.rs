//! The `__exec-worker` stub: the single-threaded process between handover and a worker.
//!
//! It is handover's own binary, started by [`crate::spawn`] with the worker's sockets in a
//! staging fd range. It moves them to 3.., closes every other fd above the standard ones,
//! joins the worker's cgroup, sets its open-file limit and umask, drops privileges (supplementary groups, then gid, then uid), sets the parent-death signal
//! *after* the uid change (which would clear it) and re-checks that handover is still its
//! parent, adds `LISTEN_PID` (and `WATCHDOG_PID` with `WATCHDOG_USEC`) with its own pid
//! (which the worker keeps across exec), sets `NO_NEW_PRIVS` when asked, and execs the
//! worker. Any failure is written to the status fd and the stub exits with 127.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::spawn::WorkerExec;

/// The hidden subcommand that runs the stub.
pub const STUB_COMMAND: &str = "__exec-worker";

/// Exit code of a stub that could not exec the worker (as shells use for "not executable").
pub const EXEC_FAILED: i32 = 127;

/// The stub's arguments.
#[derive(Debug, Clone)]
pub struct StubArgs {
    /// handover's pid: the stub refuses to exec if its parent is no longer this.
    pub expected_parent: i32,
    /// Number of sockets.
    pub n_sockets: usize,
    /// Where socket 0 is staged.
    pub staging_base: i32,
    /// The status pipe's write end.
    pub status_fd: i32,
    /// The worker.
    pub exec: WorkerExec,
}

/// `-`, or `=` and the path.
fn opt_path(path: Option<&std::path::Path>) -> OsString {
    match path {
        None => "-".into(),
        Some(path) => {
            let mut s = OsString::from("=");
            s.push(path.as_os_str());
            s
        }
    }
}

/// The inverse of [`opt_path`].
fn parse_path(arg: Option<&OsString>, what: &str) -> Result<Option<PathBuf>, String> {
    let arg = arg.ok_or_else(|| format!("stub {what} missing"))?;
    if arg.as_bytes() == b"-" {
        return Ok(None);
    }
    match arg.as_bytes().strip_prefix(b"=") {
        Some(path) => Ok(Some(PathBuf::from(OsStr::from_bytes(path)))),
        None => Err(format!("bad stub {what}")),
    }
}

fn opt_num(value: Option<u32>) -> OsString {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
        .into()
}

impl StubArgs {
    /// Renders the stub's argv: `handover __exec-worker v4 PPID N BASE STATUS UID GID GROUPS
    /// CWD NNP UMASK NOFILE NICE K CGROUP... -- ARGV...` (K cgroups), with `-` for absent
    /// values and paths prefixed by `=` so any path (including one that is just `-`)
    /// round-trips.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![
            "handover".into(),
            STUB_COMMAND.into(),
            "v4".into(),
            self.expected_parent.to_string().into(),
            self.n_sockets.to_string().into(),
            self.staging_base.to_string().into(),
            self.status_fd.to_string().into(),
            opt_num(self.exec.uid),
            opt_num(self.exec.gid),
            match &self.exec.groups {
                None => "-".into(),
                Some(groups) => groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            },
            opt_path(self.exec.cwd.as_deref()),
            if self.exec.no_new_privileges {
                "1"
            } else {
                "0"
            }
            .into(),
            self.exec
                .umask
                .map(|m| format!("{m:o}"))
                .unwrap_or_else(|| "-".into())
                .into(),
            self.exec
                .nofile
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
                .into(),
            self.exec.start_nice.to_string().into(),
            self.exec.cgroups.len().to_string().into(),
        ];
        argv.extend(self.exec.cgroups.iter().map(|c| opt_path(Some(c))));
        argv.push("--".into());
        argv.extend(self.exec.argv.iter().cloned());
        argv
    }

    /// Parses what [`StubArgs::to_argv`] produced, from the element after `__exec-worker`.
    pub fn parse(args: &[OsString]) -> Result<StubArgs, String> {
        let text = |i: usize| -> Result<&str, String> {
            args.get(i)
                .and_then(|a| a.to_str())
                .ok_or_else(|| format!("stub argument {i} missing or not UTF-8"))
        };
        if text(0)? != "v4" {
            return Err("unknown stub protocol version".into());
        }
        let num = |i: usize| -> Result<i64, String> {
            text(i)?
                .parse::<i64>()
                .map_err(|_| format!("stub argument {i} is not a number"))
        };
        let opt = |i: usize| -> Result<Option<u32>, String> {
            match text(i)? {
                "-" => Ok(None),
                s => s
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| format!("stub argument {i} is not an id")),
            }
        };
        let groups = match text(7)? {
            "-" => None,
            "" => Some(Vec::new()),
            s => Some(
                s.split(',')
                    .map(|g| g.parse::<u32>().map_err(|_| "bad group id".to_string()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let cwd = parse_path(args.get(8), "cwd")?;
        let no_new_privileges = match text(9)? {
            "0" => false,
            "1" => true,
            _ => return Err("bad stub no_new_privileges".into()),
        };
        let umask = match text(10)? {
            "-" => None,
            m => Some(u32::from_str_radix(m, 8).map_err(|_| "bad stub umask")?),
        };
        let nofile = match text(11)? {
            "-" => None,
            n => Some(n.parse::<u64>().map_err(|_| "bad stub nofile")?),
        };
        let start_nice = text(12)?
            .parse::<i32>()
            .ok()
            .filter(|n| (0..=19).contains(n))
            .ok_or("bad stub nice")?;
        let n_cgroups = text(13)?
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= 8)
            .ok_or("bad stub cgroup count")?;
        let mut cgroups = Vec::with_capacity(n_cgroups);
        for i in 0..n_cgroups {
            cgroups.push(parse_path(args.get(14 + i), "cgroup")?.ok_or("bad stub cgroup")?);
        }
        let rest = 14 + n_cgroups;
        if args.get(rest).map(|a| a.as_bytes()) != Some(b"--") {
            return Err("stub separator missing".into());
        }
        let argv: Vec<OsString> = args[rest + 1..].to_vec();
        if argv.is_empty() {
            return Err("no worker command".into());
        }
        Ok(StubArgs {
            expected_parent: num(1)? as i32,
            n_sockets: num(2)?.try_into().map_err(|_| "bad socket count")?,
            staging_base: num(3)? as i32,
            status_fd: num(4)? as i32,
            exec: WorkerExec {
                argv,
                cwd,
                uid: opt(5)?,
                gid: opt(6)?,
                groups,
                no_new_privileges,
                umask,
                nofile,
                cgroups,
                start_nice,
            },
        })
    }
}

/// Reports a failed step on the status fd and exits with [`EXEC_FAILED`].
fn fail(status_fd: RawFd, step: &str, err: std::io::Error) -> ! {
    // SAFETY: the status fd was staged for us by the spawner; we own it for the stub's life
    // and exit right after writing.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(status_fd) };
    let _ = write!(pipe, "{step}: {err}");
    drop(pipe);
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(EXEC_FAILED) }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Sets every signal to its default disposition.
///
/// An ignored signal stays ignored across exec. Rust's runtime ignores SIGPIPE in this stub,
/// and glibc's posix_spawn leaves its two internal signals (32, 33) ignored in the child; a
/// worker must start with none of that. glibc's sigaction refuses the internal signals, so
/// this uses the raw system call, with an all-zero kernel `struct sigaction` (handler
/// SIG_DFL, no flags, empty mask), whose layout is the same zeros on every architecture.
/// System calls on a local only: the child of [`crate::clone3`] calls it before its exec.
pub(crate) fn reset_signal_dispositions() {
    let default_action = [0u64; 4];
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a pointer to a zeroed kernel sigaction of sufficient size
        // and the kernel's sigset size (8 bytes); failure for a signal is harmless.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

/// Runs the stub: sets the process up and execs the worker. Never returns.
///
/// `env` is the stub's own environment, which the spawner made the worker's.
pub fn run(args: StubArgs, env: Vec<(OsString, OsString)>) -> ! {
    let status = args.status_fd;
    let n = args.n_sockets as i32;
    // SAFETY: this process is single-threaded and owns every fd it touches (the staged fds
    // and the status fd were placed by the spawner's file actions); the calls below take no
    // pointers but to locals and C strings that outlive them, and any failure ends the stub
    // with _exit before the worker's exec.
    unsafe {
        if libc::fcntl(status, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            libc::_exit(EXEC_FAILED);
        }
        for i in 0..n {
            // staging_base >= 3 + n, so source and target never coincide and dup2 always
            // yields a target without close-on-exec.
            if libc::dup2(args.staging_base + i, 3 + i) < 0 {
                fail(status, "moving sockets into place", last_error());
            }
        }
        // Close everything else: staged copies and any fd that lacked close-on-exec.
        if status > 3 + n {
            libc::syscall(
                libc::SYS_close_range,
                (3 + n) as u32,
                (status - 1) as u32,
                0u32,
            );
        }
        libc::syscall(libc::SYS_close_range, (status + 1) as u32, u32::MAX, 0u32);
    }
    // Into the worker's cgroup first, so that everything after, the worker included, is
    // accounted and killed there; while still root (a delegated cgroup may be writable by
    // handover's user only).
    for cgroup in &args.exec.cgroups {
        // A v1 hierarchy (it has `tasks`) takes this one thread without the kernel's global
        // thread-group lock, whose every write waits for an RCU grace period; the stub is
        // single-threaded, so the thread is the whole process.
        let tasks = cgroup.join("tasks");
        let file = if tasks.exists() {
            tasks
        } else {
            cgroup.join("cgroup.procs")
        };
        if let Err(err) = std::fs::write(file, b"0") {
            fail(
                status,
                &format!("joining the cgroup {}", cgroup.display()),
                err,
            );
        }
    }
    // SAFETY: as above.
    unsafe {
        if let Some(limit) = args.exec.nofile {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) < 0 {
                fail(
                    status,
                    &format!("setrlimit(RLIMIT_NOFILE, {limit})"),
                    last_error(),
                );
            }
        }
        if let Some(mask) = args.exec.umask {
            libc::umask(mask as libc::mode_t);
        }
        // Lower only (a positive nice is always allowed); handover raises it back.
        if args.exec.start_nice > 0
            && libc::setpriority(libc::PRIO_PROCESS, 0, args.exec.start_nice) < 0
        {
            fail(status, "setpriority()", last_error());
        }

        if let Some(groups) = &args.exec.groups {
            let groups: Vec<libc::gid_t> = groups.clone();
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                fail(status, "setgroups()", last_error());
            }
        }
        if let Some(gid) = args.exec.gid {
            if libc::setgid(gid) < 0 {
                fail(status, "setgid()", last_error());
            }
        }
        if let Some(uid) = args.exec.uid {
            if libc::setuid(uid) < 0 {
                fail(status, "setuid()", last_error());
            }
        }
        // Set after the uid change: changing credentials clears the parent-death signal.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            fail(status, "prctl(PR_SET_PDEATHSIG)", last_error());
        }
        // handover may have died between our creation and the prctl; then nobody would kill us.
        if libc::getppid() != args.expected_parent {
            fail(
                status,
                "checking the parent",
                std::io::Error::other("handover exited before the worker started"),
            );
        }
        if args.exec.no_new_privileges
            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) < 0
        {
            fail(status, "prctl(PR_SET_NO_NEW_PRIVS)", last_error());
        }
        reset_signal_dispositions();
    }

    if let Some(cwd) = &args.exec.cwd {
        if let Err(err) = std::env::set_current_dir(cwd) {
            fail(
                status,
                &format!("changing directory to {}", cwd.display()),
                err,
            );
        }
    }

    let pid = nix::unistd::getpid().as_raw();
    let mut envp: Vec<CString> = Vec::with_capacity(env.len() + 1);
    let mut path_var: Option<OsString> = None;
    let mut watchdog = false;
    for (key, value) in env {
        if key.as_bytes() == b"LISTEN_PID" || key.as_bytes() == b"WATCHDOG_PID" {
            continue;
        }
        watchdog |= key.as_bytes() == b"WATCHDOG_USEC";
        if key.as_bytes() == b"PATH" {
            path_var = Some(value.clone());
        }
        let mut kv = key.into_vec();
        kv.push(b'=');
        kv.extend(value.into_vec());
        if let Ok(c) = CString::new(kv) {
            envp.push(c);
        }
    }
    envp.push(CString::new(format!("LISTEN_PID={pid}")).expect("no NUL in a number"));
    if watchdog {
        // As systemd does: the watchdog is meant for this pid, not for its children.
        envp.push(CString::new(format!("WATCHDOG_PID={pid}")).expect("no NUL in a number"));
    }
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let argv: Vec<CString> = match args
        .exec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect()
    {
        Ok(argv) => argv,
        Err(_) => fail(
            status,
            "preparing argv",
            std::io::Error::other("NUL byte in an argument"),
        ),
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    let program = args.exec.argv[0].as_bytes();
    let candidates: Vec<CString> = if program.contains(&b'/') {
        vec![argv[0].clone()]
    } else {
        let path = path_var.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        path.as_bytes()
            .split(|&b| b == b':')
            .map(|dir| {
                let dir = if dir.is_empty() { &b"."[..] } else { dir };
                let mut full = dir.to_vec();
                full.push(b'/');
                full.extend_from_slice(program);
                full
            })
            .filter_map(|p| CString::new(p).ok())
            .collect()
    };
    // As execvp does: remember EACCES from any directory, else report the last error.
    let mut error = std::io::Error::from_raw_os_error(libc::ENOENT);
    let mut saw_eacces = false;
    for candidate in &candidates {
        // SAFETY: NUL-terminated program path, argv and envp arrays that outlive the call.
        unsafe { libc::execve(candidate.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        let err = last_error();
        match err.raw_os_error() {
            Some(libc::EACCES) => {
                saw_eacces = true;
                error = err;
            }
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ESTALE) => {
                if !saw_eacces {
                    error = err;
                }
            }
            _ => {
                error = err;
                break;
            }
        }
    }
    fail(
        status,
        &format!("executing {}", String::from_utf8_lossy(program)),
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_arguments_round_trip() {
        for exec in [
            WorkerExec {
                argv: vec!["/bin/app".into(), "--".into(), "-".into()],
                ..WorkerExec::default()
            },
            WorkerExec {
                argv: vec!["app".into()],
                cwd: Some("-".into()),
                uid: Some(65534),
                gid: Some(65534),
                groups: Some(vec![]),
                no_new_privileges: true,
                umask: Some(0o027),
                nofile: Some(4096),
                cgroups: vec![
                    "/sys/fs/cgroup/a b/w1".into(),
                    "/sys/fs/cgroup/memory/-".into(),
                ],
                start_nice: 10,
            },
        ] {
            let args = StubArgs {
                expected_parent: 42,
                n_sockets: 2,
                staging_base: 10,
                status_fd: 12,
                exec: exec.clone(),
            };
            let argv = args.to_argv();
            let parsed = StubArgs::parse(&argv[2..]).unwrap();
            assert_eq!(parsed.exec, exec);
            assert_eq!(parsed.expected_parent, 42);
        }
        assert!(StubArgs::parse(&["v3".into()]).is_err());
    }
}
