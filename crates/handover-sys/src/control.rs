//! Creating the control socket safely.
//!
//! The socket lives in a directory only its owner can write (never a world-writable one such
//! as /tmp), is mode 0600, and is guarded by an exclusive lock on a sibling lock file, so two
//! instances can never both believe they own it. An existing socket is replaced only when it
//! is stale (nobody listens); a live one means another instance runs. Symlinks, non-sockets
//! and files owned by another user are refused, never unlinked.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bind::unix_sockaddr;

/// A bound, listening control socket; removed (with its lock file) on drop.
#[derive(Debug)]
pub struct ControlListener {
    /// The listening socket (close-on-exec, non-blocking).
    pub fd: OwnedFd,
    path: PathBuf,
    lock_path: PathBuf,
    _lock: OwnedFd,
}

impl ControlListener {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// Another instance listens there.
    #[error("another handover is already running on {path}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
        /// Its pid, when it could be asked.
        pid: Option<i32>,
    },
    /// The directory is not private to us.
    #[error("{path} is not a safe place for the control socket: {why}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Something that must not be replaced sits at the path.
    #[error("{path} exists and is {what}; refusing to replace it")]
    Occupied {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: String,
    },
    /// A step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ControlSocketError + 'a {
    move |source| ControlSocketError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `dir` is a real directory that only we (or root) can write.
fn check_private_dir(dir: &Path) -> Result<(), ControlSocketError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspecting", dir))?;
    let unsafe_dir = |why: String| ControlSocketError::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let euid = crate::users::effective_uid();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "others can write to it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The pid of whoever listens on the unix socket at `path`, if anyone does.
pub fn listening_pid(path: &Path) -> io::Result<Option<Option<i32>>> {
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::ECONNREFUSED) | Some(libc::ENOENT)
            ) =>
        {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred of `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    Ok(Some(if rc == 0 && cred.pid > 0 {
        Some(cred.pid)
    } else {
        None
    }))
}

/// Creates the control socket at `path`. With `create_parent`, a missing parent directory is
/// created with mode 0700. `shared` makes the socket connectable by other users (mode 0666):
/// use it only when the server checks every peer's credentials against an allow list.
pub fn bind_control(
    path: &Path,
    create_parent: bool,
    shared: bool,
) -> Result<ControlListener, ControlSocketError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if create_parent && std::fs::symlink_metadata(parent).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err("creating", parent))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", parent))?;
    }
    check_private_dir(parent)?;

    let mut lock_name = path.as_os_str().to_os_string();
    lock_name.push(".lock");
    let lock_path = PathBuf::from(lock_name);
    let c_lock = std::ffi::CString::new(lock_path.as_os_str().as_bytes()).map_err(|_| {
        ControlSocketError::Occupied {
            path: lock_path.clone(),
            what: "a path with a NUL byte".into(),
        }
    })?;
    // SAFETY: open with O_NOFOLLOW|O_CLOEXEC; the fd is owned right after.
    let raw = unsafe {
        libc::open(
            c_lock.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600 as libc::c_uint,
        )
    };
    if raw < 0 {
        return Err(io_err("opening the lock file", &lock_path)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: just opened.
    let lock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: flock on our own fd.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        let pid = listening_pid(path).ok().flatten().flatten();
        return Err(ControlSocketError::AlreadyRunning {
            path: path.to_path_buf(),
            pid,
        });
    }

    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let occupied = |what: &str| ControlSocketError::Occupied {
                path: path.to_path_buf(),
                what: what.into(),
            };
            if meta.file_type().is_symlink() {
                return Err(occupied("a symbolic link"));
            }
            if !meta.file_type().is_socket() {
                return Err(occupied("not a socket"));
            }
            if meta.uid() != crate::users::effective_uid() {
                return Err(occupied(&format!("a socket owned by uid {}", meta.uid())));
            }
            if let Some(pid) = listening_pid(path).map_err(io_err("probing", path))? {
                return Err(ControlSocketError::AlreadyRunning {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("inspecting", path)(err)),
    }

    let (sun, len) = unix_sockaddr(path).map_err(|e| ControlSocketError::Occupied {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    // SAFETY: a new socket, owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io_err("creating a socket for", path)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: just created.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: bind/listen on our socket with the sockaddr_un built above.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        ) < 0
        {
            return Err(io_err("binding", path)(io::Error::last_os_error()));
        }
    }
    let mode = if shared { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))?;
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        return Err(io_err("listening on", path)(io::Error::last_os_error()));
    }
    Ok(ControlListener {
        fd,
        path: path.to_path_buf(),
        lock_path,
        _lock: lock,
    })
}
