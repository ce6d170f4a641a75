//! Binding listening sockets when systemd did not pass them.
//!
//! Sockets are created with `SOCK_CLOEXEC` in the same call, so no concurrent spawn can
//! inherit them. TCP sockets get `SO_REUSEADDR` (as systemd's socket units do), and
//! `SO_REUSEPORT` on request. A unix socket path that already exists is replaced only if it
//! is a socket nobody listens on (a stale one from a killed run); a live socket, a regular
//! file or a symlink is refused.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    SockaddrIn6, UnixAddr,
};

/// How to bind one socket.
#[derive(Debug, Clone)]
pub struct BindSpec {
    /// Where.
    pub address: BindAddress,
    /// `listen()` backlog.
    pub backlog: u32,
    /// Set `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// For unix sockets: `chmod` to this mode.
    pub mode: Option<u32>,
    /// For unix sockets: `chown` to this (uid, gid); `None` leaves either unchanged.
    pub owner: Option<(Option<u32>, Option<u32>)>,
}

/// An address to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddress {
    /// TCP.
    Tcp(SocketAddr),
    /// A unix stream socket at a path.
    Unix(PathBuf),
}

impl std::fmt::Display for BindAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddress::Tcp(addr) => write!(f, "{addr}"),
            BindAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a socket could not be bound. The caller adds the socket's name.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is in use (EADDRINUSE).
    #[error("address {0} is already in use")]
    InUse(BindAddress),
    /// Permission denied (EACCES), e.g. a port below 1024 without privileges.
    #[error(
        "permission denied binding {0} (ports below 1024 need privileges; see docs/systemd.md)"
    )]
    PermissionDenied(BindAddress),
    /// The address does not exist on this machine (EADDRNOTAVAIL).
    #[error("address {0} is not available on this machine")]
    NotAvailable(BindAddress),
    /// The unix path is too long for `sockaddr_un`.
    #[error("unix socket path {path} is {len} bytes, the limit is 107")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Something that is not a stale socket sits at the unix path.
    #[error("{path} exists and is {what}; refusing to replace it")]
    PathOccupied {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// Another step failed.
    #[error("{step} for {address}: {source}")]
    Io {
        /// The failing step.
        step: &'static str,
        /// The address.
        address: BindAddress,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Binds and listens, returning the listening socket.
pub fn bind_listener(spec: &BindSpec) -> Result<OwnedFd, BindError> {
    match &spec.address {
        BindAddress::Tcp(addr) => bind_tcp(*addr, spec),
        BindAddress::Unix(path) => bind_unix(path, spec),
    }
}

fn new_socket(family: AddressFamily, address: &BindAddress) -> Result<OwnedFd, BindError> {
    socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|errno| BindError::Io {
        step: "socket()",
        address: address.clone(),
        source: errno.into(),
    })
}

fn classify(step: &'static str, address: &BindAddress, err: io::Error) -> BindError {
    match err.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse(address.clone()),
        Some(libc::EACCES) | Some(libc::EPERM) => BindError::PermissionDenied(address.clone()),
        Some(libc::EADDRNOTAVAIL) => BindError::NotAvailable(address.clone()),
        _ => BindError::Io {
            step,
            address: address.clone(),
            source: err,
        },
    }
}

/// `listen()`, raw: nix's `Backlog` refuses values from `SOMAXCONN` (4096) up, while the
/// kernel takes any backlog and clamps it to `net.core.somaxconn`, which may be set higher.
fn listen(fd: &OwnedFd, backlog: u32, address: &BindAddress) -> Result<(), BindError> {
    let backlog = backlog.min(i32::MAX as u32) as i32;
    // SAFETY: `fd` is a socket we own, open for the whole call; listen takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(classify("listen()", address, io::Error::last_os_error()));
    }
    Ok(())
}

fn bind_tcp(addr: SocketAddr, spec: &BindSpec) -> Result<OwnedFd, BindError> {
    let address = BindAddress::Tcp(addr);
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = new_socket(family, &address)?;
    let opt_err = |errno: nix::Error| BindError::Io {
        step: "setsockopt()",
        address: address.clone(),
        source: errno.into(),
    };
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(opt_err)?;
    if spec.reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(opt_err)?;
    }
    let bound = match addr {
        SocketAddr::V4(v4) => bind(fd.as_raw_fd(), &SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => bind(fd.as_raw_fd(), &SockaddrIn6::from(v6)),
    };
    bound.map_err(|errno| classify("bind()", &address, errno.into()))?;
    listen(&fd, spec.backlog, &address)?;
    Ok(fd)
}

/// The unix address of `path`, refusing paths that do not fit in `sun_path` (with its NUL).
pub(crate) fn unix_addr(path: &Path) -> Result<UnixAddr, BindError> {
    let bytes = path.as_os_str().as_bytes();
    let too_long = || BindError::PathTooLong {
        path: path.to_path_buf(),
        len: bytes.len(),
    };
    if bytes.len() > 107 || bytes.contains(&0) {
        return Err(too_long());
    }
    UnixAddr::new(path).map_err(|_| too_long())
}

/// Builds a `sockaddr_un` for `path`, refusing paths that do not fit; the length counts the
/// final NUL.
pub fn unix_sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), BindError> {
    let addr = unix_addr(path)?;
    let len = mem::size_of::<libc::sa_family_t>() + path.as_os_str().len() + 1;
    Ok((*addr.as_ref(), len as libc::socklen_t))
}

/// Whether something listens on the unix socket at `path` (connect succeeds).
fn unix_path_is_live(path: &Path, address: &BindAddress) -> Result<bool, BindError> {
    let addr = unix_addr(path)?;
    let probe = new_socket(AddressFamily::Unix, address)?;
    match connect(probe.as_raw_fd(), &addr) {
        Ok(()) => Ok(true),
        Err(Errno::ECONNREFUSED | Errno::ENOENT) => Ok(false),
        // A full backlog still means somebody listens.
        Err(Errno::EAGAIN) => Ok(true),
        Err(errno) => Err(BindError::Io {
            step: "probing the existing socket",
            address: address.clone(),
            source: errno.into(),
        }),
    }
}

/// Takes the lock `PATH.lock` for binding the unix socket at `path`, waiting for another
/// binder to finish.
fn lock_path(
    path: &Path,
    address: &BindAddress,
) -> Result<nix::fcntl::Flock<std::fs::File>, BindError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_name)
        .map_err(|source| BindError::Io {
            step: "opening the lock file (PATH.lock)",
            address: address.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        BindError::Io {
            step: "locking PATH.lock",
            address: address.clone(),
            source: errno.into(),
        }
    })
}

fn bind_unix(path: &Path, spec: &BindSpec) -> Result<OwnedFd, BindError> {
    let address = BindAddress::Unix(path.to_path_buf());
    unix_addr(path)?;
    // From the check of what is at the path to `listen()`, nobody else may do the same: two
    // instances would each find the other's socket not listening yet, take it for stale,
    // and replace it. `PATH.lock` next to the socket serializes them (it stays behind).
    let _lock = lock_path(path, &address)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            let file_type = meta.file_type();
            if file_type.is_symlink() {
                return Err(BindError::PathOccupied {
                    path: path.to_path_buf(),
                    what: "a symbolic link",
                });
            }
            if !file_type.is_socket() {
                return Err(BindError::PathOccupied {
                    path: path.to_path_buf(),
                    what: "not a socket",
                });
            }
            if unix_path_is_live(path, &address)? {
                return Err(BindError::InUse(address));
            }
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                step: "removing the stale socket",
                address: address.clone(),
                source,
            })?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BindError::Io {
                step: "lstat()",
                address,
                source,
            })
        }
    }
    let fd = new_socket(AddressFamily::Unix, &address)?;
    let addr = unix_addr(path)?;
    bind(fd.as_raw_fd(), &addr).map_err(|errno| classify("bind()", &address, errno.into()))?;
    if let Some(mode) = spec.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| BindError::Io {
                step: "chmod()",
                address: address.clone(),
                source,
            },
        )?;
    }
    if let Some((uid, gid)) = spec.owner {
        // `None` leaves that id unchanged; the socket file itself, never a link's target.
        std::os::unix::fs::lchown(path, uid, gid).map_err(|source| BindError::Io {
            step: "chown()",
            address: address.clone(),
            source,
        })?;
    }
    listen(&fd, spec.backlog, &address)?;
    Ok(fd)
}
