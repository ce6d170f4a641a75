//! Small fd helpers: close-on-exec flags, the standard fds, pipes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::stat::Mode;

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = FdFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Whether a raw fd number is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    // F_GETFD on any number is harmless; EBADF means it is not open.
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Makes sure fds 0, 1 and 2 are open, pointing closed ones at `/dev/null`.
///
/// Run first thing in `main`: otherwise the first socket handover opens could become fd 0..2
/// and then be clobbered when a worker's standard fds are set up.
pub fn ensure_std_fds() -> io::Result<()> {
    for target in 0..3 {
        if is_open(target) {
            continue;
        }
        // The fd lands on the lowest free number, which is `target` because all lower ones
        // are open. It is deliberately not close-on-exec and never owned by Rust: it becomes
        // a standard fd for the rest of the process's life.
        let fd = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())?;
        if fd != target {
            nix::unistd::dup2(fd, target)?;
            nix::unistd::close(fd)?;
        }
    }
    Ok(())
}

/// Creates a pipe whose both ends are close-on-exec, returning (read, write).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Opens `/dev/null` read-write, close-on-exec (as the standard library opens every file).
pub fn dev_null() -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(OwnedFd::from(file))
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
