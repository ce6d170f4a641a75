//! Taking ownership of the sockets systemd passed at fds 3.., after checking each one.
//!
//! Like `sd_is_socket()`, every fd must be open, be a socket, be a stream socket of an IP or
//! unix family, and be listening. Ownership moves into [`OwnedFd`]s only once all of them
//! passed; on error no fd is adopted, so nothing is closed behind the caller's back.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use handover_proto::listen::{ListenSpec, LISTEN_FDS_START};

use crate::fd::{is_open, set_cloexec};
use crate::sockaddr::{is_socket, socket_info, Family, SockType, SocketInfo};

/// A socket systemd passed, now owned by handover.
#[derive(Debug)]
pub struct InheritedSocket {
    /// Its name from `LISTEN_FDNAMES` (`"unknown"` without names).
    pub name: String,
    /// The fd number it arrived at.
    pub arrived_at: i32,
    /// The socket, close-on-exec.
    pub fd: OwnedFd,
    /// What it is.
    pub info: SocketInfo,
}

/// Why a passed fd was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// The sockets were already taken once.
    #[error("the sockets passed by systemd were already taken")]
    AlreadyTaken,
    /// `LISTEN_FDS` counts an fd that is not open.
    #[error("LISTEN_FDS includes fd {fd} ({name:?}), but fd {fd} is not open")]
    NotOpen {
        /// The fd.
        fd: i32,
        /// Its name.
        name: String,
    },
    /// The fd is not a socket, or not a listening stream socket.
    #[error("fd {fd} ({name:?}) is {what}, not a listening stream socket")]
    NotListeningStream {
        /// The fd.
        fd: i32,
        /// Its name.
        name: String,
        /// What it is instead.
        what: String,
    },
    /// A syscall on the fd failed.
    #[error("checking fd {fd} ({name:?}): {source}")]
    Io {
        /// The fd.
        fd: i32,
        /// Its name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Checks and adopts fds `3..3+spec.names.len()`.
///
/// Call once, from `main`, before any thread starts, with the spec parsed from this process's
/// `LISTEN_*` variables. A second call fails with [`InheritError::AlreadyTaken`], so no fd can
/// be owned twice.
pub fn take_listen_fds(spec: &ListenSpec) -> Result<Vec<InheritedSocket>, InheritError> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(InheritError::AlreadyTaken);
    }
    let mut checked = Vec::with_capacity(spec.names.len());
    for (index, name) in spec.names.iter().enumerate() {
        let fd = LISTEN_FDS_START + index as i32;
        if !is_open(fd) {
            return Err(InheritError::NotOpen {
                fd,
                name: name.clone(),
            });
        }
        // SAFETY: fd is open (checked just above) and stays open for the duration of this
        // borrow: nothing else in the process closes fds in the LISTEN_FDS range.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let io_err = |source| InheritError::Io {
            fd,
            name: name.clone(),
            source,
        };
        // systemd passes the fds without CLOEXEC; set it before any spawn can leak them.
        set_cloexec(borrowed, true).map_err(io_err)?;
        if !is_socket(borrowed).map_err(io_err)? {
            return Err(InheritError::NotListeningStream {
                fd,
                name: name.clone(),
                what: "not a socket".into(),
            });
        }
        let info = socket_info(borrowed).map_err(io_err)?;
        let family_ok = matches!(info.family, Family::Inet | Family::Inet6 | Family::Unix);
        if !family_ok || info.sock_type != SockType::Stream || !info.listening {
            let what = format!(
                "a {} {} socket{}",
                match info.family {
                    Family::Inet => "IPv4".to_string(),
                    Family::Inet6 => "IPv6".to_string(),
                    Family::Unix => "unix".to_string(),
                    Family::Other(n) => format!("family-{n}"),
                },
                match info.sock_type {
                    SockType::Stream => "stream".to_string(),
                    SockType::Datagram => "datagram".to_string(),
                    SockType::SeqPacket => "seqpacket".to_string(),
                    SockType::Other(n) => format!("type-{n}"),
                },
                if info.listening {
                    ""
                } else {
                    " that is not listening"
                },
            );
            return Err(InheritError::NotListeningStream {
                fd,
                name: name.clone(),
                what,
            });
        }
        checked.push((fd, name.clone(), info));
    }
    Ok(checked
        .into_iter()
        .map(|(fd, name, info)| InheritedSocket {
            name,
            arrived_at: fd,
            // SAFETY: systemd handed fds 3..3+n to this process; the TAKEN guard makes this
            // the only place that adopts them, and each is adopted exactly once.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            info,
        })
        .collect())
}
