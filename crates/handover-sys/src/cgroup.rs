//! cgroup v2: a subtree handover may manage, a cgroup per worker, and the tree kill.
//!
//! Where the subtree comes from:
//! - under systemd, the unit's own cgroup, when the unit has `Delegate=yes` (systemd marks a
//!   delegated cgroup with the `trusted.delegate` or `user.delegate` extended attribute);
//!   handover moves itself into a leaf, `supervisor`, so that the unit's cgroup holds no
//!   process of its own (the rule that lets controllers be enabled below it);
//! - as root without systemd, `handover.PID-XXXXXXXX`, created below handover's own cgroup,
//!   locked (`flock`) while handover runs, removed at its end (or by the next start, after a
//!   SIGKILL);
//! - otherwise none, and [`setup`] says why.
//!
//! Workers live in `gen-G/worker-I-ID` below it. The stub joins the worker's cgroup before
//! it execs the worker, so nothing of the worker runs outside it; once the worker has exited,
//! `cgroup.kill` ends whatever it left behind, however it detached.

use std::io;
use std::path::{Path, PathBuf};

/// The subtree handover manages.
#[derive(Debug)]
pub struct CgroupRoot {
    root: PathBuf,
    /// handover created `root` (without systemd) and removes it at the end.
    created: bool,
    /// Held on a created `root` for handover's lifetime: another handover's sweep removes
    /// only cgroups whose lock it can take, whatever pid namespace their owner lives in.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// How handover came to its subtree, for the log and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A unit's cgroup delegated by systemd.
    Delegated,
    /// Created below handover's own cgroup.
    Created,
}

/// The cgroup2 mount point and this process's cgroup in it.
fn own_cgroup() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    // Fields: id parent major:minor root mount-point options ... - fstype source options.
    let mounts: Vec<(String, String)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = left.split(' ').collect();
            Some((unescape(fields.get(3)?), unescape(fields.get(4)?)))
        })
        .collect();
    // The last mount of the namespace's own root wins: a cgroup2 mounted over an inherited
    // one (in a container) hides it.
    let (mount_root, mount_point) = mounts
        .iter()
        .rev()
        .find(|(root, _)| root == "/")
        .or_else(|| mounts.last())
        .cloned()
        .ok_or("no cgroup2 file system is mounted")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is in no cgroup2 hierarchy")?;
    if let Some(relative) = own.strip_prefix(mount_root.trim_end_matches('/')) {
        return Ok(Path::new(&mount_point).join(relative.trim_start_matches('/')));
    }
    // In a cgroup namespace whose root is below the mount's root (which mountinfo then shows
    // as `/..`), the namespace's root is one of the mount's directories: the one where our
    // path holds this process.
    if mount_root == "/.." {
        let me = std::process::id().to_string();
        let relative = own.trim_start_matches('/');
        if let Ok(entries) = std::fs::read_dir(&mount_point) {
            for entry in entries.flatten() {
                let candidate = entry.path().join(relative);
                let procs = std::fs::read_to_string(candidate.join("cgroup.procs"));
                if procs.is_ok_and(|p| p.lines().any(|l| l == me)) {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(format!(
        "handover's cgroup {own} is outside the cgroup2 mount at {mount_point} (which shows \
         {mount_root})"
    ))
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u16, |n, b| n * 8 + u16::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether systemd delegated `dir` (it sets one of these attributes on a delegated cgroup).
fn delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("no NUL in a constant");
        let mut value = [0u8; 8];
        // SAFETY: NUL-terminated path and name, and a buffer of the given size.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    })
}

/// Finds or makes the subtree handover may manage. `under_systemd`: handover runs as a
/// systemd service (then only a delegated cgroup will do).
pub fn setup(under_systemd: bool) -> Result<(CgroupRoot, Origin), String> {
    let own = own_cgroup()?;
    // The root cgroup has no cgroup.kill; every other one has, on Linux 5.14 and later.
    let no_kill = |dir: &Path| !dir.join("cgroup.kill").exists();
    let too_old = "the kernel has no cgroup.kill (Linux 5.14 or later is needed)";
    if under_systemd {
        if no_kill(&own) {
            return Err(too_old.into());
        }
        if !delegated(&own) {
            return Err(format!(
                "the unit's cgroup {} is not delegated (set Delegate=yes in the unit)",
                own.display()
            ));
        }
        let leaf = own.join("supervisor");
        mkdir(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
        std::fs::write(leaf.join("cgroup.procs"), b"0")
            .map_err(|e| format!("cannot move into {}: {e}", leaf.display()))?;
        return Ok((
            CgroupRoot {
                root: own,
                created: false,
                _lock: None,
            },
            Origin::Delegated,
        ));
    }
    if crate::users::effective_uid() != 0 {
        return Err("handover is neither root nor a systemd service with Delegate=yes".into());
    }
    sweep_stale(&own);
    // The pid alone is not unique: every handover that is PID 1 of a container is pid 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()) as u32;
    let root = own.join(format!("handover.{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    if no_kill(&root) {
        let _ = std::fs::remove_dir(&root);
        return Err(too_old.into());
    }
    let lock = std::fs::File::open(&root).and_then(|dir| {
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    });
    let lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            let _ = std::fs::remove_dir(&root);
            return Err(format!("cannot lock {}: {e}", root.display()));
        }
    };
    Ok((
        CgroupRoot {
            root,
            created: true,
            _lock: Some(lock),
        },
        Origin::Created,
    ))
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Removes `handover.*` cgroups below `own` whose handover is gone (killed before it could
/// clean up): those whose lock nobody holds. What is left in them is killed first.
fn sweep_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with("handover.")) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = std::fs::File::open(&path) else {
            continue;
        };
        let Ok(_held) = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            // A live handover holds it.
            continue;
        };
        kill(&path);
        for _ in 0..50 {
            if remove_tree(&path).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Sends SIGKILL to every process of the cgroup `dir` and below (`cgroup.kill`).
pub fn kill(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
}

/// Removes the cgroup `dir` and every cgroup below it, deepest first. Fails (`EBUSY`) while
/// a process is still in one of them.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl CgroupRoot {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether handover created it for this run (rather than systemd delegating it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The cgroup of a generation's worker, created: `gen-G/worker-I-ID`.
    pub fn create_worker(&self, generation: u64, index: u32, id: u64) -> io::Result<PathBuf> {
        let gen = self.generation_dir(generation);
        mkdir(&gen)?;
        let dir = gen.join(format!("worker-{index}-{id}"));
        mkdir(&dir)?;
        Ok(dir)
    }

    /// A generation's cgroup (the parent of its workers').
    pub fn generation_dir(&self, generation: u64) -> PathBuf {
        self.root.join(format!("gen-{generation}"))
    }

    /// At the end: kills what is left below the subtree and removes it (all of it when
    /// handover created it; else the generations', leaving systemd's unit cgroup and
    /// handover's own leaf).
    pub fn finish(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with("gen-")) {
                kill(&entry.path());
            }
        }
        // Killed processes leave their cgroups at once but may take a moment to be gone.
        for _ in 0..100 {
            let mut busy = false;
            if let Ok(entries) = std::fs::read_dir(&self.root) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_str().is_some_and(|n| n.starts_with("gen-"))
                        && remove_tree(&entry.path()).is_err()
                    {
                        busy = true;
                    }
                }
            }
            if !busy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.created {
            let _ = remove_tree(&self.root);
        }
    }
}

/// Whether process `sender` is in the cgroup of process `owner` or below it, as
/// `/proc/PID/cgroup` shows both.
pub fn in_cgroup_of(owner: i32, sender: i32) -> bool {
    let path = |pid: i32| -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    };
    match (path(owner), path(sender)) {
        (Some(owner), Some(sender)) => {
            sender == owner || sender.starts_with(&format!("{}/", owner.trim_end_matches('/')))
        }
        _ => false,
    }
}

/// Accounting of one cgroup: what its files say, where they exist (the memory and pids
/// controllers may not be enabled for it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `cpu.stat` `usage_usec`.
    pub cpu_usec: Option<u64>,
    /// `memory.current`.
    pub memory_bytes: Option<u64>,
    /// `pids.current`.
    pub pids: Option<u64>,
}

/// Reads the accounting files of the cgroup `dir`.
pub fn usage(dir: &Path) -> Usage {
    let number = |file: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
    Usage {
        cpu_usec,
        memory_bytes: number("memory.current"),
        pids: number("pids.current"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\"), "/a\\");
        assert_eq!(unescape("\\0"), "\\0");
        assert_eq!(unescape("\\777x"), "\\777x");
    }
}
