//! The supervisor's core: every decision handover makes about its workers, as a state machine
//! without I/O.
//!
//! [`Core::handle`] takes the time and one [`Input`] (a spawn reported, an exit, a
//! notification, a control request, a signal, a deadline passed, a reload plan resolved) and
//! returns the [`Action`]s that follow (spawn, signal, tell systemd, answer a client, log).
//! The core never reads a clock, the environment, a file or a socket, and never calls the OS:
//! the driver (`crate::driver`) does all of that and feeds the results back in as inputs. So
//! everything handover promises about reloads, aborts, restarts and stops is tested here, with
//! a fake clock and no process (`tests/`).
//!
//! The parts, each a file:
//! - [`model`]: generations, slots, workers, and the rules that hold between inputs;
//! - `workers`: spawns, exits, restarts and their backoff;
//! - `ready`: notifications, readiness by notify, delay and probe;
//! - `reload`: reload requests, strategies (all at once, rolling, canary), finish and abort;
//! - `stop`: stop signals, stopping single workers, escalation to SIGKILL;
//! - `snapshot`: what `status` and the SIGUSR2 dump show.

mod health;
pub(crate) mod model;
mod ready;
mod reload;
mod snapshot;
mod steer;
mod stop;
mod workers;

#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_proto::control::{Request, Response};
use handover_proto::status::Status;
use handover_sys::process::ExitStatus;

use crate::control::{Outcome, ReloadOverrides};
use crate::plan::{GenerationSpec, ReloadPolicy};
use model::{Model, Phase, WorkerId, WorkerState};

/// Identifies one control connection while it waits for answers.
pub(crate) type ClientId = u64;

/// Identifies one reload request, so that the plan of a reload that has ended meanwhile is
/// never taken for the next one's (an aborted reload uses no generation number).
pub(crate) type ReloadId = u64;

/// A reload plan: the new generation's spec and the reload settings that come with it, or why
/// there is none.
pub(crate) type Resolved = Result<(Arc<GenerationSpec>, ReloadPolicy), String>;

/// Something that happened, as the driver reports it.
#[derive(Debug)]
pub(crate) enum Input {
    /// handover starts: start the first generation.
    Start,
    /// A worker's process exists (as the stub, which becomes the worker at exec).
    Spawned {
        worker: WorkerId,
        pid: i32,
        /// The stub could not exec the worker: what failed. It exits 127 next.
        exec_error: Option<String>,
    },
    /// A worker could not be started at all (no process exists).
    SpawnFailed { worker: WorkerId, error: String },
    /// A datagram arrived on a worker's notify socket.
    Notify {
        worker: WorkerId,
        sender_pid: i32,
        /// Who the sender is to the worker, as found at receipt.
        sender: Sender,
        payload: Vec<u8>,
    },
    /// A datagram was dropped by the receive rules (too large, no credentials...).
    NotifyDropped {
        worker: WorkerId,
        sender_pid: Option<i32>,
        reason: &'static str,
        fds_closed: usize,
    },
    /// A worker's process exited; its notifications and output were read first.
    Exited {
        worker: WorkerId,
        status: ExitStatus,
        /// Its last stderr lines, escaped, oldest first.
        stderr_tail: Vec<String>,
        /// How many processes of its cgroup the OOM killer killed.
        oom_kills: u64,
    },
    /// A readiness probe's process exists.
    ProbeStarted {
        worker: WorkerId,
        exec_error: Option<String>,
    },
    /// A readiness probe could not be started.
    ProbeFailed { worker: WorkerId, error: String },
    /// A readiness probe's process exited.
    ProbeExited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// A readiness check (`ready = "http"` or `"connect"`) ended: passed, or why not.
    ProbeChecked {
        worker: WorkerId,
        result: Result<(), String>,
    },
    /// A health check that [`Action::StartHealth`] asked for ended (also when it was
    /// killed, or could not start): passed, or why not.
    HealthChecked {
        worker: WorkerId,
        result: Result<(), String>,
    },
    /// A control request; answers go to `client`.
    Control { client: ClientId, request: Request },
    /// SIGHUP.
    Reload,
    /// SIGTERM, SIGINT (by name).
    Stop(&'static str),
    /// SIGUSR2.
    Dump,
    /// The plan asked for by [`Action::Resolve`] `reload`, made off the event loop.
    Resolved { reload: ReloadId, plan: Resolved },
    /// How many connections wait in the queues of a steered generation's sockets, as
    /// [`Action::MeasureQueues`] asked.
    Queued { generation: u64, waiting: u32 },
    /// Time passed: the earliest deadline ([`Core::next_deadline`]) may be due.
    Tick,
}

/// Who sent a notification, relative to the worker whose socket it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The worker's own pid.
    Worker,
    /// A process the worker started: its descendant, or a member of its process group.
    Descendant,
    /// Anyone else who could write to the socket (the same uid, or root).
    Stranger,
}

/// Something the driver must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Start a worker process from `spec` at slot `index` of `generation`; report
    /// [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn {
        worker: WorkerId,
        generation: u64,
        index: u32,
        spec: Arc<GenerationSpec>,
    },
    /// Send `signal` to the worker's process group (its pid is known and not yet reaped).
    Signal { worker: WorkerId, signal: i32 },
    /// SIGKILL to the worker's process group.
    Kill { worker: WorkerId },
    /// Run one readiness probe for the worker; report [`Input::ProbeStarted`] or
    /// [`Input::ProbeFailed`], then [`Input::ProbeExited`].
    StartProbe { worker: WorkerId },
    /// Kill the worker's running probe (its process group).
    KillProbe { worker: WorkerId },
    /// Run one health check of the worker; report [`Input::HealthChecked`] exactly once.
    StartHealth { worker: WorkerId },
    /// Give up the worker's running health check (kill its process group); its
    /// [`Input::HealthChecked`] still follows.
    KillHealth { worker: WorkerId },
    /// Tell systemd.
    Notify(Notice),
    /// Answer a control client. A `status` answer's `logs` is for the driver to fill.
    Reply {
        client: ClientId,
        response: Response,
    },
    /// Make the plan of a reload to `generation` (read the configuration again, bind new
    /// sockets) off the event loop, and report [`Input::Resolved`] with `reload`.
    Resolve {
        reload: ReloadId,
        generation: u64,
        overrides: ReloadOverrides,
        current: Arc<GenerationSpec>,
    },
    /// Write a state dump (SIGUSR2). Its `logs` is for the driver to fill.
    Dump(Box<Status>),
    /// The first generation is ready (`--daemon` reports it to the waiting parent).
    Started,
    /// Send new connections of these members' groups to these members (a promotion, or
    /// back to the serving generation after an abort; ends any share).
    Steer { members: Vec<Arc<OwnedFd>> },
    /// Send this share (out of `u32::MAX`) of new connections of these members' groups to
    /// them (a canary, a rolling reload).
    Share {
        members: Vec<Arc<OwnedFd>>,
        share: u32,
    },
    /// Measure how many connections wait in these members' accept queues; report
    /// [`Input::Queued`] for `generation`.
    MeasureQueues {
        generation: u64,
        members: Vec<Arc<OwnedFd>>,
    },
    /// A generation is gone: sockets only it used may close now (before the log says so).
    Released { generation: u64 },
    /// Make `count` connections to each of these members, closed at once, to wake workers
    /// blocked in `accept()` on them.
    Wake {
        members: Vec<Arc<OwnedFd>>,
        count: u32,
    },
    /// Log a line.
    Log(Log),
}

/// A message to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `READY=1` and `STATUS=`.
    Ready(String),
    /// `RELOADING=1`, `MONOTONIC_USEC=` and `STATUS=`.
    Reloading(String),
    /// `STATUS=`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
    /// `EXTEND_TIMEOUT_USEC=`.
    ExtendTimeout(Duration),
    /// `STOPPING=1` and `STATUS=`.
    Stopping(String),
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// A log line and the fields that go with it (journal fields `HANDOVER_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Log {
    pub level: Level,
    pub message: String,
    pub generation: Option<u64>,
    /// The worker's index.
    pub worker: Option<u32>,
    pub pid: Option<i32>,
    /// `done` or `aborted`, for a reload's last line.
    pub outcome: Option<&'static str>,
}

/// What the core needs to know from the start; everything else arrives as inputs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The first generation.
    pub first: Arc<GenerationSpec>,
    /// Reload settings until a reload brings new ones.
    pub reload: ReloadPolicy,
    /// systemd's watchdog interval, when it is meant for handover.
    pub watchdog: Option<Duration>,
    /// Send `WATCHDOG=1` only while at least this many serving workers are ready.
    pub watchdog_min_workers: u32,
    /// handover's own pid, for status.
    pub pid: i32,
}

/// Stop signals in a row after which handover gives up waiting and kills everything.
pub(crate) const FORCE_AFTER_SIGNALS: u32 = 4;
/// Failures in a row from which a slot counts as crash-looping.
pub(crate) const CRASH_LOOP_FAILURES: u32 = 5;
/// Dropped notifications of one worker are counted and logged at most this often.
pub(crate) const DROP_SUMMARY: Duration = Duration::from_secs(10);
/// Reloads asked for by SIGHUP start at most this often; signals in between coalesce.
pub(crate) const SIGNAL_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// The SIGUSR2 dump is written at most this often.
pub(crate) const DUMP_INTERVAL: Duration = Duration::from_secs(1);

/// A reload in progress.
#[derive(Debug)]
struct ReloadRun {
    id: ReloadId,
    /// The generation it starts.
    generation: u64,
    /// When it is aborted if not done.
    deadline: Instant,
    /// Clients waiting for its progress and outcome.
    clients: Vec<ClientId>,
    started: Instant,
    /// `reload --timeout`, which wins over the policy's.
    timeout: Option<Duration>,
    /// The plan is being made; no worker of it exists yet.
    resolving: bool,
    /// The share of new connections its generation gets now (out of `u32::MAX`).
    share: u32,
}

/// The supervisor's whole state. See the module documentation.
#[derive(Debug)]
pub(crate) struct Core {
    model: Model,
    /// The first generation's spec until it starts.
    first: Option<Arc<GenerationSpec>>,
    policy: ReloadPolicy,
    watchdog: Option<Duration>,
    watchdog_min_workers: u32,
    pid: i32,
    phase: Phase,
    outcome: Option<Outcome>,
    forced: bool,
    reload: Option<ReloadRun>,
    /// Reload signals arrived during a reload or right after one: one more follows.
    reload_pending: bool,
    /// When the last reload a signal asked for started.
    last_signal_reload: Option<Instant>,
    /// The id the next reload request gets.
    next_reload: ReloadId,
    stop_signals: u32,
    next_watchdog: Option<Instant>,
    last_dump: Option<Instant>,
    started: Instant,
    /// What the input being handled leads to.
    actions: Vec<Action>,
}

impl Core {
    /// A core that has not started yet; [`Input::Start`] starts it.
    pub(crate) fn new(config: Config, now: Instant) -> Core {
        Core {
            model: Model::new(),
            first: Some(config.first),
            policy: config.reload,
            watchdog: config.watchdog,
            watchdog_min_workers: config.watchdog_min_workers,
            pid: config.pid,
            phase: Phase::Starting,
            outcome: None,
            forced: false,
            reload: None,
            reload_pending: false,
            last_signal_reload: None,
            next_reload: 1,
            stop_signals: 0,
            next_watchdog: None,
            last_dump: None,
            started: now,
            actions: Vec::new(),
        }
    }

    /// Handles one input at time `now`; returns what the driver must do, in order.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        match input {
            Input::Start => self.start(now),
            Input::Spawned {
                worker,
                pid,
                exec_error,
            } => self.spawned(now, worker, pid, exec_error),
            Input::SpawnFailed { worker, error } => self.spawn_failed(now, worker, error),
            Input::Notify {
                worker,
                sender_pid,
                sender,
                payload,
            } => self.notified(now, worker, sender_pid, sender, &payload),
            Input::NotifyDropped {
                worker,
                sender_pid,
                reason,
                fds_closed,
            } => self.notify_dropped(now, worker, sender_pid, reason, fds_closed),
            Input::Exited {
                worker,
                status,
                stderr_tail,
                oom_kills,
            } => {
                self.exited(now, worker, status, &stderr_tail, oom_kills);
                // An old worker gone makes room for the next new one in a rolling reload.
                self.advance_reload(now);
            }
            Input::ProbeStarted { worker, exec_error } => {
                self.probe_started(now, worker, exec_error)
            }
            Input::ProbeFailed { worker, error } => self.probe_failed(now, worker, error),
            Input::ProbeExited { worker, status } => self.probe_exited(now, worker, status),
            Input::ProbeChecked { worker, result } => self.probe_checked(now, worker, result),
            Input::HealthChecked { worker, result } => self.health_checked(now, worker, result),
            Input::Control { client, request } => self.control(now, client, request),
            Input::Reload => self.signal_reload(now),
            Input::Stop(name) => self.stop_signal(now, name),
            Input::Dump => self.dump(now),
            Input::Resolved { reload, plan } => self.resolved(now, reload, plan),
            Input::Queued {
                generation,
                waiting,
            } => self.queued(now, generation, waiting),
            Input::Tick => self.deadlines(now),
        }
        std::mem::take(&mut self.actions)
    }

    /// The earliest moment something is due (a ready timeout, a restart delay, a kill, the
    /// reload's deadline, a probe, the watchdog); `None` if nothing is. The driver sends
    /// [`Input::Tick`] then, and never polls.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let workers = self.model.workers.values().flat_map(|w| {
            let state = match w.state {
                WorkerState::Waiting { until } => Some(until),
                WorkerState::Starting {
                    ready_deadline,
                    ready_at,
                } => Some(ready_at.map_or(ready_deadline, |r| r.min(ready_deadline))),
                WorkerState::Stopping { kill_at } => Some(kill_at),
                _ => None,
            };
            let drops = w.drops.as_ref().map(|d| d.until);
            let health = match w.health.check {
                model::Check::Due(at) => Some(at),
                model::Check::Running { deadline } => Some(deadline),
                _ => None,
            };
            let probe = match w.probe {
                model::Probe::Due(at) if w.is_starting() => Some(at),
                model::Probe::Running {
                    deadline,
                    killed: false,
                } => Some(deadline),
                _ => None,
            };
            state
                .into_iter()
                .chain(probe)
                .chain(drops)
                .chain(health)
                .chain(w.health.watchdog_deadline)
        });
        let generations = self.model.generations.values().flat_map(|g| {
            g.handover
                .and_then(|h| h.next_poll)
                .into_iter()
                .chain(g.wake_at)
        });
        workers
            .chain(generations)
            .chain(self.reload.as_ref().map(|r| r.deadline))
            .chain(self.pending_reload_at())
            .chain(self.next_watchdog)
            .min()
    }

    /// Whether worker `id` is ready.
    pub(crate) fn is_ready(&self, id: WorkerId) -> bool {
        self.model.workers.get(&id).is_some_and(|w| w.is_ready())
    }

    /// How handover ends, once it has: every worker gone after a stop, or a forced stop.
    pub(crate) fn finished(&self) -> Option<Outcome> {
        if self.forced {
            return Some(Outcome::Forced);
        }
        if self.phase != Phase::Stopping || !self.model.workers.is_empty() {
            return None;
        }
        Some(self.outcome.clone().unwrap_or(Outcome::Stopped))
    }

    /// The state's invariants (see [`Model::check`]); checked after every input in tests
    /// and debug builds.
    #[cfg(debug_assertions)]
    pub(crate) fn check(&self) -> Result<(), String> {
        self.model.check()?;
        if self.phase == Phase::Running && self.model.newest(model::GenState::Serving).is_none() {
            return Err("running without a serving generation".into());
        }
        if let Some(reload) = &self.reload {
            let state = self.model.state_of(reload.generation);
            if reload.resolving != state.is_none() {
                return Err(format!(
                    "reload to {} resolving={} with generation state {state:?}",
                    reload.generation, reload.resolving
                ));
            }
        }
        Ok(())
    }

    fn start(&mut self, now: Instant) {
        let Some(first) = self.first.take() else {
            return;
        };
        if let Some(interval) = self.watchdog {
            self.notify(Notice::Watchdog);
            self.next_watchdog = Some(now + interval / 2);
        }
        // A slow first generation may need longer than the unit's start timeout.
        self.notify(Notice::ExtendTimeout(
            first.ready_timeout + Duration::from_secs(5),
        ));
        let count = first.count;
        let generation = self.create_generation(now, first, model::GenState::Starting);
        for index in 0..count {
            self.spawn_into_slot(now, generation, index, None);
        }
        self.log(
            Level::Info,
            format!("starting {count} workers"),
            Fields::generation(generation),
        );
    }

    fn control(&mut self, now: Instant, client: ClientId, request: Request) {
        match request {
            Request::Reload { .. } => {
                let overrides = ReloadOverrides::from_request(&request);
                self.request_reload(now, overrides, Some(client))
            }
            Request::Abort => {
                let response = if self.reload.is_some() {
                    self.abort_reload(now, crate::control::AbortCause::Requested);
                    Response::Ok {
                        message: "reload aborted".into(),
                    }
                } else {
                    Response::Error {
                        message: "no reload is running".into(),
                    }
                };
                self.reply(client, response);
            }
            Request::Stop => {
                self.reply(client, Response::Stopping);
                self.stop_signal(now, "stop request");
            }
            Request::Scale { count } => {
                let response = match self.scale(now, count) {
                    Ok(()) => Response::Ok {
                        message: format!("scaling to {count} workers"),
                    },
                    Err(message) => Response::Error { message },
                };
                self.reply(client, response);
            }
            Request::Status => {
                let status = Box::new(self.snapshot(now));
                self.reply(client, Response::Status { status });
            }
        }
    }

    /// SIGUSR2: a state dump, at most one per [`DUMP_INTERVAL`] so a storm cannot fill a disk.
    fn dump(&mut self, now: Instant) {
        if self
            .last_dump
            .is_some_and(|at| now.duration_since(at) < DUMP_INTERVAL)
        {
            return;
        }
        self.last_dump = Some(now);
        let status = Box::new(self.snapshot(now));
        self.actions.push(Action::Dump(status));
    }

    fn deadlines(&mut self, now: Instant) {
        self.probe_deadlines(now);
        self.health_deadlines(now);
        let summaries: Vec<WorkerId> = self
            .model
            .workers
            .values()
            .filter(|w| w.drops.as_ref().is_some_and(|d| d.until <= now))
            .map(|w| w.id)
            .collect();
        for id in summaries {
            self.drops_summary(id, false);
        }
        self.handover_deadlines(now);
        if let (Some(at), Some(interval)) = (self.next_watchdog, self.watchdog) {
            if at <= now {
                self.watchdog_tick();
                self.next_watchdog = Some(now + interval / 2);
            }
        }
        let due: Vec<(WorkerId, WorkerState)> = self
            .model
            .workers
            .values()
            .filter(|w| match w.state {
                WorkerState::Waiting { until } => until <= now,
                WorkerState::Starting {
                    ready_deadline,
                    ready_at,
                } => ready_deadline <= now || ready_at.is_some_and(|r| r <= now),
                WorkerState::Stopping { kill_at } => kill_at <= now,
                _ => false,
            })
            .map(|w| (w.id, w.state))
            .collect();
        for (id, state) in due {
            match state {
                WorkerState::Waiting { .. } => self.launch(id),
                WorkerState::Starting {
                    ready_at: Some(at), ..
                } if at <= now => {
                    self.mark_ready(now, id, "worker ready (alive for the ready delay)");
                }
                WorkerState::Starting { .. } => self.ready_timed_out(now, id),
                WorkerState::Stopping { .. } => self.kill(id),
                _ => {}
            }
        }
        if let Some(reload) = &self.reload {
            if reload.deadline <= now {
                let took = now.duration_since(reload.started);
                self.abort_reload(now, crate::control::AbortCause::Timeout { took });
            }
        }
        self.reload_pending_now(now);
    }

    /// Sends `WATCHDOG=1` if handover is healthy: its loop runs (this is it) and, when
    /// `watchdog_min_workers` is set, enough serving workers are ready and healthy.
    fn watchdog_tick(&mut self) {
        let min = self.watchdog_min_workers as usize;
        let healthy = self.phase != Phase::Running
            || min == 0
            || self
                .model
                .current()
                .is_some_and(|g| self.model.healthy_count(g.id) >= min);
        if healthy {
            self.notify(Notice::Watchdog);
        } else {
            self.log(
                Level::Warn,
                format!("fewer than {min} workers ready and healthy: not sending WATCHDOG=1"),
                Fields::none(),
            );
        }
    }

    // ---- helpers shared by the parts ---------------------------------------------------

    /// `2/4 workers ready, generation 3`: systemd's STATUS= and status's summary.
    fn status_line(&self) -> String {
        let Some(gen) = self.model.current() else {
            return "no workers".into();
        };
        let unhealthy = self
            .model
            .workers_of(gen.id)
            .filter(|w| w.health.unhealthy.is_some() && w.pid.is_some())
            .count();
        let unhealthy = if unhealthy > 0 {
            format!(", {unhealthy} unhealthy")
        } else {
            String::new()
        };
        let oom = match (&gen.last_oom, gen.oom_kills) {
            (Some(last), 1) => format!("; {last}"),
            (Some(last), n) => format!("; {n} OOM kills, last: {last}"),
            (None, _) => String::new(),
        };
        format!(
            "{}/{} workers ready{unhealthy}, generation {}{oom}",
            self.model.ready_count(gen.id),
            gen.slots.len(),
            gen.id
        )
    }

    fn notify(&mut self, notice: Notice) {
        self.actions.push(Action::Notify(notice));
    }

    fn reply(&mut self, client: ClientId, response: Response) {
        self.actions.push(Action::Reply { client, response });
    }

    fn log(&mut self, level: Level, message: String, fields: Fields) {
        self.actions.push(Action::Log(Log {
            level,
            message,
            generation: fields.generation,
            worker: fields.worker,
            pid: fields.pid,
            outcome: fields.outcome,
        }));
    }

    /// The log fields that name a worker.
    fn fields_of(&self, id: WorkerId) -> Fields {
        match self.model.workers.get(&id) {
            Some(w) => Fields {
                generation: Some(w.generation),
                worker: Some(w.index),
                pid: w.pid,
                outcome: None,
            },
            None => Fields::none(),
        }
    }
}

/// The structured fields of a log line.
#[derive(Debug, Clone, Copy, Default)]
struct Fields {
    generation: Option<u64>,
    worker: Option<u32>,
    pid: Option<i32>,
    outcome: Option<&'static str>,
}

impl Fields {
    fn none() -> Fields {
        Fields::default()
    }

    fn generation(generation: u64) -> Fields {
        Fields {
            generation: Some(generation),
            ..Fields::default()
        }
    }
}

/// `250ms`, `1.5s`: durations in messages.
pub(crate) fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
