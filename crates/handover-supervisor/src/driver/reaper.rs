//! The one reaper: every exited child, whether worker, probe or orphan, is collected here;
//! and the probes' processes.

use std::time::Instant;

use handover_sys::process::{self, ExitStatus, Pidfd};
use handover_sys::spawn::SpawnRequest;
use tracing::{debug, info, warn};

use super::io::WorkerIo;
use super::{Driver, MAX_SENTINEL_RESTARTS, ORPHAN_GRACE};
use crate::core::model::WorkerId;
use crate::core::Input;
use crate::output::Stream;
use crate::worker::is_reserved_var;

impl Driver {
    /// Handles every exited child. Known workers and probes are checked by pid first. A
    /// child nobody knows is an orphan only if no spawn is in flight: a worker that exits
    /// right after exec can be seen before the spawning thread has told us its pid, so
    /// unknown children wait until then (every spawn reply runs this again).
    pub(super) fn reap(&mut self) {
        let known: Vec<(i32, WorkerId)> = self.by_pid.iter().map(|(&p, &w)| (p, w)).collect();
        for (pid, worker) in known {
            match process::peek_exited_pid(pid) {
                Ok(Some(status)) => self.collect_worker(pid, worker, status),
                Ok(None) => {}
                Err(err) => warn!(pid, "waitid failed: {err}"),
            }
        }
        let probes: Vec<i32> = self.probes.keys().copied().collect();
        for pid in probes {
            match process::peek_exited_pid(pid) {
                Ok(Some(status)) => self.collect_probe(pid, status),
                Ok(None) => {}
                Err(err) => warn!(pid, "waitid failed: {err}"),
            }
        }
        if self.spawns_in_flight > 0 || self.probe_spawns_in_flight > 0 {
            return;
        }
        loop {
            let (pid, status) = match process::peek_exited() {
                Ok(Some(exited)) => exited,
                Ok(None) => break,
                Err(err) => {
                    warn!("waitid failed: {err}");
                    break;
                }
            };
            if self.probes.contains_key(&pid) {
                self.collect_probe(pid, status);
            } else if let Some(&worker) = self.by_pid.get(&pid) {
                self.collect_worker(pid, worker, status);
            } else if self.is_sentinel(pid) {
                let _ = process::reap(pid);
                self.sentinel_exited(pid, status);
            } else {
                let _ = process::reap(pid);
                debug!(pid, "reaped an orphan: {status}");
                // Perhaps the last process of a worker's cgroup.
                self.bury_cgroup(None);
            }
        }
    }

    /// A worker's process exited: read what it said and wrote before it died, kill what is
    /// left of its process group while the unreaped leader still pins the pgid, reap it, and
    /// only then report the exit.
    fn collect_worker(&mut self, pid: i32, worker: WorkerId, status: ExitStatus) {
        self.by_pid.remove(&pid);
        self.read_notifications(worker);
        self.read_stream(worker, Stream::Stderr);
        self.read_stream(worker, Stream::Stdout);
        let _ = process::signal_group(pid, libc::SIGKILL);
        self.forget_group(pid);
        let _ = process::reap(pid);
        // Forgotten before the core hears of it: nothing can signal the reaped pid after this.
        let (stderr_tail, cgroup) = self
            .workers
            .remove(&worker)
            .map(|io| (io.stderr_tail.iter().cloned().collect(), io.cgroup.clone()))
            .unwrap_or_default();
        // Read before the cgroup goes: the OOM killer counts its kills there.
        let oom_kills = cgroup.as_ref().and_then(|c| c.oom_kills()).unwrap_or(0);
        // What it left behind, however it detached, ends with it.
        self.bury_cgroup(cgroup);
        self.input(Input::Exited {
            worker,
            status,
            stderr_tail,
            oom_kills,
        });
    }

    fn collect_probe(&mut self, pid: i32, status: ExitStatus) {
        let Some(probe) = self.probes.remove(&pid) else {
            return;
        };
        let _ = process::signal_group(pid, libc::SIGKILL);
        self.forget_group(pid);
        let _ = process::reap(pid);
        if probe.health {
            let result = match probe.exec_error {
                Some(err) => Err(format!("could not start: {err}")),
                None if status.success() => Ok(()),
                None => Err(status.to_string()),
            };
            self.input(Input::HealthChecked {
                worker: probe.worker,
                result,
            });
        } else {
            self.input(Input::ProbeExited {
                worker: probe.worker,
                status,
            });
        }
    }

    /// At the very end of a clean stop: closes the sentinel's pipe and reaps it, so that
    /// nothing of handover is left for a service manager to kill.
    pub(super) async fn finish_sentinel(&mut self, sigchld: &mut tokio::signal::unix::Signal) {
        let Some(pid) = self.settings.sentinel.as_ref().and_then(|s| s.close()) else {
            return;
        };
        let deadline = Instant::now() + ORPHAN_GRACE;
        loop {
            if let Ok(Some(_)) = process::peek_exited_pid(pid) {
                let _ = process::reap(pid);
                return;
            }
            if Instant::now() >= deadline {
                warn!("the sentinel (pid {pid}) did not exit after handover's stop");
                return;
            }
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// The group of a leader about to be reaped is no longer the sentinel's to kill: after
    /// the reap, its number may be reused.
    fn forget_group(&self, pid: i32) {
        if let Some(sentinel) = &self.settings.sentinel {
            sentinel.forget(pid);
        }
    }

    fn is_sentinel(&self, pid: i32) -> bool {
        self.settings
            .sentinel
            .as_ref()
            .is_some_and(|s| s.pid() == Some(pid))
    }

    /// The sentinel died (something killed it): start another, which learns every group
    /// recorded so far. Only a few times: one that keeps dying is not worth a loop.
    fn sentinel_exited(&mut self, pid: i32, status: ExitStatus) {
        let Some(sentinel) = self.settings.sentinel.clone() else {
            return;
        };
        sentinel.exited(pid);
        if self.sentinel_restarts >= MAX_SENTINEL_RESTARTS {
            tracing::error!(
                "the sentinel (pid {pid}) {status}; not starting another after \
                 {MAX_SENTINEL_RESTARTS}: if handover is killed, children of its workers may \
                 outlive it"
            );
            return;
        }
        self.sentinel_restarts += 1;
        match sentinel.restart() {
            Ok(()) => warn!(
                "the sentinel (pid {pid}) {status}; started another (pid {})",
                sentinel.pid().unwrap_or(0)
            ),
            Err(err) => tracing::error!(
                "the sentinel (pid {pid}) {status}, and another could not be started: {err}"
            ),
        }
    }

    /// At the very end, with every worker gone: kill what their descendants left behind
    /// (they came to handover, the subreaper) and reap it, waiting at most [`ORPHAN_GRACE`].
    /// The sentinel is not an orphan: it ends by itself when handover's end closes its pipe.
    pub(super) async fn collect_orphans(&mut self, sigchld: &mut tokio::signal::unix::Signal) {
        let sentinel = self.settings.sentinel.as_ref().and_then(|s| s.pid());
        let others = |me| -> Vec<i32> {
            process::children_of(me)
                .into_iter()
                .filter(|&pid| Some(pid) != sentinel)
                .collect()
        };
        let orphans = others(self.my_pid);
        if orphans.is_empty() {
            return;
        }
        info!(
            "killing {} orphaned process(es) left by workers",
            orphans.len()
        );
        for pid in orphans {
            if let Ok(pidfd) = Pidfd::open(pid) {
                let _ = pidfd.send_signal(libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + ORPHAN_GRACE;
        loop {
            self.reap();
            let left = others(self.my_pid);
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                warn!("{} orphaned process(es) did not go away", left.len());
                return;
            }
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }
}

/// The spawn request of one readiness probe or health check command (`argv`): as the
/// worker's user, in its directory, with its environment (minus the socket variables) and
/// `HANDOVER_WORKER_PID`; output discarded, so a chatty probe costs no memory.
pub(super) fn probe_request(
    io: &WorkerIo,
    argv: &[std::ffi::OsString],
) -> Result<SpawnRequest, String> {
    let Some(pid) = io.pid() else {
        return Err("the worker has no pid yet".into());
    };
    let mut env: Vec<std::ffi::CString> = Vec::new();
    for (key, value) in io
        .spec
        .env
        .iter()
        .filter(|(k, _)| !is_reserved_var(k.as_encoded_bytes()))
    {
        let mut kv = key.as_encoded_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_encoded_bytes());
        env.extend(std::ffi::CString::new(kv).ok());
    }
    for (key, value) in [
        ("HANDOVER_WORKER_PID", pid.to_string()),
        ("HANDOVER_WORKER", io.index.to_string()),
        ("HANDOVER_GENERATION", io.generation.to_string()),
    ] {
        env.extend(std::ffi::CString::new(format!("{key}={value}")).ok());
    }
    let (out, err) = match (handover_sys::fd::dev_null(), handover_sys::fd::dev_null()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return Err(format!("could not start: {e}")),
    };
    let mut exec = io.spec.exec.clone();
    exec.argv = argv.to_vec();
    Ok(SpawnRequest {
        exec,
        env,
        sockets: Vec::new(),
        stdout: Some(out),
        stderr: Some(err),
    })
}
