//! cgroup v1 hierarchies on a hybrid host, for the controllers its cgroup v2 tree lacks.
//!
//! On a hybrid host the memory, cpu and pids controllers are bound to v1 hierarchies and
//! cannot be enabled in the v2 tree. Workers still get their v2 cgroup (membership, the tree
//! kill, CPU time); for each missing controller handover makes a parallel tree,
//! `handover.PID-XXXXXXXX/gen-G/worker-I-ID` below its own cgroup of that hierarchy, which
//! the stub joins as well. Those trees carry limits and accounting only: the v2 kill ends
//! their processes.

use std::path::{Path, PathBuf};

use super::limits::Controller;

/// A v1 tree handover made for one controller, locked while handover runs.
#[derive(Debug)]
pub(super) struct Tree {
    /// `handover.PID-XXXXXXXX` in the controller's hierarchy.
    pub(super) root: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// This process's cgroup in the v1 hierarchy of `controller`, if one is mounted.
fn own_cgroup(controller: Controller) -> Result<PathBuf, String> {
    let name = controller.name();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        if right.next()? != "cgroup" {
            return None;
        }
        let options = right.nth(1)?;
        if !options.split(',').any(|o| o == name) {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        Some((
            super::unescape(fields.get(3)?),
            super::unescape(fields.get(4)?),
        ))
    });
    let no_v2 = format!("the {name} controller is not enabled for handover's cgroup v2 tree");
    let Some((mount_root, mount_point)) = mount else {
        return Err(format!(
            "the {name} controller is neither enabled for handover's cgroup v2 tree nor \
             mounted as a cgroup v1 hierarchy"
        ));
    };
    // A cgroup2 mounted over /sys/fs/cgroup later (in a container) hides the v1 mounts
    // below it, which mountinfo still lists.
    let is_v1 = nix::sys::statfs::statfs(mount_point.as_str())
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC);
    if !is_v1 {
        return Err(format!(
            "{no_v2}, and its v1 hierarchy's mount at {mount_point} is hidden by another mount"
        ));
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = cgroup
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',').any(|c| c == name).then_some(path)
        })
        .ok_or_else(|| format!("{no_v2}, and handover is in no cgroup of its v1 hierarchy"))?;
    let relative = own
        .strip_prefix(mount_root.trim_end_matches('/'))
        .ok_or_else(|| {
            format!(
                "{no_v2}, and handover's cgroup {own} of its v1 hierarchy is outside the mount \
                 at {mount_point} (which shows {mount_root})"
            )
        })?;
    Ok(Path::new(&mount_point).join(relative.trim_start_matches('/')))
}

/// Makes `name` below handover's own cgroup of `controller`'s v1 hierarchy, after removing
/// stale trees of earlier runs.
pub(super) fn create(controller: Controller, name: &str) -> Result<Tree, String> {
    let own = own_cgroup(controller)?;
    let (root, lock) = super::create_locked(&own, name).map_err(|why| {
        format!(
            "the {} controller is not enabled for handover's cgroup v2 tree, and its v1 tree \
             cannot be made: {why}",
            controller.name()
        )
    })?;
    Ok(Tree { root, _lock: lock })
}

/// SIGKILLs every process listed in the v1 cgroup `dir` and below (v1 has no `cgroup.kill`).
pub(super) fn kill_listed(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_listed(&entry.path());
            }
        }
    }
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
