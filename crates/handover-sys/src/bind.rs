//! Binding listening sockets when systemd did not pass them.
//!
//! Sockets are created with `SOCK_CLOEXEC` in the same call, so no concurrent spawn can
//! inherit them. TCP sockets get `SO_REUSEADDR` (as systemd's socket units do), and
//! `SO_REUSEPORT` on request. A unix socket path that already exists is replaced only if it
//! is a socket nobody listens on (a stale one from a killed run); a live socket, a regular
//! file or a symlink is refused.

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

fn new_socket(domain: i32, address: &BindAddress) -> Result<OwnedFd, BindError> {
    // SAFETY: socket() with SOCK_CLOEXEC creates a new fd we immediately own.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(BindError::Io {
            step: "socket()",
            address: address.clone(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live int of the size the option expects.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

fn listen(fd: &OwnedFd, backlog: u32, address: &BindAddress) -> Result<(), BindError> {
    let backlog = backlog.min(i32::MAX as u32) as i32;
    // SAFETY: listen on a socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(classify("listen()", address, io::Error::last_os_error()));
    }
    Ok(())
}

fn bind_tcp(addr: SocketAddr, spec: &BindSpec) -> Result<OwnedFd, BindError> {
    let address = BindAddress::Tcp(addr);
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = new_socket(domain, &address)?;
    let opt_err = |source| BindError::Io {
        step: "setsockopt()",
        address: address.clone(),
        source,
    };
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(opt_err)?;
    if spec.reuse_port {
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(opt_err)?;
    }
    let rc = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: a zeroed sockaddr_in is valid; we fill family, port and address.
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            // SAFETY: pointer and length describe the sockaddr_in above.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(v6) => {
            // SAFETY: a zeroed sockaddr_in6 is valid; we fill its fields.
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            // SAFETY: pointer and length describe the sockaddr_in6 above.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(classify("bind()", &address, io::Error::last_os_error()));
    }
    listen(&fd, spec.backlog, &address)?;
    Ok(fd)
}

/// Builds a `sockaddr_un` for `path`, refusing paths that do not fit.
pub fn unix_sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), BindError> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
        return Err(BindError::PathTooLong {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// Whether something listens on the unix socket at `path` (connect succeeds).
fn unix_path_is_live(path: &Path, address: &BindAddress) -> Result<bool, BindError> {
    let (sun, len) = unix_sockaddr(path)?;
    let probe = new_socket(libc::AF_UNIX, address)?;
    // SAFETY: connect with a sockaddr_un we built; the probe fd is ours and dropped after.
    let rc = unsafe {
        libc::connect(
            probe.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Ok(false),
        // A full backlog still means somebody listens.
        Some(libc::EAGAIN) => Ok(true),
        _ => Err(BindError::Io {
            step: "probing the existing socket",
            address: address.clone(),
            source: err,
        }),
    }
}

fn bind_unix(path: &Path, spec: &BindSpec) -> Result<OwnedFd, BindError> {
    let address = BindAddress::Unix(path.to_path_buf());
    let (sun, len) = unix_sockaddr(path)?;
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
    let fd = new_socket(libc::AF_UNIX, &address)?;
    // SAFETY: bind with the sockaddr_un built above.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(classify("bind()", &address, io::Error::last_os_error()));
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| BindError::PathTooLong {
        path: path.to_path_buf(),
        len: path.as_os_str().len(),
    })?;
    if let Some(mode) = spec.mode {
        // SAFETY: chmod on a NUL-terminated path we own.
        if unsafe { libc::chmod(c_path.as_ptr(), mode as libc::mode_t) } < 0 {
            return Err(BindError::Io {
                step: "chmod()",
                address,
                source: io::Error::last_os_error(),
            });
        }
    }
    if let Some((uid, gid)) = spec.owner {
        let uid = uid.unwrap_or(u32::MAX);
        let gid = gid.unwrap_or(u32::MAX);
        // SAFETY: lchown on a NUL-terminated path; -1 (u32::MAX) leaves an id unchanged.
        if unsafe { libc::lchown(c_path.as_ptr(), uid, gid) } < 0 {
            return Err(BindError::Io {
                step: "chown()",
                address,
                source: io::Error::last_os_error(),
            });
        }
    }
    listen(&fd, spec.backlog, &address)?;
    Ok(fd)
}
