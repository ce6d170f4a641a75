//! Steered sockets: the listening sockets of each generation, in one `SO_REUSEPORT` group per
//! configured socket, and the selector that decides which generation gets new connections.
//!
//! Each group is a pool of member sockets in the kernel's order. Members are only ever added,
//! never taken out while handover runs: when a member leaves a group (its last close, or a
//! `shutdown`), the kernel moves the last member into its slot, and any selector naming that
//! member by index would send connections elsewhere until it is replaced. So a generation that
//! ends leaves its member in the pool, and the next generation takes it; a new member is
//! bound only when every member is held by a live generation. The pool is therefore as large
//! as the most generations alive at once (the serving one, one starting, the draining ones).
//!
//! A member is free when nothing but the pool holds it: generation specs hold their members
//! as `Arc`s, so a member is free again exactly when the last of its generation is gone.
//!
//! Used by the binary (the first members, and a reload's plan on its blocking thread) and by
//! the driver (targets, queues, wake-ups); the core only names members in its actions.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use handover_sys::bind::BindError;
use handover_sys::steer::{self, Program, Selection};

/// Why a socket cannot be steered, or a member not made.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// Binding a member failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The socket cannot be a member (not TCP, no `SO_REUSEPORT`...).
    #[error("{0}")]
    Unsuitable(String),
    /// No group of that name.
    #[error("no steered socket named {0:?}")]
    Unknown(String),
}

/// One member of a group.
#[derive(Debug)]
struct Member {
    fd: Arc<OwnedFd>,
    /// Its file status flags when it was made: a generation's workers may set `O_NONBLOCK`
    /// on the open socket they share with handover, and the next generation to get it must
    /// find it as the first one did.
    flags: i32,
}

impl Member {
    fn new(fd: Arc<OwnedFd>) -> Member {
        let flags = steer::status_flags(fd.as_fd()).unwrap_or(0);
        Member { fd, flags }
    }
}

/// One configured socket's group.
#[derive(Debug)]
struct Group {
    name: String,
    address: SocketAddr,
    backlog: u32,
    /// In the kernel's order: index in this list is index in the group.
    members: Vec<Member>,
    /// Where new connections go (an fd of `members`).
    target: i32,
    /// A share of new connections for another member (a canary), out of `u32::MAX`.
    share: Option<(i32, u32)>,
    /// Connections from these local ports go to these members (probes, wake-ups).
    probes: Vec<(u16, i32)>,
}

impl Group {
    fn index_of(&self, fd: i32) -> Option<u32> {
        self.members
            .iter()
            .position(|m| m.fd.as_raw_fd() == fd)
            .map(|i| i as u32)
    }

    /// Attaches the selector the group's state asks for.
    fn attach(&self) -> Result<(), SteerError> {
        let target = self.index_of(self.target).unwrap_or(0);
        // A program holds at most one probe clause; the newest wins (probes are brief and
        // made one after the other).
        let probe = self
            .probes
            .last()
            .and_then(|&(port, fd)| Some((port, self.index_of(fd)?)));
        let share = self
            .share
            .and_then(|(fd, share)| Some((self.index_of(fd)?, share)));
        let program = Program::new(Selection {
            target,
            probe,
            share,
        });
        let first = &self.members[0].fd;
        steer::attach(first.as_fd(), &program).map_err(|source| SteerError::Io {
            what: "attaching the selector (SO_ATTACH_REUSEPORT_CBPF)",
            source,
        })
    }
}

/// The groups, by socket name, and those a reload replaced.
#[derive(Debug, Default)]
struct Groups {
    current: BTreeMap<String, Group>,
    /// Groups whose socket moved to another address in a reload: kept, untouched, while a
    /// generation still uses one of their members (closing a free member would reorder the
    /// group under the old generation's selector).
    retired: Vec<Group>,
}

impl Groups {
    fn group_of(&mut self, member: &Arc<OwnedFd>) -> Option<&mut Group> {
        let fd = member.as_raw_fd();
        self.current
            .values_mut()
            .chain(self.retired.iter_mut())
            .find(|g| g.index_of(fd).is_some())
    }

    /// Forgets retired groups nobody uses any more.
    fn prune(&mut self) {
        self.retired
            .retain(|g| g.members.iter().any(|m| Arc::strong_count(&m.fd) > 1));
    }
}

/// Every steered socket's group.
#[derive(Debug, Default)]
pub struct Steering {
    groups: Mutex<Groups>,
}

impl Steering {
    /// No groups yet.
    pub fn new() -> Steering {
        Steering::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new group at `address` and its first member: nobody may listen there yet (a stale
    /// listener of the same user with `SO_REUSEPORT` would join silently), and the selector
    /// must attach. Returns the member, for the first generation.
    pub fn create(
        &self,
        name: &str,
        address: SocketAddr,
        backlog: u32,
    ) -> Result<Arc<OwnedFd>, SteerError> {
        steer::address_is_free(address)?;
        let fd = Arc::new(steer::bind_member(address, backlog)?);
        let address = local_address(&fd)?;
        self.insert(name, address, backlog, fd.clone())?;
        Ok(fd)
    }

    /// Takes a listening socket that is already there (passed by systemd, from a `.socket`
    /// unit with `ReusePort=yes` or from the fd store) as a group's first member. It must be
    /// TCP with `SO_REUSEPORT`, and handover must be able to add a member next to it (the same
    /// user, an address it may bind): a second member is bound now to be sure, and kept.
    pub fn adopt(&self, name: &str, fd: Arc<OwnedFd>, backlog: u32) -> Result<(), SteerError> {
        let reuse = steer::reuse_port(fd.as_fd()).map_err(|source| SteerError::Io {
            what: "reading SO_REUSEPORT",
            source,
        })?;
        if !reuse {
            return Err(SteerError::Unsuitable(
                "it has no SO_REUSEPORT (ReusePort=yes in its .socket unit)".into(),
            ));
        }
        let address = local_address(&fd)?;
        // Several instances on one port (ReusePort= in a template .socket unit) share one
        // group; a selector of ours would take every connection from the others.
        let listening = steer::listeners_on(address).map_err(|source| SteerError::Io {
            what: "reading /proc/net/tcp",
            source,
        })?;
        if listening > 1 {
            return Err(SteerError::Unsuitable(format!(
                "{listening} sockets listen on {address} with SO_REUSEPORT (other instances'?), \
                 and a selector would take every connection from the others"
            )));
        }
        let spare = Arc::new(steer::bind_member(address, backlog)?);
        self.insert(name, address, backlog, fd)?;
        if let Some(group) = self.lock().current.get_mut(name) {
            group.members.push(Member::new(spare));
        }
        Ok(())
    }

    fn insert(
        &self,
        name: &str,
        address: SocketAddr,
        backlog: u32,
        fd: Arc<OwnedFd>,
    ) -> Result<(), SteerError> {
        let group = Group {
            name: name.to_string(),
            address,
            backlog,
            target: fd.as_raw_fd(),
            members: vec![Member::new(fd.clone())],
            share: None,
            probes: Vec::new(),
        };
        group.attach()?;
        let mut groups = self.lock();
        groups.prune();
        if let Some(old) = groups.current.insert(name.to_string(), group) {
            groups.retired.push(old);
        }
        Ok(())
    }

    /// Keeps the groups of these socket names; any other (a socket a reload's
    /// configuration no longer has) is retired: closed once no generation uses it.
    pub fn keep_only(&self, names: &[&str]) {
        let mut groups = self.lock();
        let gone: Vec<String> = groups
            .current
            .keys()
            .filter(|name| !names.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(group) = groups.current.remove(&name) {
                groups.retired.push(group);
            }
        }
        groups.prune();
    }

    /// Closes retired groups no generation uses any more. Cheap; the driver calls it after
    /// every input, so a removed socket closes as soon as its last generation is gone.
    pub fn prune(&self) {
        self.lock().prune();
    }

    /// Steered sockets with more listeners on their address than handover's own members:
    /// another process of the same user joined the `SO_REUSEPORT` group since (which the
    /// kernel allows silently), and may get connections the selector meant for a generation.
    /// Each as a sentence naming the socket, the address and the counts.
    pub fn strangers(&self) -> Vec<String> {
        let groups = self.lock();
        groups
            .current
            .iter()
            .filter_map(|(name, group)| {
                let listening = steer::listeners_on(group.address).ok()?;
                let own = group.members.len();
                (listening > own).then(|| {
                    format!(
                        "{listening} sockets listen on {} in the SO_REUSEPORT group of socket \
                         {name:?}, and handover holds {own} of them: another process of this \
                         user joined it and may get connections meant for the workers (`ss \
                         -ltnp 'sport = :{}'` shows it)",
                        group.address,
                        group.address.port()
                    )
                })
            })
            .collect()
    }

    /// Whether `name` is steered.
    pub fn has(&self, name: &str) -> bool {
        self.lock().current.contains_key(name)
    }

    /// A member for a new generation: one no live generation holds, else a new one. It gets
    /// no connection until [`Steering::target`] (or a share or probe) names it.
    pub fn acquire(&self, name: &str) -> Result<Arc<OwnedFd>, SteerError> {
        let mut groups = self.lock();
        groups.prune();
        // A group a reload retired (its plan then given up) is asked for again: back it comes.
        if !groups.current.contains_key(name) {
            if let Some(i) = groups.retired.iter().rposition(|g| g.name == name) {
                let group = groups.retired.remove(i);
                groups.current.insert(name.to_string(), group);
            }
        }
        let group = groups
            .current
            .get_mut(name)
            .ok_or_else(|| SteerError::Unknown(name.to_string()))?;
        // Held only by the pool: its generation is gone. Nothing else can take a reference
        // meanwhile: new ones come only from here, under the lock.
        // Its flags are set back first; one that cannot be is passed over.
        if let Some(free) = group.members.iter().find(|m| {
            Arc::strong_count(&m.fd) == 1 && steer::set_status_flags(m.fd.as_fd(), m.flags).is_ok()
        }) {
            return Ok(free.fd.clone());
        }
        let fd = Arc::new(steer::bind_member(group.address, group.backlog)?);
        group.members.push(Member::new(fd.clone()));
        Ok(fd)
    }

    /// Sends new connections of each member's group to that member, and ends any share.
    pub fn target(&self, members: &[Arc<OwnedFd>]) -> Result<(), SteerError> {
        let mut groups = self.lock();
        for member in members {
            if let Some(group) = groups.group_of(member) {
                group.target = member.as_raw_fd();
                group.share = None;
                group.attach()?;
            }
        }
        Ok(())
    }

    /// Sends `share` (out of `u32::MAX`) of new connections of each member's group to it.
    pub fn share(&self, members: &[Arc<OwnedFd>], share: u32) -> Result<(), SteerError> {
        let mut groups = self.lock();
        for member in members {
            if let Some(group) = groups.group_of(member) {
                group.share = Some((member.as_raw_fd(), share));
                group.attach()?;
            }
        }
        Ok(())
    }

    /// How many connections wait in these members' accept queues, together.
    pub fn queued(&self, members: &[Arc<OwnedFd>]) -> u32 {
        members
            .iter()
            .filter_map(|m| steer::queue_len(m.as_fd()).ok())
            .sum()
    }

    /// Connects `count` times to `member`, steered there by the connections' source port,
    /// and closes each connection at once: a worker blocked in `accept()` on it wakes and can
    /// see that it was told to stop. Never blocks (a member whose queue is full simply gets
    /// no wake-up). Returns how many connections were made.
    pub fn wake(&self, member: &Arc<OwnedFd>, count: u32) -> u32 {
        let mut made = 0;
        for _ in 0..count {
            match self.connect_to(member) {
                Ok(stream) => {
                    drop(stream);
                    made += 1;
                }
                Err(_) => break,
            }
        }
        made
    }

    /// A connection from handover to `member` of a group, steered there by its local port:
    /// the port is bound first, the selector told, the connection started (non-blocking; to a
    /// local listener the handshake is done within the call), and the selector restored. For
    /// readiness checks and wake-ups; the stream is non-blocking.
    pub fn connect_to(&self, member: &Arc<OwnedFd>) -> io::Result<std::net::TcpStream> {
        let address = self
            .lock()
            .group_of(member)
            .map(|g| g.address)
            .ok_or_else(|| io::Error::other("not a steered socket"))?;
        let target = connect_address(address);
        let socket = handover_sys::steer::client_socket(target)?;
        let port = handover_sys::steer::local_port(socket.as_fd())?;
        self.probe(member, port, true)?;
        let started = handover_sys::steer::connect(socket.as_fd(), target);
        self.probe(member, port, false)?;
        started?;
        Ok(std::net::TcpStream::from(socket))
    }

    /// Adds (or removes) the clause that sends connections from local `port` to `member`.
    fn probe(&self, member: &Arc<OwnedFd>, port: u16, on: bool) -> io::Result<()> {
        let mut groups = self.lock();
        let Some(group) = groups.group_of(member) else {
            return Err(io::Error::other("not a steered socket"));
        };
        if on {
            group.probes.push((port, member.as_raw_fd()));
        } else {
            group.probes.retain(|&(p, _)| p != port);
        }
        group.attach().map_err(io::Error::other)
    }

    /// How many members each group has, by name (status and tests).
    pub fn pool_sizes(&self) -> BTreeMap<String, usize> {
        self.lock()
            .current
            .iter()
            .map(|(name, g)| (name.clone(), g.members.len()))
            .collect()
    }
}

fn local_address(fd: &Arc<OwnedFd>) -> Result<SocketAddr, SteerError> {
    handover_sys::steer::local_address(fd.as_fd()).map_err(|source| SteerError::Io {
        what: "reading the socket's address",
        source,
    })
}

/// Where handover connects to reach a group bound to `address`: the address itself, or the
/// loopback address of its family for a wildcard.
fn connect_address(address: SocketAddr) -> SocketAddr {
    let mut target = address;
    if address.ip().is_unspecified() {
        target.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stranger_in_a_steered_group_is_found() {
        let steering = Steering::new();
        let first = steering
            .create("http", "127.0.0.1:0".parse().unwrap(), 16)
            .unwrap();
        let address = local_address(&first).unwrap();
        assert_eq!(steering.strangers(), Vec::<String>::new());
        // A member of handover's own is no stranger.
        let _second = steering.acquire("http").unwrap();
        assert_eq!(steering.strangers(), Vec::<String>::new());
        let stranger = steer::bind_member(address, 16).unwrap();
        let found = steering.strangers();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(&format!(
                "3 sockets listen on {address} in the SO_REUSEPORT group of socket \"http\", \
                 and handover holds 2 of them"
            )),
            "{found:?}"
        );
        drop(stranger);
    }
}
