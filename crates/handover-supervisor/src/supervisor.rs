//! The event loop: generations of workers, readiness, restarts, reloads and stop.
//!
//! One task owns all state. Everything that happens arrives as an [`Event`] on one channel
//! or as a signal, and time only matters through deadlines the state itself names, so the
//! loop sleeps until the next of those and never polls.
//!
//! Ordering rule: before a worker's exit is handled, its notify socket and stderr pipe are
//! read empty, so a worker that said `READY=1` and then died is always seen as "died after
//! ready", and its last stderr lines explain its death.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_proto::notify;
use handover_sys::notify::{NotifySocket, Received};
use handover_sys::process::{self, ExitStatus, Pidfd};
use handover_sys::spawn::{SpawnRequest, Spawned, Spawner};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::backoff;
use crate::control::{Command, Outcome, ReloadOverrides, ReloadReply};
use crate::output::{Origin, Stream};
use crate::plan::{GenerationSpec, Plan, ReadyMode, ReloadPolicy};
use crate::systemd::Systemd;
use crate::worker::{is_reserved_var, worker_env, State, Worker};

/// Builds the spec of a new generation when a reload starts (re-reading the configuration).
pub type Reloader = Box<
    dyn FnMut(
        &ReloadOverrides,
        &Arc<GenerationSpec>,
    ) -> Result<(Arc<GenerationSpec>, ReloadPolicy), String>,
>;

/// What [`run`] returns.
#[derive(Debug)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
}

/// Stop signals in a row after which handover gives up waiting and kills everything.
const FORCE_AFTER_SIGNALS: u32 = 4;

/// How long to wait for killed orphans to be reaped at the very end.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);
/// A worker's pipe is read at most this much at a time before other events get their turn.
const READ_BUDGET: usize = 64 * 1024;

enum Event {
    Spawned {
        worker: u64,
        result: io::Result<Spawned>,
    },
    NotifyReadable(u64),
    StderrReadable(u64),
    StdoutReadable(u64),
    ProbeSpawned {
        worker: u64,
        result: io::Result<Spawned>,
    },
}

/// A readiness probe in flight.
struct ProbeRun {
    worker: u64,
    pidfd: Pidfd,
    deadline: Instant,
    killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenState {
    /// Being started (first start, or the target of a reload).
    Starting,
    /// The generation that serves.
    Serving,
    /// Told to stop after a newer one took over.
    Draining,
    /// A failed reload target being stopped.
    Aborted,
}

impl GenState {
    fn name(self) -> &'static str {
        match self {
            GenState::Starting => "starting",
            GenState::Serving => "serving",
            GenState::Draining => "draining",
            GenState::Aborted => "aborted",
        }
    }
}

struct Slot {
    /// The worker currently filling the slot (None when retired by a scale-down).
    worker: Option<u64>,
    consecutive_failures: u32,
    restarts: u32,
    last_exit: Option<String>,
}

struct Generation {
    id: u64,
    spec: Arc<GenerationSpec>,
    state: GenState,
    slots: Vec<Slot>,
    started: Instant,
}

struct ReloadRun {
    generation: u64,
    deadline: Instant,
    replies: Vec<mpsc::UnboundedSender<ReloadReply>>,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping,
}

struct Supervisor {
    plan: Plan,
    spawner: Spawner,
    systemd: Systemd,
    events: mpsc::UnboundedSender<Event>,
    reloader: Reloader,
    phase: Phase,
    outcome: Option<Outcome>,
    generations: BTreeMap<u64, Generation>,
    workers: BTreeMap<u64, Worker>,
    by_pid: BTreeMap<i32, u64>,
    probes: BTreeMap<i32, ProbeRun>,
    probe_spawns: usize,
    next_worker_id: u64,
    next_generation: u64,
    reload: Option<ReloadRun>,
    reload_pending: bool,
    stop_signals: u32,
    orphan_deadline: Option<Instant>,
    next_watchdog: Option<Instant>,
    last_dump: Option<Instant>,
    started: Instant,
    my_pid: i32,
}

/// Runs the supervisor until it is stopped or its first generation fails to start.
///
/// `systemd` says whether to report to the service manager (`NOTIFY_SOCKET` was set at
/// startup). Commands arrive on `commands` (the control socket); signals are handled here.
pub async fn run(
    plan: Plan,
    spawner: Spawner,
    systemd: bool,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reloader: Reloader,
) -> io::Result<RunResult> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    if let Err(err) = process::set_child_subreaper() {
        warn!("could not become a child subreaper ({err}); orphaned grandchildren of workers will not be collected");
    }

    let mut sup = Supervisor {
        my_pid: std::process::id() as i32,
        plan,
        spawner,
        systemd: Systemd::new(systemd),
        events: events_tx,
        reloader,
        phase: Phase::Starting,
        outcome: None,
        generations: BTreeMap::new(),
        workers: BTreeMap::new(),
        by_pid: BTreeMap::new(),
        probes: BTreeMap::new(),
        probe_spawns: 0,
        next_worker_id: 1,
        next_generation: 1,
        reload: None,
        reload_pending: false,
        stop_signals: 0,
        orphan_deadline: None,
        next_watchdog: None,
        last_dump: None,
        started: Instant::now(),
    };
    if let Some(interval) = sup.plan.watchdog {
        sup.systemd.watchdog();
        sup.next_watchdog = Some(Instant::now() + interval / 2);
    }
    // A slow first generation may need longer than the unit's start timeout.
    sup.systemd
        .extend_timeout(sup.plan.generation.ready_timeout + Duration::from_secs(5));
    let first = sup.plan.generation.clone();
    let generation = sup.start_generation(first, GenState::Starting, true);
    info!(generation, "starting {} workers", sup.plan.generation.count);
    // From here on the generations alone hold the sockets, so a socket that no generation
    // uses any more (dropped or moved by a reload) is closed.
    sup.plan.generation = Arc::new(GenerationSpec {
        sockets: Vec::new(),
        ..(*sup.plan.generation).clone()
    });
    let mut commands_open = true;

    loop {
        if let Some(outcome) = sup.finished() {
            return Ok(RunResult { outcome });
        }
        let deadline = sup.next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = sigchld.recv() => sup.reap_children(),
            Some(event) = events_rx.recv() => sup.handle_event(event),
            _ = sigterm.recv() => sup.stop_signal("SIGTERM"),
            _ = sigint.recv() => sup.stop_signal("SIGINT"),
            _ = sighup.recv() => sup.request_reload(ReloadOverrides::default(), None, true),
            _ = sigusr1.recv() => {
                if sup.plan.output.reopen() {
                    info!("SIGUSR1: reopening log files");
                } else {
                    debug!("SIGUSR1: no log file to reopen");
                }
            }
            _ = sigusr2.recv() => sup.dump_state(),
            command = commands.recv(), if commands_open => match command {
                Some(command) => sup.handle_command(command),
                None => commands_open = false,
            },
            _ = sleep => sup.handle_deadlines(),
        }
        if let Some(outcome) = sup.forced() {
            return Ok(RunResult { outcome });
        }
    }
}

/// Sends `event()` every time `fd` becomes readable; the supervisor does the reading.
fn watch<T: AsFd + Send + Sync + 'static>(
    fd: Arc<T>,
    events: mpsc::UnboundedSender<Event>,
    event: impl Fn() -> Event + Send + 'static,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let async_fd = handover_sys::watch::readable(fd)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = async_fd.readable().await else {
                return;
            };
            // A closed pipe stays readable forever: report it once and stop watching.
            let closed = guard.ready().is_read_closed();
            // Cleared before the supervisor reads: data arriving later raises a new edge.
            guard.clear_ready();
            if events.send(event()).is_err() || closed {
                return;
            }
        }
    }))
}

impl Supervisor {
    fn status_line(&self) -> String {
        let Some(gen) = self.serving_or_starting() else {
            return "no workers".into();
        };
        let ready = self.ready_count(gen.id);
        format!(
            "{ready}/{} workers ready, generation {}",
            gen.slots.len(),
            gen.id
        )
    }

    fn serving_or_starting(&self) -> Option<&Generation> {
        self.generations
            .values()
            .rev()
            .find(|g| g.state == GenState::Serving)
            .or_else(|| {
                self.generations
                    .values()
                    .rev()
                    .find(|g| g.state == GenState::Starting)
            })
    }

    fn ready_count(&self, generation: u64) -> usize {
        let Some(gen) = self.generations.get(&generation) else {
            return 0;
        };
        gen.slots
            .iter()
            .filter_map(|slot| slot.worker.and_then(|id| self.workers.get(&id)))
            .filter(|w| matches!(w.state, State::Ready { .. }))
            .count()
    }

    fn finished(&mut self) -> Option<Outcome> {
        if self.phase != Phase::Stopping || !self.workers.is_empty() {
            return None;
        }
        // Every worker is gone; collect whatever their descendants left behind.
        let orphans = process::children_of(self.my_pid);
        if orphans.is_empty() {
            return Some(self.outcome.clone().unwrap_or(Outcome::Stopped));
        }
        match self.orphan_deadline {
            None => {
                info!(
                    "killing {} orphaned process(es) left by workers",
                    orphans.len()
                );
                for pid in orphans {
                    if let Ok(pidfd) = Pidfd::open(pid) {
                        let _ = pidfd.send_signal(libc::SIGKILL);
                    }
                }
                self.orphan_deadline = Some(Instant::now() + ORPHAN_GRACE);
                None
            }
            Some(at) if Instant::now() >= at => {
                warn!("{} orphaned process(es) did not go away", orphans.len());
                Some(self.outcome.clone().unwrap_or(Outcome::Stopped))
            }
            Some(_) => None,
        }
    }

    fn forced(&mut self) -> Option<Outcome> {
        if self.stop_signals < FORCE_AFTER_SIGNALS {
            return None;
        }
        warn!(
            "{} stop signals in a row: killing every worker now",
            self.stop_signals
        );
        for worker in self.workers.values() {
            if let Some(pid) = worker.pid() {
                let _ = process::signal_group(pid, libc::SIGKILL);
            }
        }
        Some(Outcome::Forced)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().filter_map(|w| match w.state {
            State::Waiting { until } => Some(until),
            State::Starting {
                ready_deadline,
                ready_at,
            } => Some(ready_at.map_or(ready_deadline, |r| r.min(ready_deadline))),
            State::Stopping { kill_at } => Some(kill_at),
            _ => None,
        });
        let probes_due = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Starting { .. }) && !w.probe_running)
            .filter_map(|w| w.next_probe);
        let probe_kills = self
            .probes
            .values()
            .filter(|p| !p.killed)
            .map(|p| p.deadline);
        let workers = workers.chain(probes_due).chain(probe_kills);
        let reload = self.reload.as_ref().map(|r| r.deadline);
        workers
            .chain(reload)
            .chain(self.orphan_deadline)
            .chain(self.next_watchdog)
            .min()
    }

    // ---- generations and workers -------------------------------------------------------

    /// Creates a generation; `spawn_all` starts all its workers now (otherwise
    /// [`Supervisor::advance_reload`] starts them by the reload strategy).
    fn start_generation(
        &mut self,
        spec: Arc<GenerationSpec>,
        state: GenState,
        spawn_all: bool,
    ) -> u64 {
        let id = self.next_generation;
        self.next_generation += 1;
        let count = spec.count;
        self.generations.insert(
            id,
            Generation {
                id,
                spec,
                state,
                slots: (0..count)
                    .map(|_| Slot {
                        worker: None,
                        consecutive_failures: 0,
                        restarts: 0,
                        last_exit: None,
                    })
                    .collect(),
                started: Instant::now(),
            },
        );
        if spawn_all {
            for index in 0..count {
                self.spawn_into_slot(id, index, None);
            }
        }
        id
    }

    /// Moves a running reload forward after any readiness or exit: finishes it once every
    /// new worker is ready, otherwise starts new workers and retires old ones according to
    /// the strategy (all at once, or rolling in batches within `max_extra`; after a canary).
    fn advance_reload(&mut self) {
        let Some(reload) = &self.reload else { return };
        let new = reload.generation;
        let Some(new_gen) = self.generations.get(&new) else {
            return;
        };
        let count = new_gen.slots.len();
        let ready_new = self.ready_count(new);
        if ready_new == count {
            self.finish_reload(new);
            return;
        }
        let policy = self.plan.reload.clone();
        let unspawned: Vec<u32> = new_gen
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.worker.is_none())
            .map(|(index, _)| index as u32)
            .collect();
        let spawned_new = count - unspawned.len();
        if policy.canary && ready_new == 0 {
            if spawned_new == 0 {
                self.progress(format!("starting a canary worker in generation {new}"));
                self.spawn_into_slot(new, 0, None);
            }
            return;
        }
        let Some(batch) = policy.batch_size else {
            for index in unspawned {
                self.spawn_into_slot(new, index, None);
            }
            return;
        };
        // Rolling: one old worker retires for each new worker that is ready.
        if let Some(old) = self
            .generations
            .values()
            .rev()
            .find(|g| g.state == GenState::Serving)
            .map(|g| g.id)
        {
            let serving_old: Vec<u64> = self
                .workers
                .values()
                .filter(|w| w.generation == old && !w.retiring)
                .map(|w| w.id)
                .collect();
            let old_count = self.generations.get(&old).map_or(0, |g| g.slots.len());
            let keep = old_count.saturating_sub(ready_new);
            let drain = policy.drain_timeout;
            for id in serving_old
                .iter()
                .rev()
                .skip(keep)
                .copied()
                .collect::<Vec<_>>()
            {
                self.ask_to_stop(id, Some(drain));
            }
        }
        let in_flight = spawned_new.saturating_sub(ready_new);
        let alive = self.workers.len();
        let cap = count + policy.max_extra as usize;
        let room = batch.saturating_sub(in_flight as u32) as usize;
        let room = room.min(cap.saturating_sub(alive));
        for index in unspawned.into_iter().take(room) {
            self.spawn_into_slot(new, index, None);
        }
    }

    /// Creates a worker for a slot; `delay` makes it wait first (restart backoff).
    fn spawn_into_slot(&mut self, generation: u64, index: u32, delay: Option<Duration>) {
        let Some(gen) = self.generations.get_mut(&generation) else {
            return;
        };
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let spec = gen.spec.clone();
        if let Some(slot) = gen.slots.get_mut(index as usize) {
            slot.worker = Some(id);
        }
        let state = match delay {
            Some(delay) if !delay.is_zero() => State::Waiting {
                until: Instant::now() + delay,
            },
            _ => State::Spawning,
        };
        self.workers.insert(
            id,
            Worker {
                id,
                generation,
                index,
                spec,
                state,
                pidfd: None,
                notify: None,
                stderr: None,
                watchers: Vec::new(),
                stderr_tail: VecDeque::new(),
                stderr_lines: Default::default(),
                stdout: None,
                stdout_lines: Default::default(),
                retiring: false,
                spawned_at: None,
                status: None,
                exec_error: None,
                next_probe: None,
                probe_running: false,
                last_probe: None,
            },
        );
        if state == State::Spawning {
            self.launch(id);
        }
    }

    /// Sets up a worker's notify socket and stderr pipe and hands it to the spawning thread.
    fn launch(&mut self, id: u64) {
        let result = self.prepare_launch(id);
        match result {
            Ok(request) => {
                let events = self.events.clone();
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.state = State::Spawning;
                }
                self.spawner.spawn(request, move |result| {
                    let _ = events.send(Event::Spawned { worker: id, result });
                });
            }
            Err(err) => {
                error!(worker = id, "could not prepare worker: {err}");
                self.worker_failed(id, format!("could not prepare worker: {err}"), false);
            }
        }
    }

    fn prepare_launch(&mut self, id: u64) -> io::Result<SpawnRequest> {
        let notify_dir = self.plan.notify_dir.clone();
        let notify_owner = self.plan.notify_owner;
        let events = self.events.clone();
        let stdout_null = self.plan.output.stdout_is_null();
        let worker = self
            .workers
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("worker vanished"))?;
        let path = notify_dir.join(format!(
            "{}-{}-{}.sock",
            worker.generation, worker.index, id
        ));
        let _ = std::fs::remove_file(&path);
        let socket = Arc::new(NotifySocket::bind(&path, notify_owner)?);
        let (stderr_read, stderr_write) = handover_sys::fd::pipe_cloexec()?;
        handover_sys::fd::set_nonblocking(stderr_read.as_fd())?;
        let stderr_read = Arc::new(std::fs::File::from(stderr_read));
        worker
            .watchers
            .push(watch(socket.clone(), events.clone(), move || {
                Event::NotifyReadable(id)
            })?);
        worker
            .watchers
            .push(watch(stderr_read.clone(), events, move || {
                Event::StderrReadable(id)
            })?);
        let stdout_write = if stdout_null {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")?
                .into()
        } else {
            let (stdout_read, stdout_write) = handover_sys::fd::pipe_cloexec()?;
            handover_sys::fd::set_nonblocking(stdout_read.as_fd())?;
            let stdout_read = Arc::new(std::fs::File::from(stdout_read));
            worker.watchers.push(watch(
                stdout_read.clone(),
                self.events.clone(),
                move || Event::StdoutReadable(id),
            )?);
            worker.stdout = Some(stdout_read);
            stdout_write
        };
        let env = worker_env(&worker.spec, worker.generation, worker.index, socket.path());
        worker.notify = Some(socket);
        worker.stderr = Some(stderr_read);
        Ok(SpawnRequest {
            exec: worker.spec.exec.clone(),
            env,
            sockets: worker.spec.sockets.iter().map(|s| s.fd.clone()).collect(),
            stdout: Some(stdout_write),
            stderr: Some(stderr_write),
        })
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Spawned { worker, result } => {
                self.spawned(worker, result);
                self.reap_children();
            }
            Event::NotifyReadable(worker) => self.read_notify(worker),
            Event::StderrReadable(worker) => self.read_stream(worker, Stream::Stderr),
            Event::StdoutReadable(worker) => self.read_stream(worker, Stream::Stdout),
            Event::ProbeSpawned { worker, result } => {
                self.probe_spawned(worker, result);
                self.reap_children();
            }
        }
    }

    fn spawned(&mut self, id: u64, result: io::Result<Spawned>) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        match result {
            Ok(spawned) => {
                let pid = spawned.pid;
                let now = Instant::now();
                worker.pidfd = Some(spawned.pidfd);
                worker.spawned_at = Some(now);
                worker.exec_error = spawned.exec_error.clone();
                self.by_pid.insert(pid, id);
                let ready_at = match &worker.spec.ready {
                    ReadyMode::Delay(delay) => Some(now + *delay),
                    ReadyMode::Probe { interval, .. } => {
                        worker.next_probe = Some(now + *interval);
                        None
                    }
                    ReadyMode::Notify => None,
                };
                worker.state = State::Starting {
                    ready_deadline: now + worker.spec.ready_timeout,
                    ready_at,
                };
                if let Some(err) = &spawned.exec_error {
                    error!(
                        generation = worker.generation,
                        worker = worker.index,
                        pid,
                        "{err}"
                    );
                } else {
                    info!(
                        generation = worker.generation,
                        worker = worker.index,
                        pid,
                        "worker started"
                    );
                }
                if worker.retiring {
                    self.ask_to_stop(id, None);
                } else {
                    self.read_notify(id);
                }
                // Output that arrived before the pid was known waited in the pipes.
                self.read_stream(id, Stream::Stderr);
                self.read_stream(id, Stream::Stdout);
            }
            Err(err) => {
                error!(
                    generation = worker.generation,
                    worker = worker.index,
                    "could not start worker: {err}"
                );
                let (generation, index, retiring) =
                    (worker.generation, worker.index, worker.retiring);
                self.drop_worker(id);
                if retiring {
                    self.generation_maybe_gone(generation);
                } else {
                    self.worker_failed_detached_slot(
                        generation,
                        index,
                        format!("could not start worker: {err}"),
                    );
                }
            }
        }
    }

    fn read_notify(&mut self, id: u64) {
        loop {
            let Some(worker) = self.workers.get(&id) else {
                return;
            };
            // Until the spawning thread reports the pid, a message cannot be attributed or
            // acted on; it waits in the socket, and the spawn reply reads it.
            if worker.state == State::Spawning {
                return;
            }
            let Some(socket) = worker.notify.clone() else {
                return;
            };
            match socket.recv() {
                Ok(Received::Empty) => return,
                Ok(Received::Dropped {
                    reason,
                    sender,
                    fds_closed,
                }) => {
                    warn!(
                        generation = worker.generation,
                        worker = worker.index,
                        "dropped a notification from pid {}: {reason}{}",
                        sender.map_or(0, |s| s.pid),
                        if fds_closed > 0 {
                            format!(" ({fds_closed} passed fds closed)")
                        } else {
                            String::new()
                        }
                    );
                }
                Ok(Received::Message {
                    payload, sender, ..
                }) => {
                    let pid = worker.pid();
                    if worker.spec.notify_main_only && Some(sender.pid) != pid {
                        warn!(
                            generation = worker.generation,
                            worker = worker.index,
                            "ignored a notification from pid {}: only the worker's own pid may notify (notify_access = \"main\")",
                            sender.pid
                        );
                        continue;
                    }
                    match notify::parse(&payload) {
                        Ok(message) => self.apply_notify(id, message),
                        Err(err) => warn!(
                            generation = worker.generation,
                            worker = worker.index,
                            "dropped a notification: {err}"
                        ),
                    }
                }
                Err(err) => {
                    warn!(worker = id, "reading notifications failed: {err}");
                    return;
                }
            }
        }
    }

    fn apply_notify(&mut self, id: u64, message: notify::NotifyMessage) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(status) = &message.status {
            worker.status = Some(status.clone());
        }
        if message.ready {
            self.mark_ready(id, "worker ready");
        }
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if message.stopping && !worker.retiring {
            // The worker is going down on its own (naught's "offline"): replace it now and
            // give it the drain timeout to finish.
            let generation = worker.generation;
            let index = worker.index;
            let serving = self
                .generations
                .get(&generation)
                .is_some_and(|g| g.state == GenState::Serving);
            let worker = self.workers.get_mut(&id).expect("looked up above");
            worker.retiring = true;
            worker.state = State::Stopping {
                kill_at: Instant::now() + self.plan.reload.drain_timeout,
            };
            if serving && self.phase == Phase::Running {
                info!(
                    generation,
                    worker = index,
                    pid = worker.pid(),
                    "worker is going offline; starting its replacement"
                );
                self.spawn_into_slot(generation, index, None);
            }
        }
    }

    /// Reads what a worker wrote on one of its output pipes, without blocking, and passes it
    /// on line by line; stderr lines are also kept to explain a death. Reads at most
    /// [`READ_BUDGET`] bytes at a time, then queues itself again behind other events, so a
    /// worker that writes without pause cannot starve the loop.
    fn read_stream(&mut self, id: u64, stream: Stream) {
        let mut buf = [0u8; 8192];
        let mut read = 0;
        let output = self.plan.output.clone();
        let max_line = output.max_line();
        loop {
            let Some(worker) = self.workers.get_mut(&id) else {
                return;
            };
            let pipe_slot = match stream {
                Stream::Stderr => &mut worker.stderr,
                Stream::Stdout => &mut worker.stdout,
            };
            let Some(pipe) = pipe_slot.clone() else {
                return;
            };
            // Every line carries the worker's pid: until the spawning thread reports it,
            // output waits in the pipe (`spawned` reads it then).
            if worker.pidfd.is_none() {
                return;
            }
            if read >= READ_BUDGET {
                let _ = self.events.send(match stream {
                    Stream::Stderr => Event::StderrReadable(id),
                    Stream::Stdout => Event::StdoutReadable(id),
                });
                return;
            }
            let n = match (&*pipe).read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            read += n;
            if n == 0 {
                *pipe_slot = None;
            }
            let program = worker
                .spec
                .exec
                .argv
                .first()
                .map(|p| p.as_bytes())
                .unwrap_or_default();
            let origin = Origin {
                generation: worker.generation,
                index: worker.index,
                pid: worker.pid().unwrap_or(0),
                program,
            };
            let (lines, mut tail) = match stream {
                Stream::Stderr => (&mut worker.stderr_lines, Some(&mut worker.stderr_tail)),
                Stream::Stdout => (&mut worker.stdout_lines, None),
            };
            let mut emit = |line: &[u8], continues: bool| {
                output.line(stream, &origin, line, continues);
                if let Some(tail) = tail.as_deref_mut() {
                    crate::worker::remember(tail, line);
                }
            };
            if n == 0 {
                lines.flush(&mut emit);
                return;
            }
            lines.push(&buf[..n], max_line, &mut emit);
        }
    }

    /// A starting worker is ready (by notification, delay or probe; `how` says which): log it
    /// and let its generation move on. Ready or stopping workers are left as they are.
    fn mark_ready(&mut self, id: u64, how: &str) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if !matches!(worker.state, State::Starting { .. }) {
            return;
        }
        worker.state = State::Ready {
            since: Instant::now(),
        };
        info!(
            generation = worker.generation,
            worker = worker.index,
            pid = worker.pid(),
            "{how}"
        );
        let generation = worker.generation;
        self.on_worker_ready(generation);
    }

    fn on_worker_ready(&mut self, generation: u64) {
        let Some(gen) = self.generations.get(&generation) else {
            return;
        };
        let ready = self.ready_count(generation);
        let total = gen.slots.len();
        match (self.phase, gen.state) {
            (Phase::Starting, GenState::Starting) if ready == total => {
                if let Some(gen) = self.generations.get_mut(&generation) {
                    gen.state = GenState::Serving;
                }
                self.phase = Phase::Running;
                let status = self.status_line();
                info!(generation, "all {total} workers ready");
                self.systemd.ready(&status);
                if let Some(pipe) = self.plan.on_ready.take() {
                    use std::io::Write;
                    let _ = (&*pipe).write_all(b"ready\n");
                }
            }
            (Phase::Running, GenState::Starting) => {
                self.progress(format!("{ready}/{total} ready in generation {generation}"));
                self.advance_reload();
            }
            (Phase::Running, GenState::Serving) => {
                self.systemd.status(&self.status_line());
            }
            _ => {}
        }
    }

    // ---- exits -------------------------------------------------------------------------

    /// Handles every exited child. Known workers are checked by pid first. A child nobody
    /// knows is an orphan only if no spawn is in flight: a worker that exits right after exec
    /// can be seen before the spawning thread has told us its pid, so unknown children wait
    /// until then (every spawn reply runs this again).
    fn reap_children(&mut self) {
        let known: Vec<(i32, u64)> = self.by_pid.iter().map(|(&pid, &id)| (pid, id)).collect();
        for (pid, id) in known {
            match process::peek_exited_pid(pid) {
                Ok(Some(status)) => self.collect_worker(pid, id, status),
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
        if self.probe_spawns > 0 || self.workers.values().any(|w| w.state == State::Spawning) {
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
                continue;
            }
            match self.by_pid.get(&pid).copied() {
                Some(id) => self.collect_worker(pid, id, status),
                None => {
                    let _ = process::reap(pid);
                    debug!(pid, "reaped an orphan: {status}");
                }
            }
        }
    }

    /// A worker's process exited: read what it said and wrote before it died, kill what is
    /// left of its process group while the unreaped leader still pins the pgid, then reap.
    fn collect_worker(&mut self, pid: i32, id: u64, status: ExitStatus) {
        self.by_pid.remove(&pid);
        self.read_notify(id);
        self.read_stream(id, Stream::Stderr);
        self.read_stream(id, Stream::Stdout);
        let _ = process::signal_group(pid, libc::SIGKILL);
        let _ = process::reap(pid);
        self.worker_exited(id, status);
        // An old worker gone makes room for the next new one in a rolling reload.
        self.advance_reload();
    }

    fn describe_exit(worker: &Worker, status: ExitStatus) -> String {
        let mut reason = match &worker.exec_error {
            Some(err) => format!("could not start: {err}"),
            None => status.to_string(),
        };
        if !worker.stderr_tail.is_empty() {
            reason.push_str("; last stderr lines: ");
            reason.push_str(
                &worker
                    .stderr_tail
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | "),
            );
        }
        reason
    }

    fn worker_exited(&mut self, id: u64, status: ExitStatus) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let reason = Self::describe_exit(worker, status);
        let was_ready = matches!(worker.state, State::Ready { .. });
        let ready_for = match worker.state {
            State::Ready { since } => Some(since.elapsed()),
            _ => None,
        };
        let expected = worker.retiring;
        let (generation, index, pid) = (worker.generation, worker.index, worker.pid());
        if expected {
            info!(generation, worker = index, pid, "worker stopped: {status}");
        } else if was_ready {
            warn!(generation, worker = index, pid, "worker died: {reason}");
        } else {
            warn!(
                generation,
                worker = index,
                pid,
                "worker died before it was ready: {reason}"
            );
        }
        let slot_was_this = self
            .generations
            .get(&generation)
            .and_then(|g| g.slots.get(index as usize))
            .is_some_and(|s| s.worker == Some(id));
        self.drop_worker(id);
        if let Some(slot) = self
            .generations
            .get_mut(&generation)
            .and_then(|g| g.slots.get_mut(index as usize))
        {
            if slot_was_this {
                slot.last_exit = Some(reason.clone());
            }
        }
        if expected || !slot_was_this {
            self.generation_maybe_gone(generation);
            return;
        }
        let starting = self
            .generations
            .get(&generation)
            .is_some_and(|g| g.state == GenState::Starting);
        if was_ready && !starting {
            self.respawn(generation, index, ready_for, reason);
        } else {
            // Before ready, or while the whole generation is not ready yet: the start (or
            // the reload) fails; in a serving generation this is a failed restart.
            self.worker_failed_detached_slot(generation, index, reason);
        }
    }

    /// Forgets a worker (its process is gone or never existed).
    fn drop_worker(&mut self, id: u64) {
        for (pid, run) in self
            .probes
            .iter_mut()
            .filter(|(_, r)| r.worker == id && !r.killed)
        {
            let _ = run.pidfd.send_signal(libc::SIGKILL);
            let _ = process::signal_group(*pid, libc::SIGKILL);
            run.killed = true;
        }
        if let Some(worker) = self.workers.remove(&id) {
            for task in &worker.watchers {
                task.abort();
            }
            if let Some(pid) = worker.pid() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// A worker failed before becoming ready, while it still exists (e.g. ready timeout).
    fn worker_failed(&mut self, id: u64, reason: String, still_running: bool) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let (generation, index) = (worker.generation, worker.index);
        if still_running {
            self.ask_to_stop(id, None);
        } else {
            self.drop_worker(id);
        }
        self.worker_failed_detached_slot(generation, index, reason);
    }

    /// A worker of `generation`/`index` failed before it was ready.
    fn worker_failed_detached_slot(&mut self, generation: u64, index: u32, reason: String) {
        let Some(gen) = self.generations.get(&generation) else {
            return;
        };
        match (self.phase, gen.state) {
            (Phase::Starting, GenState::Starting) => {
                self.start_failed(format!("worker {index}: {reason}"))
            }
            (Phase::Running, GenState::Starting) => {
                self.abort_reload(format!(
                    "worker {index} of generation {generation} failed: {reason}"
                ));
            }
            (Phase::Running, GenState::Serving) => self.respawn(generation, index, None, reason),
            _ => self.generation_maybe_gone(generation),
        }
    }

    fn respawn(
        &mut self,
        generation: u64,
        index: u32,
        ready_for: Option<Duration>,
        reason: String,
    ) {
        let Some(gen) = self.generations.get_mut(&generation) else {
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
        if failures >= 5 {
            warn!(
                generation,
                worker = index,
                "crash-looping: {failures} failures in a row; restarting in {delay:?}"
            );
            self.systemd.status(&format!(
                "crash-looping: worker {index} failed {failures} times in a row; {}",
                self.status_line()
            ));
        } else {
            info!(generation, worker = index, "restarting in {delay:?}");
        }
        self.spawn_into_slot(generation, index, Some(delay));
    }

    fn generation_maybe_gone(&mut self, generation: u64) {
        let Some(gen) = self.generations.get(&generation) else {
            return;
        };
        if matches!(gen.state, GenState::Draining | GenState::Aborted)
            && !self.workers.values().any(|w| w.generation == generation)
        {
            info!(
                generation,
                "generation {} has no workers left",
                gen.state.name()
            );
            self.generations.remove(&generation);
        }
    }

    // ---- stopping workers --------------------------------------------------------------

    /// Sends the stop signal to a worker's process group, with a kill deadline.
    fn ask_to_stop(&mut self, id: u64, timeout: Option<Duration>) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.retiring = true;
        let timeout = timeout.unwrap_or(worker.spec.stop_timeout);
        match worker.state {
            State::Waiting { .. } => {
                self.drop_worker(id);
            }
            State::Spawning => {
                // Signalled once the spawning thread reports the pid.
            }
            State::Starting { .. } | State::Ready { .. } => {
                if let Some(pid) = worker.pid() {
                    if let Err(err) = process::signal_group(pid, worker.spec.stop_signal) {
                        warn!(pid, "could not signal worker: {err}");
                    }
                }
                worker.state = State::Stopping {
                    kill_at: Instant::now() + timeout,
                };
            }
            State::Stopping { kill_at } => {
                let earlier = kill_at.min(Instant::now() + timeout);
                worker.state = State::Stopping { kill_at: earlier };
            }
            State::Killed => {}
        }
    }

    fn kill(&mut self, id: u64) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(pid) = worker.pid() {
            warn!(
                generation = worker.generation,
                worker = worker.index,
                pid,
                "worker did not stop in time; sending SIGKILL to its process group"
            );
            let _ = process::signal_group(pid, libc::SIGKILL);
        }
        worker.state = State::Killed;
    }

    fn handle_deadlines(&mut self) {
        let now = Instant::now();
        self.probe_deadlines(now);
        if let (Some(at), Some(interval)) = (self.next_watchdog, self.plan.watchdog) {
            if at <= now {
                self.watchdog_tick();
                self.next_watchdog = Some(now + interval / 2);
            }
        }
        let due: Vec<(u64, State)> = self
            .workers
            .values()
            .filter(|w| match w.state {
                State::Waiting { until } => until <= now,
                State::Starting {
                    ready_deadline,
                    ready_at,
                } => ready_deadline <= now || ready_at.is_some_and(|r| r <= now),
                State::Stopping { kill_at } => kill_at <= now,
                _ => false,
            })
            .map(|w| (w.id, w.state))
            .collect();
        for (id, state) in due {
            match state {
                State::Waiting { .. } => self.launch(id),
                State::Starting {
                    ready_at: Some(at), ..
                } if at <= now => {
                    self.mark_ready(id, "worker ready (alive for the ready delay)");
                }
                State::Starting { .. } => {
                    let timeout = self
                        .workers
                        .get(&id)
                        .map(|w| w.spec.ready_timeout)
                        .unwrap_or_default();
                    let last_probe = self
                        .workers
                        .get(&id)
                        .and_then(|w| w.last_probe.clone())
                        .map(|p| format!("; last probe: {p}"))
                        .unwrap_or_default();
                    self.worker_failed(
                        id,
                        format!("not ready within {}{last_probe}", humanize(timeout)),
                        true,
                    );
                }
                State::Stopping { .. } => self.kill(id),
                _ => {}
            }
        }
        if let Some(reload) = &self.reload {
            if reload.deadline <= now {
                let took = reload.started.elapsed();
                self.abort_reload(format!("reload did not finish within {}", humanize(took)));
            }
        }
    }

    // ---- start, stop -------------------------------------------------------------------

    // ---- readiness probes ----------------------------------------------------------------

    /// Starts due probes and kills those past their timeout.
    fn probe_deadlines(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Starting { .. }) && !w.probe_running)
            .filter(|w| w.next_probe.is_some_and(|at| at <= now))
            .map(|w| w.id)
            .collect();
        for id in due {
            self.launch_probe(id);
        }
        let mut timed_out = Vec::new();
        for (pid, run) in self
            .probes
            .iter_mut()
            .filter(|(_, r)| !r.killed && r.deadline <= now)
        {
            let _ = run.pidfd.send_signal(libc::SIGKILL);
            let _ = process::signal_group(*pid, libc::SIGKILL);
            run.killed = true;
            timed_out.push(run.worker);
        }
        for id in timed_out {
            if let Some(worker) = self.workers.get_mut(&id) {
                if let ReadyMode::Probe { timeout, .. } = &worker.spec.ready {
                    worker.last_probe = Some(format!("timed out after {}", humanize(*timeout)));
                }
            }
        }
    }

    /// Runs one readiness probe for a worker: its command, as the worker's user, in its
    /// directory, with its environment (minus the socket variables) and
    /// `HANDOVER_WORKER_PID`; output discarded, so a chatty probe costs no memory.
    fn launch_probe(&mut self, id: u64) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        let ReadyMode::Probe { argv, .. } = &worker.spec.ready else {
            return;
        };
        let Some(pid) = worker.pid() else { return };
        let mut env: Vec<std::ffi::CString> = Vec::new();
        for (key, value) in worker
            .spec
            .env
            .iter()
            .filter(|(k, _)| !is_reserved_var(k.as_encoded_bytes()))
        {
            let mut kv = std::os::unix::ffi::OsStrExt::as_bytes(key.as_os_str()).to_vec();
            kv.push(b'=');
            kv.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()));
            env.extend(std::ffi::CString::new(kv).ok());
        }
        for (key, value) in [
            ("HANDOVER_WORKER_PID", pid.to_string()),
            ("HANDOVER_WORKER", worker.index.to_string()),
            ("HANDOVER_GENERATION", worker.generation.to_string()),
        ] {
            env.extend(std::ffi::CString::new(format!("{key}={value}")).ok());
        }
        let (out, err) = match (handover_sys::fd::dev_null(), handover_sys::fd::dev_null()) {
            (Ok(out), Ok(err)) => (out, err),
            (Err(e), _) | (_, Err(e)) => {
                worker.last_probe = Some(format!("could not start: {e}"));
                return;
            }
        };
        let mut exec = worker.spec.exec.clone();
        exec.argv = argv.clone();
        worker.probe_running = true;
        worker.next_probe = None;
        self.probe_spawns += 1;
        let events = self.events.clone();
        let request = SpawnRequest {
            exec,
            env,
            sockets: Vec::new(),
            stdout: Some(out),
            stderr: Some(err),
        };
        self.spawner.spawn(request, move |result| {
            let _ = events.send(Event::ProbeSpawned { worker: id, result });
        });
    }

    fn probe_spawned(&mut self, id: u64, result: io::Result<Spawned>) {
        self.probe_spawns = self.probe_spawns.saturating_sub(1);
        let now = Instant::now();
        let worker = self.workers.get_mut(&id);
        match result {
            Ok(spawned) => {
                let wanted = worker
                    .as_ref()
                    .is_some_and(|w| matches!(w.state, State::Starting { .. }));
                let timeout = match worker.as_ref().map(|w| &w.spec.ready) {
                    Some(ReadyMode::Probe { timeout, .. }) => *timeout,
                    _ => Duration::ZERO,
                };
                if let (Some(worker), Some(err)) = (worker, &spawned.exec_error) {
                    worker.last_probe = Some(format!("could not start: {err}"));
                }
                if !wanted {
                    let _ = spawned.pidfd.send_signal(libc::SIGKILL);
                }
                self.probes.insert(
                    spawned.pid,
                    ProbeRun {
                        worker: id,
                        pidfd: spawned.pidfd,
                        deadline: now + timeout,
                        killed: !wanted,
                    },
                );
            }
            Err(err) => {
                if let Some(worker) = worker {
                    worker.probe_running = false;
                    worker.last_probe = Some(format!("could not start: {err}"));
                    if let ReadyMode::Probe { interval, .. } = &worker.spec.ready {
                        worker.next_probe = Some(now + *interval);
                    }
                }
            }
        }
    }

    /// A probe ended: success makes its worker ready; anything else schedules the next try.
    fn collect_probe(&mut self, pid: i32, status: ExitStatus) {
        let Some(run) = self.probes.remove(&pid) else {
            return;
        };
        let _ = process::signal_group(pid, libc::SIGKILL);
        let _ = process::reap(pid);
        let Some(worker) = self.workers.get_mut(&run.worker) else {
            return;
        };
        worker.probe_running = false;
        if !matches!(worker.state, State::Starting { .. }) {
            return;
        }
        if status.success() && !run.killed {
            self.mark_ready(run.worker, "worker ready (probe succeeded)");
            return;
        }
        if !run.killed
            && worker
                .last_probe
                .as_deref()
                .is_none_or(|p| !p.starts_with("could not start"))
        {
            worker.last_probe = Some(status.to_string());
        }
        if let ReadyMode::Probe { interval, .. } = &worker.spec.ready {
            worker.next_probe = Some(Instant::now() + *interval);
        }
    }

    /// Sends `WATCHDOG=1` if handover is healthy: its loop runs (this is it) and, when
    /// `watchdog_min_workers` is set, enough serving workers are ready.
    fn watchdog_tick(&mut self) {
        let min = self.plan.watchdog_min_workers as usize;
        let healthy = self.phase != Phase::Running
            || min == 0
            || self
                .serving_or_starting()
                .is_some_and(|g| self.ready_count(g.id) >= min);
        if healthy {
            self.systemd.watchdog();
        } else {
            warn!("fewer than {min} workers ready: not sending WATCHDOG=1");
        }
    }

    fn start_failed(&mut self, reason: String) {
        if self.phase == Phase::Stopping {
            return;
        }
        error!("the first generation failed to start: {reason}");
        self.outcome = Some(Outcome::StartFailed(reason));
        self.begin_stop();
    }

    fn stop_signal(&mut self, name: &str) {
        self.stop_signals += 1;
        if self.stop_signals == 1 {
            info!("{name}: stopping");
        } else if self.stop_signals < FORCE_AFTER_SIGNALS {
            info!(
                "{name} again ({} of {FORCE_AFTER_SIGNALS}): already stopping",
                self.stop_signals
            );
        }
        self.begin_stop();
    }

    fn begin_stop(&mut self) {
        if self.phase == Phase::Stopping {
            return;
        }
        self.phase = Phase::Stopping;
        if let Some(reload) = &self.reload {
            warn!(
                generation = reload.generation,
                "reload aborted: handover is stopping"
            );
            self.finish_reload_replies(ReloadReply::Failed {
                reason: "handover is stopping".into(),
            });
            self.reload = None;
        }
        self.systemd.stopping("stopping");
        let longest = self
            .workers
            .values()
            .map(|w| w.spec.stop_timeout)
            .max()
            .unwrap_or_default();
        self.systemd
            .extend_timeout(longest.max(self.plan.reload.drain_timeout) + Duration::from_secs(5));
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for id in ids {
            self.ask_to_stop(id, None);
        }
    }

    // ---- reload ------------------------------------------------------------------------

    fn progress(&mut self, line: String) {
        info!("{line}");
        if let Some(reload) = &mut self.reload {
            reload
                .replies
                .retain(|tx| tx.send(ReloadReply::Progress(line.clone())).is_ok());
        }
        self.systemd.status(&line);
    }

    fn request_reload(
        &mut self,
        overrides: ReloadOverrides,
        reply: Option<mpsc::UnboundedSender<ReloadReply>>,
        from_signal: bool,
    ) {
        let refuse = |reply: Option<mpsc::UnboundedSender<ReloadReply>>, reason: String| {
            warn!("reload refused: {reason}");
            if let Some(tx) = reply {
                let _ = tx.send(ReloadReply::Failed { reason });
            }
        };
        match self.phase {
            Phase::Starting => {
                return refuse(reply, "the first generation is not ready yet".into())
            }
            Phase::Stopping => return refuse(reply, "handover is stopping".into()),
            Phase::Running => {}
        }
        if let Some(running) = &self.reload {
            if from_signal {
                // Signal storms coalesce into at most one pending reload.
                self.reload_pending = true;
                debug!("reload requested during a reload; one more will follow");
            } else if let Some(tx) = reply {
                let _ = tx.send(ReloadReply::Busy {
                    generation: running.generation,
                });
            }
            return;
        }
        let draining = self
            .generations
            .values()
            .filter(|g| g.state == GenState::Draining)
            .count() as u32;
        if draining >= self.plan.reload.max_draining {
            return refuse(
                reply,
                format!(
                    "{draining} generations are still draining (max_draining = {})",
                    self.plan.reload.max_draining
                ),
            );
        }
        let Some(current) = self
            .generations
            .values()
            .rev()
            .find(|g| g.state == GenState::Serving)
        else {
            return refuse(reply, "no serving generation".into());
        };
        let current_spec = current.spec.clone();
        let generation = self.next_generation;
        self.systemd
            .reloading(&format!("reloading: preparing generation {generation}"));
        let spec = match (self.reloader)(&overrides, &current_spec) {
            Ok((spec, policy)) => {
                // [reload] settings take effect with the reload that read them.
                self.plan.reload = policy;
                spec
            }
            Err(reason) => {
                let reason = format!(
                    "reload failed, generation {} keeps serving: {reason}",
                    current.id
                );
                error!("{reason}");
                self.systemd.ready(&reason);
                if let Some(tx) = reply {
                    let _ = tx.send(ReloadReply::Failed { reason });
                }
                return;
            }
        };
        let now = Instant::now();
        self.reload = Some(ReloadRun {
            generation,
            deadline: now + overrides.timeout.unwrap_or(self.plan.reload.timeout),
            replies: reply.into_iter().collect(),
            started: now,
        });
        let count = spec.count;
        let timeout = overrides.timeout.unwrap_or(self.plan.reload.timeout);
        self.systemd
            .extend_timeout(timeout + Duration::from_secs(5));
        self.progress(format!(
            "spawning generation {generation} ({count} workers)"
        ));
        let started = self.start_generation(spec, GenState::Starting, false);
        debug_assert_eq!(started, generation);
        self.advance_reload();
    }

    fn finish_reload(&mut self, generation: u64) {
        let Some(reload) = &self.reload else { return };
        if reload.generation != generation {
            return;
        }
        let old: Vec<u64> = self
            .generations
            .values()
            .filter(|g| g.state == GenState::Serving)
            .map(|g| g.id)
            .collect();
        if let Some(gen) = self.generations.get_mut(&generation) {
            gen.state = GenState::Serving;
        }
        for old_generation in &old {
            self.progress(format!("draining generation {old_generation}"));
            if let Some(gen) = self.generations.get_mut(old_generation) {
                gen.state = GenState::Draining;
            }
            let drain = self.plan.reload.drain_timeout;
            let ids: Vec<u64> = self
                .workers
                .values()
                .filter(|w| w.generation == *old_generation)
                .map(|w| w.id)
                .collect();
            for id in ids {
                self.ask_to_stop(id, Some(drain));
            }
            self.generation_maybe_gone(*old_generation);
        }
        let took = self
            .reload
            .as_ref()
            .map(|r| r.started.elapsed())
            .unwrap_or_default();
        info!(
            generation,
            outcome = "done",
            "reload done in {took:?}: generation {generation} serves"
        );
        // systemd first: `systemctl reload` returns when the client hears back, and by then
        // the unit must already show the new status.
        self.systemd.ready(&self.status_line());
        self.finish_reload_replies(ReloadReply::Done { generation });
        self.reload = None;
        if std::mem::take(&mut self.reload_pending) {
            self.request_reload(ReloadOverrides::default(), None, true);
        }
    }

    fn finish_reload_replies(&mut self, reply: ReloadReply) {
        if let Some(reload) = &mut self.reload {
            for tx in reload.replies.drain(..) {
                let _ = tx.send(reply.clone());
            }
        }
    }

    fn abort_reload(&mut self, reason: String) {
        let Some(reload) = &self.reload else { return };
        let generation = reload.generation;
        if let Some(gen) = self.generations.get_mut(&generation) {
            gen.state = GenState::Aborted;
        }
        let ids: Vec<u64> = self
            .workers
            .values()
            .filter(|w| w.generation == generation)
            .map(|w| w.id)
            .collect();
        for id in ids {
            self.ask_to_stop(id, None);
        }
        self.generation_maybe_gone(generation);
        // A rolling reload may have retired old workers already: fill their slots again from
        // the old generation's own spec.
        if let Some(old) = self
            .generations
            .values()
            .rev()
            .find(|g| g.state == GenState::Serving)
        {
            let old_id = old.id;
            let empty: Vec<u32> = old
                .slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| {
                    slot.worker
                        .and_then(|id| self.workers.get(&id))
                        .is_none_or(|w| w.retiring)
                })
                .map(|(index, _)| index as u32)
                .collect();
            for index in empty {
                self.spawn_into_slot(old_id, index, None);
            }
        }
        let serving = self.serving_or_starting().map(|g| g.id).unwrap_or(0);
        let message = format!("reload aborted, generation {serving} keeps serving: {reason}");
        error!(generation, outcome = "aborted", "{message}");
        self.systemd.ready(&message);
        self.finish_reload_replies(ReloadReply::Failed {
            reason: message.clone(),
        });
        self.reload = None;
        if std::mem::take(&mut self.reload_pending) {
            self.request_reload(ReloadOverrides::default(), None, true);
        }
    }

    // ---- commands, status ----------------------------------------------------------------

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Reload { overrides, reply } => self.request_reload(overrides, reply, false),
            Command::Abort { reply } => {
                let had = self.reload.is_some();
                if had {
                    self.abort_reload("aborted on request".into());
                }
                let _ = reply.send(had);
            }
            Command::Stop => self.stop_signal("stop request"),
            Command::Scale { count, reply } => {
                let _ = reply.send(self.scale(count));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    fn scale(&mut self, count: u32) -> Result<(), String> {
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
        let Some(gen) = self
            .generations
            .values_mut()
            .rev()
            .find(|g| g.state == GenState::Serving)
        else {
            return Err("no serving generation".into());
        };
        let generation = gen.id;
        let current = gen.slots.len() as u32;
        if count > current {
            for _ in current..count {
                gen.slots.push(Slot {
                    worker: None,
                    consecutive_failures: 0,
                    restarts: 0,
                    last_exit: None,
                });
            }
            for index in current..count {
                self.spawn_into_slot(generation, index, None);
            }
        } else {
            let retired: Vec<u64> = gen
                .slots
                .drain(count as usize..)
                .filter_map(|s| s.worker)
                .collect();
            for id in retired {
                self.ask_to_stop(id, None);
            }
        }
        info!(generation, "scaled from {current} to {count} workers");
        self.systemd.status(&self.status_line());
        Ok(())
    }

    fn snapshot(&self) -> serde_json::Value {
        let now = Instant::now();
        let generations: Vec<serde_json::Value> = self
            .generations
            .values()
            .map(|gen| {
                let workers: Vec<serde_json::Value> = self
                    .workers
                    .values()
                    .filter(|w| w.generation == gen.id)
                    .map(|w| {
                        let slot = gen.slots.get(w.index as usize);
                        serde_json::json!({
                            "index": w.index,
                            "pid": w.pid(),
                            "state": w.state.name(),
                            "retiring": w.retiring,
                            "ready_for_ms": match w.state { State::Ready { since } => Some(now.duration_since(since).as_millis() as u64), _ => None },
                            "restarts": slot.map(|s| s.restarts).unwrap_or(0),
                            "last_exit": slot.and_then(|s| s.last_exit.clone()),
                            "status": w.status,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "generation": gen.id,
                    "state": gen.state.name(),
                    "count": gen.slots.len(),
                    "age_ms": now.duration_since(gen.started).as_millis() as u64,
                    "workers": workers,
                })
            })
            .collect();
        let serving_spec = self
            .serving_or_starting()
            .map(|g| g.spec.clone())
            .unwrap_or_else(|| self.plan.generation.clone());
        let sockets: Vec<serde_json::Value> = serving_spec
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| serde_json::json!({ "name": s.name, "address": s.address, "fd": 3 + i, "from_systemd": s.from_systemd }))
            .collect();
        serde_json::json!({
            "pid": self.my_pid,
            "phase": match self.phase { Phase::Starting => "starting", Phase::Running => "running", Phase::Stopping => "stopping" },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "reloading": self.reload.as_ref().map(|r| r.generation),
            "status": self.status_line(),
            "generations": generations,
            "sockets": sockets,
            "logs": self.plan.output.status(),
        })
    }

    /// SIGUSR2: writes the state as JSON to the first writable dump directory.
    fn dump_state(&mut self) {
        // A storm of SIGUSR2 must not fill the disk with dumps: one per second at most.
        if self
            .last_dump
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_dump = Some(Instant::now());
        let snapshot = serde_json::to_string_pretty(&self.snapshot()).unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!("handover-state-{}-{stamp}.json", self.my_pid);
        for dir in &self.plan.dump_dirs {
            let path = dir.join(&name);
            match std::fs::write(&path, &snapshot) {
                Ok(()) => {
                    info!("SIGUSR2: state written to {}", path.display());
                    return;
                }
                Err(err) => debug!("SIGUSR2: cannot write {}: {err}", path.display()),
            }
        }
        warn!("SIGUSR2: no directory accepted the state dump; state: {snapshot}");
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
