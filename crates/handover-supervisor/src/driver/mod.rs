//! The driver: everything the supervisor does to and hears from the OS, around the core.
//!
//! It owns the signals, the reaper, the fd watchers, the spawning thread, the control
//! channel and the reload plan's blocking task. Each thing that happens becomes one
//! [`Input`] for the [`Core`]; each [`Action`] the core returns is carried out here. The
//! driver decides nothing about workers; it only keeps the orderings the core relies on:
//!
//! - a worker's notifications and output are read before its exit is reported, so `READY=1`
//!   followed by death is always "died after ready", and its last stderr lines explain it;
//! - a worker's process group is killed before its leader is reaped, so a group signal can
//!   never reach a recycled pgid;
//! - an unknown child is reaped as an orphan only while no spawn is in flight (a worker can
//!   exit before the spawning thread has reported its pid).

mod check;
mod io;
mod reaper;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_proto::control::Response;
use handover_sys::process::{self, Pidfd};
use handover_sys::sentinel::Sentinel;
use handover_sys::spawn::{SpawnRequest, Spawned, Spawner};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::control::{Command, Outcome};
use crate::core::model::WorkerId;
use crate::core::{self, Action, ClientId, Core, Input, Level, Log, ReloadId, Resolved};
use crate::output::{Output, Stream};
use crate::plan::Plan;
use crate::systemd::Systemd;
use crate::Reloader;
use io::WorkerIo;

/// Notifications read from one worker before other events get their turn. The socket's
/// queue holds far fewer (`net.unix.max_dgram_qlen`), so at an exit this reads it empty.
const NOTIFY_BUDGET: usize = 256;
/// A sentinel that keeps dying is restarted this many times, then given up.
const MAX_SENTINEL_RESTARTS: u32 = 10;
/// How long to wait for killed orphans to be reaped at the very end.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// What arrives from the driver's own tasks and threads.
#[derive(Debug)]
enum Event {
    Spawned {
        worker: WorkerId,
        result: std::io::Result<Spawned>,
    },
    NotifyReadable(WorkerId),
    Readable(WorkerId, Stream),
    ProbeSpawned {
        worker: WorkerId,
        /// A health check's command, not a readiness probe.
        health: bool,
        result: std::io::Result<Spawned>,
    },
    Resolved {
        reload: ReloadId,
        plan: Resolved,
    },
    /// A readiness check ended.
    Checked {
        worker: WorkerId,
        result: Result<(), String>,
    },
    /// A health check over the worker's private socket ended.
    HealthChecked {
        worker: WorkerId,
        result: Result<(), String>,
    },
}

/// The parts of the plan the driver keeps.
#[derive(Debug)]
struct Settings {
    notify_dir: PathBuf,
    notify_owner: Option<(u32, u32)>,
    dump_dirs: Vec<PathBuf>,
    on_ready: Option<Arc<std::fs::File>>,
    output: Arc<Output>,
    sentinel: Option<Arc<Sentinel>>,
    steering: Option<Arc<crate::steering::Steering>>,
    cgroups: Option<Arc<handover_sys::cgroup::CgroupRoot>>,
    cgroups_status: String,
}

/// A readiness probe's or a health check command's process.
#[derive(Debug)]
struct ProbeIo {
    worker: WorkerId,
    pidfd: Pidfd,
    /// A health check: its end is reported as [`Input::HealthChecked`].
    health: bool,
    /// Why the stub could not exec it.
    exec_error: Option<String>,
}

/// A reload's plan, made on the planning thread.
type PlanJob = Box<dyn FnOnce() + Send>;

/// Starts the thread that makes reloads' plans (reads the configuration, binds sockets,
/// looks up users), once, at start: a thread made at the moment of a reload could fail when
/// a process limit is reached, and the reload must then fail cleanly, not the supervisor.
fn start_planner() -> std::io::Result<std::sync::mpsc::Sender<PlanJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<PlanJob>();
    std::thread::Builder::new()
        .name("handover-planner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    Ok(tx)
}

struct Driver {
    core: Core,
    planner: std::sync::mpsc::Sender<PlanJob>,
    settings: Settings,
    spawner: Spawner,
    systemd: Systemd,
    reloader: Reloader,
    events: mpsc::UnboundedSender<Event>,
    workers: BTreeMap<WorkerId, WorkerIo>,
    /// Spawned workers by pid, for the reaper.
    by_pid: BTreeMap<i32, WorkerId>,
    /// Workers handed to the spawning thread that it has not reported yet.
    spawns_in_flight: usize,
    probes: BTreeMap<i32, ProbeIo>,
    probe_spawns_in_flight: usize,
    /// Readiness checks running, by worker.
    checks: BTreeMap<WorkerId, tokio::task::JoinHandle<()>>,
    /// Health checks over private sockets running, by worker.
    health_tasks: BTreeMap<WorkerId, tokio::task::JoinHandle<()>>,
    /// Health check commands handed to the spawning thread and not reported yet.
    health_spawning: std::collections::BTreeSet<WorkerId>,
    /// Health check commands given up while their spawn was under way: killed once known.
    health_kills: std::collections::BTreeSet<WorkerId>,
    /// Cgroups of workers that are gone, killed, to be removed once their last process is.
    dead_cgroups: Vec<PathBuf>,
    /// handover's own nice value: what workers started at `start_nice` get once ready.
    own_nice: i32,
    clients: BTreeMap<ClientId, mpsc::UnboundedSender<Response>>,
    next_client: ClientId,
    /// Inputs that carrying out actions produced, handled next.
    pending: VecDeque<Input>,
    my_pid: i32,
    sentinel_restarts: u32,
}

/// What [`run`] returns.
#[derive(Debug)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
}

/// Runs the supervisor until it is stopped or its first generation fails to start.
///
/// `systemd` says whether to report to the service manager (`NOTIFY_SOCKET` was set at
/// startup). Commands arrive on `commands` (the control socket); signals are handled here;
/// `reloader` makes a reload's plan, on a blocking thread.
pub async fn run(
    plan: Plan,
    spawner: Spawner,
    systemd: bool,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reloader: Reloader,
) -> std::io::Result<RunResult> {
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
    let my_pid = std::process::id() as i32;
    let now = Instant::now();
    // From here on the core's generations alone hold the sockets, so a socket that no
    // generation uses any more (dropped or moved by a reload) is closed.
    let core = Core::new(
        core::Config {
            first: plan.generation,
            reload: plan.reload,
            watchdog: plan.watchdog,
            watchdog_min_workers: plan.watchdog_min_workers,
            pid: my_pid,
        },
        now,
    );
    let planner = start_planner().map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot start the planning thread: {err}"),
        )
    })?;
    let mut driver = Driver {
        core,
        planner,
        settings: Settings {
            notify_dir: plan.notify_dir,
            notify_owner: plan.notify_owner,
            dump_dirs: plan.dump_dirs,
            on_ready: plan.on_ready,
            output: plan.output,
            sentinel: plan.sentinel,
            steering: plan.steering,
            cgroups: plan.cgroups,
            cgroups_status: plan.cgroups_status,
        },
        dead_cgroups: Vec::new(),
        own_nice: process::own_nice(),
        spawner,
        systemd: Systemd::new(systemd),
        reloader,
        events: events_tx,
        workers: BTreeMap::new(),
        by_pid: BTreeMap::new(),
        spawns_in_flight: 0,
        probes: BTreeMap::new(),
        probe_spawns_in_flight: 0,
        health_tasks: BTreeMap::new(),
        health_spawning: std::collections::BTreeSet::new(),
        health_kills: std::collections::BTreeSet::new(),
        checks: BTreeMap::new(),
        clients: BTreeMap::new(),
        next_client: 1,
        pending: VecDeque::new(),
        my_pid,
        sentinel_restarts: 0,
    };
    driver.input(Input::Start);
    let mut commands_open = true;
    let outcome = loop {
        if let Some(outcome) = driver.core.finished() {
            break outcome;
        }
        let deadline = driver.core.next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = sigchld.recv() => driver.reap(),
            Some(event) = events_rx.recv() => driver.event(event),
            _ = sigterm.recv() => driver.input(Input::Stop("SIGTERM")),
            _ = sigint.recv() => driver.input(Input::Stop("SIGINT")),
            _ = sighup.recv() => driver.input(Input::Reload),
            _ = sigusr1.recv() => {
                if driver.settings.output.reopen() {
                    info!("SIGUSR1: reopening log files");
                } else {
                    debug!("SIGUSR1: no log file to reopen");
                }
            }
            _ = sigusr2.recv() => driver.input(Input::Dump),
            command = commands.recv(), if commands_open => match command {
                Some(command) => driver.command(command),
                None => commands_open = false,
            },
            _ = sleep => driver.input(Input::Tick),
        }
    };
    if outcome != Outcome::Forced {
        driver.collect_orphans(&mut sigchld).await;
        driver.finish_sentinel(&mut sigchld).await;
    }
    if let Some(cgroups) = &driver.settings.cgroups {
        cgroups.finish();
    }
    Ok(RunResult { outcome })
}

impl Driver {
    /// Hands one input to the core and carries out what follows, then any inputs that
    /// produced.
    fn input(&mut self, input: Input) {
        self.pending.push_back(input);
        while let Some(input) = self.pending.pop_front() {
            let actions = self.core.handle(Instant::now(), input);
            // Every end-to-end test runs a debug build: they all check the core's rules too.
            #[cfg(debug_assertions)]
            if let Err(broken) = self.core.check() {
                panic!("the supervisor's state broke a rule: {broken}");
            }
            for action in actions {
                self.execute(action);
            }
        }
        self.restore_priorities();
    }

    /// Workers that started at `start_nice` get handover's priority back, their whole process
    /// group, once the core counts them ready.
    fn restore_priorities(&mut self) {
        for (&id, io) in self.workers.iter_mut().filter(|(_, io)| io.niced) {
            let Some(pid) = io.pid() else { continue };
            if !self.core.is_ready(id) {
                continue;
            }
            io.niced = false;
            if io.nice_lowered {
                if let Err(err) = process::set_group_nice(pid, self.own_nice) {
                    warn!(pid, "could not give the worker its priority back: {err}");
                }
            }
            if let Some(cgroup) = &io.cgroup {
                if let Err(err) = cgroup.ready(&io.spec.limits) {
                    warn!(pid, "could not give the worker its CPU weight back: {err}");
                }
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Spawn {
                worker,
                generation,
                index,
                spec,
            } => self.spawn(worker, generation, index, spec),
            Action::Signal { worker, signal } => {
                if let Some(pid) = self.workers.get(&worker).and_then(WorkerIo::pid) {
                    if let Err(err) = process::signal_group(pid, signal) {
                        warn!(pid, "could not signal worker: {err}");
                    }
                }
            }
            Action::Kill { worker } => {
                if let Some(io) = self.workers.get(&worker) {
                    if let Some(pid) = io.pid() {
                        let _ = process::signal_group(pid, libc::SIGKILL);
                    }
                    // The whole tree, whatever left the process group.
                    if let Some(cgroup) = &io.cgroup {
                        cgroup.kill();
                    }
                }
            }
            Action::StartProbe { worker } => self.start_probe(worker),
            Action::StartHealth { worker } => self.start_health(worker),
            Action::KillHealth { worker } => {
                if let Some(task) = self.health_tasks.remove(&worker) {
                    task.abort();
                    return self.pending.push_back(Input::HealthChecked {
                        worker,
                        result: Err("given up".into()),
                    });
                }
                let mut running = false;
                for (pid, probe) in self.probes.iter().filter(|(_, p)| p.worker == worker) {
                    if probe.health {
                        running = true;
                        let _ = probe.pidfd.send_signal(libc::SIGKILL);
                        let _ = process::signal_group(*pid, libc::SIGKILL);
                    }
                }
                if !running && self.health_spawning.contains(&worker) {
                    // Its spawn is still under way: it is killed once it exists.
                    self.health_kills.insert(worker);
                }
            }
            Action::KillProbe { worker } => {
                if let Some(task) = self.checks.remove(&worker) {
                    task.abort();
                    self.pending.push_back(Input::ProbeChecked {
                        worker,
                        result: Err("given up".into()),
                    });
                }
                for (pid, probe) in self.probes.iter().filter(|(_, p)| p.worker == worker) {
                    let _ = probe.pidfd.send_signal(libc::SIGKILL);
                    let _ = process::signal_group(*pid, libc::SIGKILL);
                }
            }
            Action::Notify(notice) => self.systemd.send(&notice),
            Action::Reply {
                client,
                mut response,
            } => {
                if let Response::Status { status } = &mut response {
                    status.logs = self.settings.output.status();
                    self.fill_cgroups(status);
                }
                let last = response.is_final() || response == Response::Stopping;
                let delivered = self
                    .clients
                    .get(&client)
                    .is_some_and(|tx| tx.send(response).is_ok());
                if last || !delivered {
                    self.clients.remove(&client);
                }
            }
            Action::Resolve {
                reload,
                generation,
                overrides,
                current,
            } => {
                debug!(generation, "making the plan of the new generation");
                // Reading files and looking up users may block: not on the event loop, on the
                // planning thread.
                let reloader = self.reloader.clone();
                let events = self.events.clone();
                let job: PlanJob = Box::new(move || {
                    let plan = reloader(&overrides, &current);
                    let _ = events.send(Event::Resolved { reload, plan });
                });
                if let Err(std::sync::mpsc::SendError(_)) = self.planner.send(job) {
                    self.pending.push_back(Input::Resolved {
                        reload,
                        plan: Err("the planning thread is gone".into()),
                    });
                }
            }
            Action::Dump(mut status) => {
                status.logs = self.settings.output.status();
                self.write_dump(&status);
            }
            Action::Started => {
                if let Some(pipe) = self.settings.on_ready.take() {
                    use std::io::Write;
                    let _ = (&*pipe).write_all(b"ready\n");
                }
            }
            Action::Log(log) => emit(&log),
            Action::Steer { members } => {
                if let Some(steering) = &self.settings.steering {
                    if let Err(err) = steering.target(&members) {
                        tracing::error!(
                            "could not move new connections to the new generation: {err}"
                        );
                    }
                }
            }
            Action::Share { members, share } => {
                if let Some(steering) = &self.settings.steering {
                    if let Err(err) = steering.share(&members, share) {
                        warn!("could not give the new generation its share: {err}");
                    }
                }
            }
            Action::MeasureQueues {
                generation,
                members,
            } => {
                let waiting = self
                    .settings
                    .steering
                    .as_ref()
                    .map_or(0, |s| s.queued(&members));
                self.pending.push_back(Input::Queued {
                    generation,
                    waiting,
                });
            }
            Action::Released { generation } => {
                // Its cgroup goes with its last worker's.
                if let Some(cgroups) = &self.settings.cgroups {
                    let dirs = cgroups.generation_dirs(generation);
                    self.dead_cgroups.extend(dirs);
                    self.bury_cgroup(None);
                }
                // A socket a reload removed closes once the last generation using it is gone.
                if let Some(steering) = &self.settings.steering {
                    steering.prune();
                    debug!(
                        generation,
                        "generation gone; sockets only it used are closed"
                    );
                }
            }
            Action::Wake { members, count } => {
                if let Some(steering) = &self.settings.steering {
                    for member in &members {
                        steering.wake(member, count);
                    }
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let client = self.next_client;
        self.next_client += 1;
        self.clients.insert(client, command.reply);
        self.input(Input::Control {
            client,
            request: command.request,
        });
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Spawned { worker, result } => {
                self.spawns_in_flight = self.spawns_in_flight.saturating_sub(1);
                self.check_sentinel_records();
                self.spawned(worker, result);
                // A worker may have exited before its pid was known.
                self.reap();
            }
            Event::NotifyReadable(worker) => self.read_notifications(worker),
            Event::Readable(worker, stream) => self.read_stream(worker, stream),
            Event::ProbeSpawned {
                worker,
                health: true,
                result,
            } => {
                self.probe_spawns_in_flight = self.probe_spawns_in_flight.saturating_sub(1);
                self.health_spawning.remove(&worker);
                let killed = self.health_kills.remove(&worker);
                match result {
                    Ok(spawned) => {
                        if killed {
                            let _ = spawned.pidfd.send_signal(libc::SIGKILL);
                            let _ = process::signal_group(spawned.pid, libc::SIGKILL);
                        }
                        self.probes.insert(
                            spawned.pid,
                            ProbeIo {
                                worker,
                                pidfd: spawned.pidfd,
                                health: true,
                                exec_error: spawned.exec_error,
                            },
                        );
                    }
                    Err(err) => self.input(Input::HealthChecked {
                        worker,
                        result: Err(format!("could not start: {err}")),
                    }),
                }
                self.reap();
            }
            Event::ProbeSpawned {
                worker,
                health: false,
                result,
            } => {
                self.probe_spawns_in_flight = self.probe_spawns_in_flight.saturating_sub(1);
                match result {
                    Ok(spawned) => {
                        self.probes.insert(
                            spawned.pid,
                            ProbeIo {
                                worker,
                                pidfd: spawned.pidfd,
                                health: false,
                                exec_error: None,
                            },
                        );
                        self.input(Input::ProbeStarted {
                            worker,
                            exec_error: spawned.exec_error,
                        });
                    }
                    Err(err) => self.input(Input::ProbeFailed {
                        worker,
                        error: format!("could not start: {err}"),
                    }),
                }
                self.reap();
            }
            Event::Resolved { reload, plan } => self.input(Input::Resolved { reload, plan }),
            Event::Checked { worker, result } => {
                if self.checks.remove(&worker).is_some() {
                    self.input(Input::ProbeChecked { worker, result });
                }
            }
            Event::HealthChecked { worker, result } => {
                if self.health_tasks.remove(&worker).is_some() {
                    self.input(Input::HealthChecked { worker, result });
                }
            }
        }
    }

    fn spawn(
        &mut self,
        worker: WorkerId,
        generation: u64,
        index: u32,
        spec: Arc<crate::plan::GenerationSpec>,
    ) {
        match WorkerIo::prepare(
            worker,
            generation,
            index,
            spec,
            &self.settings,
            &self.events,
        ) {
            Ok((io, request)) => {
                self.workers.insert(worker, io);
                self.spawns_in_flight += 1;
                let events = self.events.clone();
                self.spawner.spawn(request, move |result| {
                    let _ = events.send(Event::Spawned { worker, result });
                });
            }
            Err(err) => self.pending.push_back(Input::SpawnFailed {
                worker,
                error: format!(
                    "could not prepare its notify socket and pipes: {}",
                    explain(&err)
                ),
            }),
        }
    }

    fn spawned(&mut self, worker: WorkerId, result: std::io::Result<Spawned>) {
        let spawned = match result {
            Ok(spawned) => spawned,
            Err(err) => {
                let cgroup = self
                    .workers
                    .remove(&worker)
                    .and_then(|io| io.cgroup.clone());
                self.bury_cgroup(cgroup);
                return self.input(Input::SpawnFailed {
                    worker,
                    error: explain(&err),
                });
            }
        };
        let Some(io) = self.workers.get_mut(&worker) else {
            // Cannot happen (a spawning worker is never forgotten); never leave a stray.
            let _ = spawned.pidfd.send_signal(libc::SIGKILL);
            return;
        };
        let pid = spawned.pid;
        io.pidfd = Some(spawned.pidfd);
        self.by_pid.insert(pid, worker);
        self.input(Input::Spawned {
            worker,
            pid,
            exec_error: spawned.exec_error,
        });
        // What it said and wrote before its pid was known waited in the socket and pipes.
        self.read_notifications(worker);
        self.read_stream(worker, Stream::Stderr);
        self.read_stream(worker, Stream::Stdout);
    }

    /// Reads a worker's notifications, at most [`NOTIFY_BUDGET`] at a time: a worker that
    /// floods its socket waits behind other events instead of holding the loop.
    fn read_notifications(&mut self, worker: WorkerId) {
        for _ in 0..NOTIFY_BUDGET {
            let Some((input, fds)) = self
                .workers
                .get(&worker)
                .and_then(|io| io.next_notification(worker, self.my_pid))
            else {
                return;
            };
            self.input(input);
            // Closed only now: a sender waiting on BARRIER=1 goes on once it sees them close,
            // and its message has been placed and handled by then.
            drop(fds);
        }
        let _ = self.events.send(Event::NotifyReadable(worker));
    }

    fn read_stream(&mut self, worker: WorkerId, stream: Stream) {
        let Some(io) = self.workers.get_mut(&worker) else {
            return;
        };
        if io.read_stream(stream, &self.settings.output) {
            // More is waiting: queue it behind other events, so one chatty worker cannot
            // starve the rest.
            let _ = self.events.send(Event::Readable(worker, stream));
        }
    }

    fn start_probe(&mut self, worker: WorkerId) {
        let Some(io) = self.workers.get(&worker) else {
            return;
        };
        if let crate::plan::ReadyMode::Check { socket, http, .. } = &io.spec.ready {
            let member = io.spec.sockets.iter().find(|s| &s.name == socket);
            let (Some(steering), Some(member)) = (self.settings.steering.clone(), member) else {
                return self.pending.push_back(Input::ProbeFailed {
                    worker,
                    error: format!("socket {socket:?} is not steered here"),
                });
            };
            let (member, http, events) = (member.fd.clone(), http.clone(), self.events.clone());
            let task = tokio::spawn(async move {
                let result = check::check(steering, member, http).await;
                let _ = events.send(Event::Checked { worker, result });
            });
            self.checks.insert(worker, task);
            return self.pending.push_back(Input::ProbeStarted {
                worker,
                exec_error: None,
            });
        }
        let crate::plan::ReadyMode::Probe { argv, .. } = &io.spec.ready else {
            return self.pending.push_back(Input::ProbeFailed {
                worker,
                error: "not in probe mode".into(),
            });
        };
        let request = match reaper::probe_request(io, argv) {
            Ok(request) => request,
            Err(error) => {
                return self.pending.push_back(Input::ProbeFailed { worker, error });
            }
        };
        self.spawn_probe(worker, request, false);
    }

    /// Hands a readiness probe's or health check's command to the spawning thread; its
    /// process comes back as [`Event::ProbeSpawned`].
    fn spawn_probe(&mut self, worker: WorkerId, request: SpawnRequest, health: bool) {
        self.probe_spawns_in_flight += 1;
        if health {
            self.health_spawning.insert(worker);
        }
        let events = self.events.clone();
        self.spawner.spawn(request, move |result| {
            let _ = events.send(Event::ProbeSpawned {
                worker,
                health,
                result,
            });
        });
    }

    /// One health check of `worker`: a request or connection to its private socket, or its
    /// command. Whatever happens, one [`Input::HealthChecked`] follows.
    fn start_health(&mut self, worker: WorkerId) {
        use crate::plan::HealthCheck;
        let failed = |error: &str| Input::HealthChecked {
            worker,
            result: Err(error.to_owned()),
        };
        let Some(io) = self.workers.get(&worker) else {
            return self.pending.push_back(failed("the worker is gone"));
        };
        let Some(health) = io.spec.health.as_ref() else {
            return self
                .pending
                .push_back(failed("no health check is configured"));
        };
        let http = match &health.check {
            HealthCheck::Command { argv } => {
                return match reaper::probe_request(io, argv) {
                    Ok(request) => self.spawn_probe(worker, request, true),
                    Err(error) => self.pending.push_back(failed(&error)),
                };
            }
            HealthCheck::Http {
                method,
                path,
                status,
                ..
            } => Some((method.clone(), path.clone(), *status)),
            HealthCheck::Connect { .. } => None,
        };
        match io.private_socket() {
            Some(private) => self.spawn_health_task(worker, private, http),
            None => self
                .pending
                .push_back(failed("the worker has no private socket")),
        }
    }

    fn spawn_health_task(
        &mut self,
        worker: WorkerId,
        private: io::PrivateSocket,
        http: Option<(String, String, u16)>,
    ) {
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let result = check::health(private, http).await;
            let _ = events.send(Event::HealthChecked { worker, result });
        });
        self.health_tasks.insert(worker, task);
    }

    /// Adds what the driver knows of cgroups to a status: whether they are on, and each
    /// worker's cgroup and usage.
    fn fill_cgroups(&self, status: &mut handover_proto::status::Status) {
        status.cgroups = Some(self.settings.cgroups_status.clone());
        if let Some(root) = &self.settings.cgroups {
            status.cgroup_controllers = Some(root.controllers());
        }
        let by_pid: BTreeMap<i32, &handover_sys::cgroup::WorkerCgroup> = self
            .workers
            .values()
            .filter_map(|io| Some((io.pid()?, io.cgroup.as_ref()?)))
            .collect();
        for worker in status.generations.iter_mut().flat_map(|g| &mut g.workers) {
            let Some(cgroup) = worker.pid.and_then(|pid| by_pid.get(&pid)) else {
                continue;
            };
            let usage = cgroup.usage();
            worker.cgroup = Some(handover_proto::status::CgroupUsage {
                path: cgroup.dir.display().to_string(),
                cpu_usec: usage.cpu_usec,
                memory_bytes: usage.memory_bytes,
                pids: usage.pids,
                oom_kills: cgroup.oom_kills(),
            });
        }
    }

    /// A worker is gone: whatever is left in its cgroup is killed, and the cgroup removed
    /// once empty (now, or after a later exit).
    fn bury_cgroup(&mut self, cgroup: Option<handover_sys::cgroup::WorkerCgroup>) {
        if let Some(cgroup) = cgroup {
            cgroup.kill();
            self.dead_cgroups.extend(cgroup.dirs());
        }
        self.dead_cgroups
            .retain(|dir| handover_sys::cgroup::remove_tree(dir).is_err());
    }

    /// Warns when records for the sentinel were lost (its pipe full, or it is gone).
    fn check_sentinel_records(&self) {
        let lost = self.settings.sentinel.as_ref().map_or(0, |s| s.take_lost());
        if lost > 0 {
            warn!(
                "{lost} process group(s) could not be recorded with the sentinel: if handover \
                 is killed now, their processes may outlive it"
            );
        }
    }

    /// SIGUSR2: writes the state as JSON to the first dump directory that takes it. The file
    /// is new (never one that exists, never through a symlink), mode 0600, and never in a
    /// world-writable directory unless that is sticky and owned by root or handover's user.
    fn write_dump(&self, status: &handover_proto::status::Status) {
        let snapshot = serde_json::to_string_pretty(status).unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for dir in &self.settings.dump_dirs {
            if let Err(why) = dump_dir_is_safe(dir) {
                debug!("SIGUSR2: not writing into {}: {why}", dir.display());
                continue;
            }
            // A name already taken (by an earlier dump, or planted) is skipped, not replaced.
            for attempt in 0..4 {
                let suffix = if attempt == 0 {
                    String::new()
                } else {
                    format!("-{attempt}")
                };
                let path = dir.join(format!(
                    "handover-state-{}-{stamp}{suffix}.json",
                    self.my_pid
                ));
                match write_new_private(&path, snapshot.as_bytes()) {
                    Ok(()) => {
                        info!("SIGUSR2: state written to {}", path.display());
                        return;
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        warn!(
                            "SIGUSR2: {} already exists; not touching it",
                            path.display()
                        )
                    }
                    Err(err) => {
                        debug!("SIGUSR2: cannot write {}: {err}", path.display());
                        break;
                    }
                }
            }
        }
        warn!("SIGUSR2: no directory accepted the state dump; state: {snapshot}");
    }
}

/// Whether a directory may hold a state dump: not world-writable, or sticky (so nobody can
/// replace another's file) and owned by root or by handover's own user.
fn dump_dir_is_safe(dir: &std::path::Path) -> Result<(), &'static str> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).map_err(|_| "cannot stat it")?;
    if !meta.is_dir() {
        return Err("not a directory");
    }
    let mode = meta.permissions().mode();
    if mode & 0o002 == 0 {
        return Ok(());
    }
    if mode & 0o1000 == 0 {
        return Err("world-writable without the sticky bit");
    }
    if meta.uid() != 0 && meta.uid() != handover_sys::users::effective_uid() {
        return Err("world-writable and owned by another user");
    }
    Ok(())
}

/// Creates `path` (it must not exist, and a symlink there is not followed), mode 0600, and
/// writes `bytes`.
fn write_new_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)
}

/// An OS error, with what it means when it is a resource running out.
fn explain(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EAGAIN) => format!(
            "{err}: no more processes may be created now (the user's RLIMIT_NPROC or the \
             cgroup's pids.max is reached)"
        ),
        Some(libc::EMFILE) => {
            format!("{err}: handover's open-file limit (RLIMIT_NOFILE) is reached")
        }
        Some(libc::ENFILE) => format!("{err}: the system's open-file limit is reached"),
        Some(libc::ENOMEM) => format!("{err}: out of memory"),
        _ => err.to_string(),
    }
}

/// Writes a core log line through `tracing`, with its fields.
fn emit(log: &Log) {
    let Log {
        level,
        message,
        generation,
        worker,
        pid,
        outcome,
    } = log;
    match level {
        Level::Debug => debug!(generation, worker, pid, outcome, "{message}"),
        Level::Info => info!(generation, worker, pid, outcome, "{message}"),
        Level::Warn => warn!(generation, worker, pid, outcome, "{message}"),
        Level::Error => tracing::error!(generation, worker, pid, outcome, "{message}"),
    }
}
