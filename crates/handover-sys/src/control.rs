//! Creating the control socket safely.
//!
//! The socket lives in a directory only its owner can write (never a world-writable one such
//! as /tmp), is mode 0600, and is guarded by an exclusive lock on a sibling lock file, so two
//! instances can never both believe they own it. An existing socket is replaced only when it
//! is stale (nobody listens); a live one means another instance runs. Symlinks, non-sockets
//! and files owned by another user are refused, never unlinked.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{
    bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
};

use crate::bind::unix_addr;

/// A bound, listening control socket; removed (with its lock file) on drop.
#[derive(Debug)]
pub struct ControlListener {
    /// The listening socket (close-on-exec, non-blocking).
    pub fd: OwnedFd,
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
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
    let pid = getsockopt(&stream, sockopt::PeerCredentials)
        .ok()
        .map(|cred| cred.pid())
        .filter(|&pid| pid > 0);
    Ok(Some(pid))
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
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(io_err("opening the lock file", &lock_path))?;
    let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) => {
            let pid = listening_pid(path).ok().flatten().flatten();
            return Err(ControlSocketError::AlreadyRunning {
                path: path.to_path_buf(),
                pid,
            });
        }
    };

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

    let addr = unix_addr(path).map_err(|e| ControlSocketError::Occupied {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|errno| io_err("creating a socket for", path)(errno.into()))?;
    bind(fd.as_raw_fd(), &addr).map_err(|errno| io_err("binding", path)(errno.into()))?;
    let mode = if shared { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))?;
    let backlog = Backlog::new(128).map_err(|errno| io_err("listening on", path)(errno.into()))?;
    listen(&fd, backlog).map_err(|errno| io_err("listening on", path)(errno.into()))?;
    Ok(ControlListener {
        fd,
        path: path.to_path_buf(),
        lock_path,
        _lock: lock,
    })
}
