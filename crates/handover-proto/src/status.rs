//! The state of a running handover, as `handover status`, `status --json` and the SIGUSR2 dump
//! show it. The supervisor fills these types and the client reads them; the JSON shape is
//! documented in docs/control-protocol.md and versioned by [`STATUS_VERSION`].
//!
//! Compatibility: fields are only ever added. A reader ignores fields it does not know, and
//! every field added after version 1 has a default, so an older or newer peer still reads
//! what it understands.

use serde::{Deserialize, Serialize};

/// The version of the status shape this build writes.
pub const STATUS_VERSION: u32 = 1;

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The first generation is starting.
    Starting,
    /// Serving (possibly reloading).
    Running,
    /// Stopping every worker.
    Stopping,
}

/// What a generation is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// Being started (the first start, or the target of a reload).
    Starting,
    /// The generation that serves.
    Serving,
    /// Told to stop after a newer one took over.
    Draining,
    /// A failed reload target being stopped.
    Aborted,
}

impl GenerationState {
    /// The name used in logs and status.
    pub fn name(self) -> &'static str {
        match self {
            GenerationState::Starting => "starting",
            GenerationState::Serving => "serving",
            GenerationState::Draining => "draining",
            GenerationState::Aborted => "aborted",
        }
    }
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Waiting out a restart delay.
    Waiting,
    /// Handed to the spawning thread.
    Spawning,
    /// Running, not ready yet.
    Starting,
    /// Ready.
    Ready,
    /// Asked to stop.
    Stopping,
    /// SIGKILL sent to its process group; waiting for the exit.
    Killed,
}

impl WorkerState {
    /// The name used in status.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Waiting => "waiting",
            WorkerState::Spawning => "spawning",
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stopping => "stopping",
            WorkerState::Killed => "killed",
        }
    }
}

/// The whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_VERSION`] of the writer.
    pub version: u32,
    /// handover's pid.
    pub pid: i32,
    /// Its phase.
    pub phase: Phase,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// The generation a running reload starts, if one runs.
    pub reloading: Option<u64>,
    /// The one-line summary systemd's `STATUS=` shows too.
    pub status: String,
    /// Every generation with workers, oldest first.
    pub generations: Vec<GenerationStatus>,
    /// The listening sockets of the serving (or starting) generation, in fd order.
    pub sockets: Vec<SocketStatus>,
    /// Workers' log files.
    #[serde(default)]
    pub logs: Vec<LogFileStatus>,
    /// Whether workers have cgroups of their own: `on: PATH`, or `off: WHY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<String>,
    /// The controllers workers' cgroups have (`memory, cpu, pids`; `(v1)` after one that is
    /// in a cgroup v1 hierarchy), with cgroups on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_controllers: Option<String>,
}

/// One generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStatus {
    /// Its number.
    pub generation: u64,
    /// What it does.
    pub state: GenerationState,
    /// How many workers it is meant to have.
    pub count: u32,
    /// Milliseconds since it was created.
    pub age_ms: u64,
    /// Its workers, by index.
    pub workers: Vec<WorkerStatus>,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its index in the generation (`HANDOVER_WORKER`).
    pub index: u32,
    /// Its pid, once spawned.
    pub pid: Option<i32>,
    /// What it does.
    pub state: WorkerState,
    /// Going away for good: its exit starts no replacement.
    pub retiring: bool,
    /// Milliseconds since it became ready, while it is.
    pub ready_for_ms: Option<u64>,
    /// How often its slot was restarted.
    pub restarts: u32,
    /// Why its slot's previous worker ended.
    pub last_exit: Option<String>,
    /// The last `STATUS=` it sent.
    pub status: Option<String>,
    /// Failures of its slot in a row (reset by a worker that stayed ready long enough).
    #[serde(default)]
    pub failures_in_a_row: u32,
    /// Its slot fails again and again: restarts wait out a long backoff.
    #[serde(default)]
    pub crash_looping: bool,
    /// Its health, when it has a health check or a watchdog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// Its cgroup, and what it used, with `[handover] cgroups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupUsage>,
}

/// A worker's cgroup and its accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// Its path in the cgroup file system.
    pub path: String,
    /// CPU time used, in microseconds (`cpu.stat`).
    pub cpu_usec: Option<u64>,
    /// Memory in use, in bytes (`memory.current`), where the memory controller is enabled.
    pub memory_bytes: Option<u64>,
    /// Processes in it (`pids.current`), where the pids controller is enabled.
    pub pids: Option<u64>,
    /// Processes of it the OOM killer killed (`memory.events`), where the memory controller
    /// is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// A worker's health (`[health]`, `[worker] watchdog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `healthy`, `unhealthy` (being replaced), or `unchecked` (no check has ended yet).
    pub state: String,
    /// Milliseconds since its last check ended, if one has.
    pub last_check_ms_ago: Option<u64>,
    /// Whether that check passed.
    pub last_passed: Option<bool>,
    /// Failed checks in a row.
    pub failures_in_a_row: u32,
    /// Why the last failed check failed, or why it is unhealthy.
    pub reason: Option<String>,
    /// Milliseconds left before its watchdog expires, while it is armed.
    pub watchdog_left_ms: Option<u64>,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// Its local address.
    pub address: String,
    /// The fd workers find it at.
    pub fd: u32,
    /// Whether systemd passed it.
    pub from_systemd: bool,
    /// `steered` (each generation has its own socket; new connections go to the generation
    /// that should get them) or `shared` (every generation shares this one).
    #[serde(default = "shared")]
    pub mode: String,
    /// Why a shared socket is not steered.
    #[serde(default)]
    pub shared_because: Option<String>,
}

fn shared() -> String {
    "shared".into()
}

/// One log file of workers' output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFileStatus {
    /// Its path.
    pub path: String,
    /// Lines dropped because the buffer was full.
    pub dropped: u64,
    /// Rotations since start.
    pub rotations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: STATUS_VERSION,
            pid: 4242,
            phase: Phase::Running,
            uptime_ms: 61_000,
            reloading: Some(3),
            status: "2/2 workers ready, generation 2".into(),
            generations: vec![GenerationStatus {
                generation: 2,
                state: GenerationState::Serving,
                count: 2,
                age_ms: 5_000,
                workers: vec![
                    WorkerStatus {
                        index: 0,
                        pid: Some(100),
                        state: WorkerState::Ready,
                        retiring: false,
                        ready_for_ms: Some(4_000),
                        restarts: 1,
                        last_exit: Some("exited with code 3".into()),
                        status: Some("serving".into()),
                        failures_in_a_row: 0,
                        crash_looping: false,
                        health: Some(HealthStatus {
                            state: "unhealthy".into(),
                            last_check_ms_ago: Some(300),
                            last_passed: Some(false),
                            failures_in_a_row: 3,
                            reason: Some("timed out after 5.0s".into()),
                            watchdog_left_ms: None,
                        }),
                        cgroup: Some(CgroupUsage {
                            path: "/sys/fs/cgroup/x.service/gen-2/worker-0-7".into(),
                            cpu_usec: Some(1500),
                            memory_bytes: None,
                            pids: Some(3),
                            oom_kills: Some(1),
                        }),
                    },
                    WorkerStatus {
                        index: 1,
                        pid: None,
                        state: WorkerState::Waiting,
                        retiring: false,
                        ready_for_ms: None,
                        restarts: 0,
                        last_exit: None,
                        status: None,
                        failures_in_a_row: 6,
                        crash_looping: true,
                        health: None,
                        cgroup: None,
                    },
                ],
            }],
            sockets: vec![SocketStatus {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
                fd: 3,
                from_systemd: false,
                mode: "steered".into(),
                shared_because: None,
            }],
            logs: vec![LogFileStatus {
                path: "/var/log/app.log".into(),
                dropped: 7,
                rotations: 2,
            }],
            cgroups: Some("on: /sys/fs/cgroup/x.service".into()),
            cgroup_controllers: Some("memory, cpu, pids".into()),
        }
    }

    #[test]
    fn status_round_trips_through_json() {
        let status = sample();
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }

    /// The `--json` shape is documented; these names are what scripts read.
    #[test]
    fn json_shape_is_the_documented_one() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["phase"], "running");
        assert_eq!(value["reloading"], 3);
        assert_eq!(value["generations"][0]["state"], "serving");
        assert_eq!(value["generations"][0]["count"], 2);
        let worker = &value["generations"][0]["workers"][0];
        assert_eq!(worker["state"], "ready");
        assert_eq!(worker["ready_for_ms"], 4000);
        assert_eq!(worker["last_exit"], "exited with code 3");
        assert_eq!(worker["health"]["state"], "unhealthy");
        assert_eq!(worker["health"]["failures_in_a_row"], 3);
        assert_eq!(worker["health"]["reason"], "timed out after 5.0s");
        assert_eq!(worker["cgroup"]["cpu_usec"], 1500);
        assert!(worker["cgroup"]["memory_bytes"].is_null());
        let waiting = &value["generations"][0]["workers"][1];
        assert!(waiting["pid"].is_null() && waiting["ready_for_ms"].is_null());
        assert_eq!(waiting["crash_looping"], true);
        assert!(waiting.get("health").is_none(), "no health without a check");
        assert_eq!(waiting["failures_in_a_row"], 6);
        assert_eq!(value["sockets"][0]["fd"], 3);
        assert_eq!(value["logs"][0]["dropped"], 7);
    }

    #[test]
    fn unknown_fields_from_a_newer_writer_are_ignored() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["some_future_field"] = serde_json::json!({"x": 1});
        value["generations"][0]["workers"][0]["numa_node"] = "/x".into();
        let read: Status = serde_json::from_value(value).unwrap();
        assert_eq!(read, sample());
    }
}
