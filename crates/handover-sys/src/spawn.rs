//! Starting workers without running any code of ours between fork and exec.
//!
//! handover is multithreaded, so a child created by `fork()` may only call async-signal-safe
//! functions before `exec`: no allocation, no locks, no closures. handover therefore starts
//! every worker with `posix_spawn()` (a vfork-style clone whose only work before exec is the
//! declared file actions and attributes) of *itself*, as a hidden stub: `handover
//! __exec-worker ...`. The stub is an ordinary single-threaded process that finishes the setup
//! (fd layout, privileges, parent-death signal, `LISTEN_PID`) and then execs the worker, which
//! keeps the stub's pid.
//!
//! File actions only `dup2` the worker's sockets into a staging range above every fd the
//! parent uses, plus a status pipe and the standard fds. `dup2` to a different number yields
//! an fd without close-on-exec, so exactly these fds survive the exec into the stub; everything
//! else handover holds is close-on-exec.
//!
//! A worker with a cgroup2 directory is created in it instead, by `clone3()` with
//! `CLONE_INTO_CGROUP` ([`crate::clone3`]), whose child makes the same `dup2`s and settings with
//! system calls only, and execs the same stub; the stub then joins only a hybrid host's v1
//! trees. Where the kernel cannot, `posix_spawn()` is used and the stub joins them all.
//!
//! All spawns happen on one dedicated thread that never exits, because the parent-death signal
//! a worker sets fires when the *thread* that created it exits.

use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use crate::fd::{dev_null, pipe_cloexec};
use crate::process::Pidfd;
use crate::sentinel::Sentinel;
use crate::stub::StubArgs;

/// Who a worker runs as, where, and what it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerExec {
    /// argv; `argv[0]` is searched in the worker's `PATH` when it has no `/`.
    pub argv: Vec<OsString>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Switch to this uid.
    pub uid: Option<u32>,
    /// Switch to this gid.
    pub gid: Option<u32>,
    /// Set these supplementary groups (applied first).
    pub groups: Option<Vec<u32>>,
    /// `PR_SET_NO_NEW_PRIVS`: neither the worker nor anything it runs gains privileges
    /// through exec (setuid binaries, file capabilities).
    pub no_new_privileges: bool,
    /// The worker's umask; `None` keeps handover's.
    pub umask: Option<u32>,
    /// `RLIMIT_NOFILE`, soft and hard; `None` keeps handover's.
    pub nofile: Option<u64>,
    /// The cgroups the stub joins before it execs: the worker's cgroup2 directory, then
    /// those of v1 hierarchies (empty: handover's own).
    pub cgroups: Vec<PathBuf>,
    /// The nice value the worker starts with (0: handover's own); handover gives the
    /// worker's process group back its priority once the worker is ready.
    pub start_nice: i32,
}

/// Everything needed to start one worker.
#[derive(Debug)]
pub struct SpawnRequest {
    /// The program and credentials.
    pub exec: WorkerExec,
    /// The complete environment, `KEY=VALUE`, without `LISTEN_PID` (the stub adds it).
    pub env: Vec<CString>,
    /// Sockets, in the order they must appear at fds 3, 4, ...
    pub sockets: Vec<Arc<OwnedFd>>,
    /// The worker's stdout; `None` inherits handover's.
    pub stdout: Option<OwnedFd>,
    /// The worker's stderr; `None` inherits handover's.
    pub stderr: Option<OwnedFd>,
}

/// A started stub (and, unless `exec_error` is set, the worker it became).
#[derive(Debug)]
pub struct Spawned {
    /// The pid (stub and worker share it).
    pub pid: i32,
    /// A pidfd for signalling it.
    pub pidfd: Pidfd,
    /// Set when the stub could not exec the worker: what failed, with the OS error. The stub
    /// then exits with code 127.
    pub exec_error: Option<String>,
}

type Reply = Box<dyn FnOnce(io::Result<Spawned>) + Send>;

/// A handle to the spawning thread.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<(SpawnRequest, Reply)>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

impl Spawner {
    /// Starts the spawning thread. Call once; the thread lives as long as the process.
    pub fn start() -> io::Result<Spawner> {
        Spawner::start_with(None)
    }

    /// Starts the spawning thread; every process it spawns is recorded with `sentinel`.
    pub fn start_with(sentinel: Option<Arc<Sentinel>>) -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<(SpawnRequest, Reply)>();
        let dev_null = dev_null()?;
        let parent = nix::unistd::getpid().as_raw();
        std::thread::Builder::new()
            .name("handover-spawner".into())
            .spawn(move || {
                // The thread keeps running even when every Spawner handle is dropped: workers'
                // parent-death signal is tied to it, and it must fire only when the process dies.
                for (request, reply) in rx.iter() {
                    reply(spawn_one(request, &dev_null, parent, sentinel.as_deref()));
                }
                loop {
                    std::thread::park();
                }
            })?;
        Ok(Spawner { tx })
    }

    /// Queues a spawn; `reply` runs on the spawning thread with the outcome.
    pub fn spawn(
        &self,
        request: SpawnRequest,
        reply: impl FnOnce(io::Result<Spawned>) + Send + 'static,
    ) {
        if let Err(mpsc::SendError((_, reply))) = self.tx.send((request, Box::new(reply))) {
            reply(Err(io::Error::other("the spawning thread is gone")));
        }
    }
}

fn cstring(bytes: Vec<u8>, what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

struct SpawnAttrs {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl SpawnAttrs {
    fn new() -> io::Result<SpawnAttrs> {
        // SAFETY: the init functions fill the zeroed structures; destroy runs in Drop.
        unsafe {
            let mut attrs = SpawnAttrs {
                attr: mem::zeroed(),
                actions: mem::zeroed(),
            };
            check(libc::posix_spawnattr_init(&mut attrs.attr))?;
            if let Err(err) = check(libc::posix_spawn_file_actions_init(&mut attrs.actions)) {
                libc::posix_spawnattr_destroy(&mut attrs.attr);
                return Err(err);
            }
            Ok(attrs)
        }
    }
}

impl Drop for SpawnAttrs {
    fn drop(&mut self) {
        // SAFETY: both were initialised in new().
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the sentinel (see [`crate::sentinel`]): handover's own binary as `__sentinel`, with
/// `records` (a pipe's read end) at fd 3, `/dev/null` as stdin, stdout and stderr (it has
/// nothing to say, and must hold no pipe of handover's open), in a process group of its own, with an empty signal mask and default dispositions (it sets
/// its own), and an empty environment. Returns its pid.
pub(crate) fn spawn_sentinel(records: &OwnedFd) -> io::Result<i32> {
    let dev_null = dev_null()?;
    // dup2 onto the same number would keep close-on-exec: stage the pipe above fd 3 first.
    let staged = nix::fcntl::fcntl(
        records.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10),
    )
    .map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nobody else owns.
    let staged = unsafe { OwnedFd::from_raw_fd(staged) };
    let argv = [
        cstring(b"handover".to_vec(), "an argument")?,
        cstring(
            crate::sentinel::SENTINEL_COMMAND.as_bytes().to_vec(),
            "an argument",
        )?,
    ];
    let argv_ptrs: [*mut libc::c_char; 3] = [
        argv[0].as_ptr() as *mut _,
        argv[1].as_ptr() as *mut _,
        std::ptr::null_mut(),
    ];
    let env_ptrs: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let mut attrs = SpawnAttrs::new()?;
    // SAFETY: the attribute and file-action calls only record settings in structures we own;
    // every fd named in them stays open until posix_spawn returns.
    unsafe {
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(libc::posix_spawnattr_setflags(
            &mut attrs.attr,
            flags as libc::c_short,
        ))?;
        check(libc::posix_spawnattr_setpgroup(&mut attrs.attr, 0))?;
        let mut empty: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(&mut attrs.attr, &empty))?;
        let mut all: libc::sigset_t = mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, libc::SIGKILL);
        libc::sigdelset(&mut all, libc::SIGSTOP);
        check(libc::posix_spawnattr_setsigdefault(&mut attrs.attr, &all))?;
        check(libc::posix_spawn_file_actions_adddup2(
            &mut attrs.actions,
            staged.as_raw_fd(),
            3,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(
            &mut attrs.actions,
            dev_null.as_raw_fd(),
            0,
        ))?;
        for fd in [1, 2] {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut attrs.actions,
                dev_null.as_raw_fd(),
                fd,
            ))?;
        }
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: path, argv and envp are NUL-terminated arrays of C strings that outlive the
    // call; attrs were initialised above.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            c"/proc/self/exe".as_ptr(),
            &attrs.actions,
            &attrs.attr,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        )
    };
    check(rc)?;
    Ok(pid)
}

/// An fd of the cgroup2 directory `dir`, for `CLONE_INTO_CGROUP`; `None` for a v1 one (which
/// has `tasks`) or one that cannot be opened.
fn open_cgroup2(dir: &std::path::Path) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    if dir.join("tasks").exists() {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()
        .map(OwnedFd::from)
}

/// `posix_spawn()` of the stub at `path`, in a process group of its own, with an empty signal
/// mask and every signal at its default, and `dups` (source, target) as its file actions.
fn posix_spawn_stub(
    path: &std::ffi::CStr,
    argv: &[*mut libc::c_char],
    envp: &[*mut libc::c_char],
    dups: &[(i32, i32)],
) -> io::Result<i32> {
    let mut attrs = SpawnAttrs::new()?;
    // SAFETY: the attribute and file-action calls only record settings in structures we own;
    // every fd named in them stays open until posix_spawn returns.
    unsafe {
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(libc::posix_spawnattr_setflags(
            &mut attrs.attr,
            flags as libc::c_short,
        ))?;
        // Process group = the child's own pid, set atomically at creation so the supervisor
        // can signal the group from the first instant.
        check(libc::posix_spawnattr_setpgroup(&mut attrs.attr, 0))?;
        let mut empty: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(&mut attrs.attr, &empty))?;
        let mut all: libc::sigset_t = mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, libc::SIGKILL);
        libc::sigdelset(&mut all, libc::SIGSTOP);
        check(libc::posix_spawnattr_setsigdefault(&mut attrs.attr, &all))?;
        for &(source, target) in dups {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut attrs.actions,
                source,
                target,
            ))?;
        }
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: path, argv and envp are NUL-terminated arrays of C strings that outlive the
    // call; attrs were initialised above.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &attrs.actions,
            &attrs.attr,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    drop(attrs);
    check(rc)?;
    Ok(pid)
}

fn spawn_one(
    request: SpawnRequest,
    dev_null: &OwnedFd,
    parent: i32,
    sentinel: Option<&Sentinel>,
) -> io::Result<Spawned> {
    let (status_read, status_write) = pipe_cloexec()?;
    let n_sockets = request.sockets.len() as i32;
    let mut highest = status_write.as_raw_fd().max(dev_null.as_raw_fd());
    for fd in request.sockets.iter() {
        highest = highest.max(fd.as_raw_fd());
    }
    for fd in request.stdout.iter().chain(request.stderr.iter()) {
        highest = highest.max(fd.as_raw_fd());
    }
    // Staging fds lie above every source (so no dup2 clobbers a source) and above the final
    // range 3..3+n (so the stub's moves never overlap).
    let staging_base = (highest + 1).max(3 + n_sockets);
    let status_fd = staging_base + n_sockets;

    // The stub's fds: each socket into the staging range, the status pipe, stdio.
    let mut dups: Vec<(i32, i32)> = request
        .sockets
        .iter()
        .enumerate()
        .map(|(i, fd)| (fd.as_raw_fd(), staging_base + i as i32))
        .collect();
    dups.push((status_write.as_raw_fd(), status_fd));
    dups.push((dev_null.as_raw_fd(), 0));
    if let Some(out) = &request.stdout {
        dups.push((out.as_raw_fd(), 1));
    }
    if let Some(err) = &request.stderr {
        dups.push((err.as_raw_fd(), 2));
    }
    let stub_argv = |exec: WorkerExec| -> io::Result<Vec<CString>> {
        let stub = StubArgs {
            expected_parent: parent,
            n_sockets: n_sockets as usize,
            staging_base,
            status_fd,
            exec,
        };
        stub.to_argv()
            .into_iter()
            .map(|arg| cstring(arg.into_vec(), "an argument"))
            .collect()
    };
    let pointers = |strings: &[CString]| -> Vec<*mut libc::c_char> {
        let mut ptrs: Vec<*mut libc::c_char> =
            strings.iter().map(|a| a.as_ptr() as *mut _).collect();
        ptrs.push(std::ptr::null_mut());
        ptrs
    };
    let env_ptrs = pointers(&request.env);
    let path = c"/proc/self/exe";

    // Created in its cgroup2 directory where the kernel can (the stub then joins only the v1
    // ones); else the stub joins them all.
    let into = request
        .exec
        .cgroups
        .first()
        .and_then(|dir| open_cgroup2(dir));
    let created = match into {
        Some(cgroup) => {
            let mut exec = request.exec.clone();
            exec.cgroups.remove(0);
            let argv = stub_argv(exec)?;
            let argv_ptrs = pointers(&argv);
            let exec = crate::clone3::Exec {
                path,
                argv: &argv_ptrs,
                envp: &env_ptrs,
            };
            crate::clone3::spawn_into(&cgroup, &dups, &exec).ok()
        }
        None => None,
    };
    let pid = match created {
        Some(pid) => pid,
        None => {
            let argv = stub_argv(request.exec)?;
            posix_spawn_stub(path, &pointers(&argv), &env_ptrs, &dups)?
        }
    };
    // Recorded before anything else: the worker may fork as soon as it runs.
    if let Some(sentinel) = sentinel {
        sentinel.record(pid);
    }
    // Our copies of the child's stdio and the pipe's write end must close now, so EOF on the
    // status pipe means "the stub exec'd the worker or exited".
    drop(status_write);
    drop(request.stdout);
    drop(request.stderr);
    let pidfd = Pidfd::open(pid)?;

    let mut message = Vec::new();
    let mut file = std::fs::File::from(status_read);
    let _ = (&mut file).take(4096).read_to_end(&mut message);
    let exec_error = if message.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(&message).into_owned())
    };
    Ok(Spawned {
        pid,
        pidfd,
        exec_error,
    })
}
