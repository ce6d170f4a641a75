//! `cargo xtask demo`: builds handover and the example HTTP worker, then runs
//! `handover start --config examples/demo.toml` in the foreground until Ctrl-C.
//!
//! Ctrl-C in a terminal reaches handover directly: it runs in xtask's process group, which is
//! the terminal's foreground group (handover puts each worker in a group of its own, so the
//! workers are stopped by handover, not by the terminal). xtask itself only waits, so that
//! the shell prompt comes back after handover has stopped, not before. A SIGINT or SIGTERM
//! sent to xtask alone with `kill` is passed on to handover.

use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};

use crate::workspace;

/// The demo's configuration, relative to the workspace root.
const CONFIG: &str = "examples/demo.toml";

/// The pid of the running handover, or 0 while there is none: read by the signal handler.
static HANDOVER_PID: AtomicI32 = AtomicI32::new(0);

/// Runs the demo; returns once handover has exited.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("takes no arguments, got {args:?}");
    }
    workspace::build(&["handover", "example-worker"])?;
    let bin_dir = workspace::bin_dir()?;
    let handover = bin_dir.join("handover");

    // The demo configuration names its worker `handover-example-http`, found through PATH.
    let mut path_dirs = vec![bin_dir.clone()];
    if let Some(path) = std::env::var_os("PATH") {
        path_dirs.extend(std::env::split_paths(&path));
    }
    let path = std::env::join_paths(path_dirs).context("cannot extend PATH")?;

    // handover keeps its control socket in a private runtime directory and never in /tmp.
    // A user session usually has XDG_RUNTIME_DIR; where it does not (a container, a bare
    // login shell) the demo provides one under target/.
    let runtime_dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => {
            let dir = bin_dir.join("demo-runtime");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            dir
        }
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root || std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        println!(
            "handover demo: from another terminal, `target/debug/handover status --config {CONFIG}` \
             shows the workers and `target/debug/handover reload --config {CONFIG}` replaces them."
        );
    }

    println!(
        "handover demo: 2 workers share http://127.0.0.1:8080/. Try `curl http://127.0.0.1:8080/` \
         in another terminal (each answer names the worker's pid); Ctrl-C stops."
    );
    // Installed only now, so that Ctrl-C during the build above still stops xtask at once.
    pass_on_stop_signals()?;
    let mut child = Command::new(&handover)
        .args(["start", "--config", CONFIG])
        .current_dir(workspace::root())
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .spawn()
        .with_context(|| format!("cannot run {}", handover.display()))?;
    HANDOVER_PID.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait();
    HANDOVER_PID.store(0, Ordering::SeqCst);
    let status = status.context("cannot wait for handover")?;
    if !status.success() {
        bail!("handover exited with {status}");
    }
    Ok(())
}

/// Passes SIGINT and SIGTERM on to handover, except those the terminal sent: the terminal
/// sends them to the whole foreground process group, handover included, and a second copy
/// would count as a second stop signal (the fourth one forces the stop).
extern "C" fn on_stop_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for this delivery.
    let from_terminal = unsafe { (*info).si_code } == libc::SI_KERNEL;
    let pid = HANDOVER_PID.load(Ordering::SeqCst);
    if pid > 0 && !from_terminal {
        // SAFETY: errno is thread-local; kill() is async-signal-safe; errno is restored so
        // that the interrupted code does not see a value kill() left behind.
        unsafe {
            let errno = *libc::__errno_location();
            libc::kill(pid, signal);
            *libc::__errno_location() = errno;
        }
    }
}

fn pass_on_stop_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data, fully initialised below before use; the handler only
        // touches an atomic, errno and kill(). A handled signal is reset to its default in the
        // child at exec, so handover does not inherit the handler.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_stop_signal;
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot install a signal handler");
        }
    }
    Ok(())
}
