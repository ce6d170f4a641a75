//! Starting the stub directly in the worker's cgroup2 directory: `clone3()` with
//! `CLONE_INTO_CGROUP` (Linux 5.7).
//!
//! Moving a process into a cgroup afterwards (a write to `cgroup.procs`) takes the kernel's
//! global thread-group lock for writing, which waits for an RCU grace period (about 5 ms on
//! the machines measured); a process created in its cgroup takes no such lock. The child is a
//! fork of the spawning thread, and until its exec it makes system calls only: no allocation,
//! no lock, nothing of Rust's runtime. What [`crate::spawn`] does with `posix_spawn()` file
//! actions and attributes it does by hand: its own process group, every signal at its default
//! and none blocked, the `dup2`s in order, then `execve`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `struct clone_args` of `<linux/sched.h>`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` of `<linux/sched.h>`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the stub execs: `/proc/self/exe`, with `argv` and `envp` (NULL-terminated arrays of
/// C strings that outlive the call).
pub(crate) struct Exec<'a> {
    pub path: &'a CStr,
    pub argv: &'a [*mut libc::c_char],
    pub envp: &'a [*mut libc::c_char],
}

/// Creates the stub as a child in the cgroup2 directory `cgroup` (an open fd of it), with
/// `dups` (source, target) applied in order, and execs it. Returns its pid; an error when
/// the kernel cannot do this (then nothing was started).
pub(crate) fn spawn_into(
    cgroup: &OwnedFd,
    dups: &[(i32, i32)],
    exec: &Exec<'_>,
) -> io::Result<i32> {
    assert!(exec.argv.last().is_some_and(|p| p.is_null()));
    assert!(exec.envp.last().is_some_and(|p| p.is_null()));
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // Every signal blocked across the clone, so that none of handover's handlers runs in the
    // child before it has set them all to their defaults.
    // SAFETY: sigset_t is plain data; an all-zero one is valid.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is initialised by sigfillset; pthread_sigmask changes only this thread's
    // mask, and it is restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: clone3 with a fully initialised clone_args of the size given; no stack, so the
    // child runs on a copy of this thread's stack, as after fork().
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, which calls only system calls until exec or _exit.
        unsafe { child(dups, exec) }
    }
    let error = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(error);
    }
    let pid = pid as i32;
    // The child sets its own process group too; whichever runs first, it is in place before
    // this returns (an error means the child already did it, or already exec'd).
    // SAFETY: setpgid with plain integers.
    unsafe { libc::setpgid(pid, pid) };
    Ok(pid)
}

/// The child's side: only system calls, then exec. Never returns.
///
/// # Safety
///
/// Call only in the child of [`spawn_into`]'s clone, with the arrays it was given.
unsafe fn child(dups: &[(i32, i32)], exec: &Exec<'_>) -> ! {
    // SAFETY: system calls with plain integers, and pointers to locals or to the arrays the
    // caller keeps alive; nothing here allocates or takes a lock.
    unsafe {
        if libc::setpgid(0, 0) < 0 {
            libc::_exit(crate::stub::EXEC_FAILED);
        }
        // Every handler back to its default (raw system calls on a local, as the stub does),
        // then nothing blocked.
        crate::stub::reset_signal_dispositions();
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        for &(source, target) in dups {
            if libc::dup2(source, target) < 0 {
                libc::_exit(crate::stub::EXEC_FAILED);
            }
        }
        libc::execve(
            exec.path.as_ptr(),
            exec.argv.as_ptr().cast(),
            exec.envp.as_ptr().cast(),
        );
        libc::_exit(crate::stub::EXEC_FAILED)
    }
}
