//! Small fd helpers: close-on-exec flags, the standard fds, pipes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write the flags of an fd we borrow.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a raw fd number is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless; EBADF means it is not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
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
        // SAFETY: opening /dev/null; the fd lands on the lowest free number, which is `target`
        // because all lower ones are open. It is deliberately not close-on-exec and never owned
        // by Rust: it becomes a standard fd for the rest of the process's life.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if fd != target {
            // SAFETY: `fd` was just opened by us and is not used elsewhere.
            unsafe { libc::dup2(fd, target) };
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Creates a pipe whose both ends are close-on-exec, returning (read, write).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we own; O_CLOEXEC sets the flag atomically.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens `/dev/null` read-write, close-on-exec.
pub fn dev_null() -> io::Result<OwnedFd> {
    // SAFETY: plain open with O_CLOEXEC; the new fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: only reads and writes the status flags of a borrowed fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
