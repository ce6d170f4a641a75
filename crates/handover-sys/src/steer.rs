//! The kernel side of steered reloads: listening sockets in one `SO_REUSEPORT` group, a
//! classic BPF selector that picks the member each new connection goes to, and what handover
//! needs to know about a member (its accept queue) or do to it (stop it listening).
//!
//! Facts this relies on (checked by this crate's tests and the steering tests):
//! - TCP sockets of one uid that set `SO_REUSEPORT` before binding one address form a group;
//!   `SO_ATTACH_REUSEPORT_CBPF` on any member sets the group's selector (no privilege needed),
//!   and attaching again replaces it atomically. The selector returns a member's index;
//!   an index past the last member falls back to the kernel's hash.
//! - Members are numbered in the order they started listening. When one leaves (its last
//!   close anywhere, or `shutdown(SHUT_RD)`, which also stops it listening in every process
//!   holding a copy), the last member moves into its slot. A member that left does not come
//!   back by listening again: a new socket is needed.
//! - `TCP_INFO`'s `tcpi_unacked` of a listening socket is the length of its accept queue.

use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::bind::{bind_listener, BindAddress, BindError, BindSpec};

/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// Negative offsets that load from the network header, and ancillary data.
const SKF_NET_OFF: u32 = (-0x100000i32) as u32;
const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
const SKF_AD_PROTOCOL: u32 = 0;
const SKF_AD_RANDOM: u32 = 56;
/// `skb->protocol` of IPv6, as the ancillary load gives it (host order).
const ETH_P_IPV6: u32 = 0x86dd;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

/// A selector: where each new connection of a group goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(Vec<libc::sock_filter>);

/// What a selector does, member indices in the group's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// Where connections go by default.
    pub target: u32,
    /// Connections from this local source port go to this member (a readiness probe of a
    /// generation that gets no traffic yet).
    pub probe: Option<(u16, u32)>,
    /// This share of connections (out of `u32::MAX`) goes to this member instead (a canary).
    pub share: Option<(u32, u32)>,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Program {
    /// The selector for `selection`.
    pub fn new(selection: Selection) -> Program {
        let mut p = Vec::new();
        if let Some((port, member)) = selection.probe {
            // The TCP source port lies after the IPv6 header (40 bytes: a SYN made by the
            // local stack carries no extension header) or after the IPv4 header (its length
            // from IHL).
            p.push(insn(
                LD_W_ABS,
                0,
                0,
                SKF_AD_OFF.wrapping_add(SKF_AD_PROTOCOL),
            ));
            p.push(insn(JEQ_K, 3, 0, ETH_P_IPV6)); // IPv6: to the load after the jump
            p.push(insn(LDX_B_MSH, 0, 0, SKF_NET_OFF)); // X = IPv4 header length
            p.push(insn(LD_H_IND, 0, 0, SKF_NET_OFF)); // A = port at net + X
            p.push(insn(JA, 0, 0, 1)); // over the IPv6 load
            p.push(insn(LD_H_ABS, 0, 0, SKF_NET_OFF.wrapping_add(40)));
            p.push(insn(JEQ_K, 0, 1, u32::from(port)));
            p.push(insn(RET_K, 0, 0, member));
        }
        if let Some((member, share)) = selection.share {
            p.push(insn(LD_W_ABS, 0, 0, SKF_AD_OFF.wrapping_add(SKF_AD_RANDOM)));
            p.push(insn(JGT_K, 1, 0, share)); // above the share: to the default
            p.push(insn(RET_K, 0, 0, member));
        }
        p.push(insn(RET_K, 0, 0, selection.target));
        Program(p)
    }

    /// The instructions, for tests.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never: every selector returns).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Sets the selector of the group `member` belongs to.
pub fn attach(member: BorrowedFd<'_>, program: &Program) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.0.len() as libc::c_ushort,
        filter: program.0.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `program`'s instructions, which outlive the call; the kernel
    // copies them. `member` is a socket we hold.
    let rc = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket's file status flags (`O_NONBLOCK` among them), which every process holding a
/// descriptor of the same open socket shares and may change.
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    Ok(nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_GETFL,
    )?)
}

/// Sets a socket's file status flags back to `flags` (from [`status_flags`]).
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// How many connections wait in a listening TCP socket's accept queue.
pub fn queue_len(listener: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: a zeroed tcp_info is valid; getsockopt fills at most its size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length are ours; the fd is a socket we hold.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// Stops a listening socket listening, in every process that holds it, and takes it out of
/// its group. A thread blocked in `accept()` on it wakes with `EINVAL`.
pub fn stop_listening(listener: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read)
        .map_err(io::Error::from)
}

/// Whether `SO_REUSEPORT` is set on a socket.
pub fn reuse_port(socket: BorrowedFd<'_>) -> io::Result<bool> {
    nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::ReusePort)
        .map_err(io::Error::from)
}

/// A new member for the group at `address`: a TCP socket with `SO_REUSEPORT`, bound and
/// listening with `backlog`.
pub fn bind_member(address: SocketAddr, backlog: u32) -> Result<OwnedFd, BindError> {
    bind_listener(&BindSpec {
        address: BindAddress::Tcp(address),
        backlog,
        reuse_port: true,
        mode: None,
        owner: None,
    })
}

/// Whether nobody listens on `address` now: a socket without `SO_REUSEPORT` can bind it.
/// Checked before a group's first member, so that a stale `SO_REUSEPORT` listener of the same
/// user (an orphan of a killed run) cannot silently join the new group.
pub fn address_is_free(address: SocketAddr) -> Result<(), BindError> {
    let probe = bind_listener(&BindSpec {
        address: BindAddress::Tcp(address),
        backlog: 1,
        reuse_port: false,
        mode: None,
        owner: None,
    })?;
    drop(probe);
    Ok(())
}

/// A non-blocking TCP client socket of `target`'s family with its local port chosen already
/// (bound to the wildcard address, port 0), so that a selector can be told the port before
/// connecting.
pub fn client_socket(target: SocketAddr) -> io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    };
    let family = if target.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match target {
        SocketAddr::V4(_) => bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 0))?,
        SocketAddr::V6(_) => bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::UNSPECIFIED,
                0,
                0,
                0,
            )),
        )?,
    }
    Ok(fd)
}

/// Starts connecting a non-blocking client socket. To a local listener the handshake is done
/// within the call (the selector has chosen by then); `EINPROGRESS` counts as started.
pub fn connect(fd: BorrowedFd<'_>, target: SocketAddr) -> io::Result<()> {
    use nix::sys::socket::{SockaddrIn, SockaddrIn6};
    let started = match target {
        SocketAddr::V4(v4) => nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrIn6::from(v6)),
    };
    match started {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// A TCP socket's local address.
pub fn local_address(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    match crate::sockaddr::local_addr(fd)? {
        crate::sockaddr::LocalAddr::Ip(address) => Ok(address),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a TCP socket: {other:?}"),
        )),
    }
}

/// A TCP socket's local port.
pub fn local_port(fd: BorrowedFd<'_>) -> io::Result<u16> {
    local_address(fd).map(|a| a.port())
}

/// How many TCP sockets of this network namespace listen on exactly `address`, from
/// `/proc/net/tcp` or `/proc/net/tcp6`: more than handover's own means other processes are
/// in its `SO_REUSEPORT` group, where a selector could not tell their sockets from its own.
pub fn listeners_on(address: SocketAddr) -> io::Result<usize> {
    // The kernel prints each 32-bit word of the address as it lies in memory, read as a
    // native integer, in hex, and the port in host order.
    let word = |b: &[u8]| format!("{:08X}", u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let (file, hex) = match address {
        SocketAddr::V4(a) => ("/proc/net/tcp", word(&a.ip().octets())),
        SocketAddr::V6(a) => {
            let octets = a.ip().octets();
            (
                "/proc/net/tcp6",
                octets.chunks(4).map(word).collect::<String>(),
            )
        }
    };
    let wanted = format!("{hex}:{:04X}", address.port());
    // The kernel lists every listening socket first, then the connections (TIME_WAIT ones
    // included, tens of thousands on a busy host): reading stops at the first line that is
    // not listening, so the cost follows the listeners, not the traffic.
    let mut table = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut line = String::new();
    let mut count = 0;
    table.read_line(&mut line)?;
    loop {
        line.clear();
        if table.read_line(&mut line)? == 0 {
            return Ok(count);
        }
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        if fields.nth(1) != Some("0A") {
            return Ok(count);
        }
        count += usize::from(local == Some(wanted.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn member_of(port: u16) -> TcpListener {
        let fd = bind_member(SocketAddr::from(([127, 0, 0, 1], port)), 512).unwrap();
        let listener = TcpListener::from(fd);
        listener.set_nonblocking(true).unwrap();
        listener
    }

    /// How many of `n` connections (from port `from`, if given) each member's queue holds.
    fn spread(members: &[&TcpListener], port: u16, n: usize, from: Option<u16>) -> Vec<u32> {
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| match from {
                Some(source) => {
                    let socket = nix::sys::socket::socket(
                        nix::sys::socket::AddressFamily::Inet,
                        nix::sys::socket::SockType::Stream,
                        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                    .unwrap();
                    let local = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, source);
                    nix::sys::socket::bind(socket.as_raw_fd(), &local).unwrap();
                    let remote = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, port);
                    nix::sys::socket::connect(socket.as_raw_fd(), &remote).unwrap();
                    TcpStream::from(socket)
                }
                None => TcpStream::connect(("127.0.0.1", port)).unwrap(),
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let counts = members
            .iter()
            .map(|m| queue_len(m.as_fd()).unwrap())
            .collect();
        for member in members {
            while member.accept().is_ok() {}
        }
        drop(clients);
        counts
    }

    /// The kernel may give a port bound with `SO_REUSEPORT` to port 0 to another such
    /// socket of the same user; the tests that bind members take turns, so that no test
    /// joins another's group.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn the_selector_sends_everything_to_its_target_and_follows_the_member_order() {
        let _serial = one_at_a_time();
        let a = member_of(0);
        let port = a.local_addr().unwrap().port();
        let b = member_of(port);
        let c = member_of(port);
        let to = |target| {
            Program::new(Selection {
                target,
                probe: None,
                share: None,
            })
        };
        attach(a.as_fd(), &to(1)).unwrap();
        assert_eq!(spread(&[&a, &b, &c], port, 20, None), [0, 20, 0]);
        // a leaves: c, the last, moves into its slot 0; b keeps slot 1.
        stop_listening(a.as_fd()).unwrap();
        assert_eq!(spread(&[&a, &b, &c], port, 20, None), [0, 20, 0]);
        attach(b.as_fd(), &to(0)).unwrap();
        assert_eq!(spread(&[&a, &b, &c], port, 20, None), [0, 0, 20]);
    }

    #[test]
    fn probes_by_source_port_and_shares_go_where_the_selector_says() {
        let _serial = one_at_a_time();
        let a = member_of(0);
        let port = a.local_addr().unwrap().port();
        let b = member_of(port);
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let source = free.local_addr().unwrap().port();
        drop(free);
        let program = Program::new(Selection {
            target: 0,
            probe: Some((source, 1)),
            share: None,
        });
        attach(a.as_fd(), &program).unwrap();
        assert_eq!(spread(&[&a, &b], port, 1, Some(source)), [0, 1]);
        assert_eq!(spread(&[&a, &b], port, 20, None), [20, 0]);
        // Half of the connections to member 1.
        let half = Program::new(Selection {
            target: 0,
            probe: None,
            share: Some((1, u32::MAX / 2)),
        });
        attach(a.as_fd(), &half).unwrap();
        let counts = spread(&[&a, &b], port, 200, None);
        assert!(counts[0] > 40 && counts[1] > 40, "{counts:?}");
    }

    #[test]
    fn probes_by_source_port_work_for_ipv6_too() {
        let _serial = one_at_a_time();
        let Ok(first) = bind_member("[::1]:0".parse().unwrap(), 16) else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let a = TcpListener::from(first);
        a.set_nonblocking(true).unwrap();
        let address = a.local_addr().unwrap();
        let b = TcpListener::from(bind_member(address, 16).unwrap());
        b.set_nonblocking(true).unwrap();
        let free = TcpListener::bind("[::1]:0").unwrap();
        let source = free.local_addr().unwrap().port();
        drop(free);
        let program = Program::new(Selection {
            target: 0,
            probe: Some((source, 1)),
            share: None,
        });
        attach(a.as_fd(), &program).unwrap();
        let socket = std::net::TcpStream::connect(address).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            (queue_len(a.as_fd()).unwrap(), queue_len(b.as_fd()).unwrap()),
            (1, 0)
        );
        drop(socket);
        let probe = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet6,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let local = nix::sys::socket::SockaddrIn6::from(std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::LOCALHOST,
            source,
            0,
            0,
        ));
        nix::sys::socket::bind(probe.as_raw_fd(), &local).unwrap();
        let remote = nix::sys::socket::SockaddrIn6::from(match address {
            SocketAddr::V6(v6) => v6,
            SocketAddr::V4(_) => unreachable!(),
        });
        nix::sys::socket::connect(probe.as_raw_fd(), &remote).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            queue_len(b.as_fd()).unwrap(),
            1,
            "the probe reached member 1"
        );
    }

    #[test]
    fn a_busy_address_is_not_free() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(address_is_free(taken.local_addr().unwrap()).is_err());
        let addr = taken.local_addr().unwrap();
        drop(taken);
        assert!(address_is_free(addr).is_ok());
    }

    #[test]
    fn listeners_on_an_address_are_counted() {
        let _serial = one_at_a_time();
        let first = bind_member("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let address = local_address(first.as_fd()).unwrap();
        assert_eq!(listeners_on(address).unwrap(), 1);
        let second = bind_member(address, 16).unwrap();
        assert_eq!(listeners_on(address).unwrap(), 2);
        drop(second);
        // A process another test is spawning may hold a copy of the fd until its exec
        // closes it: the count drops once that copy is gone too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while listeners_on(address).unwrap() != 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(listeners_on(address).unwrap(), 1);
        let v6 = bind_member("[::1]:0".parse().unwrap(), 16).unwrap();
        assert_eq!(listeners_on(local_address(v6.as_fd()).unwrap()).unwrap(), 1);
    }
}
