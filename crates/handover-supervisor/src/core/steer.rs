//! Steered reloads: what the core decides when generations have sockets of their own.
//!
//! At the end of a reload the new generation's sockets become the selector's target, and the
//! old generation gets no new connection from then on. It keeps running untouched until the
//! accept queues of its sockets have stayed empty for [`HANDOVER_GRACE`] (a connection whose
//! handshake was in flight at the switch still completes into them), and only then gets its
//! stop signal: so a worker that closes accepted-but-unread connections when told to stop
//! has none. A second after the stop signal, and each second after that, the workers still
//! there are woken by connections handover makes to their own sockets, in case they sleep in
//! a blocking `accept()`. A canary (and a rolling reload) gets a share of new connections
//! before the end. An aborted reload never moved the selector.

use std::time::{Duration, Instant};

use super::model::{GenState, HandOver};
use super::{Action, Core, Fields, Level};

/// How often a handing-over generation's queues are measured.
pub(crate) const QUEUE_POLL: Duration = Duration::from_millis(10);
/// How long the queues must stay empty before the stop signal.
pub(crate) const HANDOVER_GRACE: Duration = Duration::from_millis(200);
/// The longest a generation waits for its queues: workers that accept nothing any more
/// (hung, or gone from the socket) must not hold up their own stop.
pub(crate) const HANDOVER_MAX: Duration = Duration::from_secs(5);
/// How long after its stop signal a steered generation's workers are first woken.
pub(crate) const WAKE_AFTER: Duration = Duration::from_secs(1);

impl Core {
    /// New connections go to `generation` from now on.
    pub(super) fn promote(&mut self, generation: u64) {
        let Some(gen) = self.model.generations.get(&generation) else {
            return;
        };
        let members = gen.steered();
        if !members.is_empty() {
            self.actions.push(Action::Steer { members });
        }
    }

    /// An old generation no longer gets new connections. A steered one waits for its
    /// queues; a shared one (whose socket the new generation shares) gets its stop signal at
    /// once. Returns whether the stop was deferred.
    pub(super) fn hand_over(&mut self, now: Instant, generation: u64) -> bool {
        let Some(gen) = self.model.generations.get_mut(&generation) else {
            return false;
        };
        if gen.steered().is_empty() {
            return false;
        }
        gen.handover = Some(HandOver {
            since: now,
            quiet_since: None,
            next_poll: Some(now),
        });
        // On their way out already: an exit now is expected, not a crash to replace.
        for worker in self.model.workers.values_mut() {
            if worker.generation == generation {
                worker.retiring = true;
            }
        }
        true
    }

    /// Queue measurements and wake-ups that are due.
    pub(super) fn handover_deadlines(&mut self, now: Instant) {
        let mut measure = Vec::new();
        let mut wake = Vec::new();
        for gen in self.model.generations.values_mut() {
            if let Some(handover) = &mut gen.handover {
                if handover.next_poll.is_some_and(|at| at <= now) {
                    handover.next_poll = None;
                    measure.push(gen.id);
                }
            }
            if gen.wake_at.is_some_and(|at| at <= now) {
                gen.wake_at = Some(now + WAKE_AFTER);
                wake.push(gen.id);
            }
        }
        for generation in measure {
            let members = self.model.generations[&generation].steered();
            self.actions.push(Action::MeasureQueues {
                generation,
                members,
            });
        }
        for generation in wake {
            let alive = self
                .model
                .workers_of(generation)
                .filter(|w| w.pid.is_some())
                .count();
            if alive == 0 {
                continue;
            }
            let members = self.model.generations[&generation].steered();
            self.log(
                Level::Debug,
                format!("waking {alive} worker(s) that may wait in accept()"),
                Fields::generation(generation),
            );
            self.actions.push(Action::Wake {
                members,
                count: alive as u32,
            });
        }
    }

    /// The queues of a handing-over generation were measured.
    pub(super) fn queued(&mut self, now: Instant, generation: u64, waiting: u32) {
        let Some(gen) = self.model.generations.get_mut(&generation) else {
            return;
        };
        let Some(handover) = &mut gen.handover else {
            return;
        };
        if waiting > 0 {
            handover.quiet_since = None;
        } else if handover.quiet_since.is_none() {
            handover.quiet_since = Some(now);
        }
        let quiet = handover
            .quiet_since
            .is_some_and(|q| now.saturating_duration_since(q) >= HANDOVER_GRACE);
        let overdue = now.saturating_duration_since(handover.since) >= HANDOVER_MAX;
        if !(quiet || overdue) {
            handover.next_poll = Some(now + QUEUE_POLL);
            return;
        }
        let since = handover.since;
        gen.handover = None;
        gen.wake_at = Some(now + WAKE_AFTER);
        if quiet {
            self.log(
                Level::Info,
                format!(
                    "handed over in {:?}: no connection waits for the old workers; stopping them",
                    now.saturating_duration_since(since)
                ),
                Fields::generation(generation),
            );
        } else {
            self.log(
                Level::Warn,
                format!(
                    "{waiting} connection(s) still wait for the old workers after {}; stopping \
                     them anyway",
                    super::humanize(HANDOVER_MAX)
                ),
                Fields::generation(generation),
            );
        }
        let drain = self.policy.drain_timeout;
        for id in self.model.worker_ids_of(generation) {
            self.ask_to_stop(now, id, Some(drain));
        }
        self.generation_maybe_gone(generation);
    }

    /// The share of new connections a starting generation should get now: a ready canary
    /// gets `canary_share`, a rolling reload its ready workers' part of the whole.
    pub(super) fn share_now(&self, generation: u64, ready: usize, count: usize) -> u32 {
        if ready == 0 || count == 0 {
            return 0;
        }
        let fraction = if self.policy.batch_size.is_some() {
            ready as f64 / count as f64
        } else if self.policy.canary {
            f64::from(self.policy.canary_share.min(100)) / 100.0
        } else {
            0.0
        };
        let _ = generation;
        (fraction * f64::from(u32::MAX)) as u32
    }

    /// Gives the reload's generation the share it should have now, if that changed.
    pub(super) fn update_share(&mut self, generation: u64, ready: usize, count: usize) {
        let share = self.share_now(generation, ready, count);
        let Some(reload) = &mut self.reload else {
            return;
        };
        if reload.share == share {
            return;
        }
        reload.share = share;
        let Some(gen) = self.model.generations.get(&generation) else {
            return;
        };
        let members = gen.steered();
        if !members.is_empty() && gen.state == GenState::Starting {
            self.actions.push(Action::Share { members, share });
        }
    }

    /// After an aborted reload that had a share: everything to the serving generation again.
    pub(super) fn unshare(&mut self, had_share: bool) {
        if !had_share {
            return;
        }
        if let Some(serving) = self.model.newest(GenState::Serving).map(|g| g.id) {
            self.promote(serving);
        }
    }
}
