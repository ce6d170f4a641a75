//! Issue 14, as root without systemd: each worker runs in a cgroup of its own below
//! `handover.PID-XXXXXXXX` (which handover creates below the test's own cgroup, and removes); what a
//! worker leaves behind, however it detached, dies with it; status shows each worker's cgroup
//! and CPU time; nothing is left after a stop, a crash or a thousand reloads. The limits of
//! `[worker]` are written into each worker's cgroup (in the v2 tree, or in handover's v1 trees
//! on a hybrid host), hold, and an OOM kill is reported as one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handover_tests::harness::{
    free_port, http_get_body, marked_processes, skip, unique_marker, Handover, Options, GUARD,
};
use serde_json::Value;

/// `Some(reason)` unless this runs as root with a cgroup2 tree that has `cgroup.kill`.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create cgroups".into());
    }
    match own_cgroup() {
        None => Some("needs a cgroup2 file system".into()),
        Some(_) => None,
    }
}

/// The test's own cgroup, as a directory of the cgroup2 mount.
fn own_cgroup() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(str::to_owned))?
    })?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(&mount).join(own.trim_start_matches('/')))
}

/// The cgroup `pid` is in, as a path below the mount.
fn cgroup_of(pid: i64) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

/// The cgroup handover made for this run, from status: `handover.PID-XXXXXXXX` below the
/// test's own.
fn root_of(h: &Handover) -> PathBuf {
    let status = h.status_json();
    let path = status["cgroups"]
        .as_str()
        .and_then(|s| s.strip_prefix("on: "))
        .unwrap_or_else(|| panic!("cgroups are not on: {status:#}"));
    let root = PathBuf::from(path);
    let name = root.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(root.parent(), own_cgroup().as_deref(), "{path}");
    assert!(
        name.starts_with(&format!("handover.{}-", h.pid())),
        "{name}"
    );
    root
}

fn workers(h: &Handover) -> Vec<Value> {
    h.status_json()["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["state"] == "serving")
        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_worker_runs_in_a_cgroup_of_its_own_and_nothing_is_left_after_stop() {
    if skip(missing()) {
        return;
    }
    let mut h = Handover::start(
        "cg-own",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\ncount = 2\n",
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let root = root_of(&h);
    assert!(
        h.log.text().contains(&format!(
            "a cgroup for each worker, below {} (created for this run)",
            root.display()
        )),
        "{}",
        h.log.text()
    );
    let status = h.status_json();
    assert_eq!(
        status["cgroups"].as_str(),
        Some(format!("on: {}", root.display()).as_str())
    );
    let ws = workers(&h);
    assert_eq!(ws.len(), 2);
    for w in &ws {
        let pid = w["pid"].as_i64().unwrap();
        let path = w["cgroup"]["path"].as_str().unwrap().to_owned();
        assert!(
            path.starts_with(&root.display().to_string())
                && path.contains(&format!("/gen-1/worker-{}-", w["index"])),
            "{path}"
        );
        assert!(
            path.ends_with(&cgroup_of(pid)),
            "{path} vs {}",
            cgroup_of(pid)
        );
        assert!(w["cgroup"]["cpu_usec"].as_u64().is_some(), "{w:#}");
    }
    let (code, out, _) = h.ctl(&["status"]);
    assert!(code.success());
    assert!(
        out.contains(&format!("cgroups: on: {}", root.display())),
        "{out}"
    );
    assert!(out.contains("cgroup ") && out.contains(", CPU "), "{out}");
    assert!(h.stop().success());
    assert!(!root.exists(), "{} is left after the stop", root.display());
    assert_eq!(v1_trees_of(h.pid()), Vec::<PathBuf>::new(), "v1 trees left");
}

/// A crashed worker's setsid grandchild (which its process group's SIGKILL cannot reach)
/// dies with it; the restarted worker's lives.
#[test]
fn what_a_crashed_worker_left_behind_dies_with_it() {
    if skip(missing()) {
        return;
    }
    let marker = unique_marker("cg-crash");
    let mut h = Handover::start(
        "cg-crash",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\", \"--grandchild\", \"--marker\", \"{marker}\"]\n"
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    wait_until("the grandchild", || marked_processes(&marker).len() == 1);
    let first: Vec<i32> = marked_processes(&marker);
    let worker = workers(&h)[0]["pid"].as_i64().unwrap() as i32;
    // SAFETY: sending a signal to a pid this test just read; no memory is involved.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    h.log.wait_for("worker died");
    h.log.wait_for_count("worker ready", 2);
    wait_until("the first worker's grandchild to be gone", || {
        !marked_processes(&marker).iter().any(|p| first.contains(p))
    });
    wait_until("the new worker's grandchild", || {
        marked_processes(&marker).len() == 1
    });
    assert!(h.stop().success());
    assert!(marked_processes(&marker).is_empty());
}

/// A thousand reloads leave one generation's cgroup, and its workers', and nothing else.
#[test]
fn a_thousand_reloads_leave_no_cgroup_behind() {
    if skip(missing()) {
        return;
    }
    const RELOADS: usize = 1000;
    let mut h = Handover::start(
        "cg-reloads",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\ncount = 2\n\n[reload]\nmax_draining = 64\n",
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    let root = root_of(&h);
    for n in 1..=RELOADS {
        let (status, out, err) = h.ctl(&["reload"]);
        assert!(status.success(), "reload {n}: {out}{err}");
    }
    h.log
        .wait_for_count("generation draining has no workers left", RELOADS);
    let tree = || -> Vec<String> {
        let mut dirs = Vec::new();
        for gen in std::fs::read_dir(&root).unwrap().flatten() {
            if !gen.file_type().unwrap().is_dir() {
                continue;
            }
            dirs.push(gen.file_name().to_string_lossy().into_owned());
            for w in std::fs::read_dir(gen.path()).unwrap().flatten() {
                if w.file_type().unwrap().is_dir() {
                    dirs.push(format!(
                        "{}/{}",
                        gen.file_name().to_string_lossy(),
                        w.file_name().to_string_lossy()
                    ));
                }
            }
        }
        dirs.sort();
        dirs
    };
    // The last old workers' cgroups go as soon as their last process has.
    let deadline = Instant::now() + GUARD;
    while tree().len() > 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = RELOADS + 1;
    let left = tree();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], format!("gen-{last}"), "{left:?}");
    // The v1 trees of a hybrid host likewise keep only the last generation.
    for v1 in v1_trees_of(h.pid()) {
        let gens: Vec<String> = std::fs::read_dir(&v1)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // The cpu tree is not used without a cpu limit (it would group the workers'
        // scheduling); memory and pids always are.
        let expected = if v1.starts_with(v1_mount("cpu").unwrap_or_default()) {
            Vec::new()
        } else {
            vec![format!("gen-{last}")]
        };
        assert_eq!(gens, expected, "{}", v1.display());
    }
    assert!(h.stop().success());
    assert!(!root.exists());
    assert_eq!(v1_trees_of(h.pid()), Vec::<PathBuf>::new(), "v1 trees left");
}

/// `cgroups = "required"` where there are none to have is a clear start error; "off" means
/// none, and says so.
#[test]
fn required_cgroups_refuse_to_start_without_and_off_means_none() {
    if skip(missing()) {
        return;
    }
    let mut h = Handover::start(
        "cg-required",
        "[handover]\ncgroups = \"required\"\n\n[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options {
            // As nobody: neither root nor a delegated systemd service.
            wrapper: vec![
                "sh".into(),
                "-c".into(),
                "chown -R 65534:65534 {dir} && exec setpriv --reuid=65534 --regid=65534 \
                 --clear-groups \"$@\""
                    .into(),
                "sh".into(),
            ],
            env: vec![("TMPDIR".into(), "/tmp".into())],
            ..Default::default()
        },
    );
    assert_eq!(h.wait().code(), Some(3), "{}", h.log.text());
    assert!(
        h.log.text().contains(
            "handover.cgroups is \"required\", but handover is neither root nor a systemd \
             service with Delegate=yes"
        ),
        "{}",
        h.log.text()
    );

    let mut h = Handover::start(
        "cg-off",
        "[handover]\ncgroups = \"off\"\n\n[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let status = h.status_json();
    assert_eq!(status["cgroups"], "off: [handover] cgroups = \"off\"");
    let w = &workers(&h)[0];
    assert!(w.get("cgroup").is_none(), "{w:#}");
    assert!(!cgroup_of(w["pid"].as_i64().unwrap()).contains("handover."));
    assert!(h.stop().success());
}

/// A SIGKILLed run's cgroup (nobody holds its lock) is removed by the next start; one whose
/// lock is held (a live handover, perhaps pid 1 of a container, so its pid proves nothing)
/// is left alone.
#[test]
fn stale_cgroups_are_swept_by_their_lock() {
    use std::os::fd::AsRawFd;
    if skip(missing()) {
        return;
    }
    let own = own_cgroup().unwrap();
    let tag = std::process::id();
    let dead = own.join(format!("handover.1-dead{tag:04x}"));
    let live = own.join(format!("handover.1-live{tag:04x}"));
    for dir in [&dead, &live] {
        std::fs::create_dir(dir).unwrap();
        std::fs::create_dir(dir.join("gen-3")).unwrap();
    }
    let held = std::fs::File::open(&live).unwrap();
    // SAFETY: flock on a file this test opened and holds.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut h = Handover::start(
        "cg-sweep",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\n",
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    assert!(!dead.exists(), "the dead run's cgroup is left");
    assert!(
        live.join("gen-3").exists(),
        "the live run's cgroup was touched"
    );
    assert!(h.stop().success());
    drop(held);
    std::fs::remove_dir(live.join("gen-3")).unwrap();
    std::fs::remove_dir(&live).unwrap();
}

/// A SIGKILLed handover cannot clean up: its sentinel kills the run's cgroup, so even a
/// worker's setsid grandchild (out of reach of any process group) dies with it.
#[test]
fn a_sigkilled_handover_takes_every_descendant_with_it() {
    if skip(missing()) {
        return;
    }
    let marker = unique_marker("cg-sigkill");
    let mut h = Handover::start(
        "cg-sigkill",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\", \"--grandchild\", \"--marker\", \"{marker}\"]\ncount = 2\n"
        ),
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    wait_until("the grandchildren", || marked_processes(&marker).len() == 2);
    let root = root_of(&h);
    h.signal(libc::SIGKILL);
    h.wait();
    wait_until("every grandchild to be gone", || {
        marked_processes(&marker).is_empty()
    });
    // And the sentinel removes the emptied cgroups, in every tree.
    wait_until("the run's cgroups to be gone", || {
        !root.exists() && v1_trees_of(h.pid()).is_empty()
    });
}

/// The nice value of a process (field 19 of /proc/PID/stat).
fn nice_of(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    after
        .split_whitespace()
        .nth(16)
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MIN)
}

/// `start_nice`: a starting worker (and the child it starts while booting) runs at the lower
/// priority until it is ready, then its whole process group gets handover's back.
#[test]
fn workers_start_at_start_nice_and_get_their_priority_back_once_ready() {
    if skip(missing()) {
        return;
    }
    let marker = unique_marker("nice");
    let mut h = Handover::start(
        "nice",
        &format!(
            "[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"1500\", \"--child\", \"--marker\", \"{marker}\"]\nstart_nice = 12\n"
        ),
        Options::default(),
    );
    h.log.wait_for("worker started");
    wait_until("the worker's child", || {
        marked_processes(&marker).len() == 1
    });
    let child = i64::from(marked_processes(&marker)[0]);
    let worker = workers_any(&h)[0]["pid"].as_i64().unwrap();
    let own = nice_of(i64::from(h.pid()));
    assert_eq!(nice_of(worker), own + 12, "the worker while it starts");
    assert_eq!(nice_of(child), own + 12, "its child while it starts");
    h.log.wait_for("all 1 workers ready");
    wait_until("the priority back", || nice_of(worker) == own);
    assert_eq!(nice_of(child), own, "its child once it is ready");
    assert!(h.stop().success());
}

/// Every worker, in any generation, as status shows them.
fn workers_any(h: &Handover) -> Vec<Value> {
    h.status_json()["generations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// With cgroups, `notify_access = "all"` means any process of the worker's cgroup, as
/// systemd's NotifyAccess=all: a double-forked helper (reparented to handover, so no
/// descendant of the worker any more) may say READY=1. Without cgroups it is a stranger.
#[test]
fn any_process_of_the_workers_cgroup_may_notify() {
    if skip(missing()) || skip(needs_python()) {
        return;
    }
    // The helper lives on after it sent READY=1: a sender that is gone cannot be placed.
    let worker = r#"[worker]
command = ["sh", "-c", "(setsid python3 -c 'import os, socket, time; time.sleep(0.3); socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", os.environ[\"NOTIFY_SOCKET\"]); time.sleep(10)' &); exec sleep 60"]
ready_timeout = "3s"
"#;
    let mut h = Handover::start("cg-notify", worker, Options::default());
    h.log.wait_for("all 1 workers ready");
    assert!(h.stop().success());

    let mut h = Handover::start(
        "cg-notify-off",
        &format!("[handover]\ncgroups = \"off\"\n\n{worker}"),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    let text = h.log.text();
    assert!(
        text.contains("it is neither the worker nor a process the worker started"),
        "{text}"
    );
}

fn needs_python() -> Option<String> {
    let found = std::process::Command::new("python3")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!found).then(|| "needs python3".to_string())
}

/// The directory of `pid`'s cgroup that holds `controller`'s files: in a v1 hierarchy where
/// `/proc/PID/cgroup` lists one for it, else in the cgroup2 tree.
fn controller_dir(pid: i64, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next(), parts.next(), parts.next());
        if list.is_some_and(|l| l.split(',').any(|c| c == controller)) {
            let mount = v1_mount(controller).expect("a v1 mount for a listed controller");
            return mount.join(path.unwrap_or_default().trim_start_matches('/'));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next()? == "cgroup2")
                .then(|| left.split(' ').nth(4).map(str::to_owned))?
        })
        .unwrap();
    Path::new(&point).join(cgroup_of(pid).trim_start_matches('/'))
}

/// Where the v1 hierarchy of `controller` is mounted, if one is.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut right = right.split(' ');
        if right.next()? != "cgroup" {
            return None;
        }
        let options = right.nth(1)?;
        options
            .split(',')
            .any(|o| o == controller)
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// `handover.PID-*` trees of handover `pid` left in the v1 hierarchies of memory, cpu and
/// pids, below this test's own cgroups there.
fn v1_trees_of(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut found = Vec::new();
    for controller in ["memory", "cpu", "pids"] {
        let Some(mount) = v1_mount(controller) else {
            continue;
        };
        let Some(own) = text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',').any(|c| c == controller).then_some(path)
        }) else {
            continue;
        };
        let dir = mount.join(own.trim_start_matches('/'));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("handover.{pid}-"))
            {
                found.push(entry.path());
            }
        }
    }
    found
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_owned()
}

/// Whether a v1 directory (a limit file of that name exists only there).
fn is_v1(dir: &Path, v1_file: &str) -> bool {
    dir.join(v1_file).exists()
}

/// Unless the workers' cgroups have `controllers` (as status says), why this test cannot run.
fn lacks_controllers(h: &Handover, controllers: &[&str]) -> Option<String> {
    let status = h.status_json();
    let have = status["cgroup_controllers"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let missing: Vec<&&str> = controllers
        .iter()
        .filter(|c| !have.split(", ").any(|h| h.split(' ').next() == Some(**c)))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the host gives handover no {missing:?} controller (it has {have:?}): {}",
            h.log.text()
        )
    })
}

/// The limits of `[worker]` are in each worker's cgroup files (v2 or v1 ones), status shows
/// the memory the cgroup itself counts, and `pids_max` holds: the worker gets no more threads.
#[test]
fn limits_are_written_into_each_workers_cgroup_and_pids_max_holds() {
    if skip(missing()) {
        return;
    }
    let mut h = Handover::start(
        "cg-limits",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\", \"--threads\", \"40\"]\ncount = 2\n\
         memory_max = \"64MiB\"\nmemory_high = \"48MiB\"\ncpu_quota = \"50%\"\ncpu_weight = 200\npids_max = 16\n",
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    if skip(lacks_controllers(&h, &["memory", "cpu", "pids"])) {
        return;
    }
    let text = h.log.text();
    assert!(!text.contains("is not applied"), "{text}");
    // Each worker started all the threads its pids_max allowed (itself is one), not 40.
    assert_eq!(
        text.matches("started 15 of 40 threads").count(),
        2,
        "{text}"
    );
    for w in workers(&h) {
        let pid = w["pid"].as_i64().unwrap();
        let memory = controller_dir(pid, "memory");
        if is_v1(&memory, "memory.limit_in_bytes") {
            assert_eq!(
                read(&memory, "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(
                read(&memory, "memory.soft_limit_in_bytes"),
                (48u64 << 20).to_string()
            );
        } else {
            assert_eq!(read(&memory, "memory.max"), (64u64 << 20).to_string());
            assert_eq!(read(&memory, "memory.high"), (48u64 << 20).to_string());
        }
        let cpu = controller_dir(pid, "cpu");
        if is_v1(&cpu, "cpu.shares") {
            assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(&cpu, "cpu.shares"), "2048");
        } else {
            assert_eq!(read(&cpu, "cpu.max"), "50000 100000");
            assert_eq!(read(&cpu, "cpu.weight"), "200");
        }
        let pids = controller_dir(pid, "pids");
        assert_eq!(read(&pids, "pids.max"), "16");
        assert_eq!(
            read(&pids, "pids.current"),
            "16",
            "the worker and 15 threads"
        );
        assert_eq!(w["cgroup"]["pids"].as_u64(), Some(16), "{w:#}");
        // Status shows the memory the cgroup counts: read just before and just after the
        // status, allowing for the kernel's per-CPU charge batches (64 pages a CPU).
        let file = if is_v1(&memory, "memory.usage_in_bytes") {
            "memory.usage_in_bytes"
        } else {
            "memory.current"
        };
        let counted = || -> u64 { read(&memory, file).parse().unwrap() };
        let before = counted();
        let shown = workers(&h)
            .into_iter()
            .find(|x| x["pid"] == w["pid"])
            .unwrap()["cgroup"]["memory_bytes"]
            .as_u64()
            .unwrap();
        let after = counted();
        let slack = 64 * 4096 * std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        assert!(
            shown + slack >= before.min(after) && shown <= before.max(after) + slack,
            "status shows {shown} bytes, the cgroup counts {before} then {after}"
        );
    }
    let (_, out, _) = h.ctl(&["status"]);
    assert!(out.contains("cgroup controllers: memory"), "{out}");
    assert!(out.contains(", 16 processes"), "{out}");
    assert!(h.stop().success());
    assert_eq!(v1_trees_of(h.pid()), Vec::<PathBuf>::new(), "v1 trees left");
}

/// A worker that allocates past `memory_max` is killed by the OOM killer; handover says so
/// in the log, in the slot's last exit and in the status line (systemd's STATUS=), and
/// replaces it, while its sibling serves on untouched.
#[test]
fn a_worker_past_its_memory_max_is_oom_killed_reported_and_replaced() {
    if skip(missing()) {
        return;
    }
    let dir = handover_tests::harness::TempDir::new("cg-oom");
    let hog = dir.path().join("hog");
    let port = free_port();
    let mut h = Handover::start(
        "cg-oom",
        &format!(
            "[[socket]]\nname = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\n[worker]\n\
             command = [\"{{worker}}\", \"--ready-after\", \"0\", \"--serve\", \"--hog-memory-at\", \"{}\"]\n\
             count = 2\nmemory_max = \"64MiB\"\n",
            hog.display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    if skip(lacks_controllers(&h, &["memory"])) {
        return;
    }
    let before = workers(&h);
    let pid_of = |w: &Value| w["pid"].as_i64().unwrap();
    let (victim, sibling) = (pid_of(&before[0]), pid_of(&before[1]));
    std::fs::write(format!("{}.{victim}", hog.display()), b"").unwrap();
    h.log
        .wait_for("worker died: killed by the OOM killer at memory.max 64MiB");
    h.log.wait_for_count("worker ready", 3);
    let after = workers(&h);
    let pids: Vec<i64> = after.iter().map(pid_of).collect();
    assert!(pids.contains(&sibling), "the sibling was touched: {pids:?}");
    assert!(!pids.contains(&victim), "{pids:?}");
    let slot = after
        .iter()
        .find(|w| w["index"] == before[0]["index"])
        .unwrap();
    assert_eq!(slot["restarts"], 1, "{slot:#}");
    assert!(
        slot["last_exit"]
            .as_str()
            .unwrap_or_default()
            .starts_with("killed by the OOM killer at memory.max 64MiB"),
        "{slot:#}"
    );
    let line = h.status_json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.starts_with("2/2 workers ready, generation 1; worker ")
            && line.ends_with("killed by the OOM killer at memory.max 64MiB"),
        "{line}"
    );
    // Both serve: the sibling, and the replacement.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..200 {
        answered.insert(http_get_body(port).trim().parse::<i64>().unwrap());
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, pids.iter().copied().collect(), "who answered");
    assert!(h.stop().success());
    assert_eq!(v1_trees_of(h.pid()), Vec::<PathBuf>::new(), "v1 trees left");
}

/// The CPU weight of a cgroup file: `cpu.weight`, or v1's `cpu.shares` as a weight.
fn weight_of(pid: i64) -> u64 {
    let cpu = controller_dir(pid, "cpu");
    if is_v1(&cpu, "cpu.shares") {
        (read(&cpu, "cpu.shares").parse::<u64>().unwrap() * 100 + 512) / 1024
    } else {
        read(&cpu, "cpu.weight").parse().unwrap()
    }
}

/// `start_cpu_weight`: a starting worker's cgroup has the low weight until it is ready, then
/// `cpu_weight`.
#[test]
fn workers_start_at_start_cpu_weight_and_get_cpu_weight_back_once_ready() {
    if skip(missing()) {
        return;
    }
    let mut h = Handover::start(
        "cg-weight",
        "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"1500\"]\n\
         start_cpu_weight = 10\ncpu_weight = 300\n",
        Options::default(),
    );
    h.log.wait_for("worker started");
    if skip(lacks_controllers(&h, &["cpu"])) {
        return;
    }
    let worker = workers_any(&h)[0]["pid"].as_i64().unwrap();
    assert_eq!(weight_of(worker), 10, "while it starts");
    h.log.wait_for("all 1 workers ready");
    wait_until("the weight back", || weight_of(worker) == 300);
    assert_eq!(
        nice_of(worker),
        nice_of(i64::from(h.pid())),
        "no nice with cgroups"
    );
    assert!(h.stop().success());
}

/// Without cgroups each limit is named at start with the reason, and the workers run all
/// the same; `start_cpu_weight` becomes the nearest nice value, given back once ready.
#[test]
fn limits_without_cgroups_are_named_and_start_cpu_weight_becomes_nice() {
    if skip(missing()) {
        return;
    }
    let mut h = Handover::start(
        "cg-nolimits",
        "[handover]\ncgroups = \"off\"\n\n[worker]\n\
         command = [\"{worker}\", \"--ready-after\", \"1500\"]\n\
         memory_max = \"64MiB\"\npids_max = 32\nstart_cpu_weight = 10\n",
        Options::default(),
    );
    h.log.wait_for("worker started");
    let text = h.log.text();
    for key in ["memory_max", "pids_max"] {
        assert!(
            text.contains(&format!(
                "worker.{key} is not applied: workers have no cgroups ([handover] cgroups = \"off\")"
            )),
            "{text}"
        );
    }
    assert!(
        text.contains(
            "worker.start_cpu_weight is not applied: workers have no cgroups ([handover] \
             cgroups = \"off\"); workers start at nice 10 instead"
        ),
        "{text}"
    );
    let worker = workers_any(&h)[0]["pid"].as_i64().unwrap();
    let own = nice_of(i64::from(h.pid()));
    assert_eq!(nice_of(worker), own + 10, "while it starts");
    h.log.wait_for("all 1 workers ready");
    wait_until("the priority back", || nice_of(worker) == own);
    assert!(h.stop().success());
}

/// An aborted reload leaves no cgroup of its generation behind, in any tree, and the serving
/// generation keeps its own.
#[test]
fn an_aborted_reload_leaves_no_cgroup_of_its_generation() {
    if skip(missing()) {
        return;
    }
    let config = "[worker]\ncommand = [\"{worker}\", \"--ready-after\", \"0\"]\ncount = 2\nmemory_max = \"64MiB\"\n";
    let mut h = Handover::start("cg-abort", config, Options::default());
    h.log.wait_for("all 2 workers ready");
    let root = root_of(&h);
    // The new generation's second worker fails before it is ready.
    h.rewrite_config(&config.replace(
        r#"command = ["{worker}", "--ready-after", "0"]"#,
        r#"command = ["sh", "-c", "if [ \"$HANDOVER_WORKER\" = 1 ]; then exit 9; fi; exec '{worker}' --ready-after 0"]"#,
    ));
    let (st, _, err) = h.ctl(&["reload"]);
    assert_eq!(st.code(), Some(6), "{err}");
    assert!(err.contains("aborted"), "{err}");
    let generation_dirs = || -> Vec<PathBuf> {
        let mut trees = v1_trees_of(h.pid());
        trees.push(root.clone());
        trees
            .iter()
            .flat_map(|t| std::fs::read_dir(t).into_iter().flatten().flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
            .map(|e| e.path())
            .collect()
    };
    wait_until("the aborted generation's cgroups to go", || {
        generation_dirs().iter().all(|d| d.ends_with("gen-1"))
    });
    assert!(generation_dirs().contains(&root.join("gen-1")));
    let serving = workers(&h);
    assert_eq!(serving.len(), 2, "{serving:?}");
    for w in &serving {
        assert!(
            w["cgroup"]["path"]
                .as_str()
                .unwrap_or_default()
                .contains("/gen-1/"),
            "{w:#}"
        );
    }
    assert!(h.stop().success());
    assert!(!root.exists());
    assert_eq!(v1_trees_of(h.pid()), Vec::<PathBuf>::new(), "v1 trees left");
}
