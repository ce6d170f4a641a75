//! Turning a validated configuration into what the supervisor runs.
//!
//! Used at start and again on every reload, so a reload sees the same rules: the config is
//! re-read, users are looked up again, and the per-reload overrides are applied last.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use handover_supervisor::{
    is_reserved_var, GenerationSpec, HealthCheck, HealthSpec, ListenSocket, ReadyMode,
    ReloadOverrides, ReloadPolicy,
};
use handover_sys::spawn::WorkerExec;

use crate::config::{self, Config, InheritEnv, NotifyAccess, Strategy};

/// Who workers run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// uid to switch to.
    pub uid: u32,
    /// gid to switch to.
    pub gid: u32,
}

/// Resolves `user`/`group` to ids and supplementary groups; `None` when workers run as
/// handover's own user.
pub(crate) fn resolve_identity(
    worker: &config::WorkerConfig,
) -> Result<Option<(Identity, Vec<u32>)>, String> {
    if worker.user.is_none() && worker.group.is_none() {
        return Ok(None);
    }
    let euid = handover_sys::users::effective_uid();
    let (uid, mut gid, user) = match &worker.user {
        Some(name) => {
            let user = handover_sys::users::user(name).map_err(|e| format!("worker.user: {e}"))?;
            (user.uid, user.gid, Some(user))
        }
        None => (euid, handover_sys::users::effective_gid(), None),
    };
    if let Some(group) = &worker.group {
        gid = handover_sys::users::group(group).map_err(|e| format!("worker.group: {e}"))?;
    }
    if euid != 0 {
        if uid == euid && gid == handover_sys::users::effective_gid() {
            return Ok(None);
        }
        return Err(format!(
            "worker.user/worker.group ask for uid {uid} gid {gid}, but handover runs as uid {euid} and only root can switch users"
        ));
    }
    let groups = match &user {
        Some(user) => {
            handover_sys::users::group_list(user, gid).map_err(|e| format!("worker.user: {e}"))?
        }
        None => vec![gid],
    };
    Ok(Some((Identity { uid, gid }, groups)))
}

/// The environment workers start from.
pub(crate) fn base_env(
    inherited: &[(OsString, OsString)],
    worker: &config::WorkerConfig,
    overrides: &ReloadOverrides,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = if overrides.replace_env {
        Vec::new()
    } else {
        match &worker.inherit_env {
            InheritEnv::All => inherited
                .iter()
                .filter(|(k, _)| !is_reserved_var(k.as_bytes()))
                .cloned()
                .collect(),
            InheritEnv::Nothing => Vec::new(),
            InheritEnv::Only(names) => inherited
                .iter()
                .filter(|(k, _)| {
                    names.iter().any(|n| n.as_bytes() == k.as_bytes())
                        && !is_reserved_var(k.as_bytes())
                })
                .cloned()
                .collect(),
        }
    };
    let mut set = |key: OsString, value: OsString| {
        if let Some(entry) = env.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = value;
        } else {
            env.push((key, value));
        }
    };
    if !overrides.replace_env {
        for (key, value) in &worker.env {
            set(key.into(), value.into());
        }
    }
    for (key, value) in &overrides.env {
        set(key.clone(), value.clone());
    }
    env
}

/// What `[worker]`'s cgroup limits come to on this host: a warning for each key that
/// cannot be applied, and why; with `[handover] cgroups = "required"`, an error instead.
pub(crate) fn check_limits(
    config: &Config,
    cgroups: Option<&handover_sys::cgroup::CgroupRoot>,
    cgroups_status: &str,
) -> Result<Vec<String>, String> {
    use handover_sys::cgroup::Controller;
    let limits = &config.worker.limits;
    let mut warnings = Vec::new();
    for controller in Controller::ALL {
        let keys = limits.keys_of(controller);
        if keys.is_empty() {
            continue;
        }
        let why = match cgroups {
            None => format!(
                "workers have no cgroups ({})",
                cgroups_status
                    .strip_prefix("off: ")
                    .unwrap_or(cgroups_status)
            ),
            Some(root) => match root.missing(controller) {
                Some(why) => why.to_owned(),
                None => continue,
            },
        };
        for key in keys {
            if config.handover.cgroups == config::CgroupMode::Required {
                return Err(format!(
                    "{}: handover.cgroups is \"required\", but worker.{key} cannot be applied: \
                     {why}",
                    config.path.display()
                ));
            }
            let instead = match limits.start_cpu_weight {
                Some(weight)
                    if key == "start_cpu_weight"
                        && config.worker.start_nice == 0
                        && handover_sys::users::effective_uid() == 0 =>
                {
                    format!(
                        "; workers start at nice {} instead",
                        handover_sys::cgroup::nice_for_weight(weight)
                    )
                }
                _ => String::new(),
            };
            warnings.push(format!("worker.{key} is not applied: {why}{instead}"));
        }
    }
    Ok(warnings)
}

/// Everything needed to build generation specs, fixed at start.
pub(crate) struct SpecContext {
    /// handover's own environment, as inherited.
    pub inherited_env: Vec<(OsString, OsString)>,
}

impl SpecContext {
    /// Builds a generation spec from a configuration, for the given sockets (in fd order).
    pub(crate) fn build(
        &self,
        config: &Config,
        sockets: Vec<ListenSocket>,
        overrides: &ReloadOverrides,
    ) -> Result<Arc<GenerationSpec>, String> {
        let worker = &config.worker;
        let identity = resolve_identity(worker)?;
        let (uid, gid, groups) = match identity {
            Some((id, groups)) => (Some(id.uid), Some(id.gid), Some(groups)),
            None => (None, None, None),
        };
        let cwd: Option<PathBuf> = overrides.cwd.clone().or_else(|| worker.cwd.clone());
        let ready = match &worker.ready {
            config::ReadyMode::Notify => ReadyMode::Notify,
            config::ReadyMode::Delay(d) => ReadyMode::Delay(*d),
            config::ReadyMode::Probe(probe) => ReadyMode::Probe {
                argv: probe.command.iter().map(OsString::from).collect(),
                interval: probe.interval,
                timeout: probe.timeout,
            },
            config::ReadyMode::Check(check) => ReadyMode::Check {
                socket: check_socket(check, &sockets)?,
                http: check.http.clone(),
                interval: check.interval,
                timeout: check.timeout,
            },
        };
        let health = health_spec(config, &sockets)?;
        Ok(Arc::new(GenerationSpec {
            exec: WorkerExec {
                argv: worker.command.iter().map(OsString::from).collect(),
                cwd,
                uid,
                gid,
                groups,
                // As part of a privilege drop unless told otherwise (scenario 48).
                no_new_privileges: worker
                    .no_new_privileges
                    .unwrap_or(worker.user.is_some() || worker.group.is_some()),
                umask: worker.umask,
                nofile: worker.limit_nofile,
                cgroups: Vec::new(),
                // Giving the priority back needs CAP_SYS_NICE: without root, not at all.
                start_nice: if handover_sys::users::effective_uid() == 0 {
                    worker.start_nice
                } else {
                    0
                },
            },
            env: base_env(&self.inherited_env, worker, overrides),
            count: overrides.workers.unwrap_or(worker.count),
            sockets,
            fds_env: config.handover.fds_env.clone(),
            stop_signal: worker.stop_signal,
            stop_timeout: worker.stop_timeout,
            ready,
            ready_timeout: worker.ready_timeout,
            notify_main_only: worker.notify_access == NotifyAccess::Main,
            backoff_initial: worker.backoff_initial,
            backoff_max: worker.backoff_max,
            backoff_reset: worker.backoff_reset,
            watchdog: worker.watchdog,
            health,
            limits: worker.limits.clone(),
        }))
    }
}

/// The health check of `[health]`. Its private socket is passed after the others, under a
/// name none of them has: an app finds it by name, and one name must mean one socket.
fn health_spec(config: &Config, sockets: &[ListenSocket]) -> Result<Option<HealthSpec>, String> {
    let Some(health) = &config.health else {
        return Ok(None);
    };
    let check = match &health.check {
        config::HealthCheckConfig::Http {
            socket,
            method,
            path,
            status,
        } => HealthCheck::Http {
            socket: socket.clone(),
            method: method.clone(),
            path: path.clone(),
            status: *status,
        },
        config::HealthCheckConfig::Connect { socket } => HealthCheck::Connect {
            socket: socket.clone(),
        },
        config::HealthCheckConfig::Command { argv } => HealthCheck::Command {
            argv: argv.iter().map(OsString::from).collect(),
        },
    };
    if let HealthCheck::Http { socket, .. } | HealthCheck::Connect { socket } = &check {
        if sockets.iter().any(|s| &s.name == socket) {
            return Err(format!(
                "health.socket: {socket:?} is already the name of a listening socket; the \
                 health check's private socket needs a name of its own (set health.socket)"
            ));
        }
    }
    Ok(Some(HealthSpec {
        check,
        interval: health.interval,
        timeout: health.timeout,
        failures: health.failures,
        max_replacing: health.max_replacing,
    }))
}

/// The socket a `ready = "http"` or `"connect"` check goes to: the one named, else the
/// first TCP socket. It must be steered: a request to a shared socket could be answered by the
/// old generation, and prove nothing about the new one.
fn check_socket(
    check: &config::Check,
    sockets: &[handover_supervisor::ListenSocket],
) -> Result<String, String> {
    let socket = match &check.socket {
        Some(name) => sockets
            .iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| format!("worker.ready_socket: there is no socket named {name:?}"))?,
        None => sockets
            .iter()
            .find(|s| s.is_steered() || !s.address.starts_with('/'))
            .ok_or("worker.ready: \"http\" and \"connect\" need a TCP socket to check")?,
    };
    match &socket.mode {
        handover_supervisor::SocketMode::Steered => Ok(socket.name.clone()),
        handover_supervisor::SocketMode::Shared(why) => Err(format!(
            "worker.ready: the check goes to socket {:?}, which every generation shares ({why}), \
             so the old generation could answer it; it needs a steered socket (ready = \"probe\" \
             or \"delay\" work with any socket)",
            socket.name
        )),
    }
}

/// The reload policy from a configuration.
pub(crate) fn reload_policy(config: &Config) -> ReloadPolicy {
    let (batch_size, max_extra) = match config.reload.strategy {
        Strategy::AllAtOnce => (None, 0),
        Strategy::Rolling {
            batch_size,
            max_extra,
        } => (Some(batch_size), max_extra),
    };
    ReloadPolicy {
        timeout: config.reload.timeout,
        drain_timeout: config.reload.drain_timeout,
        batch_size,
        max_extra,
        canary: config.reload.canary,
        canary_share: config.reload.canary_share,
        max_draining: config.reload.max_draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(std::path::Path::new("/etc/handover/app.toml"), text).unwrap()
    }

    #[test]
    fn limits_without_their_controller_are_named_or_refused() {
        let off = "off: [handover] cgroups = \"off\"";
        let limited = "[worker]\ncommand = [\"app\"]\nmemory_max = \"64MiB\"\npids_max = 8\n";
        // Named, one warning per key, with the reason.
        let warnings = check_limits(&config(limited), None, off).unwrap();
        assert_eq!(
            warnings,
            [
                "worker.memory_max is not applied: workers have no cgroups ([handover] cgroups = \"off\")",
                "worker.pids_max is not applied: workers have no cgroups ([handover] cgroups = \"off\")",
            ]
        );
        // Refused, naming the file, when cgroups are required.
        let required = format!("[handover]\ncgroups = \"required\"\n\n{limited}");
        let error = check_limits(
            &config(&required),
            None,
            "off: no cgroup2 file system is mounted",
        )
        .unwrap_err();
        assert_eq!(
            error,
            "/etc/handover/app.toml: handover.cgroups is \"required\", but worker.memory_max \
             cannot be applied: workers have no cgroups (no cgroup2 file system is mounted)"
        );
        // Nothing to say without limits.
        let plain = config("[worker]\ncommand = [\"app\"]\n");
        assert_eq!(check_limits(&plain, None, off), Ok(Vec::new()));
    }
}
