//! What `handover status`, `status --json` and the SIGUSR2 dump show, and `scale`, the one
//! request that changes the serving generation in place.

use std::time::Instant;

use handover_proto::status::{
    GenerationStatus, HealthStatus, Phase as PublicPhase, SocketStatus, Status, WorkerStatus,
    STATUS_VERSION,
};

use super::model::{GenState, Phase, Slot, Worker, WorkerState};
use super::{Core, Fields, Level, Notice, CRASH_LOOP_FAILURES};

impl Core {
    /// The state as status shows it. `logs` is left empty: the files are the driver's.
    pub(super) fn snapshot(&self, now: Instant) -> Status {
        let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        let generations = self
            .model
            .generations
            .values()
            .map(|gen| GenerationStatus {
                generation: gen.id,
                state: gen.state,
                count: gen.slots.len() as u32,
                age_ms: ms(gen.created),
                workers: self
                    .model
                    .workers_of(gen.id)
                    .map(|w| {
                        let slot = gen.slots.get(w.index as usize);
                        // A worker ready for `backoff_reset` ends a run of failures, even
                        // before the next failure would reset the count.
                        let stable = matches!(w.state, WorkerState::Ready { since }
                            if now.saturating_duration_since(since) >= w.spec.backoff_reset);
                        let failures = match slot {
                            Some(slot) if !stable && slot.worker == Some(w.id) => {
                                slot.consecutive_failures
                            }
                            _ => 0,
                        };
                        WorkerStatus {
                            index: w.index,
                            pid: w.pid,
                            state: w.state.public(),
                            retiring: w.retiring,
                            ready_for_ms: match w.state {
                                WorkerState::Ready { since } => Some(ms(since)),
                                _ => None,
                            },
                            restarts: slot.map_or(0, |s| s.restarts),
                            last_exit: slot.and_then(|s| s.last_exit.clone()),
                            status: w.status.clone(),
                            failures_in_a_row: failures,
                            crash_looping: failures >= CRASH_LOOP_FAILURES,
                            health: health_status(w, now),
                            cgroup: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        let sockets = self
            .model
            .current()
            .map(|g| {
                g.spec
                    .sockets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| SocketStatus {
                        name: s.name.clone(),
                        address: s.address.clone(),
                        fd: 3 + i as u32,
                        from_systemd: s.from_systemd,
                        mode: if s.is_steered() { "steered" } else { "shared" }.into(),
                        shared_because: match &s.mode {
                            crate::plan::SocketMode::Shared(why) => Some(why.clone()),
                            crate::plan::SocketMode::Steered => None,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            version: STATUS_VERSION,
            pid: self.pid,
            phase: match self.phase {
                Phase::Starting => PublicPhase::Starting,
                Phase::Running => PublicPhase::Running,
                Phase::Stopping => PublicPhase::Stopping,
            },
            uptime_ms: ms(self.started),
            reloading: self.reload.as_ref().map(|r| r.generation),
            status: self.status_line(),
            generations,
            sockets,
            logs: Vec::new(),
            cgroups: None,
            cgroup_controllers: None,
        }
    }

    /// Changes the number of workers of the serving generation: new slots are filled at once,
    /// removed slots' workers get their stop signal.
    pub(super) fn scale(&mut self, now: Instant, count: u32) -> Result<(), String> {
        if !(1..=1024).contains(&count) {
            return Err(format!(
                "worker count must be between 1 and 1024, got {count}"
            ));
        }
        if self.phase != Phase::Running {
            return Err("handover is not running".into());
        }
        if self.reload.is_some() {
            return Err("a reload is running".into());
        }
        let Some(generation) = self.model.newest(GenState::Serving).map(|g| g.id) else {
            return Err("no serving generation".into());
        };
        let Some(gen) = self.model.generations.get_mut(&generation) else {
            return Err("no serving generation".into());
        };
        let current = gen.slots.len() as u32;
        if count > current {
            gen.slots.resize_with(count as usize, Slot::default);
            for index in current..count {
                self.spawn_into_slot(now, generation, index, None);
            }
        } else {
            let retired: Vec<_> = gen
                .slots
                .drain(count as usize..)
                .filter_map(|s| s.worker)
                .collect();
            for id in retired {
                self.ask_to_stop(now, id, None);
            }
        }
        self.log(
            Level::Info,
            format!("scaled from {current} to {count} workers"),
            Fields::generation(generation),
        );
        let status = self.status_line();
        self.notify(Notice::Status(status));
        Ok(())
    }
}

/// A worker's health as status shows it; `None` without a check or a watchdog.
fn health_status(w: &Worker, now: Instant) -> Option<HealthStatus> {
    if w.spec.health.is_none() && w.health.watchdog.is_none() && w.spec.watchdog.is_none() {
        return None;
    }
    let last = w.health.last.as_ref();
    let state = if w.health.unhealthy.is_some() {
        "unhealthy"
    } else if last.is_some() || w.is_ready() {
        "healthy"
    } else {
        "unchecked"
    };
    let reason = w.health.unhealthy.clone().or_else(|| match last {
        Some((_, Err(why))) => Some(why.clone()),
        _ => None,
    });
    Some(HealthStatus {
        state: state.into(),
        last_check_ms_ago: last
            .map(|(at, _)| now.saturating_duration_since(*at).as_millis() as u64),
        last_passed: last.map(|(_, result)| result.is_ok()),
        failures_in_a_row: w.health.failures,
        reason,
        watchdog_left_ms: w
            .health
            .watchdog_deadline
            .map(|at| at.saturating_duration_since(now).as_millis() as u64),
    })
}
