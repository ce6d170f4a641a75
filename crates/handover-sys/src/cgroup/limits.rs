//! Resource limits of a worker's cgroup, written in the files of whichever hierarchy holds
//! each controller: cgroup v2 where it can, a cgroup v1 hierarchy on a hybrid host.

use std::io;
use std::path::Path;

/// The controllers handover uses, for limits and accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// `memory`: `memory_max`, `memory_high`, memory accounting, OOM kills.
    Memory,
    /// `cpu`: `cpu_quota`, `cpu_weight`, `start_cpu_weight`.
    Cpu,
    /// `pids`: `pids_max`, the pid count.
    Pids,
}

impl Controller {
    /// Every one of them.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// Its name in `cgroup.controllers` and in `/proc/PID/cgroup`.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// The limits of each worker's cgroup (`[worker]`); `None` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory_max`, bytes: above it the OOM killer ends the worker.
    pub memory_max: Option<u64>,
    /// `memory_high`, bytes: above it the worker is throttled and its memory reclaimed.
    pub memory_high: Option<u64>,
    /// `cpu_quota`, percent of one CPU (150 is one and a half).
    pub cpu_quota: Option<u32>,
    /// `cpu_weight`, 1..=10000 (100 is the kernel's default).
    pub cpu_weight: Option<u32>,
    /// `start_cpu_weight`: the weight until the worker is ready.
    pub start_cpu_weight: Option<u32>,
    /// `pids_max`: processes and threads.
    pub pids_max: Option<u64>,
}

/// The period `cpu_quota` is a share of, in microseconds (the kernel's default).
const CPU_PERIOD_USEC: u64 = 100_000;

/// The kernel's default CPU weight, and the v1 shares it stands for.
const DEFAULT_WEIGHT: u32 = 100;

impl Limits {
    /// The `[worker]` keys set that need `controller`.
    pub fn keys_of(&self, controller: Controller) -> Vec<&'static str> {
        let keys: &[(&str, bool)] = match controller {
            Controller::Memory => &[
                ("memory_max", self.memory_max.is_some()),
                ("memory_high", self.memory_high.is_some()),
            ],
            Controller::Cpu => &[
                ("cpu_quota", self.cpu_quota.is_some()),
                ("cpu_weight", self.cpu_weight.is_some()),
                ("start_cpu_weight", self.start_cpu_weight.is_some()),
            ],
            Controller::Pids => &[("pids_max", self.pids_max.is_some())],
        };
        keys.iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The files to write in a new worker's cgroup for `controller`, as (file, value), for
    /// the v2 hierarchy (`v1` false) or a v1 one.
    pub fn files(&self, controller: Controller, v1: bool) -> Vec<(&'static str, String)> {
        let mut files = Vec::new();
        match controller {
            Controller::Memory => {
                if let Some(max) = self.memory_max {
                    let file = if v1 {
                        "memory.limit_in_bytes"
                    } else {
                        "memory.max"
                    };
                    files.push((file, max.to_string()));
                    if !v1 {
                        // A worker and its children are one service: the OOM killer takes
                        // all of it, not a random child the worker then misses.
                        files.push(("memory.oom.group", "1".into()));
                    }
                }
                if let Some(high) = self.memory_high {
                    // v1 has no throttling limit; its soft limit is where reclaim under
                    // pressure starts.
                    let file = if v1 {
                        "memory.soft_limit_in_bytes"
                    } else {
                        "memory.high"
                    };
                    files.push((file, high.to_string()));
                }
            }
            Controller::Cpu => {
                if let Some(percent) = self.cpu_quota {
                    let quota = u64::from(percent) * CPU_PERIOD_USEC / 100;
                    if v1 {
                        files.push(("cpu.cfs_period_us", CPU_PERIOD_USEC.to_string()));
                        files.push(("cpu.cfs_quota_us", quota.to_string()));
                    } else {
                        files.push(("cpu.max", format!("{quota} {CPU_PERIOD_USEC}")));
                    }
                }
                if let Some(weight) = self.start_cpu_weight.or(self.cpu_weight) {
                    files.push(weight_file(weight, v1));
                }
            }
            Controller::Pids => {
                if let Some(max) = self.pids_max {
                    files.push(("pids.max", max.to_string()));
                }
            }
        }
        files
    }

    /// The CPU weight file to write once the worker is ready, if it started at another.
    pub fn ready_weight(&self, v1: bool) -> Option<(&'static str, String)> {
        self.start_cpu_weight?;
        Some(weight_file(self.cpu_weight.unwrap_or(DEFAULT_WEIGHT), v1))
    }
}

/// The nice value that gives about the share of a CPU `weight` gives against weight 100
/// (each nice step is a factor of 1.25 in the kernel's table): for `start_cpu_weight` where
/// there is no cpu controller.
pub fn nice_for_weight(weight: u32) -> i32 {
    if weight >= DEFAULT_WEIGHT {
        return 0;
    }
    let steps = (f64::from(DEFAULT_WEIGHT) / f64::from(weight.max(1))).ln() / 1.25f64.ln();
    (steps.round() as i32).clamp(0, 19)
}

/// `cpu.weight`, or for v1 `cpu.shares` (weight 100 is 1024 shares, as systemd converts).
fn weight_file(weight: u32, v1: bool) -> (&'static str, String) {
    if v1 {
        let shares = (u64::from(weight) * 1024 / 100).clamp(2, 262_144);
        ("cpu.shares", shares.to_string())
    } else {
        ("cpu.weight", weight.to_string())
    }
}

/// `256MiB`, `1536KiB`, `1000B`.
pub fn show_bytes(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let size = 1u64 << shift;
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Writes `value` to `dir/file`, with an error that names both.
pub(super) fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value.as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot write {value:?} to {}: {e}",
                dir.join(file).display()
            ),
        )
    })
}

/// The number after `key ` in a flat-keyed cgroup file (`memory.events`, `cpu.stat`).
pub(super) fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_the_files_of_each_hierarchy() {
        let limits = Limits {
            memory_max: Some(256 << 20),
            memory_high: Some(200 << 20),
            cpu_quota: Some(150),
            cpu_weight: Some(200),
            start_cpu_weight: Some(10),
            pids_max: Some(64),
        };
        assert_eq!(
            limits.files(Controller::Memory, false),
            [
                ("memory.max", "268435456".to_string()),
                ("memory.oom.group", "1".into()),
                ("memory.high", "209715200".into())
            ]
        );
        assert_eq!(
            limits.files(Controller::Memory, true),
            [
                ("memory.limit_in_bytes", "268435456".to_string()),
                ("memory.soft_limit_in_bytes", "209715200".into())
            ]
        );
        // Starts at the start weight; the configured one comes once ready.
        assert_eq!(
            limits.files(Controller::Cpu, false),
            [
                ("cpu.max", "150000 100000".to_string()),
                ("cpu.weight", "10".into())
            ]
        );
        assert_eq!(
            limits.files(Controller::Cpu, true),
            [
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "150000".into()),
                ("cpu.shares", "102".into())
            ]
        );
        assert_eq!(
            limits.ready_weight(false),
            Some(("cpu.weight", "200".into()))
        );
        assert_eq!(
            limits.ready_weight(true),
            Some(("cpu.shares", "2048".into()))
        );
        assert_eq!(
            limits.files(Controller::Pids, true),
            [("pids.max", "64".to_string())]
        );
        assert_eq!(
            limits.keys_of(Controller::Cpu),
            ["cpu_quota", "cpu_weight", "start_cpu_weight"]
        );
    }

    #[test]
    fn no_limits_write_nothing() {
        let none = Limits::default();
        for controller in Controller::ALL {
            assert!(none.files(controller, false).is_empty());
            assert!(none.files(controller, true).is_empty());
            assert!(none.keys_of(controller).is_empty());
        }
        assert_eq!(none.ready_weight(false), None);
        // Without a start weight there is nothing to give back.
        let weighted = Limits {
            cpu_weight: Some(50),
            ..Limits::default()
        };
        assert_eq!(weighted.ready_weight(false), None);
        let started_low = Limits {
            start_cpu_weight: Some(1),
            ..Limits::default()
        };
        assert_eq!(
            started_low.ready_weight(false),
            Some(("cpu.weight", "100".into()))
        );
        assert_eq!(
            started_low.files(Controller::Cpu, true),
            [("cpu.shares", "10".to_string())]
        );
    }

    #[test]
    fn a_start_weight_without_the_cpu_controller_becomes_a_nice_value() {
        assert_eq!(nice_for_weight(100), 0);
        assert_eq!(nice_for_weight(5000), 0);
        assert_eq!(nice_for_weight(80), 1);
        assert_eq!(nice_for_weight(10), 10);
        assert_eq!(nice_for_weight(1), 19);
    }

    #[test]
    fn sizes_are_shown_in_their_largest_unit() {
        assert_eq!(show_bytes(64 << 20), "64MiB");
        assert_eq!(show_bytes(1536 << 10), "1536KiB");
        assert_eq!(show_bytes(1000), "1000B");
        assert_eq!(show_bytes(3 << 30), "3GiB");
    }
}
