//! Journal entries too large for one datagram, sent the way journald's native protocol takes
//! them: written into a memfd that is then sealed, and the fd passed with an empty datagram.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

/// Where journald takes native-protocol entries.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Sends one native-protocol `entry` to the journal at `socket_path` through a sealed memfd,
/// from the unbound datagram socket `socket`: for entries larger than the socket lets one
/// datagram be (`EMSGSIZE`). The memfd is close-on-exec and closed before this returns;
/// sealing it against writes, growing and shrinking lets journald read it without copying it
/// first.
pub fn send_sealed(socket: BorrowedFd<'_>, socket_path: &Path, entry: &[u8]) -> io::Result<()> {
    let memfd = sealed_memfd(entry)?;
    let address = UnixAddr::new(socket_path)?;
    let fds = [memfd.as_raw_fd()];
    loop {
        match sendmsg(
            socket.as_raw_fd(),
            &[] as &[IoSlice<'_>],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&address),
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// A memfd holding `data`, sealed so that nobody can change it any more.
fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    let memfd = memfd_create(
        c"handover-journal-entry",
        MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(data)?;
    let memfd = OwnedFd::from(file);
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(memfd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};
    use std::os::unix::net::UnixDatagram;

    /// The receiver gets no payload and one fd: a memfd with the whole entry, sealed.
    #[test]
    fn an_entry_arrives_as_a_sealed_memfd() {
        let dir = std::env::temp_dir().join(format!("handover-sys-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        let entry: Vec<u8> = b"MESSAGE="
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'x', 300 * 1024))
            .chain(*b"\n")
            .collect();
        // One datagram this large is refused; the memfd way is what it is for.
        let refused = sender.send_to(&entry, &path).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EMSGSIZE));
        send_sealed(std::os::fd::AsFd::as_fd(&sender), &path, &entry).unwrap();

        let mut payload = [0u8; 16];
        let mut iov = [std::io::IoSliceMut::new(&mut payload)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let received = nix::sys::socket::recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(received.bytes, 0, "the datagram carries no payload");
        let fds: Vec<_> = received
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(fds.len(), 1);
        // SAFETY: the fd was just received with SCM_RIGHTS and belongs to nobody else.
        let memfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        let seals = fcntl(memfd.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        let all = (SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL)
            .bits();
        assert_eq!(seals & all, all, "sealed against every change");
        let mut file = std::fs::File::from(memfd);
        file.rewind().unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert!(content == entry, "the memfd holds the whole entry");
        assert!(
            file.write_all(b"more").is_err(),
            "a sealed memfd takes no writes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
