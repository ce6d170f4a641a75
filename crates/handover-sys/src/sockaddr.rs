//! What a socket fd is: family, type, whether it listens, and its local address.

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

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

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of an int, as the option requires.
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
    // SAFETY: fstat writes into a zeroed stat buffer we own.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
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
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
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
    // SAFETY: sockaddr_storage is large enough for every family; getsockname writes at most
    // `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(decode_sockaddr(&storage, len))
}

fn decode_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> LocalAddr {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            LocalAddr::Ip(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            LocalAddr::Ip(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un.
            let sun: &libc::sockaddr_un =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let offset = mem::size_of::<libc::sa_family_t>();
            let path_len = (len as usize)
                .saturating_sub(offset)
                .min(sun.sun_path.len());
            let bytes: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            if bytes.is_empty() {
                LocalAddr::Unnamed
            } else if bytes[0] == 0 {
                LocalAddr::UnixAbstract(bytes[1..].to_vec())
            } else {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                LocalAddr::UnixPath(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..end])))
            }
        }
        _ => LocalAddr::Unnamed,
    }
}
