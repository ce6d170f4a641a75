//! The supervisor's state: generations, their slots, and the workers filling them, with the
//! questions every other part of the core asks of it ("which generation serves?", "how many
//! of its workers are ready?").
//!
//! A *generation* has `count` slots; each slot is filled by at most one current worker.
//! A worker that leaves its slot (retired by a reload, a scale-down or `STOPPING=1`) lives on
//! as a worker of its generation until its process is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub(crate) use handover_proto::status::GenerationState as GenState;

use crate::plan::GenerationSpec;

/// Identifies a worker for the supervisor's lifetime (never reused, unlike a pid).
pub(crate) type WorkerId = u64;

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The first generation is starting.
    Starting,
    /// The first generation became ready; reloads are possible.
    Running,
    /// Every worker has been asked to stop.
    Stopping,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Waiting out a restart delay; no process yet.
    Waiting { until: Instant },
    /// Handed to the driver to spawn; the pid is not known yet.
    Spawning,
    /// Running, not ready yet.
    Starting {
        ready_deadline: Instant,
        /// `ready = "delay"`: ready at this moment.
        ready_at: Option<Instant>,
    },
    /// Ready.
    Ready { since: Instant },
    /// Asked to stop; killed at `kill_at`.
    Stopping { kill_at: Instant },
    /// SIGKILL sent to its process group; waiting for the exit.
    Killed,
}

impl WorkerState {
    /// The name status shows.
    pub(crate) fn public(&self) -> handover_proto::status::WorkerState {
        use handover_proto::status::WorkerState as W;
        match self {
            WorkerState::Waiting { .. } => W::Waiting,
            WorkerState::Spawning => W::Spawning,
            WorkerState::Starting { .. } => W::Starting,
            WorkerState::Ready { .. } => W::Ready,
            WorkerState::Stopping { .. } => W::Stopping,
            WorkerState::Killed => W::Killed,
        }
    }
}

/// A readiness probe's progress (`ready = "probe"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No attempt scheduled (not in probe mode, or no longer starting).
    Idle,
    /// The next attempt starts at this moment.
    Due(Instant),
    /// Handed to the driver; not running yet.
    Spawning,
    /// Running; killed at `deadline`. `killed`: it was, and its result does not count.
    Running { deadline: Instant, killed: bool },
}

/// A health check's progress (`[health]`); at most one runs per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Check {
    /// None scheduled (no `[health]`, not checked yet, or no longer checked).
    #[default]
    Idle,
    /// The next check starts at this moment.
    Due(Instant),
    /// Asked of the driver; it has failed (timed out) at `deadline`.
    Running { deadline: Instant },
    /// Timed out and killed: its failure is counted, its end is awaited before the next.
    Killed,
}

/// A worker's health: its liveness check and its watchdog.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    pub check: Check,
    /// Failed checks in a row.
    pub failures: u32,
    /// When the last check ended, and how.
    pub last: Option<(Instant, Result<(), String>)>,
    /// Ready by its own means, it waits for its first check to pass before it counts as
    /// ready: how it became ready, for the log line.
    pub awaiting: Option<String>,
    /// Its first check passed.
    pub passed: bool,
    /// Why it is unhealthy, once it is.
    pub unhealthy: Option<String>,
    /// The watchdog interval in force (`WATCHDOG_USEC=` changes it).
    pub watchdog: Option<std::time::Duration>,
    /// When the watchdog expires, while it is armed (from ready on).
    pub watchdog_deadline: Option<Instant>,
}

/// One worker: a process, or the plan of one.
#[derive(Debug)]
pub(crate) struct Worker {
    pub id: WorkerId,
    pub generation: u64,
    /// Its slot in the generation (`HANDOVER_WORKER`).
    pub index: u32,
    pub spec: Arc<GenerationSpec>,
    pub state: WorkerState,
    /// Known once the driver reports the spawn.
    pub pid: Option<i32>,
    /// Going away for good: its exit starts no replacement.
    pub retiring: bool,
    /// The last `STATUS=` it sent.
    pub status: Option<String>,
    /// Set when the stub could not exec it.
    pub exec_error: Option<String>,
    pub probe: Probe,
    /// How the last probe attempt ended, to explain a ready timeout.
    pub last_probe: Option<String>,
    /// Notifications dropped lately: the first one is logged, the rest counted.
    pub drops: Option<Drops>,
    pub health: Health,
}

/// Dropped notifications of one worker since the last line about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drops {
    /// When the count is logged (and the window ends, if nothing more was dropped).
    pub until: Instant,
    /// Dropped since the last line.
    pub more: u64,
    /// Why the last of them was.
    pub last: String,
}

impl Worker {
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.state, WorkerState::Ready { .. })
    }

    pub(crate) fn is_starting(&self) -> bool {
        matches!(self.state, WorkerState::Starting { .. })
    }
}

/// A place for one worker in a generation.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The worker currently filling the slot.
    pub worker: Option<WorkerId>,
    /// Failures since the slot's worker was last ready long enough (`backoff_reset`).
    pub consecutive_failures: u32,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Workers that left this slot by saying `STOPPING=1`: each gets its stop signal once
    /// the slot's worker is ready again.
    pub offline: Vec<WorkerId>,
}

/// Workers started together from one spec.
#[derive(Debug)]
pub(crate) struct Generation {
    pub id: u64,
    pub spec: Arc<GenerationSpec>,
    pub state: GenState,
    pub slots: Vec<Slot>,
    pub created: Instant,
    /// A steered generation that no longer gets new connections, waiting for its sockets'
    /// queues to empty before its workers get their stop signal.
    pub handover: Option<HandOver>,
    /// When to wake workers of a stopping steered generation that may be blocked in
    /// `accept()`.
    pub wake_at: Option<Instant>,
    /// Its workers the OOM killer ended, and the last such death.
    pub oom_kills: u32,
    pub last_oom: Option<String>,
}

/// The wait between a steered generation's last new connection and its stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandOver {
    /// When new connections stopped coming.
    pub since: Instant,
    /// Since when its queues have been seen empty, without a connection in between.
    pub quiet_since: Option<Instant>,
    /// When to measure the queues next; `None` while a measurement is on its way.
    pub next_poll: Option<Instant>,
}

impl Generation {
    /// This generation's own members of steered groups.
    pub(crate) fn steered(&self) -> Vec<Arc<std::os::fd::OwnedFd>> {
        self.spec
            .sockets
            .iter()
            .filter(|s| s.is_steered())
            .map(|s| s.fd.clone())
            .collect()
    }
}

/// Generations and workers, and the counters that name new ones.
#[derive(Debug, Default)]
pub(crate) struct Model {
    pub generations: BTreeMap<u64, Generation>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub next_worker: WorkerId,
    /// The number the next generation gets; reserved by a reload from its request on.
    pub next_generation: u64,
}

impl Model {
    pub(crate) fn new() -> Model {
        Model {
            next_worker: 1,
            next_generation: 1,
            ..Model::default()
        }
    }

    /// The newest generation in `state`.
    pub(crate) fn newest(&self, state: GenState) -> Option<&Generation> {
        self.generations.values().rev().find(|g| g.state == state)
    }

    /// The generation that serves, or else the one starting first: what status describes.
    pub(crate) fn current(&self) -> Option<&Generation> {
        self.newest(GenState::Serving)
            .or_else(|| self.newest(GenState::Starting))
    }

    /// Workers of a generation, current and retiring.
    pub(crate) fn workers_of(&self, generation: u64) -> impl Iterator<Item = &Worker> {
        self.workers
            .values()
            .filter(move |w| w.generation == generation)
    }

    /// Ids of a generation's workers.
    pub(crate) fn worker_ids_of(&self, generation: u64) -> Vec<WorkerId> {
        self.workers_of(generation).map(|w| w.id).collect()
    }

    /// How many of the workers filling a generation's slots are ready.
    pub(crate) fn ready_count(&self, generation: u64) -> usize {
        let Some(gen) = self.generations.get(&generation) else {
            return 0;
        };
        gen.slots
            .iter()
            .filter_map(|slot| slot.worker.and_then(|id| self.workers.get(&id)))
            .filter(|w| w.is_ready())
            .count()
    }

    /// How many of the workers filling a generation's slots are ready and not unhealthy:
    /// what the watchdog fan-in to systemd counts.
    pub(crate) fn healthy_count(&self, generation: u64) -> usize {
        let Some(gen) = self.generations.get(&generation) else {
            return 0;
        };
        gen.slots
            .iter()
            .filter_map(|slot| slot.worker.and_then(|id| self.workers.get(&id)))
            .filter(|w| w.is_ready() && w.health.unhealthy.is_none())
            .count()
    }

    /// Whether `id` fills its slot (rather than having been replaced or retired).
    pub(crate) fn fills_its_slot(&self, id: WorkerId) -> bool {
        let Some(worker) = self.workers.get(&id) else {
            return false;
        };
        self.slot(worker.generation, worker.index)
            .is_some_and(|s| s.worker == Some(id))
    }

    pub(crate) fn slot(&self, generation: u64, index: u32) -> Option<&Slot> {
        self.generations
            .get(&generation)
            .and_then(|g| g.slots.get(index as usize))
    }

    pub(crate) fn slot_mut(&mut self, generation: u64, index: u32) -> Option<&mut Slot> {
        self.generations
            .get_mut(&generation)
            .and_then(|g| g.slots.get_mut(index as usize))
    }

    pub(crate) fn state_of(&self, generation: u64) -> Option<GenState> {
        self.generations.get(&generation).map(|g| g.state)
    }

    /// The rules that hold after every input; the core's tests check them after each step.
    /// Returns the first one broken.
    #[cfg(debug_assertions)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let starting = self
            .generations
            .values()
            .filter(|g| g.state == GenState::Starting)
            .count();
        if starting > 1 {
            return Err(format!("{starting} generations are starting"));
        }
        let serving = self
            .generations
            .values()
            .filter(|g| g.state == GenState::Serving)
            .count();
        if serving > 1 {
            return Err(format!("{serving} generations are serving"));
        }
        for gen in self.generations.values() {
            for (index, slot) in gen.slots.iter().enumerate() {
                let Some(id) = slot.worker else { continue };
                // A slot may name a worker that is gone only while its replacement waits to
                // be created; the core never leaves it so between inputs.
                let Some(worker) = self.workers.get(&id) else {
                    continue;
                };
                if worker.generation != gen.id || worker.index as usize != index {
                    return Err(format!(
                        "slot {}/{index} names worker {id} of {}/{}",
                        gen.id, worker.generation, worker.index
                    ));
                }
            }
        }
        for worker in self.workers.values() {
            if !self.generations.contains_key(&worker.generation) {
                return Err(format!(
                    "worker {} belongs to generation {}, which is gone",
                    worker.id, worker.generation
                ));
            }
            let has_process = !matches!(
                worker.state,
                WorkerState::Waiting { .. } | WorkerState::Spawning
            );
            if has_process != worker.pid.is_some() {
                return Err(format!(
                    "worker {} is {:?} with pid {:?}",
                    worker.id, worker.state, worker.pid
                ));
            }
        }
        Ok(())
    }
}
