//! Receiving sd_notify datagrams on a per-worker unix socket, with sender credentials.
//!
//! The receive rules follow systemd's: a datagram larger than the buffer (`MSG_TRUNC`) or with
//! truncated control data (`MSG_CTRUNC`) is dropped whole; fds passed with `SCM_RIGHTS` are
//! never used (received close-on-exec, so none can leak into a concurrent spawn): those of a
//! dropped datagram are closed at once, those of a message handed back for the caller to
//! close once it has dealt with the message (a sender waiting on `BARRIER=1` learns from
//! their close that its earlier messages were read); a datagram without credentials is
//! dropped.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;

use handover_proto::notify::NOTIFY_BUFFER_MAX;
use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};

/// A bound, non-blocking datagram socket that receives credentials.
#[derive(Debug)]
pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
}

/// The sender's credentials, from `SCM_CREDENTIALS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Sender pid.
    pub pid: i32,
    /// Sender uid.
    pub uid: u32,
    /// Sender gid.
    pub gid: u32,
}

/// One received datagram.
#[derive(Debug)]
pub enum Received {
    /// A datagram that passed the transport checks; parse `payload` next.
    Message {
        /// The bytes.
        payload: Vec<u8>,
        /// Who sent it.
        sender: Credentials,
        /// The fds that came with it, for the caller to close (drop) once it has placed the
        /// sender: with `BARRIER=1` the sender waits for exactly that.
        fds: Vec<OwnedFd>,
    },
    /// A datagram dropped whole, and why.
    Dropped {
        /// Why.
        reason: &'static str,
        /// The sender, when known.
        sender: Option<Credentials>,
        /// How many fds came with it (all already closed).
        fds_closed: usize,
    },
    /// Nothing to read right now.
    Empty,
}

/// Room for credentials plus the most fds one `SCM_RIGHTS` message can carry (SCM_MAX_FD).
const CMSG_BUFFER: usize = 8192;

impl NotifySocket {
    /// Binds a new socket at `path` (which must not exist), mode 0600, owned by `owner` when
    /// given (so a worker running as another user can send to it).
    pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        // A bigger receive buffer keeps a chatty worker from blocking on a full queue; without
        // it (a lower limit) the socket still works.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(256 * 1024));
        let addr = crate::bind::unix_addr(path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        bind(fd.as_raw_fd(), &addr)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        }
        Ok(NotifySocket {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path (what goes into `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives one datagram without blocking.
    pub fn recv(&self) -> io::Result<Received> {
        let mut payload = vec![0u8; NOTIFY_BUFFER_MAX + 1];
        let mut cmsg = vec![0u8; CMSG_BUFFER];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: a zeroed msghdr is valid; we point it at buffers that outlive the call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.len() as _;
        // SAFETY: recvmsg writes into the buffers described by msg.
        let n = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Received::Empty),
                Some(libc::EINTR) => Ok(Received::Empty),
                _ => Err(err),
            };
        }
        let n = n as usize;
        let mut sender = None;
        let mut fds: Vec<OwnedFd> = Vec::new();
        // SAFETY: walking the control buffer the kernel filled, with the CMSG_* macros that
        // respect msg_controllen; each fd in SCM_RIGHTS is new and ours to own and close.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                let h = &*header;
                if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                    let data_len = h.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = data_len / mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(header) as *const RawFd;
                    for i in 0..count {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        if raw >= 0 {
                            fds.push(OwnedFd::from_raw_fd(raw));
                        }
                    }
                } else if h.cmsg_level == libc::SOL_SOCKET
                    && h.cmsg_type == libc::SCM_CREDENTIALS
                    && h.cmsg_len as usize
                        >= libc::CMSG_LEN(mem::size_of::<libc::ucred>() as u32) as usize
                {
                    let cred =
                        std::ptr::read_unaligned(libc::CMSG_DATA(header) as *const libc::ucred);
                    sender = Some(Credentials {
                        pid: cred.pid,
                        uid: cred.uid,
                        gid: cred.gid,
                    });
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
        }
        let fds_closed = fds.len();
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Ok(Received::Dropped {
                reason: "control data truncated",
                sender,
                fds_closed,
            });
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 || n > NOTIFY_BUFFER_MAX {
            return Ok(Received::Dropped {
                reason: "datagram longer than 4096 bytes",
                sender,
                fds_closed,
            });
        }
        let Some(sender) = sender.filter(|c| c.pid > 0) else {
            return Ok(Received::Dropped {
                reason: "no sender credentials",
                sender: None,
                fds_closed,
            });
        };
        payload.truncate(n);
        Ok(Received::Message {
            payload,
            sender,
            fds,
        })
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A private directory for notify sockets, and the lock that says it is in use.
#[derive(Debug)]
pub struct NotifyDir {
    path: PathBuf,
    /// Held for the supervisor's lifetime: a sweep removes only directories whose lock it can
    /// take, whatever pid namespace their owner lives in.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl NotifyDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The name of the lock file in a notify directory.
const LOCK_NAME: &str = ".lock";

/// The longest name of a worker's notify socket in the directory: `w` and the worker's
/// number in hex (eight digits cover four billion workers).
pub const MAX_SOCKET_NAME: usize = 9;

/// The longest name [`create_private_dir`] gives its directory: `handover.`, a pid of up to
/// seven digits (the kernel's `pid_max` is at most 4194304), `-`, eight hex digits, `.notify`.
const MAX_DIR_NAME: usize = 9 + 7 + 1 + 8 + 7;

/// The longest base directory whose notify sockets still fit a unix socket address (107
/// bytes of path): the limit for `runtime_dir` and what stands in for it.
pub const MAX_BASE_LEN: usize = 107 - 1 - MAX_DIR_NAME - 1 - MAX_SOCKET_NAME;

/// The name of worker `id`'s notify socket in its directory.
pub fn socket_name(id: u64) -> String {
    format!("w{id:x}")
}

/// Creates a private directory for notify sockets in `base`: mode 0711 (others may reach a
/// socket whose name they know and whose file permits them, but cannot list or create
/// entries), owned by the caller, named `handover.PID-UNIQUE.notify`, with a lock file held
/// while it is used. It appears complete or not at all: it is made under another name and
/// renamed, so a concurrent sweep never sees it without its lock.
pub fn create_private_dir(base: &Path) -> io::Result<NotifyDir> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let len = base.as_os_str().len();
    if len > MAX_BASE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "its path is {len} bytes; notify sockets fit a unix socket address only under a \
                 directory of at most {MAX_BASE_LEN} (set [handover] runtime_dir to a shorter one)"
            ),
        ));
    }
    // Eight hex digits of the clock: with the pid, no name anyone can plant in advance.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()) as u32;
    let unique = format!("{}-{nanos:08x}", std::process::id());
    let staging = base.join(format!(".handover.{unique}.tmp"));
    let path = base.join(format!("handover.{unique}.notify"));
    std::fs::DirBuilder::new().mode(0o711).create(&staging)?;
    // The umask may have cleared bits; set the mode exactly.
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o711))?;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(staging.join(LOCK_NAME))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| io::Error::from(errno))?;
    std::fs::rename(&staging, &path)?;
    Ok(NotifyDir { path, _lock: lock })
}

/// Removes notify directories in `base` left by handover processes that are gone (a
/// SIGKILLed run cannot clean up after itself): real directories owned by this user whose
/// lock nobody holds. A live handover holds its lock in any pid namespace, so a handover in
/// a container that shares this directory never removes another's. (A directory of an
/// older version has no lock; it goes when no process has the pid in its name.)
pub fn sweep_stale_dirs(base: &Path) -> usize {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let euid = crate::users::effective_uid();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(inner) = name
            .strip_prefix("handover.")
            .and_then(|n| n.strip_suffix(".notify"))
            .or_else(|| {
                name.strip_prefix(".handover.")
                    .and_then(|n| n.strip_suffix(".tmp"))
            })
        else {
            continue;
        };
        let path = entry.path();
        let ours =
            std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir() && meta.uid() == euid);
        if !ours {
            continue;
        }
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path.join(LOCK_NAME));
        let stale = match lock {
            Ok(file) => {
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
            }
            // An older version's directory, named for its pid alone.
            Err(err) if err.kind() == io::ErrorKind::NotFound => inner
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
            Err(_) => false,
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
