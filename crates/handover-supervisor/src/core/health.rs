//! Health: a worker that still runs but no longer works is found and replaced.
//!
//! Two ways find it. The liveness check of `[health]` runs on each ready worker, one at a
//! time, every `interval`, each given up after `timeout`; `failures` failed checks in a row
//! make the worker unhealthy. The watchdog of `[worker] watchdog` wants `WATCHDOG=1` from each
//! ready worker within its interval; a missed deadline or `WATCHDOG=trigger` makes it
//! unhealthy at once.
//!
//! With a check, a new worker counts as ready only once its first check passes, so a
//! generation whose workers fail it never serves: its start fails, or its reload is aborted.
//!
//! An unhealthy worker of the serving generation is replaced the way a worker that said
//! `STOPPING=1` is: its replacement starts at once, and the sick worker gets its stop signal
//! (and the drain timeout) once the replacement is ready, so its slot never goes without a
//! worker. At most `max_replacing` are replaced at a time; the rest wait their turn.

use std::time::{Duration, Instant};

use super::model::{Check, GenState, Phase, WorkerId, WorkerState};
use super::{Action, Core, Level};

/// The longest watchdog interval a worker's `WATCHDOG_USEC=` may set.
const MAX_WATCHDOG: Duration = Duration::from_secs(24 * 60 * 60);

impl Core {
    /// A ready worker's watchdog is armed; a worker waiting for its first check gets it now.
    /// Called when a starting worker became ready by its own means; returns whether it must
    /// wait for its first health check before it counts as ready (`how` is kept for then).
    pub(super) fn health_gate(&mut self, now: Instant, id: WorkerId, how: &str) -> bool {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return false;
        };
        if worker.spec.health.is_none() || worker.health.passed {
            return false;
        }
        if worker.health.awaiting.is_none() {
            worker.health.awaiting = Some(how.to_string());
            if worker.health.check == Check::Idle {
                let timeout = worker
                    .spec
                    .health
                    .as_ref()
                    .map_or(Duration::ZERO, |h| h.timeout);
                worker.health.check = Check::Running {
                    deadline: now + timeout,
                };
                self.actions.push(Action::StartHealth { worker: id });
            }
            let Some(worker) = self.model.workers.get_mut(&id) else {
                return true;
            };
            // Ready already by delay or probe: nothing more of those.
            if let WorkerState::Starting { ready_at, .. } = &mut worker.state {
                *ready_at = None;
            }
            if matches!(worker.probe, super::model::Probe::Due(_)) {
                worker.probe = super::model::Probe::Idle;
            }
        }
        true
    }

    /// A worker became ready: its watchdog starts counting.
    pub(super) fn arm_watchdog(&mut self, now: Instant, id: WorkerId) {
        if let Some(worker) = self.model.workers.get_mut(&id) {
            worker.health.watchdog_deadline = worker.health.watchdog.map(|d| now + d);
            if worker.spec.health.is_some() && worker.health.check == Check::Idle {
                let interval = worker
                    .spec
                    .health
                    .as_ref()
                    .map_or(Duration::ZERO, |h| h.interval);
                worker.health.check = Check::Due(now + interval);
            }
        }
    }

    /// `WATCHDOG=1`, `WATCHDOG=trigger` and `WATCHDOG_USEC=` from a worker.
    pub(super) fn watchdog_notified(
        &mut self,
        now: Instant,
        id: WorkerId,
        ping: bool,
        trigger: bool,
        usec: Option<u64>,
    ) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        if let Some(usec) = usec {
            // As under systemd: a new interval from now on, 0 turns the watchdog off. A worker
            // may send any number: more than a day counts as a day, so a deadline can always
            // be computed.
            worker.health.watchdog =
                (usec > 0).then(|| Duration::from_micros(usec).min(MAX_WATCHDOG));
            if worker.is_ready() {
                worker.health.watchdog_deadline = worker.health.watchdog.map(|d| now + d);
            }
        }
        if ping && worker.is_ready() {
            worker.health.watchdog_deadline = worker.health.watchdog.map(|d| now + d);
        }
        if trigger && worker.health.unhealthy.is_none() && worker.pid.is_some() {
            self.unhealthy(now, id, "it sent WATCHDOG=trigger".into());
        }
    }

    /// Starts due health checks, gives up those past their timeout, and finds expired
    /// watchdogs.
    pub(super) fn health_deadlines(&mut self, now: Instant) {
        let mut start = Vec::new();
        let mut timed_out = Vec::new();
        let mut expired = Vec::new();
        for worker in self.model.workers.values_mut() {
            let Some(spec) = &worker.spec.health else {
                if let Some(at) = worker.health.watchdog_deadline {
                    if at <= now {
                        expired.push(worker.id);
                    }
                }
                continue;
            };
            let checked = worker.pid.is_some()
                && !worker.retiring
                && worker.health.unhealthy.is_none()
                && (worker.is_ready()
                    || (worker.is_starting() && worker.health.awaiting.is_some()));
            match worker.health.check {
                Check::Due(at) if at <= now && checked => {
                    worker.health.check = Check::Running {
                        deadline: now + spec.timeout,
                    };
                    start.push(worker.id);
                }
                Check::Due(at) if at <= now => worker.health.check = Check::Idle,
                Check::Running { deadline } if deadline <= now => {
                    worker.health.check = Check::Killed;
                    timed_out.push((worker.id, spec.timeout));
                }
                _ => {}
            }
            if let Some(at) = worker.health.watchdog_deadline {
                if at <= now {
                    expired.push(worker.id);
                }
            }
        }
        for worker in start {
            self.actions.push(Action::StartHealth { worker });
        }
        for (worker, timeout) in timed_out {
            self.actions.push(Action::KillHealth { worker });
            let reason = format!("timed out after {}", super::humanize(timeout));
            self.check_failed(now, worker, reason);
        }
        for id in expired {
            let Some(worker) = self.model.workers.get_mut(&id) else {
                continue;
            };
            worker.health.watchdog_deadline = None;
            let interval = worker.health.watchdog.unwrap_or_default();
            if worker.is_ready() && worker.health.unhealthy.is_none() && !worker.retiring {
                let reason = format!("sent no WATCHDOG=1 for {}", super::humanize(interval));
                self.unhealthy(now, id, reason);
            }
        }
    }

    /// A health check ended (or was given up, or could not start).
    pub(super) fn health_checked(
        &mut self,
        now: Instant,
        id: WorkerId,
        result: Result<(), String>,
    ) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        let Some(spec) = worker.spec.health.clone() else {
            return;
        };
        let was = std::mem::take(&mut worker.health.check);
        match (was, result) {
            (Check::Running { .. }, Ok(())) => {
                worker.health.failures = 0;
                worker.health.last = Some((now, Ok(())));
                if let Some(how) = worker.health.awaiting.take() {
                    worker.health.passed = true;
                    self.mark_ready(now, id, &format!("{how}; its health check passed"));
                }
            }
            (Check::Running { .. }, Err(reason)) => self.check_failed(now, id, reason),
            // Given up at its timeout, which counted as its failure.
            (Check::Killed, _) => {}
            // No check of this worker was running: nothing to learn from this.
            (other, _) => {
                if let Some(worker) = self.model.workers.get_mut(&id) {
                    worker.health.check = other;
                }
                return;
            }
        }
        // The next check, unless the worker is past checking.
        if let Some(worker) = self.model.workers.get_mut(&id) {
            if worker.health.check == Check::Idle
                && worker.health.unhealthy.is_none()
                && worker.pid.is_some()
                && !worker.retiring
            {
                worker.health.check = Check::Due(now + spec.interval);
            }
        }
    }

    /// A check failed: one more in a row, and unhealthy at `failures`.
    fn check_failed(&mut self, now: Instant, id: WorkerId, reason: String) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        let Some(spec) = &worker.spec.health else {
            return;
        };
        worker.health.failures = worker.health.failures.saturating_add(1);
        worker.health.last = Some((now, Err(reason.clone())));
        let (failures, limit) = (worker.health.failures, spec.failures);
        if worker.health.unhealthy.is_some() {
            return;
        }
        let fields = self.fields_of(id);
        if failures >= limit {
            let times = if limit == 1 {
                "its health check".to_string()
            } else {
                format!("its health check {limit} times in a row")
            };
            self.unhealthy(now, id, format!("failed {times}; last: {reason}"));
        } else {
            self.log(
                Level::Warn,
                format!("health check failed ({failures} of {limit}): {reason}"),
                fields,
            );
        }
    }

    /// `id` is unhealthy. One that serves is replaced (as far as `max_replacing` lets); one
    /// of a generation that does not serve yet has failed its start, and fails it.
    pub(super) fn unhealthy(&mut self, now: Instant, id: WorkerId, reason: String) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.health.unhealthy = Some(reason.clone());
        worker.health.watchdog_deadline = None;
        let (generation, index, ready) = (worker.generation, worker.index, worker.is_ready());
        let fields = self.fields_of(id);
        if !self.model.fills_its_slot(id) {
            // Already replaced, or retired: it is going away anyway.
            return;
        }
        match (self.phase, self.model.state_of(generation)) {
            (Phase::Running, Some(GenState::Serving)) if ready => {
                self.log(
                    Level::Warn,
                    format!("worker is unhealthy: {reason}"),
                    fields,
                );
                self.replace_unhealthy(now);
                let status = self.status_line();
                self.notify(super::Notice::Status(status));
            }
            // Not ready yet (its first check failed), or of a generation that does not
            // serve yet: it failed to start.
            (_, Some(GenState::Starting | GenState::Serving)) => {
                self.log(
                    Level::Warn,
                    format!("worker is unhealthy: {reason}"),
                    fields,
                );
                self.ask_to_stop(now, id, None);
                self.slot_failed(now, generation, index, format!("unhealthy: {reason}"));
            }
            _ => {}
        }
    }

    /// Starts replacements for unhealthy workers of the serving generation, while fewer than
    /// `max_replacing` replacements are under way. Each sick worker keeps serving until its
    /// replacement is ready (see `mark_ready`).
    pub(super) fn replace_unhealthy(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(gen) = self.model.newest(GenState::Serving) else {
            return;
        };
        // Without a check (a watchdog alone), one at a time.
        let max = gen.spec.health.as_ref().map_or(1, |h| h.max_replacing);
        let generation = gen.id;
        // Sick workers still waiting for their replacement to be ready.
        let replacing = gen
            .slots
            .iter()
            .flat_map(|slot| &slot.offline)
            .filter_map(|id| self.model.workers.get(id))
            .filter(|w| w.health.unhealthy.is_some())
            .count();
        let mut room = (max as usize).saturating_sub(replacing);
        let sick: Vec<(WorkerId, u32, String)> = self
            .model
            .workers_of(generation)
            .filter(|w| !w.retiring && w.is_ready() && w.pid.is_some())
            .filter(|w| self.model.fills_its_slot(w.id))
            .filter_map(|w| Some((w.id, w.index, w.health.unhealthy.clone()?)))
            .collect();
        for (id, index, reason) in sick {
            if room == 0 {
                let fields = self.fields_of(id);
                self.log(
                    Level::Debug,
                    format!("unhealthy worker waits: {max} replacement(s) already under way"),
                    fields,
                );
                continue;
            }
            room -= 1;
            let fields = self.fields_of(id);
            self.log(
                Level::Warn,
                format!("replacing unhealthy worker ({reason}); it serves until its replacement is ready"),
                fields,
            );
            if let Some(worker) = self.model.workers.get_mut(&id) {
                worker.retiring = true;
                worker.health.check = match worker.health.check {
                    Check::Running { .. } | Check::Killed => worker.health.check,
                    _ => Check::Idle,
                };
            }
            self.spawn_into_slot(now, generation, index, None);
            if let Some(slot) = self.model.slot_mut(generation, index) {
                slot.offline.push(id);
            }
        }
    }
}
