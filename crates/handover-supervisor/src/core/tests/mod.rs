//! The core's tests: the supervisor's promises checked input by input, with a fake clock and
//! no process. Each test drives a [`Sim`] and asserts the exact actions that follow, written
//! as short lines (`spawn w3 g2/0`, `signal w1 SIGTERM`, `systemd READY=1 ...`); log lines are
//! kept apart and checked where they are the point.

mod health;
mod lifecycle;
mod reload;
mod steer;
mod stop;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_proto::control::{Request, Response};
use handover_sys::process::{signal_name, ExitStatus};
use handover_sys::spawn::WorkerExec;

use super::model::WorkerId;
use super::{Action, Config, Core, Input, Level, Log, Notice, Sender};
use crate::control::Outcome;
use crate::plan::{GenerationSpec, ReadyMode, ReloadPolicy};

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A generation spec for tests: `count` workers of a program that does not exist (nothing is
/// ever run), SIGTERM to stop, the given readiness.
pub(super) fn spec(count: u32) -> GenerationSpec {
    GenerationSpec {
        exec: WorkerExec {
            argv: vec![OsString::from("/test/worker")],
            ..WorkerExec::default()
        },
        env: Vec::new(),
        count,
        sockets: Vec::new(),
        fds_env: "HANDOVER_FDS".into(),
        stop_signal: libc::SIGTERM,
        stop_timeout: ms(5_000),
        ready: ReadyMode::Notify,
        ready_timeout: ms(10_000),
        notify_main_only: false,
        backoff_initial: ms(100),
        backoff_max: ms(30_000),
        backoff_reset: ms(10_000),
        watchdog: None,
        health: None,
        limits: Default::default(),
    }
}

pub(super) fn policy() -> ReloadPolicy {
    ReloadPolicy {
        timeout: ms(60_000),
        drain_timeout: ms(3_000),
        batch_size: None,
        max_extra: 0,
        canary: false,
        canary_share: 0,
        max_draining: 4,
    }
}

/// The core, a clock, and what it said.
pub(super) struct Sim {
    pub core: Core,
    pub now: Instant,
    /// Every log line so far.
    pub logs: Vec<Log>,
    next_client: u64,
}

impl Sim {
    /// A core for `spec`, started: returns the actions of the start.
    pub(super) fn start(spec: GenerationSpec, policy: ReloadPolicy) -> (Sim, Vec<String>) {
        Sim::start_with(spec, policy, None, 0)
    }

    pub(super) fn start_with(
        spec: GenerationSpec,
        policy: ReloadPolicy,
        watchdog: Option<Duration>,
        watchdog_min_workers: u32,
    ) -> (Sim, Vec<String>) {
        let start = Instant::now();
        let core = Core::new(
            Config {
                first: Arc::new(spec),
                reload: policy,
                watchdog,
                watchdog_min_workers,
                pid: 1,
            },
            start,
        );
        let mut sim = Sim {
            core,
            now: start,
            logs: Vec::new(),
            next_client: 1,
        };
        let actions = sim.input(Input::Start);
        (sim, actions)
    }

    /// Handles one input; returns its actions as lines, logs kept in `self.logs`. Checks the
    /// core's invariants after it.
    pub(super) fn input(&mut self, input: Input) -> Vec<String> {
        let actions = self.core.handle(self.now, input);
        if let Err(broken) = self.core.check() {
            panic!("invariant broken: {broken}");
        }
        let mut lines = Vec::new();
        for action in actions {
            match action {
                Action::Log(log) => self.logs.push(log),
                other => lines.push(self.render(&other)),
            }
        }
        lines
    }

    fn render(&self, action: &Action) -> String {
        match action {
            Action::Spawn {
                worker,
                generation,
                index,
                ..
            } => format!("spawn w{worker} g{generation}/{index}"),
            Action::Signal { worker, signal } => {
                format!("signal w{worker} {}", signal_name(*signal))
            }
            Action::Kill { worker } => format!("kill w{worker}"),
            Action::StartProbe { worker } => format!("probe w{worker}"),
            Action::KillProbe { worker } => format!("kill probe w{worker}"),
            Action::StartHealth { worker } => format!("health w{worker}"),
            Action::KillHealth { worker } => format!("kill health w{worker}"),
            Action::Notify(notice) => match notice {
                Notice::Ready(status) => format!("systemd READY=1 STATUS={status}"),
                Notice::Reloading(status) => format!("systemd RELOADING=1 STATUS={status}"),
                Notice::Status(status) => format!("systemd STATUS={status}"),
                Notice::Watchdog => "systemd WATCHDOG=1".into(),
                Notice::ExtendTimeout(by) => format!("systemd EXTEND_TIMEOUT {by:?}"),
                Notice::Stopping(status) => format!("systemd STOPPING=1 STATUS={status}"),
            },
            Action::Reply { client, response } => match response {
                Response::Progress { message } => format!("reply c{client} progress: {message}"),
                Response::Done { generation } => format!("reply c{client} done: {generation}"),
                Response::Failed { reason } => format!("reply c{client} failed: {reason}"),
                Response::Busy { generation } => format!("reply c{client} busy: {generation}"),
                Response::Ok { message } => format!("reply c{client} ok: {message}"),
                Response::Stopping => format!("reply c{client} stopping"),
                Response::Status { .. } => format!("reply c{client} status"),
                Response::Error { message } => format!("reply c{client} error: {message}"),
            },
            Action::Resolve {
                reload, generation, ..
            } => format!("resolve r{reload} g{generation}"),
            Action::Steer { members } => format!("steer to {}", label(members)),
            Action::Share { members, share } => format!(
                "share {}% to {}",
                (u64::from(*share) * 100 + u64::from(u32::MAX) / 2) / u64::from(u32::MAX),
                label(members)
            ),
            Action::MeasureQueues {
                generation,
                members,
            } => {
                format!("measure g{generation} {}", label(members))
            }
            Action::Wake { members, count } => format!("wake {count} on {}", label(members)),
            Action::Released { generation } => format!("released g{generation}"),
            Action::Dump(_) => "dump".into(),
            Action::Started => "started".into(),
            Action::Log(_) => unreachable!("logs are kept apart"),
        }
    }

    /// Moves the clock forward by `by` and, if a deadline is due by then, ticks.
    pub(super) fn after(&mut self, by: Duration) -> Vec<String> {
        self.now += by;
        match self.core.next_deadline() {
            Some(at) if at <= self.now => self.input(Input::Tick),
            _ => Vec::new(),
        }
    }

    /// The next deadline, in milliseconds from now.
    pub(super) fn next_in_ms(&self) -> Option<u128> {
        self.core
            .next_deadline()
            .map(|at| at.saturating_duration_since(self.now).as_millis())
    }

    /// The pid [`Sim::spawned`] gives a worker: its id + 1000.
    pub(super) fn pid(worker: WorkerId) -> i32 {
        1000 + worker as i32
    }

    pub(super) fn spawned(&mut self, worker: WorkerId) -> Vec<String> {
        self.input(Input::Spawned {
            worker,
            pid: Sim::pid(worker),
            exec_error: None,
        })
    }

    /// Every worker in `workers` is spawned; their actions, concatenated.
    pub(super) fn spawned_all(&mut self, workers: &[WorkerId]) -> Vec<String> {
        workers.iter().flat_map(|&w| self.spawned(w)).collect()
    }

    pub(super) fn notify(&mut self, worker: WorkerId, payload: &str) -> Vec<String> {
        self.input(Input::Notify {
            worker,
            sender_pid: Sim::pid(worker),
            sender: Sender::Worker,
            payload: payload.as_bytes().to_vec(),
        })
    }

    pub(super) fn ready(&mut self, worker: WorkerId) -> Vec<String> {
        self.notify(worker, "READY=1")
    }

    pub(super) fn ready_all(&mut self, workers: &[WorkerId]) -> Vec<String> {
        workers.iter().flat_map(|&w| self.ready(w)).collect()
    }

    /// Spawned and ready, one after the other.
    pub(super) fn up(&mut self, workers: &[WorkerId]) -> Vec<String> {
        let mut lines = self.spawned_all(workers);
        lines.extend(self.ready_all(workers));
        lines
    }

    pub(super) fn exited(&mut self, worker: WorkerId, code: i32) -> Vec<String> {
        self.input(Input::Exited {
            worker,
            status: ExitStatus::Exited(code),
            stderr_tail: Vec::new(),
            oom_kills: 0,
        })
    }

    /// A health check of `worker` ended: `Ok` or why not.
    pub(super) fn checked(&mut self, worker: WorkerId, result: Result<(), &str>) -> Vec<String> {
        self.input(Input::HealthChecked {
            worker,
            result: result.map_err(str::to_owned),
        })
    }

    pub(super) fn exited_all(&mut self, workers: &[WorkerId]) -> Vec<String> {
        workers.iter().flat_map(|&w| self.exited(w, 0)).collect()
    }

    pub(super) fn client(&mut self) -> u64 {
        let client = self.next_client;
        self.next_client += 1;
        client
    }

    pub(super) fn control(&mut self, client: u64, request: Request) -> Vec<String> {
        self.input(Input::Control { client, request })
    }

    /// A control reload with no overrides, from a new client (c1, c2, ...).
    pub(super) fn reload(&mut self) -> (u64, Vec<String>) {
        let client = self.client();
        let lines = self.control(
            client,
            Request::Reload {
                workers: None,
                env: Vec::new(),
                replace_env: false,
                cwd: None,
                timeout_ms: None,
            },
        );
        (client, lines)
    }

    /// The plan of reload `reload` is made: `spec` with `policy`.
    pub(super) fn resolved(
        &mut self,
        reload: u64,
        spec: GenerationSpec,
        policy: ReloadPolicy,
    ) -> Vec<String> {
        self.input(Input::Resolved {
            reload,
            plan: Ok((Arc::new(spec), policy)),
        })
    }

    pub(super) fn finished(&self) -> Option<Outcome> {
        self.core.finished()
    }

    /// Log messages at `level` or above, in order.
    pub(super) fn messages(&self, level: Level) -> Vec<&str> {
        let rank = |l: Level| match l {
            Level::Debug => 0,
            Level::Info => 1,
            Level::Warn => 2,
            Level::Error => 3,
        };
        self.logs
            .iter()
            .filter(|l| rank(l.level) >= rank(level))
            .map(|l| l.message.as_str())
            .collect()
    }

    /// Whether some log line contains `text`.
    pub(super) fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(text))
    }
}

/// A steered socket for tests: any fd stands for a member (the core never touches it); its
/// name is `label`, which the rendered actions show.
pub(super) fn steered_socket(label: &str) -> crate::plan::ListenSocket {
    let fd = std::fs::File::open("/dev/null").expect("/dev/null").into();
    LABELS.with(|labels| {
        labels
            .borrow_mut()
            .push((std::os::fd::AsRawFd::as_raw_fd(&fd), label.to_string()))
    });
    crate::plan::ListenSocket {
        name: "web".into(),
        address: "127.0.0.1:80".into(),
        fd: Arc::new(fd),
        from_systemd: false,
        configured: None,
        mode: crate::plan::SocketMode::Steered,
    }
}

thread_local! {
    static LABELS: std::cell::RefCell<Vec<(i32, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn label(members: &[Arc<std::os::fd::OwnedFd>]) -> String {
    let names: Vec<String> = members
        .iter()
        .map(|m| {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&**m);
            LABELS.with(|labels| {
                labels
                    .borrow()
                    .iter()
                    .rev()
                    .find(|(f, _)| *f == fd)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_else(|| format!("fd{fd}"))
            })
        })
        .collect();
    names.join(",")
}

/// A spec like [`spec`] whose one socket is steered, labelled `label`.
pub(super) fn steered_spec(count: u32, label: &str) -> GenerationSpec {
    GenerationSpec {
        sockets: vec![steered_socket(label)],
        ..spec(count)
    }
}

/// Lines of `actions` that start with `prefix`.
pub(super) fn only<'a>(actions: &'a [String], prefix: &str) -> Vec<&'a str> {
    actions
        .iter()
        .filter(|a| a.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

/// A started sim whose first generation (workers 1..=count) is up and serving.
pub(super) fn serving(spec: GenerationSpec, policy: ReloadPolicy) -> Sim {
    let count = spec.count as u64;
    let (mut sim, _) = Sim::start(spec, policy);
    let ids: Vec<WorkerId> = (1..=count).collect();
    let lines = sim.up(&ids);
    assert!(lines.contains(&"started".to_string()), "{lines:#?}");
    sim
}
