//! Notifications and readiness: what a worker's datagrams mean, and a worker becoming ready by
//! `READY=1`, by staying alive for a delay, or by a probe command that exits 0.

use std::time::Instant;

use handover_proto::notify;
use handover_sys::process::ExitStatus;

use super::model::{Drops, GenState, Phase, Probe, WorkerId, WorkerState};
use super::{Action, Core, Fields, Level, Notice, Sender, DROP_SUMMARY};

impl Core {
    pub(super) fn notified(
        &mut self,
        now: Instant,
        id: WorkerId,
        sender_pid: i32,
        sender: Sender,
        payload: &[u8],
    ) {
        let Some(worker) = self.model.workers.get(&id) else {
            return;
        };
        match sender {
            Sender::Worker => {}
            Sender::Descendant if !worker.spec.notify_main_only => {}
            Sender::Descendant => {
                return self.dropped(
                    now,
                    id,
                    format!(
                        "ignored a notification from pid {sender_pid}: only the worker's own pid \
                         may notify (notify_access = \"main\")"
                    ),
                )
            }
            Sender::Stranger => {
                return self.dropped(
                    now,
                    id,
                    format!(
                        "ignored a notification from pid {sender_pid}: it is neither the worker \
                         nor a process the worker started"
                    ),
                )
            }
        }
        match notify::parse(payload) {
            Ok(message) => self.apply_notify(now, id, message),
            Err(err) => self.dropped(now, id, format!("dropped a notification: {err}")),
        }
    }

    pub(super) fn notify_dropped(
        &mut self,
        now: Instant,
        id: WorkerId,
        sender_pid: Option<i32>,
        reason: &'static str,
        fds_closed: usize,
    ) {
        let fds = if fds_closed > 0 {
            format!(" ({fds_closed} passed fds closed)")
        } else {
            String::new()
        };
        let message = format!(
            "dropped a notification from pid {}: {reason}{fds}",
            sender_pid.unwrap_or(0)
        );
        self.dropped(now, id, message);
    }

    /// A notification of `id` was dropped or ignored. The first is logged; the rest of a
    /// flood only counted, and the count logged every [`DROP_SUMMARY`], so a worker that
    /// sends junk cannot fill the log (or trip journald's rate limit and lose handover's own
    /// lines).
    fn dropped(&mut self, now: Instant, id: WorkerId, message: String) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        match &mut worker.drops {
            Some(drops) => {
                drops.more += 1;
                drops.last = message;
            }
            None => {
                worker.drops = Some(Drops {
                    until: now + DROP_SUMMARY,
                    more: 0,
                    last: String::new(),
                });
                let fields = Fields {
                    pid: None,
                    ..self.fields_of(id)
                };
                self.log(Level::Warn, message, fields);
            }
        }
    }

    /// Logs how many notifications of `id` were dropped since the last line about them;
    /// `last_word`: the worker is gone, so nothing more will come.
    pub(super) fn drops_summary(&mut self, id: WorkerId, last_word: bool) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        let Some(drops) = worker.drops.take() else {
            return;
        };
        if drops.more > 0 {
            let fields = Fields {
                pid: None,
                ..self.fields_of(id)
            };
            self.log(
                Level::Warn,
                format!(
                    "{} more notifications dropped in the last {}; the last: {}",
                    drops.more,
                    super::humanize(DROP_SUMMARY),
                    drops.last
                ),
                fields,
            );
            if !last_word {
                if let Some(worker) = self.model.workers.get_mut(&id) {
                    worker.drops = Some(Drops {
                        until: drops.until + DROP_SUMMARY,
                        more: 0,
                        last: String::new(),
                    });
                }
            }
        }
    }

    fn apply_notify(&mut self, now: Instant, id: WorkerId, message: notify::NotifyMessage) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        if let Some(status) = message.status {
            worker.status = Some(status);
        }
        if message.watchdog || message.watchdog_trigger || message.watchdog_usec.is_some() {
            self.watchdog_notified(
                now,
                id,
                message.watchdog,
                message.watchdog_trigger,
                message.watchdog_usec,
            );
        }
        if message.ready {
            self.mark_ready(now, id, "worker ready");
        }
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        if message.stopping && !worker.retiring && worker.pid.is_some() {
            self.going_offline(now, id);
        }
    }

    /// The worker said `STOPPING=1`: it is going down on its own (naught's "offline"). In the
    /// serving generation its replacement starts at once, and the worker gets its stop signal
    /// (and the drain timeout) once the replacement is ready, like any draining worker. A
    /// worker of a generation that is still starting has failed before it served; any other
    /// is stopped now.
    fn going_offline(&mut self, now: Instant, id: WorkerId) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        let (generation, index) = (worker.generation, worker.index);
        let fields = self.fields_of(id);
        match (self.phase, self.model.state_of(generation)) {
            (Phase::Running, Some(GenState::Serving)) if self.model.fills_its_slot(id) => {
                self.log(
                    Level::Info,
                    "worker is going offline; starting its replacement".into(),
                    fields,
                );
                if let Some(worker) = self.model.workers.get_mut(&id) {
                    worker.retiring = true;
                }
                self.spawn_into_slot(now, generation, index, None);
                if let Some(slot) = self.model.slot_mut(generation, index) {
                    slot.offline.push(id);
                }
            }
            (_, Some(GenState::Starting)) if self.model.fills_its_slot(id) => {
                self.ask_to_stop(now, id, None);
                self.slot_failed(
                    now,
                    generation,
                    index,
                    "it said STOPPING=1 before its generation served".into(),
                );
            }
            _ => {
                let drain = self.policy.drain_timeout;
                self.ask_to_stop(now, id, Some(drain));
            }
        }
    }

    /// A starting worker is ready (by notification, delay or probe; `how` says which): log it
    /// and let its generation move on. Workers in any other state are left as they are.
    pub(super) fn mark_ready(&mut self, now: Instant, id: WorkerId, how: &str) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        if !worker.is_starting() {
            return;
        }
        if self.health_gate(now, id, how) {
            return;
        }
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.state = WorkerState::Ready { since: now };
        let (generation, index) = (worker.generation, worker.index);
        self.arm_watchdog(now, id);
        let fields = self.fields_of(id);
        self.log(Level::Info, how.to_string(), fields);
        // Workers that went offline from this slot may stop now that it serves again.
        if self.model.fills_its_slot(id) {
            let offline = self
                .model
                .slot_mut(generation, index)
                .map(|slot| std::mem::take(&mut slot.offline))
                .unwrap_or_default();
            let drain = self.policy.drain_timeout;
            let replaced = !offline.is_empty();
            for old in offline {
                self.ask_to_stop(now, old, Some(drain));
            }
            if replaced {
                // Room for the next unhealthy worker's replacement.
                self.replace_unhealthy(now);
            }
        }
        self.on_worker_ready(now, generation);
    }

    fn on_worker_ready(&mut self, now: Instant, generation: u64) {
        let Some(gen) = self.model.generations.get(&generation) else {
            return;
        };
        let ready = self.model.ready_count(generation);
        let total = gen.slots.len();
        match (self.phase, gen.state) {
            (Phase::Starting, GenState::Starting) if ready == total => {
                if let Some(gen) = self.model.generations.get_mut(&generation) {
                    gen.state = GenState::Serving;
                }
                self.phase = Phase::Running;
                self.log(
                    Level::Info,
                    format!("all {total} workers ready"),
                    Fields::generation(generation),
                );
                let status = self.status_line();
                self.notify(Notice::Ready(status));
                self.actions.push(Action::Started);
            }
            (Phase::Running, GenState::Starting) => {
                self.progress(format!("{ready}/{total} ready in generation {generation}"));
                self.advance_reload(now);
            }
            (Phase::Running, GenState::Serving) => {
                let status = self.status_line();
                self.notify(Notice::Status(status));
            }
            _ => {}
        }
    }

    // ---- probes --------------------------------------------------------------------------

    /// Starts due probes and kills those past their timeout.
    pub(super) fn probe_deadlines(&mut self, now: Instant) {
        let mut start = Vec::new();
        let mut timed_out = Vec::new();
        for worker in self.model.workers.values_mut() {
            match worker.probe {
                Probe::Due(at) if at <= now && worker.is_starting() => {
                    worker.probe = Probe::Spawning;
                    start.push(worker.id);
                }
                Probe::Running {
                    deadline,
                    killed: false,
                } if deadline <= now => {
                    worker.probe = Probe::Running {
                        deadline,
                        killed: true,
                    };
                    if let Some((_, timeout)) = worker.spec.ready.probe_timing() {
                        worker.last_probe =
                            Some(format!("timed out after {}", super::humanize(timeout)));
                    }
                    timed_out.push(worker.id);
                }
                _ => {}
            }
        }
        for worker in start {
            self.actions.push(Action::StartProbe { worker });
        }
        for worker in timed_out {
            self.actions.push(Action::KillProbe { worker });
        }
    }

    pub(super) fn probe_started(&mut self, now: Instant, id: WorkerId, exec_error: Option<String>) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            // Its worker is gone: the probe has nothing left to check.
            self.actions.push(Action::KillProbe { worker: id });
            return;
        };
        let Some((_, timeout)) = worker.spec.ready.probe_timing() else {
            return;
        };
        if let Some(err) = exec_error {
            worker.last_probe = Some(format!("could not start: {err}"));
        }
        let wanted = worker.is_starting() && worker.probe == Probe::Spawning;
        worker.probe = Probe::Running {
            deadline: now + timeout,
            killed: !wanted,
        };
        if !wanted {
            self.actions.push(Action::KillProbe { worker: id });
        }
    }

    pub(super) fn probe_failed(&mut self, now: Instant, id: WorkerId, error: String) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.last_probe = Some(error);
        worker.probe = match worker.spec.ready.probe_timing() {
            Some((interval, _)) if worker.is_starting() => Probe::Due(now + interval),
            _ => Probe::Idle,
        };
    }

    /// A command probe ended: exit 0 makes its worker ready; anything else schedules the
    /// next try, remembering how it ended (unless the command could not even start: that
    /// reason says more than its exit code).
    pub(super) fn probe_exited(&mut self, now: Instant, id: WorkerId, status: ExitStatus) {
        let could_not_start = self
            .model
            .workers
            .get(&id)
            .and_then(|w| w.last_probe.as_deref())
            .is_some_and(|p| p.starts_with("could not start"));
        let outcome = if status.success() {
            Ok(())
        } else if could_not_start {
            Err(None)
        } else {
            Err(Some(status.to_string()))
        };
        self.probe_done(now, id, outcome, "worker ready (probe succeeded)");
    }

    /// A readiness check (`ready = "http"` or `"connect"`) ended.
    pub(super) fn probe_checked(&mut self, now: Instant, id: WorkerId, result: Result<(), String>) {
        self.probe_done(
            now,
            id,
            result.map_err(Some),
            "worker ready (check succeeded)",
        );
    }

    /// A probe or check ended: success makes its worker ready unless it was killed; a failure
    /// is remembered (`Some`) and the next try scheduled.
    fn probe_done(
        &mut self,
        now: Instant,
        id: WorkerId,
        outcome: Result<(), Option<String>>,
        how: &str,
    ) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        let killed = match worker.probe {
            Probe::Running { killed, .. } => killed,
            _ => return,
        };
        worker.probe = Probe::Idle;
        if !worker.is_starting() {
            return;
        }
        match outcome {
            Ok(()) if !killed => return self.mark_ready(now, id, how),
            Err(Some(reason)) if !killed => worker.last_probe = Some(reason),
            _ => {}
        }
        if let Some((interval, _)) = worker.spec.ready.probe_timing() {
            worker.probe = Probe::Due(now + interval);
        }
    }
}
