//! Reloads: a request, the plan made off the loop, the new generation started by the strategy
//! (all at once, rolling in batches within `max_extra`, after a canary), and its end: the old
//! generation drains once every new worker is ready, or the new one is stopped and the old one
//! serves on.
//!
//! One reload runs at a time. A control request during one is answered `busy`; any number of
//! SIGHUPs during one coalesce into a single reload after it.

use std::time::{Duration, Instant};

use handover_proto::control::Response;

use super::model::{GenState, Phase};
use super::{
    Action, ClientId, Core, Fields, Level, Notice, ReloadId, ReloadRun, Resolved,
    SIGNAL_RELOAD_INTERVAL,
};
use crate::control::{AbortCause, ReloadError, ReloadOverrides};

impl Core {
    /// A progress line: logged, streamed to the reload's clients, and systemd's STATUS=.
    pub(super) fn progress(&mut self, line: String) {
        self.log(Level::Info, line.clone(), Fields::none());
        if let Some(reload) = &self.reload {
            for &client in &reload.clients {
                self.actions.push(Action::Reply {
                    client,
                    response: Response::Progress {
                        message: line.clone(),
                    },
                });
            }
        }
        self.notify(Notice::Status(line));
    }

    fn refuse(&mut self, client: Option<ClientId>, error: ReloadError) {
        self.log(
            Level::Warn,
            format!("reload refused: {error}"),
            Fields::none(),
        );
        if let Some(client) = client {
            self.reply(
                client,
                Response::Failed {
                    reason: error.to_string(),
                },
            );
        }
    }

    /// SIGHUP. A signal reload starts at once, unless a reload runs, one is waiting, or the
    /// last signal reload started less than [`SIGNAL_RELOAD_INTERVAL`] ago: then one more
    /// follows as soon as the running one has ended and the interval has passed, and any
    /// number of further signals coalesce into it. A storm of any length therefore costs at
    /// most one reload per interval (two for a storm within one). Reloads become idle again
    /// quickly, so an exception for idle moments would let a storm through in its gaps.
    pub(super) fn signal_reload(&mut self, now: Instant) {
        let too_soon = self
            .last_signal_reload
            .is_some_and(|at| now < at + SIGNAL_RELOAD_INTERVAL);
        if self.phase == Phase::Running
            && (self.reload.is_some() || self.reload_pending || too_soon)
        {
            if !self.reload_pending {
                self.log(
                    Level::Debug,
                    "reload signal during or right after a reload; one more will follow".into(),
                    Fields::none(),
                );
            }
            self.reload_pending = true;
            return;
        }
        self.last_signal_reload = Some(now);
        self.request_reload(now, ReloadOverrides::default(), None);
    }

    /// When the reload that signals asked for meanwhile may start, if one is waiting.
    pub(super) fn pending_reload_at(&self) -> Option<Instant> {
        if !self.reload_pending || self.reload.is_some() {
            return None;
        }
        // Without an earlier signal reload (the one running came from a client), at once.
        Some(
            self.last_signal_reload
                .map_or(self.started, |at| at + SIGNAL_RELOAD_INTERVAL),
        )
    }

    pub(super) fn request_reload(
        &mut self,
        now: Instant,
        overrides: ReloadOverrides,
        client: Option<ClientId>,
    ) {
        match self.phase {
            Phase::Starting => return self.refuse(client, ReloadError::NotStarted),
            Phase::Stopping => return self.refuse(client, ReloadError::Stopping),
            Phase::Running => {}
        }
        if let Some(running) = &self.reload {
            let generation = running.generation;
            if let Some(client) = client {
                self.reply(client, Response::Busy { generation });
            }
            return;
        }
        let draining = self
            .model
            .generations
            .values()
            .filter(|g| g.state == GenState::Draining)
            .count() as u32;
        if draining >= self.policy.max_draining {
            let max = self.policy.max_draining;
            return self.refuse(client, ReloadError::TooManyDraining { draining, max });
        }
        let Some(current) = self.model.newest(GenState::Serving) else {
            return self.refuse(client, ReloadError::NoServingGeneration);
        };
        let current = current.spec.clone();
        // The number is taken only once the plan is made: a refused plan uses none.
        let generation = self.model.next_generation;
        self.notify(Notice::Reloading(format!(
            "reloading: preparing generation {generation}"
        )));
        let timeout = overrides.timeout;
        let id = self.next_reload;
        self.next_reload += 1;
        self.reload = Some(ReloadRun {
            id,
            generation,
            deadline: now + timeout.unwrap_or(self.policy.timeout),
            clients: client.into_iter().collect(),
            started: now,
            timeout,
            resolving: true,
        });
        self.actions.push(Action::Resolve {
            reload: id,
            generation,
            overrides,
            current,
        });
    }

    /// The plan of reload `id` arrived. A plan for a reload that has ended meanwhile
    /// (aborted, timed out, stopped) is dropped, which closes any socket it bound.
    pub(super) fn resolved(&mut self, now: Instant, id: ReloadId, plan: Resolved) {
        let Some(reload) = &mut self.reload else {
            return;
        };
        if reload.id != id || !reload.resolving {
            return;
        }
        let generation = reload.generation;
        let (spec, policy) = match plan {
            Ok(plan) => plan,
            Err(reason) => {
                let serving = self.model.newest(GenState::Serving).map_or(0, |g| g.id);
                let error = ReloadError::Plan { serving, reason };
                self.log(Level::Error, error.to_string(), Fields::none());
                self.notify(Notice::Ready(error.to_string()));
                self.end_reload(Response::Failed {
                    reason: error.to_string(),
                });
                self.reload_pending_now(now);
                return;
            }
        };
        // [reload] settings take effect with the reload that read them.
        let timeout = reload.timeout.unwrap_or(policy.timeout);
        reload.deadline = reload.started + timeout;
        reload.resolving = false;
        self.policy = policy;
        self.notify(Notice::ExtendTimeout(timeout + Duration::from_secs(5)));
        let count = spec.count;
        self.progress(format!(
            "spawning generation {generation} ({count} workers)"
        ));
        let created = self.create_generation(now, spec, GenState::Starting);
        debug_assert_eq!(created, generation);
        self.advance_reload(now);
    }

    /// Moves a running reload forward after any readiness or exit: finishes it once every
    /// new worker is ready, otherwise starts new workers and retires old ones according to
    /// the strategy (all at once, or rolling in batches within `max_extra`; after a canary).
    pub(super) fn advance_reload(&mut self, now: Instant) {
        let Some(reload) = &self.reload else { return };
        let new = reload.generation;
        let Some(new_gen) = self.model.generations.get(&new) else {
            return;
        };
        if new_gen.state != GenState::Starting {
            return;
        }
        let count = new_gen.slots.len();
        let ready_new = self.model.ready_count(new);
        if ready_new == count {
            return self.finish_reload(now);
        }
        let unspawned: Vec<u32> = new_gen
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.worker.is_none())
            .map(|(index, _)| index as u32)
            .collect();
        let spawned_new = count - unspawned.len();
        if self.policy.canary && ready_new == 0 {
            if spawned_new == 0 {
                self.progress(format!("starting a canary worker in generation {new}"));
                self.spawn_into_slot(now, new, 0, None);
            }
            return;
        }
        let Some(batch) = self.policy.batch_size else {
            for index in unspawned {
                self.spawn_into_slot(now, new, index, None);
            }
            return;
        };
        // Rolling: one old worker retires for each new worker that is ready.
        if let Some(old) = self.model.newest(GenState::Serving) {
            let old_id = old.id;
            let keep = old.slots.len().saturating_sub(ready_new);
            let serving_old: Vec<_> = self
                .model
                .workers_of(old_id)
                .filter(|w| !w.retiring)
                .map(|w| w.id)
                .collect();
            let drain = self.policy.drain_timeout;
            for id in serving_old.into_iter().rev().skip(keep) {
                self.ask_to_stop(now, id, Some(drain));
            }
        }
        let in_flight = spawned_new.saturating_sub(ready_new);
        let alive = self.model.workers.len();
        let cap = count + self.policy.max_extra as usize;
        let room = (batch.saturating_sub(in_flight as u32) as usize).min(cap.saturating_sub(alive));
        for index in unspawned.into_iter().take(room) {
            self.spawn_into_slot(now, new, index, None);
        }
    }

    /// Every new worker is ready: the new generation serves, the old one drains.
    fn finish_reload(&mut self, now: Instant) {
        let Some(reload) = &self.reload else { return };
        let generation = reload.generation;
        let took = now.duration_since(reload.started);
        let old: Vec<u64> = self
            .model
            .generations
            .values()
            .filter(|g| g.state == GenState::Serving)
            .map(|g| g.id)
            .collect();
        if let Some(gen) = self.model.generations.get_mut(&generation) {
            gen.state = GenState::Serving;
        }
        let drain = self.policy.drain_timeout;
        for old_generation in old {
            self.progress(format!("draining generation {old_generation}"));
            if let Some(gen) = self.model.generations.get_mut(&old_generation) {
                gen.state = GenState::Draining;
            }
            for id in self.model.worker_ids_of(old_generation) {
                self.ask_to_stop(now, id, Some(drain));
            }
            self.generation_maybe_gone(old_generation);
        }
        self.log(
            Level::Info,
            format!("reload done in {took:?}: generation {generation} serves"),
            Fields {
                outcome: Some("done"),
                ..Fields::generation(generation)
            },
        );
        // systemd first: `systemctl reload` returns when the client hears back, and by then
        // the unit must already show the new status.
        let status = self.status_line();
        self.notify(Notice::Ready(status));
        self.end_reload(Response::Done { generation });
        self.reload_pending_now(now);
    }

    /// Gives up the running reload: its new workers are stopped, the old generation serves
    /// on (and gets back any worker a rolling reload already retired).
    pub(super) fn abort_reload(&mut self, now: Instant, cause: AbortCause) {
        let Some(reload) = &self.reload else { return };
        let generation = reload.generation;
        if let Some(gen) = self.model.generations.get_mut(&generation) {
            gen.state = GenState::Aborted;
        }
        for id in self.model.worker_ids_of(generation) {
            self.ask_to_stop(now, id, None);
        }
        self.generation_maybe_gone(generation);
        if let Some(old) = self.model.newest(GenState::Serving) {
            let old_id = old.id;
            let empty: Vec<u32> = old
                .slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| {
                    slot.worker
                        .and_then(|id| self.model.workers.get(&id))
                        .is_none_or(|w| w.retiring)
                })
                .map(|(index, _)| index as u32)
                .collect();
            for index in empty {
                self.spawn_into_slot(now, old_id, index, None);
            }
        }
        let serving = self.model.current().map_or(0, |g| g.id);
        let error = ReloadError::Aborted { serving, cause };
        self.log(
            Level::Error,
            error.to_string(),
            Fields {
                outcome: Some("aborted"),
                ..Fields::generation(generation)
            },
        );
        self.notify(Notice::Ready(error.to_string()));
        self.end_reload(Response::Failed {
            reason: error.to_string(),
        });
        self.reload_pending_now(now);
    }

    /// Sends the final answer to the reload's clients and forgets the reload.
    pub(super) fn end_reload(&mut self, response: Response) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        for client in reload.clients {
            self.reply(client, response.clone());
        }
    }

    /// Starts the reload that signals asked for meanwhile, if it is due.
    pub(super) fn reload_pending_now(&mut self, now: Instant) {
        if self.pending_reload_at().is_some_and(|at| at <= now) {
            self.reload_pending = false;
            self.last_signal_reload = Some(now);
            self.request_reload(now, ReloadOverrides::default(), None);
        }
    }
}
