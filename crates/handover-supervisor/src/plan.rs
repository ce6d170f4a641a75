//! What the supervisor runs: sockets, and the resolved spec of a generation of workers.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use handover_sys::spawn::WorkerExec;

/// A listening socket the supervisor holds and passes on.
#[derive(Debug, Clone)]
pub struct ListenSocket {
    /// Its name (`LISTEN_FDNAMES`, the fd map).
    pub name: String,
    /// Its local address, for logs and status.
    pub address: String,
    /// The socket. Shared: every generation gets the very same socket.
    pub fd: Arc<OwnedFd>,
    /// Whether systemd passed it (as opposed to handover binding it).
    pub from_systemd: bool,
    /// For a socket handover bound: the configured `listen` value, to tell on reload whether
    /// the configuration still asks for the same socket.
    pub configured: Option<String>,
    /// Whether this generation's socket is its own member of a steered group, or shared by
    /// every generation (and why).
    pub mode: SocketMode,
}

/// How generations use a configured socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketMode {
    /// Each generation has its own member of the socket's `SO_REUSEPORT` group; new
    /// connections go where the selector says (`crate::steering`).
    Steered,
    /// Every generation shares this very socket; the text says why it is not steered.
    Shared(String),
}

impl ListenSocket {
    /// Whether this socket is steered.
    pub fn is_steered(&self) -> bool {
        self.mode == SocketMode::Steered
    }
}

/// How a worker tells it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Alive for this long.
    Delay(Duration),
    /// handover's own request to the worker's generation, on the steered socket `socket`
    /// (a connection it accepts; with `http`, a GET of the path answered with the status).
    Check {
        /// The socket's name.
        socket: String,
        /// Path and expected status of an HTTP check; `None` to check that a connection is
        /// accepted.
        http: Option<(String, u16)>,
        /// Pause between the end of one attempt and the start of the next.
        interval: Duration,
        /// An attempt still running after this is given up and counts as failed.
        timeout: Duration,
    },
    /// A command that exits 0 once the worker is ready.
    Probe {
        /// The probe's argv.
        argv: Vec<OsString>,
        /// Pause between the end of one attempt and the start of the next.
        interval: Duration,
        /// An attempt still running after this is killed and counts as failed.
        timeout: Duration,
    },
}

impl ReadyMode {
    /// The interval and timeout of a mode with probes (a command or a check).
    pub fn probe_timing(&self) -> Option<(Duration, Duration)> {
        match self {
            ReadyMode::Probe {
                interval, timeout, ..
            }
            | ReadyMode::Check {
                interval, timeout, ..
            } => Some((*interval, *timeout)),
            _ => None,
        }
    }
}

/// Everything that defines one generation's workers; respawns in a generation reuse it.
#[derive(Debug, Clone)]
pub struct GenerationSpec {
    /// Program, cwd and credentials.
    pub exec: WorkerExec,
    /// The environment every worker starts from (inherited and configured variables), before
    /// handover adds the per-worker ones.
    pub env: Vec<(OsString, OsString)>,
    /// Number of workers.
    pub count: u32,
    /// Sockets, in fd order.
    pub sockets: Vec<ListenSocket>,
    /// Name of the JSON name -> /dev/fd/N variable.
    pub fds_env: String,
    /// Signal that asks a worker to stop.
    pub stop_signal: i32,
    /// How long a worker may take to stop before SIGKILL.
    pub stop_timeout: Duration,
    /// Readiness.
    pub ready: ReadyMode,
    /// How long a worker may take to become ready.
    pub ready_timeout: Duration,
    /// Accept notifications only from the worker's own pid.
    pub notify_main_only: bool,
    /// First restart delay.
    pub backoff_initial: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
    /// Ready this long resets the restart delay.
    pub backoff_reset: Duration,
    /// Each worker must send `WATCHDOG=1` within this once ready (`[worker] watchdog`).
    pub watchdog: Option<Duration>,
    /// The liveness check of each ready worker (`[health]`).
    pub health: Option<HealthSpec>,
    /// The limits of each worker's cgroup.
    pub limits: handover_sys::cgroup::Limits,
}

/// A liveness check, run on each ready worker one at a time, and what makes it unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// What is checked.
    pub check: HealthCheck,
    /// Pause between the end of one check and the start of the next.
    pub interval: Duration,
    /// A check still running after this is given up and counts as failed.
    pub timeout: Duration,
    /// This many failed checks in a row make the worker unhealthy.
    pub failures: u32,
    /// At most this many workers are replaced for their health at once.
    pub max_replacing: u32,
}

/// How a worker's health is checked; each reaches that worker and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// An HTTP request on the worker's private socket, answered with `status`.
    Http {
        /// The name the private socket is passed under (after the configured sockets).
        socket: String,
        /// `GET`, `HEAD`, ...
        method: String,
        /// The request target, like `/ok`.
        path: String,
        /// The status that passes.
        status: u16,
    },
    /// A connection on the worker's private socket that the worker accepts.
    Connect {
        /// The name the private socket is passed under.
        socket: String,
    },
    /// A command (with `HANDOVER_WORKER_PID`) that exits 0.
    Command {
        /// Its argv.
        argv: Vec<OsString>,
    },
}

impl HealthSpec {
    /// The name of the private socket each worker gets for the check, if the check needs one.
    pub fn private_socket(&self) -> Option<&str> {
        match &self.check {
            HealthCheck::Http { socket, .. } | HealthCheck::Connect { socket } => Some(socket),
            HealthCheck::Command { .. } => None,
        }
    }
}

/// How reloads run.
#[derive(Debug, Clone)]
pub struct ReloadPolicy {
    /// A whole reload must end within this.
    pub timeout: Duration,
    /// An old generation may drain this long before its process groups are killed.
    pub drain_timeout: Duration,
    /// Rolling: start this many new workers at a time (None = all at once).
    pub batch_size: Option<u32>,
    /// Rolling: at most this many workers above `count`.
    pub max_extra: u32,
    /// Start one new worker first, the rest once it is ready.
    pub canary: bool,
    /// With steering: the percentage of new connections a ready canary gets before the rest
    /// of its generation starts (0: none).
    pub canary_share: u32,
    /// At most this many generations draining at once.
    pub max_draining: u32,
}

/// The supervisor's whole input.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The first generation.
    pub generation: Arc<GenerationSpec>,
    /// Reload behaviour.
    pub reload: ReloadPolicy,
    /// Private directory for per-worker notify sockets (created by the caller, mode 0711).
    pub notify_dir: PathBuf,
    /// Owner (uid, gid) for notify sockets when workers run as another user.
    pub notify_owner: Option<(u32, u32)>,
    /// Where SIGUSR2 writes a state dump: the first directory that accepts the file.
    pub dump_dirs: Vec<PathBuf>,
    /// Told `ready` once the first generation is ready (`--daemon`).
    pub on_ready: Option<Arc<std::fs::File>>,
    /// systemd's watchdog interval (`WATCHDOG_USEC`), when it is meant for handover.
    pub watchdog: Option<Duration>,
    /// Send `WATCHDOG=1` only while at least this many serving workers are ready.
    pub watchdog_min_workers: u32,
    /// Where workers' output goes.
    pub output: Arc<crate::output::Output>,
    /// Steered sockets' groups and selectors; none when no socket is steered.
    pub steering: Option<Arc<crate::steering::Steering>>,
    /// Kills workers' process groups if handover dies; the spawner records them, the
    /// supervisor forgets each before reaping its leader.
    pub sentinel: Option<Arc<handover_sys::sentinel::Sentinel>>,
    /// The cgroup subtree workers get their cgroups in; none without `[handover] cgroups`.
    pub cgroups: Option<Arc<handover_sys::cgroup::CgroupRoot>>,
    /// What status says of cgroups (`on: PATH` or `off: WHY`).
    pub cgroups_status: String,
}
