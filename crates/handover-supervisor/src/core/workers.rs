//! Workers coming and going: spawning into a slot, the spawn's outcome, exits, and restarts
//! with backoff.
//!
//! What a failure means depends on where it happens: in the first generation before it is
//! ready it fails the start; in a reload's new generation it aborts the reload; in the serving
//! generation the slot is restarted after a delay that doubles with each failure in a row; in
//! a draining or aborted generation nothing is restarted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_sys::process::ExitStatus;

use super::model::{GenState, Generation, Phase, Probe, Slot, Worker, WorkerId, WorkerState};
use super::{Action, Core, Fields, Level, Notice, CRASH_LOOP_FAILURES};
use crate::backoff;
use crate::control::AbortCause;
use crate::plan::{GenerationSpec, ReadyMode};

impl Core {
    /// Creates a generation with empty slots and gives it the next number.
    pub(super) fn create_generation(
        &mut self,
        now: Instant,
        spec: Arc<GenerationSpec>,
        state: GenState,
    ) -> u64 {
        let id = self.model.next_generation;
        self.model.next_generation += 1;
        let slots = (0..spec.count).map(|_| Slot::default()).collect();
        self.model.generations.insert(
            id,
            Generation {
                id,
                spec,
                state,
                slots,
                created: now,
                handover: None,
                wake_at: None,
                oom_kills: 0,
                last_oom: None,
            },
        );
        id
    }

    /// Creates a worker for a slot; `delay` makes it wait first (restart backoff).
    pub(super) fn spawn_into_slot(
        &mut self,
        now: Instant,
        generation: u64,
        index: u32,
        delay: Option<Duration>,
    ) {
        let Some(gen) = self.model.generations.get_mut(&generation) else {
            return;
        };
        let id = self.model.next_worker;
        self.model.next_worker += 1;
        let spec = gen.spec.clone();
        let spec_watchdog = spec.watchdog;
        if let Some(slot) = gen.slots.get_mut(index as usize) {
            slot.worker = Some(id);
        }
        let state = match delay {
            Some(delay) if !delay.is_zero() => WorkerState::Waiting { until: now + delay },
            _ => WorkerState::Spawning,
        };
        self.model.workers.insert(
            id,
            Worker {
                id,
                generation,
                index,
                spec,
                state,
                pid: None,
                retiring: false,
                status: None,
                exec_error: None,
                probe: Probe::Idle,
                last_probe: None,
                drops: None,
                health: super::model::Health {
                    watchdog: spec_watchdog,
                    ..Default::default()
                },
            },
        );
        if state == WorkerState::Spawning {
            self.launch(id);
        }
    }

    /// Hands a worker to the driver to spawn.
    pub(super) fn launch(&mut self, id: WorkerId) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.state = WorkerState::Spawning;
        self.actions.push(Action::Spawn {
            worker: id,
            generation: worker.generation,
            index: worker.index,
            spec: worker.spec.clone(),
        });
    }

    pub(super) fn spawned(
        &mut self,
        now: Instant,
        id: WorkerId,
        pid: i32,
        exec_error: Option<String>,
    ) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        if worker.state != WorkerState::Spawning {
            return;
        }
        worker.pid = Some(pid);
        worker.exec_error = exec_error.clone();
        let ready_at = match &worker.spec.ready {
            ReadyMode::Delay(delay) => Some(now + *delay),
            ReadyMode::Probe { interval, .. } | ReadyMode::Check { interval, .. } => {
                worker.probe = Probe::Due(now + *interval);
                None
            }
            ReadyMode::Notify => None,
        };
        worker.state = WorkerState::Starting {
            ready_deadline: now + worker.spec.ready_timeout,
            ready_at,
        };
        let retiring = worker.retiring;
        let fields = self.fields_of(id);
        match exec_error {
            Some(err) => self.log(Level::Error, err, fields),
            None => self.log(Level::Info, "worker started".into(), fields),
        }
        if retiring {
            self.ask_to_stop(now, id, None);
        }
    }

    pub(super) fn spawn_failed(&mut self, now: Instant, id: WorkerId, error: String) {
        let Some(worker) = self.model.workers.get(&id) else {
            return;
        };
        let (generation, index, retiring) = (worker.generation, worker.index, worker.retiring);
        let fields = self.fields_of(id);
        // A worker given up before it existed (its reload was aborted) is no error of its own.
        let level = if retiring { Level::Debug } else { Level::Error };
        self.log(level, format!("could not start worker: {error}"), fields);
        self.drop_worker(id);
        if retiring {
            self.generation_maybe_gone(generation);
        } else {
            self.slot_failed(
                now,
                generation,
                index,
                format!("could not start worker: {error}"),
            );
        }
    }

    pub(super) fn exited(
        &mut self,
        now: Instant,
        id: WorkerId,
        status: ExitStatus,
        stderr_tail: &[String],
        oom_kills: u64,
    ) {
        let Some(worker) = self.model.workers.get(&id) else {
            return;
        };
        let mut reason = match &worker.exec_error {
            Some(err) => format!("could not start: {err}"),
            None => status.to_string(),
        };
        let mut oom = None;
        if oom_kills > 0 {
            let at = worker
                .spec
                .limits
                .memory_max
                .map(|max| format!(" at memory.max {}", handover_sys::cgroup::show_bytes(max)))
                .unwrap_or_default();
            let killed =
                matches!(status, ExitStatus::Signaled { signal, .. } if signal == libc::SIGKILL);
            reason = if killed {
                format!("killed by the OOM killer{at}")
            } else {
                let n = if oom_kills == 1 {
                    "one of its processes".to_owned()
                } else {
                    format!("{oom_kills} of its processes")
                };
                format!("{status}, after the OOM killer killed {n}{at}")
            };
            oom = Some(format!("worker {} {reason}", worker.index));
        }
        // A worker that was asked to stop is reported by how it ended, unless that was the
        // OOM killer.
        let stopped = if oom.is_some() {
            reason.clone()
        } else {
            status.to_string()
        };
        if !stderr_tail.is_empty() {
            reason.push_str("; last stderr lines: ");
            reason.push_str(&stderr_tail.join(" | "));
        }
        let ready_for = match worker.state {
            WorkerState::Ready { since } => Some(now.duration_since(since)),
            _ => None,
        };
        let expected = worker.retiring;
        let (generation, index) = (worker.generation, worker.index);
        let fields = self.fields_of(id);
        if expected {
            self.log(Level::Info, format!("worker stopped: {stopped}"), fields);
        } else if ready_for.is_some() {
            self.log(Level::Warn, format!("worker died: {reason}"), fields);
        } else {
            self.log(
                Level::Warn,
                format!("worker died before it was ready: {reason}"),
                fields,
            );
        }
        self.drops_summary(id, true);
        let filled_slot = self.model.fills_its_slot(id);
        self.drop_worker(id);
        if let Some(oom) = oom {
            if let Some(gen) = self.model.generations.get_mut(&generation) {
                gen.oom_kills += 1;
                gen.last_oom = Some(oom);
            }
            // What systemd shows in `systemctl status`, at once.
            if self.phase == Phase::Running {
                let status = self.status_line();
                self.notify(super::Notice::Status(status));
            }
        }
        if filled_slot {
            if let Some(slot) = self.model.slot_mut(generation, index) {
                slot.last_exit = Some(reason.clone());
            }
        }
        if expected || !filled_slot {
            self.generation_maybe_gone(generation);
            return;
        }
        let starting = self.model.state_of(generation) == Some(GenState::Starting);
        if ready_for.is_some() && !starting {
            self.respawn(now, generation, index, ready_for, reason);
        } else {
            // Before ready, or while the whole generation is not ready yet: the start (or the
            // reload) fails; in a serving generation this is a failed restart.
            self.slot_failed(now, generation, index, reason);
        }
    }

    /// A worker that still runs failed before becoming ready (its ready timeout passed).
    pub(super) fn ready_timed_out(&mut self, now: Instant, id: WorkerId) {
        let Some(worker) = self.model.workers.get(&id) else {
            return;
        };
        let last_probe = worker
            .last_probe
            .as_ref()
            .map(|p| format!("; last probe: {p}"))
            .unwrap_or_default();
        let reason = format!(
            "not ready within {}{last_probe}",
            super::humanize(worker.spec.ready_timeout)
        );
        let (generation, index) = (worker.generation, worker.index);
        self.ask_to_stop(now, id, None);
        self.slot_failed(now, generation, index, reason);
    }

    /// The worker of `generation`/`index` failed before it was ready.
    pub(super) fn slot_failed(
        &mut self,
        now: Instant,
        generation: u64,
        index: u32,
        reason: String,
    ) {
        let Some(state) = self.model.state_of(generation) else {
            return;
        };
        match (self.phase, state) {
            (Phase::Starting, GenState::Starting) => {
                self.start_failed(now, format!("worker {index}: {reason}"))
            }
            (Phase::Running, GenState::Starting) => self.abort_reload(
                now,
                AbortCause::WorkerFailed {
                    generation,
                    index,
                    reason,
                },
            ),
            (Phase::Running, GenState::Serving) => {
                self.respawn(now, generation, index, None, reason)
            }
            _ => self.generation_maybe_gone(generation),
        }
    }

    /// Restarts a serving slot after its backoff delay. `ready_for`: how long the worker had
    /// been ready, if it was (long enough resets the delay).
    fn respawn(
        &mut self,
        now: Instant,
        generation: u64,
        index: u32,
        ready_for: Option<Duration>,
        reason: String,
    ) {
        let Some(gen) = self.model.generations.get_mut(&generation) else {
            return;
        };
        if gen.state != GenState::Serving || self.phase != Phase::Running {
            self.generation_maybe_gone(generation);
            return;
        }
        let spec = gen.spec.clone();
        let Some(slot) = gen.slots.get_mut(index as usize) else {
            return;
        };
        if ready_for.is_some_and(|d| d >= spec.backoff_reset) {
            slot.consecutive_failures = 0;
        }
        slot.consecutive_failures = slot.consecutive_failures.saturating_add(1);
        slot.restarts += 1;
        slot.last_exit = Some(reason);
        let failures = slot.consecutive_failures;
        let delay = backoff::delay(spec.backoff_initial, spec.backoff_max, failures);
        let fields = Fields {
            worker: Some(index),
            ..Fields::generation(generation)
        };
        if failures >= CRASH_LOOP_FAILURES {
            self.log(
                Level::Warn,
                format!("crash-looping: {failures} failures in a row; restarting in {delay:?}"),
                fields,
            );
            let status = format!(
                "crash-looping: worker {index} failed {failures} times in a row; {}",
                self.status_line()
            );
            self.notify(Notice::Status(status));
        } else {
            self.log(Level::Info, format!("restarting in {delay:?}"), fields);
        }
        self.spawn_into_slot(now, generation, index, Some(delay));
    }

    /// Forgets a draining or aborted generation once its last worker is gone.
    pub(super) fn generation_maybe_gone(&mut self, generation: u64) {
        let Some(state) = self.model.state_of(generation) else {
            return;
        };
        if matches!(state, GenState::Draining | GenState::Aborted)
            && self.model.workers_of(generation).next().is_none()
        {
            self.model.generations.remove(&generation);
            self.actions.push(Action::Released { generation });
            self.log(
                Level::Info,
                format!("generation {} has no workers left", state.name()),
                Fields::generation(generation),
            );
        }
    }

    /// Forgets a worker (its process is gone or never existed), and kills its probe and its
    /// health check.
    pub(super) fn drop_worker(&mut self, id: WorkerId) {
        if let Some(worker) = self.model.workers.remove(&id) {
            if matches!(worker.probe, Probe::Running { killed: false, .. }) {
                self.actions.push(Action::KillProbe { worker: id });
            }
            if matches!(worker.health.check, super::model::Check::Running { .. }) {
                self.actions.push(Action::KillHealth { worker: id });
            }
        }
    }
}
