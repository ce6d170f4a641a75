//! Matching the sockets systemd passed with the configured ones, and binding the rest.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use handover_supervisor::steering::{SteerError, Steering};
use handover_supervisor::{ListenSocket, SocketMode};
use handover_sys::bind::{bind_listener, BindAddress, BindSpec};
use handover_sys::inherit::InheritedSocket;

use crate::config::{Config, ListenAddress, SocketConfig};

/// Why the socket set could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// A configured socket could not be bound.
    #[error("socket {name:?}: {source}")]
    Bind {
        /// The socket's name.
        name: String,
        /// Why.
        #[source]
        source: handover_sys::bind::BindError,
    },
    /// A socket marked `from_systemd` was not passed.
    #[error("socket {name:?} must come from systemd (from_systemd = true), but {passed}")]
    NotPassed {
        /// The socket's name.
        name: String,
        /// What systemd passed instead.
        passed: String,
    },
    /// The owner of a unix socket does not exist.
    #[error("socket {name:?}: owner {owner:?}: {source}")]
    Owner {
        /// The socket's name.
        name: String,
        /// The owner as configured.
        owner: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A unix socket's owner: uid and gid, each unchanged when `None`.
type Owner = (Option<u32>, Option<u32>);

fn owner_ids(socket: &SocketConfig) -> Result<Option<Owner>, SocketError> {
    let Some(owner) = &socket.owner else {
        return Ok(None);
    };
    let err = |source| SocketError::Owner {
        name: socket.name.clone(),
        owner: owner.clone(),
        source,
    };
    let (user, group) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner.as_str(), None),
    };
    let uid = if user.is_empty() {
        None
    } else {
        Some(handover_sys::users::user(user).map_err(err)?.uid)
    };
    let gid = match group {
        Some(group) if !group.is_empty() => Some(handover_sys::users::group(group).map_err(err)?),
        _ => None,
    };
    Ok(Some((uid, gid)))
}

/// Binds one configured socket: as the first member of a steered group when it is a TCP
/// socket with `steering` on and the group can be made, otherwise as a socket all
/// generations share.
pub(crate) fn bind_configured(
    socket: &SocketConfig,
    steering: &Steering,
) -> Result<ListenSocket, SocketError> {
    let address = match &socket.listen {
        Some(ListenAddress::Tcp(addr)) => BindAddress::Tcp(*addr),
        Some(ListenAddress::Unix(path)) => BindAddress::Unix(path.clone()),
        None => {
            return Err(SocketError::NotPassed {
                name: socket.name.clone(),
                passed: "it has no listen address".into(),
            })
        }
    };
    let (fd, mode) = match (&address, socket.steering) {
        (BindAddress::Tcp(addr), true) => {
            match steering.create(&socket.name, *addr, socket.backlog) {
                Ok(fd) => (fd, SocketMode::Steered),
                // The address itself is taken: the same error as without steering.
                Err(SteerError::Bind(source)) => {
                    return Err(SocketError::Bind {
                        name: socket.name.clone(),
                        source,
                    })
                }
                Err(why) => {
                    tracing::warn!(socket = %socket.name, "cannot steer this socket ({why}); its generations share it");
                    (
                        bind_shared(socket, &address)?,
                        SocketMode::Shared(format!("the selector could not be set: {why}")),
                    )
                }
            }
        }
        (BindAddress::Tcp(_), false) => (
            bind_shared(socket, &address)?,
            SocketMode::Shared("steering = false".into()),
        ),
        (BindAddress::Unix(_), _) => (
            bind_shared(socket, &address)?,
            SocketMode::Shared("a unix socket".into()),
        ),
    };
    // Port 0 binds an ephemeral port: report the real one.
    let shown = handover_sys::sockaddr::local_addr(std::os::fd::AsFd::as_fd(&*fd))
        .map(|a| a.to_string())
        .unwrap_or_else(|_| address.to_string());
    Ok(ListenSocket {
        name: socket.name.clone(),
        address: shown,
        fd,
        from_systemd: false,
        configured: socket.listen.as_ref().map(|l| l.to_string()),
        mode,
    })
}

/// Binds a socket every generation shares.
fn bind_shared(socket: &SocketConfig, address: &BindAddress) -> Result<Arc<OwnedFd>, SocketError> {
    let spec = BindSpec {
        address: address.clone(),
        backlog: socket.backlog,
        reuse_port: socket.reuse_port,
        mode: socket.mode,
        owner: owner_ids(socket)?,
    };
    let fd = bind_listener(&spec).map_err(|source| SocketError::Bind {
        name: socket.name.clone(),
        source,
    })?;
    Ok(Arc::new(fd))
}

/// A socket systemd passed: steered when its configuration allows it and the group can be
/// made next to it (see [`Steering::adopt`]), else shared.
fn adopt(
    passed: InheritedSocket,
    config: Option<&SocketConfig>,
    steering: &Steering,
) -> ListenSocket {
    let fd = Arc::new(passed.fd);
    let tcp = matches!(passed.info.local, handover_sys::sockaddr::LocalAddr::Ip(_));
    let mode = match config {
        None => SocketMode::Shared("the configuration does not name it".into()),
        Some(_) if !tcp => SocketMode::Shared("a unix socket".into()),
        Some(c) if !c.steering => SocketMode::Shared("steering = false".into()),
        Some(c) => match steering.adopt(&passed.name, fd.clone(), c.backlog) {
            Ok(()) => SocketMode::Steered,
            Err(why) => SocketMode::Shared(format!("passed by systemd, and {why}")),
        },
    };
    ListenSocket {
        name: passed.name,
        address: passed.info.local.to_string(),
        fd,
        from_systemd: true,
        configured: None,
        mode,
    }
}

/// Logs how a socket is used.
fn log_mode(socket: &ListenSocket) {
    match &socket.mode {
        SocketMode::Steered => {
            tracing::info!(socket = %socket.name, "steered: each generation gets its own socket")
        }
        SocketMode::Shared(why) => {
            tracing::info!(socket = %socket.name, "shared by every generation: {why}")
        }
    }
}

/// Builds the socket list in fd order: configured sockets in file order (each taken from
/// systemd when it passed one of that name, else bound), then sockets systemd passed that
/// the configuration does not name, in the order systemd passed them.
pub(crate) fn resolve(
    config: &Config,
    inherited: Vec<InheritedSocket>,
    steering: &Steering,
) -> Result<Vec<ListenSocket>, SocketError> {
    let passed_names: Vec<String> = inherited.iter().map(|s| s.name.clone()).collect();
    let mut inherited: Vec<Option<InheritedSocket>> = inherited.into_iter().map(Some).collect();
    let mut sockets = Vec::new();
    for socket in &config.sockets {
        let mut found = false;
        for slot in inherited.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.name == socket.name) {
                let s = slot.take().expect("checked just above");
                tracing::info!(socket = %socket.name, address = %s.info.local, fd = s.arrived_at, "using the socket systemd passed");
                let adopted = adopt(s, Some(socket), steering);
                log_mode(&adopted);
                sockets.push(adopted);
                found = true;
            }
        }
        if found {
            continue;
        }
        if socket.from_systemd {
            let passed = if passed_names.is_empty() {
                "systemd passed no sockets".to_string()
            } else {
                format!("systemd passed only {}", passed_names.join(", "))
            };
            return Err(SocketError::NotPassed {
                name: socket.name.clone(),
                passed,
            });
        }
        let bound = bind_configured(socket, steering)?;
        tracing::info!(socket = %bound.name, address = %bound.address, "bound");
        log_mode(&bound);
        sockets.push(bound);
    }
    for s in inherited.into_iter().flatten() {
        tracing::info!(socket = %s.name, address = %s.info.local, fd = s.arrived_at, "passing on a socket systemd passed that the configuration does not name");
        sockets.push(adopt(s, None, steering));
    }
    Ok(sockets)
}

/// The socket list for a new generation after the configuration was re-read.
///
/// Sockets systemd passed stay exactly as they are: a configuration that asks to add one is
/// refused (only a restart can change what systemd passes), and passed sockets the new
/// configuration no longer names are still passed on. Sockets handover bound are kept when
/// the configuration still asks for the same address, bound anew when it is new or changed,
/// and left out when it is gone; a left-out socket closes when the last generation holding it
/// has ended.
///
/// A steered socket the configuration still asks for gets a member of its group for the new
/// generation (one a generation that ended left, or a new one).
pub(crate) fn for_reload(
    config: &Config,
    current: &[ListenSocket],
    steering: &Steering,
) -> Result<Vec<ListenSocket>, String> {
    let member = |same: &ListenSocket| -> Result<ListenSocket, String> {
        if !same.is_steered() {
            return Ok(same.clone());
        }
        let fd = steering
            .acquire(&same.name)
            .map_err(|e| format!("socket {:?}: {e}", same.name))?;
        Ok(ListenSocket { fd, ..same.clone() })
    };
    let mut sockets = Vec::new();
    for socket in &config.sockets {
        let existing = current
            .iter()
            .filter(|s| s.name == socket.name)
            .collect::<Vec<_>>();
        let from_systemd: Vec<&ListenSocket> = existing
            .iter()
            .copied()
            .filter(|s| s.from_systemd)
            .collect();
        if !from_systemd.is_empty() {
            for same in from_systemd {
                sockets.push(member(same)?);
            }
            continue;
        }
        if socket.from_systemd {
            return Err(format!(
                "socket {:?} is marked from_systemd, but systemd did not pass it at start; sockets from systemd change only with a restart",
                socket.name
            ));
        }
        let wanted = socket.listen.as_ref().map(|l| l.to_string());
        match existing
            .iter()
            .find(|s| s.configured.is_some() && s.configured == wanted)
        {
            Some(same) => sockets.push(member(same)?),
            None => {
                let bound = bind_configured(socket, steering).map_err(|e| e.to_string())?;
                tracing::info!(socket = %bound.name, address = %bound.address, "bound for the new generation");
                sockets.push(bound);
            }
        }
    }
    for passed in current.iter().filter(|s| s.from_systemd) {
        if !config.sockets.iter().any(|c| c.name == passed.name) {
            sockets.push(member(passed)?);
        }
    }
    let names: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
    steering.keep_only(&names);
    Ok(sockets)
}
