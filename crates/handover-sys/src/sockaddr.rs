//! What a socket fd is: family, type, whether it listens, and its local address.

use std::fmt;
use std::io;
use std::mem;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use nix::sys::socket::{getsockname, getsockopt, sockopt, SockaddrStorage};

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
    /// Anything else, with its number.
    Other(i32),
}

/// Socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// Anything else, with its number.
    Other(i32),
}

/// A socket's local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    /// An IP socket.
    Ip(SocketAddr),
    /// A unix socket bound to a path.
    UnixPath(PathBuf),
    /// An abstract unix socket (name without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// An unbound unix socket, or a family handover does not render.
    Unnamed,
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Ip(addr) => write!(f, "{addr}"),
            LocalAddr::UnixPath(path) => write!(f, "{}", path.display()),
            LocalAddr::UnixAbstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            LocalAddr::Unnamed => write!(f, "(unnamed)"),
        }
    }
}

/// Everything handover checks about a socket it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Address family.
    pub family: Family,
    /// Type.
    pub sock_type: SockType,
    /// `SO_ACCEPTCONN`: the socket is listening.
    pub listening: bool,
    /// Local address.
    pub local: LocalAddr,
}

/// An integer socket option, read raw: nix 0.29 has no `SO_DOMAIN` option, and its `SO_TYPE`
/// option turns the kernel's number into an enum that lacks some types (`SOCK_PACKET`), while
/// these fds come from outside and may be of any type.
fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is borrowed, so open for the call; `value` and `len` are locals valid for
    // writes of an int, the size these options write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Whether `fd` refers to a socket (by `fstat`).
pub fn is_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Reads family, type, listening state and local address of a socket.
pub fn socket_info(fd: BorrowedFd<'_>) -> io::Result<SocketInfo> {
    let family = match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? {
        libc::AF_INET => Family::Inet,
        libc::AF_INET6 => Family::Inet6,
        libc::AF_UNIX => Family::Unix,
        other => Family::Other(other),
    };
    let sock_type = match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)? {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        other => SockType::Other(other),
    };
    let listening = getsockopt(&fd, sockopt::AcceptConn)?;
    let local = local_addr(fd)?;
    Ok(SocketInfo {
        family,
        sock_type,
        listening,
        local,
    })
}

/// `getsockname` of a socket, rendered.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<LocalAddr> {
    let storage: SockaddrStorage = getsockname(fd.as_raw_fd())?;
    Ok(decode_sockaddr(&storage))
}

fn decode_sockaddr(storage: &SockaddrStorage) -> LocalAddr {
    if let Some(sin) = storage.as_sockaddr_in() {
        return LocalAddr::Ip(SocketAddr::V4(SocketAddrV4::from(*sin)));
    }
    if let Some(sin6) = storage.as_sockaddr_in6() {
        return LocalAddr::Ip(SocketAddr::V6(SocketAddrV6::from(*sin6)));
    }
    let Some(unix) = storage.as_unix_addr() else {
        return LocalAddr::Unnamed;
    };
    if let Some(path) = unix.path() {
        LocalAddr::UnixPath(path.to_path_buf())
    } else if let Some(name) = unix.as_abstract() {
        LocalAddr::UnixAbstract(name.to_vec())
    } else {
        LocalAddr::Unnamed
    }
}
