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
//!
//! The memory, cpu and pids controllers carry the limits of [`Limits`] and the accounting of
//! [`Usage`]. Each is enabled in the subtree where cgroup v2 has it; on a hybrid host, where
//! it is bound to a v1 hierarchy, handover makes a parallel tree there ([`v1`]); where neither
//! works, [`CgroupRoot::missing`] says why.

use std::io;
use std::path::{Path, PathBuf};

mod limits;
mod v1;

pub use limits::{nice_for_weight, show_bytes, Controller, Limits};

/// The subtree handover manages.
#[derive(Debug)]
pub struct CgroupRoot {
    root: PathBuf,
    /// handover created `root` (without systemd) and removes it at the end.
    created: bool,
    /// Held on a created `root` for handover's lifetime: another handover's sweep removes
    /// only cgroups whose lock it can take, whatever pid namespace their owner lives in.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
    /// Where each controller is, or why it is not.
    places: Vec<(Controller, Place)>,
}

/// Where a controller's files are.
#[derive(Debug)]
enum Place {
    /// Enabled in the v2 subtree.
    V2,
    /// In a v1 hierarchy, below this tree.
    V1(v1::Tree),
    /// Nowhere handover can use, and why.
    Missing(String),
}

/// A worker's cgroup: its v2 directory, and where its controllers' files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCgroup {
    /// `gen-G/worker-I-ID` in the v2 tree.
    pub dir: PathBuf,
    /// Each controller in use: its directory, and whether that is a v1 one.
    places: Vec<(Controller, PathBuf, bool)>,
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
    // The pid alone is not unique: every handover that is PID 1 of a container is pid 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()) as u32;
    let name = format!("handover.{}-{nanos:08x}", std::process::id());
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
        let places = places(&own, &name);
        return Ok((
            CgroupRoot {
                root: own,
                created: false,
                _lock: None,
                places,
            },
            Origin::Delegated,
        ));
    }
    if crate::users::effective_uid() != 0 {
        return Err("handover is neither root nor a systemd service with Delegate=yes".into());
    }
    let (root, lock) = create_locked(&own, &name)?;
    if no_kill(&root) {
        drop(lock);
        let _ = std::fs::remove_dir(&root);
        return Err(too_old.into());
    }
    let places = places(&root, &name);
    Ok((
        CgroupRoot {
            root,
            created: true,
            _lock: Some(lock),
            places,
        },
        Origin::Created,
    ))
}

/// Where each controller can be had for the workers below `root`: enabled in its
/// `cgroup.subtree_control`, else in a v1 tree called `name`.
fn places(root: &Path, name: &str) -> Vec<(Controller, Place)> {
    let listed = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .map(|t| t.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let available = listed(root);
    let parent_has = root.parent().map(listed).unwrap_or_default();
    Controller::ALL
        .into_iter()
        .map(|controller| {
            let cname = controller.name();
            let place = if available.iter().any(|c| c == cname) {
                // The cpu controller makes the kernel schedule each cgroup below as one group
                // (against everything beside it): it is enabled only for a generation that
                // sets a cpu limit, as systemd does (CPU time comes from cpu.stat without it).
                if controller == Controller::Cpu {
                    Place::V2
                } else {
                    match limits::write(root, "cgroup.subtree_control", &format!("+{cname}")) {
                        Ok(()) => Place::V2,
                        Err(e) => {
                            Place::Missing(format!("cannot enable the {cname} controller: {e}"))
                        }
                    }
                }
            } else if parent_has.iter().any(|c| c == cname) {
                Place::Missing(format!(
                    "the {cname} controller is not enabled for the children of {} (its \
                     cgroup.subtree_control, which needs that cgroup to hold no process)",
                    root.parent().unwrap_or(root).display()
                ))
            } else {
                match v1::create(controller, name) {
                    Ok(tree) => Place::V1(tree),
                    Err(why) => Place::Missing(why),
                }
            };
            (controller, place)
        })
        .collect()
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Sweeps `own` of stale runs' cgroups, then creates `own/name` and locks it, for as long as
/// the returned lock lives. Sweeping and creating hold a lock on `own` itself, so that no
/// other handover's sweep can take a new cgroup between its creation and its lock.
fn create_locked(
    own: &Path,
    name: &str,
) -> Result<(PathBuf, nix::fcntl::Flock<std::fs::File>), String> {
    let lock = |dir: &Path, arg| {
        std::fs::File::open(dir).and_then(|file| {
            nix::fcntl::Flock::lock(file, arg).map_err(|(_, errno)| io::Error::from(errno))
        })
    };
    let _parent = lock(own, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|e| format!("cannot lock {}: {e}", own.display()))?;
    sweep_stale(own);
    let root = own.join(name);
    std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    match lock(&root, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok((root, held)),
        Err(e) => {
            let _ = std::fs::remove_dir(&root);
            Err(format!("cannot lock {}: {e}", root.display()))
        }
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
        v1::kill_listed(&path);
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

    /// The cgroup of a generation's worker, created with its `limits` written:
    /// `gen-G/worker-I-ID`, in the v2 tree and in each v1 tree.
    pub fn create_worker(
        &self,
        generation: u64,
        index: u32,
        id: u64,
        limits: &Limits,
    ) -> io::Result<WorkerCgroup> {
        let leaf = format!("worker-{index}-{id}");
        // The cpu controller only where a limit needs it (see `places`).
        let used = |c: Controller| c != Controller::Cpu || !limits.keys_of(c).is_empty();
        let gen = self.generation_dir(generation);
        if mkdir_new(&gen)? {
            let enable: Vec<String> = self
                .places
                .iter()
                .filter(|(c, p)| matches!(p, Place::V2) && used(*c))
                .map(|(c, _)| format!("+{}", c.name()))
                .collect();
            if enable.iter().any(|c| c == "+cpu") {
                limits::write(&self.root, "cgroup.subtree_control", "+cpu")?;
            }
            if !enable.is_empty() {
                limits::write(&gen, "cgroup.subtree_control", &enable.join(" "))?;
            }
        }
        let dir = gen.join(&leaf);
        mkdir(&dir)?;
        let mut cgroup = WorkerCgroup {
            dir: dir.clone(),
            places: Vec::new(),
        };
        let made = (|| {
            for (controller, place) in self.places.iter().filter(|(c, _)| used(*c)) {
                let (at, v1) = match place {
                    Place::V2 => (dir.clone(), false),
                    Place::V1(tree) => {
                        let gen = tree.root.join(format!("gen-{generation}"));
                        mkdir(&gen)?;
                        let at = gen.join(&leaf);
                        mkdir(&at)?;
                        (at, true)
                    }
                    Place::Missing(_) => continue,
                };
                cgroup.places.push((*controller, at.clone(), v1));
                for (file, value) in limits.files(*controller, v1) {
                    limits::write(&at, file, &value)?;
                }
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                for dir in cgroup.dirs() {
                    let _ = std::fs::remove_dir(dir);
                }
                Err(e)
            }
        }
    }

    /// A generation's cgroup (the parent of its workers') in the v2 tree.
    pub fn generation_dir(&self, generation: u64) -> PathBuf {
        self.root.join(format!("gen-{generation}"))
    }

    /// A generation's cgroups in every tree, to remove once its workers are gone.
    pub fn generation_dirs(&self, generation: u64) -> Vec<PathBuf> {
        let mut dirs = vec![self.generation_dir(generation)];
        dirs.extend(self.v1_roots().map(|r| r.join(format!("gen-{generation}"))));
        dirs
    }

    /// The v1 trees' roots.
    fn v1_roots(&self) -> impl Iterator<Item = &Path> {
        self.places.iter().filter_map(|(_, p)| match p {
            Place::V1(tree) => Some(tree.root.as_path()),
            _ => None,
        })
    }

    /// The cgroups made for this run, which die with handover (and its sentinel removes): the
    /// v2 subtree when handover created it, and every v1 tree.
    pub fn owned_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = self.v1_roots().map(Path::to_path_buf).collect();
        if self.created {
            roots.insert(0, self.root.clone());
        }
        roots
    }

    /// Why `controller` cannot be used, if it cannot.
    pub fn missing(&self, controller: Controller) -> Option<&str> {
        self.places.iter().find_map(|(c, p)| match p {
            Place::Missing(why) if *c == controller => Some(why.as_str()),
            _ => None,
        })
    }

    /// `memory, cpu, pids` or `memory (v1), cpu (v1), pids (v1)`; the controllers in use.
    pub fn controllers(&self) -> String {
        let names: Vec<String> = self
            .places
            .iter()
            .filter_map(|(c, p)| match p {
                Place::V2 => Some(c.name().to_owned()),
                Place::V1(_) => Some(format!("{} (v1)", c.name())),
                Place::Missing(_) => None,
            })
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// At the end: kills what is left below the subtree and removes it (all of it when
    /// handover created it; else the generations', leaving systemd's unit cgroup and
    /// handover's own leaf), and the v1 trees.
    pub fn finish(&self) {
        let generations = |root: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(root)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_str()
                                .is_some_and(|n| n.starts_with("gen-"))
                        })
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        for dir in generations(&self.root) {
            kill(&dir);
        }
        let mut dirs = generations(&self.root);
        for root in self.v1_roots() {
            v1::kill_listed(root);
            dirs.push(root.to_path_buf());
        }
        if self.created {
            dirs.push(self.root.clone());
        }
        // Killed processes leave their cgroups at once but may take a moment to be gone.
        remove_all(&dirs, 100);
    }
}

/// Removes every tree of `dirs`, trying again every 10 ms up to `tries` times while one is
/// still busy.
pub fn remove_all(dirs: &[PathBuf], tries: u32) {
    for _ in 0..tries {
        let busy = dirs.iter().filter(|d| remove_tree(d).is_err()).count();
        if busy == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Creates `dir`; whether it is new.
fn mkdir_new(dir: &Path) -> io::Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

impl WorkerCgroup {
    /// Every directory of it: the v2 one first, then the v1 ones. The stub joins each.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(
            self.places
                .iter()
                .filter(|(_, _, v1)| *v1)
                .map(|(_, d, _)| d.clone()),
        );
        dirs
    }

    fn place(&self, controller: Controller) -> Option<(&Path, bool)> {
        self.places
            .iter()
            .find(|(c, _, _)| *c == controller)
            .map(|(_, d, v1)| (d.as_path(), *v1))
    }

    /// Whether `controller`'s files are there (and so its limits applied).
    pub fn has(&self, controller: Controller) -> bool {
        self.place(controller).is_some()
    }

    /// Ends every process in it, however it detached.
    pub fn kill(&self) {
        kill(&self.dir);
    }

    /// What it uses now.
    pub fn usage(&self) -> Usage {
        let number = |dir: &Path, file: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let memory_bytes = self.place(Controller::Memory).and_then(|(dir, v1)| {
            number(
                dir,
                if v1 {
                    "memory.usage_in_bytes"
                } else {
                    "memory.current"
                },
            )
        });
        let pids = self
            .place(Controller::Pids)
            .and_then(|(dir, _)| number(dir, "pids.current"));
        Usage {
            cpu_usec: limits::keyed(&self.dir, "cpu.stat", "usage_usec"),
            memory_bytes,
            pids,
        }
    }

    /// How many of its processes the OOM killer has killed, where the memory controller
    /// counts it.
    pub fn oom_kills(&self) -> Option<u64> {
        let (dir, v1) = self.place(Controller::Memory)?;
        if v1 {
            limits::keyed(dir, "memory.oom_control", "oom_kill")
        } else {
            limits::keyed(dir, "memory.events", "oom_kill")
        }
    }

    /// Gives a worker that started at `start_cpu_weight` its configured weight.
    pub fn ready(&self, limits: &Limits) -> io::Result<()> {
        let Some((dir, v1)) = self.place(Controller::Cpu) else {
            return Ok(());
        };
        match limits.ready_weight(v1) {
            Some((file, value)) => limits::write(dir, file, &value),
            None => Ok(()),
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
