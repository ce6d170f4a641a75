//! Stopping: single workers (the stop signal to the process group, SIGKILL at a deadline) and
//! handover as a whole (every worker, a running reload given up, and the fourth stop signal
//! that kills everything at once).

use std::time::{Duration, Instant};

use super::model::{Phase, WorkerId, WorkerState};
use super::{Action, Core, Fields, Level, Notice, FORCE_AFTER_SIGNALS};
use crate::control::{Outcome, ReloadError};
use handover_proto::control::Response;

impl Core {
    /// SIGTERM, SIGINT or a `stop` request (`name` says which).
    pub(super) fn stop_signal(&mut self, now: Instant, name: &str) {
        self.stop_signals += 1;
        let n = self.stop_signals;
        if n == 1 {
            self.log(Level::Info, format!("{name}: stopping"), Fields::none());
        } else if n < FORCE_AFTER_SIGNALS {
            self.log(
                Level::Info,
                format!("{name} again ({n} of {FORCE_AFTER_SIGNALS}): already stopping"),
                Fields::none(),
            );
        }
        self.begin_stop(now);
        if n >= FORCE_AFTER_SIGNALS && !self.forced {
            self.log(
                Level::Warn,
                format!("{n} stop signals in a row: killing every worker now"),
                Fields::none(),
            );
            let with_process: Vec<WorkerId> = self
                .model
                .workers
                .values()
                .filter(|w| w.pid.is_some())
                .map(|w| w.id)
                .collect();
            for worker in with_process {
                self.actions.push(Action::Kill { worker });
            }
            self.forced = true;
        }
    }

    /// The first generation failed: stop what is left and end with the reason.
    pub(super) fn start_failed(&mut self, now: Instant, reason: String) {
        if self.phase == Phase::Stopping {
            return;
        }
        self.log(
            Level::Error,
            format!("the first generation failed to start: {reason}"),
            Fields::none(),
        );
        self.outcome = Some(Outcome::StartFailed(reason));
        self.begin_stop(now);
    }

    fn begin_stop(&mut self, now: Instant) {
        if self.phase == Phase::Stopping {
            return;
        }
        self.phase = Phase::Stopping;
        self.reload_pending = false;
        if let Some(reload) = &self.reload {
            let generation = reload.generation;
            self.log(
                Level::Warn,
                "reload aborted: handover is stopping".into(),
                Fields::generation(generation),
            );
            self.end_reload(Response::Failed {
                reason: ReloadError::Stopping.to_string(),
            });
        }
        self.notify(Notice::Stopping("stopping".into()));
        let longest = self
            .model
            .workers
            .values()
            .map(|w| w.spec.stop_timeout)
            .max()
            .unwrap_or_default();
        self.notify(Notice::ExtendTimeout(
            longest.max(self.policy.drain_timeout) + Duration::from_secs(5),
        ));
        let ids: Vec<WorkerId> = self.model.workers.keys().copied().collect();
        for id in ids {
            self.ask_to_stop(now, id, None);
        }
    }

    /// Sends the stop signal to a worker's process group, with a kill deadline `timeout`
    /// away (the spec's `stop_timeout` if none). A worker already stopping keeps the earlier
    /// deadline; one that has no process yet never gets one.
    pub(super) fn ask_to_stop(&mut self, now: Instant, id: WorkerId, timeout: Option<Duration>) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.retiring = true;
        let timeout = timeout.unwrap_or(worker.spec.stop_timeout);
        match worker.state {
            WorkerState::Waiting { .. } => {
                let generation = worker.generation;
                self.drop_worker(id);
                self.generation_maybe_gone(generation);
            }
            WorkerState::Spawning => {
                // Signalled once the driver reports the pid.
            }
            WorkerState::Starting { .. } | WorkerState::Ready { .. } => {
                let signal = worker.spec.stop_signal;
                worker.state = WorkerState::Stopping {
                    kill_at: now + timeout,
                };
                self.actions.push(Action::Signal { worker: id, signal });
            }
            WorkerState::Stopping { kill_at } => {
                worker.state = WorkerState::Stopping {
                    kill_at: kill_at.min(now + timeout),
                };
            }
            WorkerState::Killed => {}
        }
    }

    /// A stopping worker's time is up.
    pub(super) fn kill(&mut self, id: WorkerId) {
        let Some(worker) = self.model.workers.get_mut(&id) else {
            return;
        };
        worker.state = WorkerState::Killed;
        let fields = self.fields_of(id);
        self.log(
            Level::Warn,
            "worker did not stop in time; sending SIGKILL to its process group".into(),
            fields,
        );
        self.actions.push(Action::Kill { worker: id });
    }
}
