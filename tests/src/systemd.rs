//! A real systemd 252 as PID 1 of throw-away namespaces, for tests that drive handover the way
//! users do: `.socket` units, `systemctl start / reload / stop`, `journalctl`.
//!
//! Each [`Systemd`] boots its own manager with
//! `unshare --fork --pid --mount --mount-proc --uts --ipc --net --cgroup` and a boot script
//! that makes everything it could touch private first (see
//! shared/docs/real-systemd-in-tests.md for why each step is there):
//!
//! - `SYSTEMD_UNIT_PATH` names one folder, without a trailing colon, so no unit of the host is
//!   ever loaded (with the host's units, `systemd-tmpfiles-setup.service` would wipe the host's
//!   /tmp), and every unit in it carries `DefaultDependencies=no`;
//! - private tmpfs on /run, /tmp, /var/tmp, /var/log/journal (when it exists) and
//!   /var/lib/systemd, a private /dev with only the basic device nodes (the journal's
//!   `/dev/log` symlink and /dev/shm stay inside), /proc/sys read-only;
//! - its own cgroup: the boot process is moved into a fresh child of the test's cgroup2 group
//!   before `unshare --cgroup`, and the boot script mounts cgroup2 anew, so the manager sees
//!   only that subtree. Two managers booted in parallel never share a cgroup, and the whole
//!   subtree can be killed at once through `cgroup.kill`;
//! - its own network namespace with only `lo`: tests reach the services through
//!   [`Systemd::http_get`] and [`Systemd::start_load`], which open their sockets from a
//!   thread that joined that namespace.
//!
//! - the test's folders (units, configurations) and this build's binaries are bind-mounted,
//!   read-only, under [`INSIDE`] (`/run/handover-test`), with plain paths of their own. The
//!   boot script holds each host folder by an fd before it covers /run, /tmp and /var/tmp, so
//!   a checkout anywhere works: under /tmp, under a 0700 home, in a path with spaces or
//!   colons. Units and configurations name the inside paths only.
//!
//! Everything is torn down on drop, also when the test panics: the manager (PID 1 inside) is
//! SIGKILLed, which ends every process of its pid namespace, and the cgroup is killed and
//! removed. The unit folder and the configuration live in a [`TempDir`] under the target
//! directory.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{binary, collect_output, Lines, TempDir, GUARD};
use crate::loadgen::{self, LoadConfig, Summary};

/// The manager binary booted as PID 1.
pub const SYSTEMD: &str = "/usr/lib/systemd/systemd";
/// Where the journald units are copied from.
const HOST_UNITS: &str = "/lib/systemd/system";
/// The journald units every manager gets, so that `journalctl` works inside.
const JOURNALD_UNITS: [&str; 3] = [
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
];
/// The target the manager boots into.
const TARGET: &str = "handover-test.target";
/// The directory of the shipped unit files, relative to the repository.
const SHIPPED_DIR: &str = "systemd";
/// Where the shipped files expect handover's binaries and configurations.
const SHIPPED_BIN_DIR: &str = "/usr/local/bin/";
const SHIPPED_CONFIG_DIR: &str = "/etc/handover/";

/// Where the test's folders and binaries appear inside the manager's namespaces: a fresh
/// folder of the private /run, so nothing of the host's is in the way and the paths are plain
/// whatever the checkout's path is.
pub const INSIDE: &str = "/run/handover-test";
/// The unit folder inside (`SYSTEMD_UNIT_PATH`).
pub const INSIDE_UNITS: &str = "/run/handover-test/units";
/// The folder that stands in for /etc/handover inside.
pub const INSIDE_CONFIG: &str = "/run/handover-test/etc-handover";
/// This build's binaries inside (the target directory's profile folder).
pub const INSIDE_BIN: &str = "/run/handover-test/bin";

/// Why a test cannot boot a manager here, or `None` when it can.
///
/// Set `HANDOVER_REQUIRE_SYSTEMD=1` to turn every skip into a failure (on CI machines that
/// must run these tests).
fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe_skip_reason).clone()
}

fn probe_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new(SYSTEMD).exists() {
        return Some(format!("{SYSTEMD} is not installed"));
    }
    for tool in ["unshare", "nsenter", "ip", "mknod"] {
        if which(tool).is_none() {
            return Some(format!("{tool} is not installed"));
        }
    }
    // A probe with the very namespaces the boot uses: containers without CAP_SYS_ADMIN
    // refuse it with EPERM.
    let mut probe = Command::new("unshare");
    probe
        .args(NAMESPACES)
        .arg("true")
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match run_capped(probe, GUARD) {
        Some((status, _, _)) if status.success() => None,
        Some((_, _, stderr)) if stderr.contains("Operation not permitted") => {
            Some(format!("unshare is not permitted here: {}", stderr.trim()))
        }
        Some((status, _, stderr)) => {
            panic!("unshare failed ({status}) for another reason than EPERM: {stderr}")
        }
        None => panic!("the unshare probe did not finish"),
    }
}

/// The namespaces of the boot, as unshare(1) arguments.
const NAMESPACES: [&str; 8] = [
    "--fork",
    "--pid",
    "--mount",
    "--mount-proc",
    "--uts",
    "--ipc",
    "--net",
    "--cgroup",
];

/// The `PATH` of every command the harness runs (the boot, nsenter and what runs inside),
/// whatever the test's own `PATH` is.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(SYSTEM_PATH)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Whether this build's `handover` has the subcommand `name` (`reload`, `stop`).
pub fn handover_has(name: &str) -> bool {
    static KNOWN: OnceLock<std::sync::Mutex<Vec<(String, bool)>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(&(_, has)) = known.lock().expect("lock").iter().find(|(n, _)| n == name) {
        return has;
    }
    let mut cmd = Command::new(binary("handover"));
    cmd.args([name, "--help"]);
    let has = run_capped(cmd, GUARD).is_some_and(|(status, _, _)| status.success());
    known.lock().expect("lock").push((name.to_string(), has));
    has
}

/// The text of a file shipped in the repository's `systemd/` folder.
pub fn shipped(name: &str) -> String {
    let path = repo_root().join(SHIPPED_DIR).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text of a file of the repository, such as `docs/systemd.md`.
pub fn repo_file(path: &str) -> String {
    let path = repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// Puts `DefaultDependencies=no` into a unit's `[Unit]` section (adding the section when it
/// has none), replacing any other value: inside the test manager nothing but the units under
/// test exists, and default dependencies on sysinit.target must never pull in host units.
pub fn without_default_dependencies(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len() + 32);
    let mut inserted = false;
    for line in unit.lines() {
        if line.trim_start().starts_with("DefaultDependencies=") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[Unit]" && !inserted {
            out.push_str("DefaultDependencies=no\n");
            inserted = true;
        }
    }
    if !inserted {
        out.insert_str(0, "[Unit]\nDefaultDependencies=no\n\n");
    }
    out
}

/// Sets up the folder of a manager before it boots: units, drop-ins, configurations.
pub struct Builder {
    label: String,
    dir: TempDir,
    /// Further host folders to bind under [`INSIDE`]: (host path, name inside, writable).
    binds: Vec<(PathBuf, String, bool)>,
    /// Boot the manager with the host's cgroup v1 hierarchies too, where it has them.
    hybrid: bool,
}

impl Builder {
    /// The folder of the units.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    /// The folder that stands in for /etc/handover.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc-handover")
    }

    /// Paths in shipped files, rewritten for this test: binaries from the target directory,
    /// configurations from [`Builder::config_dir`], as both appear inside.
    pub fn localize(&self, text: &str) -> String {
        localize(text)
    }

    /// Makes the host folder `host` appear, read-only, at `INSIDE/name` (returned) in the
    /// manager's namespaces, e.g. a package unpacked by the test.
    pub fn bind(self, host: &Path, name: &str) -> (Builder, String) {
        self.bind_with(host, name, false)
    }

    /// On a host with the hybrid cgroup layout (controllers such as memory on cgroup v1),
    /// boots the manager in that layout too: its own subtree of every v1 hierarchy (a fresh
    /// child of the test's cgroup there, removed at the end) besides its cgroup2 one, so that
    /// units get memory and pids cgroups. Elsewhere this changes nothing: the cgroup2 tree
    /// has the controllers.
    pub fn hybrid_cgroups(mut self) -> Builder {
        self.hybrid = true;
        self
    }

    /// [`Builder::bind`], writable from inside: for what a command run inside writes.
    pub fn bind_writable(self, host: &Path, name: &str) -> (Builder, String) {
        self.bind_with(host, name, true)
    }

    fn bind_with(mut self, host: &Path, name: &str, writable: bool) -> (Builder, String) {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !["units", "etc-handover", "bin"].contains(&name),
            "bind name {name:?}: lowercase letters, digits and '-', and not a name of the harness"
        );
        assert!(
            host.is_dir(),
            "{} must be a folder to bind into the manager",
            host.display()
        );
        self.binds
            .push((host.to_path_buf(), name.to_string(), writable));
        (self, format!("{INSIDE}/{name}"))
    }

    /// Adds a unit file as given, apart from `DefaultDependencies=no`.
    pub fn unit(self, name: &str, text: &str) -> Builder {
        let path = self.unit_dir().join(name);
        std::fs::write(&path, without_default_dependencies(text))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Adds a unit shipped in `systemd/`, with its paths localized.
    ///
    /// While this build's handover has no `reload` or `stop` command yet, a drop-in stands in
    /// for the missing one: `ExecReload=` sends SIGHUP (the same reload, without waiting for
    /// its outcome) and `ExecStop=` is left empty (systemd then sends SIGTERM at once, which
    /// is what `handover stop` asks for too).
    pub fn shipped_unit(self, name: &str) -> Builder {
        let text = self.localize(&shipped(name));
        let mut builder = self.unit(name, &text);
        if text.contains("ExecReload=") && text.contains(" reload ") && !handover_has("reload") {
            eprintln!("note: handover has no `reload` command yet; ExecReload= sends SIGHUP");
            builder = builder.dropin(
                name,
                "no-reload-command",
                "[Service]\nExecReload=\nExecReload=/bin/kill -HUP $MAINPID\n",
            );
        }
        if text.contains("ExecStop=") && text.contains(" stop ") && !handover_has("stop") {
            eprintln!("note: handover has no `stop` command yet; ExecStop= is left empty");
            builder = builder.dropin(name, "no-stop-command", "[Service]\nExecStop=\n");
        }
        builder
    }

    /// Adds a drop-in `<unit>.d/<name>.conf`, as `systemctl edit` would.
    pub fn dropin(self, unit: &str, name: &str, text: &str) -> Builder {
        let dir = self.unit_dir().join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir).expect("create drop-in dir");
        std::fs::write(dir.join(format!("{name}.conf")), text).expect("write drop-in");
        self
    }

    /// Writes `/etc/handover/<instance>.toml` (localized).
    pub fn config(self, instance: &str, text: &str) -> Builder {
        write_config(&self.config_dir(), instance, text);
        self
    }

    /// Boots the manager. `None` (after printing why) when this machine cannot run it; set
    /// `HANDOVER_REQUIRE_SYSTEMD=1` to fail instead.
    pub fn boot(self) -> Option<Systemd> {
        if let Some(reason) = skip_reason() {
            if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() {
                panic!("cannot boot systemd, and HANDOVER_REQUIRE_SYSTEMD is set: {reason}");
            }
            eprintln!("skipped: cannot boot systemd here: {reason}");
            return None;
        }
        Some(Systemd::boot(self))
    }
}

fn localize(text: &str) -> String {
    text.replace(SHIPPED_BIN_DIR, &format!("{INSIDE_BIN}/"))
        .replace(SHIPPED_CONFIG_DIR, &format!("{INSIDE_CONFIG}/"))
}

fn write_config(config_dir: &Path, instance: &str, text: &str) {
    let path = config_dir.join(format!("{instance}.toml"));
    std::fs::write(&path, localize(text))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A running systemd in its own namespaces; killed, with everything in them, on drop.
pub struct Systemd {
    label: String,
    /// The manager's pid as the host sees it (PID 1 inside); 0 until known.
    pid: i32,
    /// A pidfd of the manager: signals through it can never reach another process that got
    /// the same pid after the manager died.
    pidfd: Option<OwnedFd>,
    /// `sh` → `unshare`, whose child is the manager.
    boot: Mutex<Option<Child>>,
    /// The manager's cgroup, as the host sees it.
    cgroup: Option<PathBuf>,
    /// With [`Builder::hybrid_cgroups`], its cgroups in the v1 hierarchies.
    v1_cgroups: Vec<PathBuf>,
    /// The manager's own output (before journald runs, and its crashes).
    pub console: Lines,
    config_dir: PathBuf,
    unit_dir: PathBuf,
    // Dropped last, after everything inside has been killed.
    _dir: TempDir,
}

impl Systemd {
    /// Starts setting up a manager; `label` names its folder.
    pub fn builder(label: &str) -> Builder {
        let dir = TempDir::new(&format!("systemd-{label}"));
        for sub in ["units", "etc-handover"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create folder");
        }
        let builder = Builder {
            label: label.to_string(),
            dir,
            binds: Vec::new(),
            hybrid: false,
        };
        // The journal, and the target that wants it. journald runs from the start (not on
        // the first message), because the manager logs to it only once it runs.
        let mut builder = builder.unit(
            TARGET,
            "[Unit]\nDescription=handover test target\n\
             Wants=systemd-journald.socket systemd-journald-dev-log.socket \
             systemd-journald.service\n",
        );
        for unit in JOURNALD_UNITS {
            let text = std::fs::read_to_string(Path::new(HOST_UNITS).join(unit))
                .unwrap_or_else(|e| panic!("read {HOST_UNITS}/{unit}: {e}"));
            builder = builder.unit(unit, &text);
        }
        builder
    }

    fn boot(builder: Builder) -> Systemd {
        let Builder {
            label,
            dir,
            binds,
            hybrid,
        } = builder;
        // Only where the host has v1 hierarchies to give.
        let hybrid = hybrid && !v1_hierarchies().is_empty();
        let unit_dir = dir.path().join("units");
        let config_dir = dir.path().join("etc-handover");
        // Every folder the manager needs, by the name it has under INSIDE. The binaries are
        // built first, so that the folder holds them when it is bound.
        let handover = binary("handover");
        let bin_dir = handover
            .parent()
            .expect("a binary sits in a folder")
            .to_path_buf();
        let mut all_binds = vec![
            (unit_dir.clone(), "units".to_string(), false),
            (config_dir.clone(), "etc-handover".to_string(), false),
            (bin_dir, "bin".to_string(), false),
        ];
        all_binds.extend(binds);
        let script = dir.path().join("boot.sh");
        std::fs::write(&script, boot_script(hybrid)).expect("write boot script");
        make_executable(&script);

        let cgroup = create_cgroup(&label);
        let v1_cgroups = if hybrid {
            create_v1_cgroups(&cgroup)
        } else {
            Vec::new()
        };
        let mut sd = Systemd {
            label,
            pid: 0,
            pidfd: None,
            boot: Mutex::new(None),
            cgroup: Some(cgroup.clone()),
            v1_cgroups: v1_cgroups.clone(),
            console: Lines::default(),
            config_dir,
            unit_dir,
            _dir: dir,
        };
        // The shell joins the fresh cgroups and becomes unshare, so the new cgroup namespace
        // is rooted there and everything started inside stays below them.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#"while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done
shift; exec "$@""#,
            )
            .arg("sh")
            .arg(&cgroup)
            .args(&v1_cgroups)
            .arg("--")
            .arg("unshare")
            .args(NAMESPACES)
            .arg(&script);
        for (host, name, writable) in &all_binds {
            cmd.arg(host)
                .arg(name)
                .arg(if *writable { "rw" } else { "ro" });
        }
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn unshare");
        let echo = std::env::var_os("HANDOVER_TEST_ECHO").is_some();
        collect_output(
            child.stdout.take().expect("stdout"),
            sd.console.clone(),
            echo,
        );
        collect_output(
            child.stderr.take().expect("stderr"),
            sd.console.clone(),
            echo,
        );
        let boot_pid = child.id() as i32;
        *sd.boot.lock().expect("lock") = Some(child);

        // unshare forks the future PID 1; it sometimes takes seconds to get there.
        let (pid, pidfd) = sd.wait_until_value("unshare to fork the manager", || {
            if let Some(status) = sd.boot_exited() {
                panic!(
                    "unshare exited early ({status}); output:\n{}",
                    sd.console.text()
                );
            }
            let children =
                std::fs::read_to_string(format!("/proc/{boot_pid}/task/{boot_pid}/children"))
                    .ok()?;
            let pid: i32 = children.split_whitespace().next()?.parse().ok()?;
            // The child counts once it lives in another pid namespace than ours.
            let ours = std::fs::read_link("/proc/self/ns/pid").ok()?;
            let its = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
            if ours == its {
                return None;
            }
            let pidfd = pidfd_open(pid)?;
            // Still the same process after opening the pidfd.
            let its = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
            (ours != its).then_some((pid, pidfd))
        });
        sd.pid = pid;
        sd.pidfd = Some(pidfd);
        sd.wait_until("the manager to be running", || {
            if let Some(status) = sd.boot_exited() {
                panic!(
                    "the manager exited during boot ({status}); output:\n{}",
                    sd.console.text()
                );
            }
            let (_, out, _) = sd.systemctl(&["is-system-running"]);
            matches!(out.trim(), "running" | "degraded")
        });
        let (status, out, _) = sd.run(&["ip", "-o", "link", "show", "lo"]);
        assert!(
            status.success() && out.contains("UP"),
            "lo is not up inside: {out}"
        );
        sd
    }

    /// The manager's pid as the host sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The manager's root directory, as the host can read it: `root().join("proc/N")` is
    /// process N of the namespace, `root().join("sys/fs/cgroup")` its cgroups.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// The manager's cgroup as the host sees it (removed on drop).
    pub fn cgroup(&self) -> Option<PathBuf> {
        self.cgroup.clone()
    }

    /// The folder of the units (add files, then `systemctl daemon-reload`).
    pub fn unit_dir(&self) -> &Path {
        &self.unit_dir
    }

    /// Rewrites `/etc/handover/<instance>.toml` (localized), e.g. before a reload.
    pub fn write_config(&self, instance: &str, text: &str) {
        write_config(&self.config_dir, instance, text);
    }

    /// The exit status of the boot process (unshare), once it has ended.
    fn boot_exited(&self) -> Option<ExitStatus> {
        let mut boot = self.boot.lock().expect("lock");
        boot.as_mut()?.try_wait().ok().flatten()
    }

    /// A command run inside every namespace of the manager.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        assert!(self.pid > 0, "the manager is not running");
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid.to_string()).arg("-a").arg("--");
        cmd.args(argv);
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env("TERM", "dumb")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` inside (guarded); returns (status, stdout, stderr).
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> (ExitStatus, String, String) {
        let cmd = self.command(argv);
        let shown = format!("{cmd:?}");
        run_capped(cmd, GUARD).unwrap_or_else(|| panic!("did not finish: {shown}"))
    }

    /// `systemctl --no-pager ARGS` inside.
    pub fn systemctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut argv = vec!["systemctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// `systemctl ARGS`, which must succeed; returns its stdout.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.systemctl(args);
        assert!(
            status.success(),
            "systemctl {args:?} failed ({status}):\n{out}\n{err}\n{}",
            self.diagnostics()
        );
        out
    }

    /// `journalctl --no-pager ARGS` inside; returns its stdout.
    pub fn journalctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["journalctl", "--no-pager"];
        argv.extend_from_slice(args);
        let (status, out, err) = self.run(&argv);
        assert!(status.success(), "journalctl {args:?} failed: {err}");
        out
    }

    /// Waits until the journal of `unit` holds a line containing `needle`; returns the
    /// unit's journal (message texts only).
    pub fn wait_journal(&self, unit: &str, needle: &str) -> String {
        let mut journal = String::new();
        self.wait_until(&format!("{needle:?} in the journal of {unit}"), || {
            journal = self.journalctl(&["-o", "cat", "-u", unit]);
            journal.contains(needle)
        });
        journal
    }

    /// One property of a unit (`systemctl show -p NAME --value`).
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl_ok(&["show", "-p", property, "--value", unit])
            .trim()
            .to_string()
    }

    /// Waits until `property` of `unit` is `value`.
    pub fn wait_property(&self, unit: &str, property: &str, value: &str) {
        let mut last = String::new();
        self.wait_until(&format!("{unit} {property}={value}"), || {
            last = self.show(unit, property);
            last == value
        });
    }

    /// The pids (as seen inside) of every process in the cgroup `group` (a `ControlGroup`
    /// value) and below it; empty when the group no longer exists.
    pub fn cgroup_procs(&self, group: &str) -> Vec<i32> {
        let base = self.root().join("sys/fs/cgroup");
        let dir = base.join(group.trim_start_matches('/'));
        // cgroup.procs lists pids as the reader (this test, outside) sees them.
        let mut host_pids = Vec::new();
        collect_cgroup_procs(&dir, &mut host_pids);
        let mut pids: Vec<i32> = host_pids.into_iter().filter_map(pid_inside).collect();
        pids.sort_unstable();
        pids
    }

    /// Whether process `pid` (as seen inside) exists and is not a zombie.
    pub fn alive(&self, pid: i32) -> bool {
        match std::fs::read_to_string(self.root().join(format!("proc/{pid}/stat"))) {
            Ok(stat) => {
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
                !matches!(state.as_deref(), Some("Z") | Some("X"))
            }
            Err(_) => false,
        }
    }

    /// Whether process `pid` (as seen inside) is a handover sentinel.
    pub fn is_sentinel(&self, pid: i32) -> bool {
        std::fs::read_to_string(self.root().join(format!("proc/{pid}/comm")))
            .is_ok_and(|c| c.trim() == crate::harness::SENTINEL_COMM)
    }

    /// The main pid of a service (as seen inside), 0 when it has none.
    pub fn main_pid(&self, unit: &str) -> i32 {
        self.show(unit, "MainPID").parse().unwrap_or(0)
    }

    /// Polls `condition` until it holds; panics with diagnostics after [`GUARD`].
    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        self.wait_until_value(what, || condition().then_some(()));
    }

    /// Polls `probe` until it returns a value; panics with diagnostics after [`GUARD`].
    pub fn wait_until_value<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}\n{}",
                    if self.pid > 0 {
                        self.diagnostics()
                    } else {
                        format!("manager output:\n{}", self.console.text())
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The state of every unit and the end of the journal, for failure messages. Never
    /// panics.
    pub fn diagnostics(&self) -> String {
        let mut text = format!("--- systemd {} (host pid {}) ---\n", self.label, self.pid);
        if self.pid <= 0 {
            return text;
        }
        for argv in [
            &["systemctl", "--no-pager", "list-units", "--all", "--plain"][..],
            &[
                "journalctl",
                "--no-pager",
                "-n",
                "150",
                "-o",
                "short-monotonic",
            ][..],
        ] {
            match run_capped(self.command(argv), Duration::from_secs(10)) {
                Some((_, out, err)) => {
                    text.push_str(&format!("$ {}\n{out}{err}\n", argv.join(" ")))
                }
                None => text.push_str(&format!("$ {}: did not finish\n", argv.join(" "))),
            }
        }
        text.push_str(&format!("manager output:\n{}\n", self.console.text()));
        text
    }

    /// Runs `f` on a thread that joined the manager's network namespace: sockets it opens
    /// reach the services inside (and nothing else).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = self.open_netns();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(&netns);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn open_netns(&self) -> File {
        File::open(format!("/proc/{}/ns/net", self.pid)).expect("open the manager's netns")
    }

    /// One `GET path` on 127.0.0.1:`port` inside, with `Connection: close`; returns the status
    /// and the body.
    pub fn http_get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        self.in_netns(|| http_get_here(port, path))
    }

    /// Runs the load generator inside, on a thread of its own, in bursts of `burst` until
    /// [`LoadRun::finish`] is called (bounded by [`GUARD`] and `max_bursts` in any case).
    pub fn start_load(&self, burst: LoadConfig, max_bursts: u32) -> LoadRun {
        let netns = self.open_netns();
        let stop = Arc::new(AtomicBool::new(false));
        let bursts = Arc::new(AtomicU32::new(0));
        let (stop2, bursts2) = (Arc::clone(&stop), Arc::clone(&bursts));
        let thread = std::thread::spawn(move || {
            enter_netns(&netns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let deadline = Instant::now() + GUARD;
            let mut total = Summary::default();
            for _ in 0..max_bursts {
                let summary = runtime
                    .block_on(loadgen::run(burst.clone()))
                    .expect("valid load config");
                total.absorb(&summary);
                bursts2.fetch_add(1, Ordering::SeqCst);
                if stop2.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    break;
                }
            }
            total
        });
        LoadRun {
            stop,
            bursts,
            thread: Some(thread),
        }
    }
}

/// A handover service for [`Systemd::serve_reload_stop`].
pub struct Lifecycle<'a> {
    /// The service unit, such as `handover@web.service`.
    pub service: &'a str,
    /// The socket unit whose first connection starts the service.
    pub socket: &'a str,
    /// The port that socket listens on (127.0.0.1 inside reaches it).
    pub port: u16,
    /// How many workers the configuration runs.
    pub workers: usize,
}

impl Systemd {
    /// The life of a handover service as a user sees it: the socket unit listens while the
    /// service is not running; the first connection starts it, and every worker serves;
    /// `systemctl reload` under load fails no request, and a new generation serves while the
    /// old one is gone; `systemctl stop` ends the service cleanly (`Result=success`, exit 0,
    /// nothing killed by systemd, nothing left in its cgroup). systemd must have accepted
    /// every line of the units.
    pub fn serve_reload_stop(&self, life: &Lifecycle<'_>) {
        let service = life.service;
        self.systemctl_ok(&["start", life.socket]);
        assert_eq!(self.show(life.socket, "SubState"), "listening");
        assert_eq!(self.show(service, "ActiveState"), "inactive");
        let (status, body) = self
            .http_get(life.port, "/")
            .unwrap_or_else(|e| panic!("first request: {e}\n{}", self.diagnostics()));
        assert_eq!(status, 200, "{body}");
        self.wait_property(service, "ActiveState", "active");
        let n = life.workers;
        let ready = |generation: u64| format!("{n}/{n} workers ready, generation {generation}");
        self.wait_property(service, "StatusText", &ready(1));
        let main = self.main_pid(service);
        let group = self.show(service, "ControlGroup");
        // The workers: every process of the unit but handover and its sentinel.
        let workers_now = || -> Vec<i32> {
            self.cgroup_procs(&group)
                .into_iter()
                .filter(|&p| p != main && !self.is_sentinel(p))
                .collect()
        };
        let old = workers_now();
        assert_eq!(old.len(), n, "{n} workers: {old:?}");

        let burst = LoadConfig {
            addr: ([127, 0, 0, 1], life.port).into(),
            concurrency: 4,
            duration: Duration::from_millis(300),
            max_requests: 400,
            mode: loadgen::Mode::NewConnection,
            request_timeout: Duration::from_secs(25),
            path: "/".into(),
        };
        let load = self.start_load(burst, 400);
        load.wait_bursts(1);
        self.systemctl_ok(&["reload", service]);
        assert_eq!(self.show(service, "StatusText"), ready(2));
        self.wait_until("the old generation to drain", || {
            old.iter().all(|&p| !self.alive(p))
        });
        let new = workers_now();
        load.wait_bursts(2);
        let summary = load.finish();
        let describe = format!(
            "{} requests, {} ok, failures {:?}, pids {:?}",
            summary.requests, summary.ok, summary.failures, summary.pids
        );
        eprintln!("load: {describe}");
        assert_eq!(summary.failed(), 0, "{describe}");
        assert!(summary.ok > 0, "{describe}");
        assert_eq!(new.len(), n, "{new:?}");
        assert!(new.iter().all(|p| !old.contains(p)), "new workers: {new:?}");
        for pids in [&old, &new] {
            assert!(
                summary.pids.keys().any(|&p| pids.contains(&(p as i32))),
                "both generations served: {describe}"
            );
        }
        assert_eq!(self.main_pid(service), main, "a reload keeps handover");

        self.systemctl_ok(&["stop", service]);
        assert_eq!(self.show(service, "ActiveState"), "inactive");
        assert_eq!(self.show(service, "Result"), "success");
        assert_eq!(self.show(service, "ExecMainStatus"), "0");
        assert_eq!(self.cgroup_procs(&group), Vec::<i32>::new(), "cgroup empty");
        for pid in old.iter().chain(&new).chain([&main]) {
            assert!(!self.alive(*pid), "process {pid} survived the stop");
        }
        let journal = self.journalctl(&["-o", "cat", "-u", service]);
        assert!(!journal.contains("Killing process"), "{journal}");
        let manager_log = self.journalctl(&["-o", "cat", "_PID=1"]);
        for complaint in [
            "Unknown key",
            "Unknown section",
            "Failed to parse",
            "Ignoring",
        ] {
            assert!(
                !manager_log.contains(complaint),
                "systemd complained about a unit:\n{manager_log}"
            );
        }
    }
}

/// A load generator running inside a manager's network namespace.
pub struct LoadRun {
    stop: Arc<AtomicBool>,
    bursts: Arc<AtomicU32>,
    thread: Option<JoinHandle<Summary>>,
}

impl LoadRun {
    /// How many bursts have completed.
    pub fn bursts(&self) -> u32 {
        self.bursts.load(Ordering::SeqCst)
    }

    /// Waits until `n` more bursts than now have completed (guarded).
    pub fn wait_bursts(&self, n: u32) {
        let target = self.bursts() + n;
        let deadline = Instant::now() + GUARD;
        while self.bursts() < target {
            assert!(
                self.thread.as_ref().is_some_and(|t| !t.is_finished()),
                "the load ended before {target} bursts"
            );
            assert!(Instant::now() < deadline, "load bursts did not complete");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets the current burst finish and returns the sum of all bursts.
    pub fn finish(mut self) -> Summary {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn enter_netns(netns: &File) {
    // SAFETY: setns only changes this thread's network namespace; the fd is open and owned
    // by `netns` for the duration of the call.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into the manager's netns: {}",
        std::io::Error::last_os_error()
    );
}

fn http_get_here(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, GUARD)?;
    stream.set_read_timeout(Some(GUARD))?;
    stream.set_write_timeout(Some(GUARD))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if std::thread::panicking() && self.pid > 0 {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(pidfd) = &self.pidfd {
            // PID 1 of the namespace: the kernel ends every process inside with it.
            pidfd_kill(pidfd);
        }
        if let Some(cgroup) = &self.cgroup {
            // Also whatever lives in the cgroup without being in the namespace yet (the
            // shell or unshare before it forked).
            let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
        }
        let boot = self.boot.get_mut().map(Option::take).unwrap_or(None);
        if let Some(mut child) = boot {
            let _ = child.kill();
            let deadline = Instant::now() + GUARD;
            while !matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                if Instant::now() >= deadline {
                    eprintln!("warning: unshare (pid {}) did not exit", child.id());
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            remove_cgroup(&cgroup);
        }
        // Empty by now (their processes were all in the cgroup2 tree as well).
        for dir in std::mem::take(&mut self.v1_cgroups) {
            remove_cgroup(&dir);
        }
    }
}

/// The host's cgroup v1 hierarchies this process is in: (the name in /proc/self/cgroup,
/// its mount point, this process's cgroup path in it).
fn v1_hierarchies() -> Vec<(String, PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            if list.is_empty() {
                return None;
            }
            let wanted: Vec<&str> = list.split(',').collect();
            let mount = mountinfo.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut right = right.split(' ');
                if right.next()? != "cgroup" {
                    return None;
                }
                let options: Vec<&str> = right.nth(1)?.split(',').collect();
                wanted
                    .iter()
                    .all(|w| options.contains(w))
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))?
            })?;
            Some((list.to_owned(), mount, path.to_owned()))
        })
        .collect()
}

/// A fresh child, named as the manager's cgroup2 group `v2`, of this process's cgroup in
/// every v1 hierarchy (cpuset's gets its parent's CPUs and memory nodes, without which it
/// takes no process).
fn create_v1_cgroups(v2: &Path) -> Vec<PathBuf> {
    let name = v2.file_name().expect("a cgroup has a name");
    v1_hierarchies()
        .into_iter()
        .map(|(_, mount, path)| {
            let parent = mount.join(path.trim_start_matches('/'));
            let dir = parent.join(name);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                    std::fs::write(dir.join(file), value.trim())
                        .unwrap_or_else(|e| panic!("write {}/{file}: {e}", dir.display()));
                }
            }
            dir
        })
        .collect()
}

/// Creates a fresh cgroup2 group for one manager below the test's own group.
fn create_cgroup(label: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mount = cgroup2_mount().expect("no cgroup2 hierarchy is mounted on this host");
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .expect("read /proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("no cgroup2 entry in /proc/self/cgroup");
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("handover-test-{label}-{}-{n}", std::process::id());
    let dir = mount.join(own.trim_start_matches('/')).join(name);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
    dir
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The pid that host process `host_pid` has in its innermost pid namespace (the last
/// `NSpid:` entry); `None` when it is gone.
fn pid_inside(host_pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn collect_cgroup_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_procs(&entry.path(), pids);
            }
        }
    }
}

/// Removes a cgroup tree, children first, waiting (guarded) for killed processes to leave.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + GUARD;
    loop {
        remove_cgroup_once(dir);
        if !dir.exists() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("warning: could not remove cgroup {}", dir.display());
            return;
        }
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_cgroup_once(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_once(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Opens a pidfd for `pid`, `None` when it is gone.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILLs the process behind `pidfd` (nothing happens if it has already exited).
fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal takes an open pidfd (borrowed here), a signal number, a null
    // siginfo pointer and flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod boot script");
}

/// The script that runs as PID 1 until it execs the manager: it makes private everything the
/// manager or the services could write to, brings in the test's folders, then boots `TARGET`
/// from [`INSIDE_UNITS`] alone.
///
/// Its arguments are triples: a host folder, the name it gets under [`INSIDE`], and `ro` or
/// `rw`. Host paths are only ever arguments (never part of the script's text), so they may
/// hold any character.
fn boot_script(hybrid: bool) -> String {
    let cgroups = if hybrid {
        // The hybrid layout: the manager mounts the other v1 controllers itself.
        "mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
mkdir /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup/memory
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t cgroup -o nosuid,nodev,noexec,memory cgroup /sys/fs/cgroup/memory"
    } else {
        "mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup"
    };
    format!(
        r#"#!/bin/sh
# PID 1 of a throw-away namespace until it execs systemd. Written by handover's tests.
# Arguments: triples of a host folder, the name it gets under {INSIDE}, and ro or rw.
set -eu
# Nothing mounted here may propagate to the host.
mount --make-rprivate /
# Hold every folder to bring in by an fd (3, 4, ...) before /run, /tmp and /var/tmp are
# covered: the checkout may be under any of them.
fd=3
names=
while [ $# -ge 3 ]; do
    eval "exec $fd<\"\$1\""
    names="$names $2:$3"
    fd=$((fd + 1))
    shift 3
done
# Private runtime and temporary folders: systemd and the services write there.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
if [ -d /var/log/journal ]; then
    mount -t tmpfs -o mode=2755,nosuid,nodev tmpfs /var/log/journal
fi
if [ -d /var/lib/systemd ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /var/lib/systemd
fi
# The held folders at plain paths of the private /run, read-only unless asked otherwise.
mkdir -m 0755 {INSIDE}
fd=3
for entry in $names; do
    name=${{entry%:*}}
    mkdir "{INSIDE}/$name"
    mount --bind "/proc/self/fd/$fd" "{INSIDE}/$name"
    if [ "${{entry##*:}}" = ro ]; then
        mount -o remount,bind,ro "{INSIDE}/$name"
    fi
    eval "exec $fd<&-"
    fd=$((fd + 1))
done
# A private /dev: the journal's /dev/log symlink and /dev/shm stay inside.
mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs /dev
for node in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $node
    mknod -m 0666 "/dev/$1" c "$2" "$3"
done
mkdir /dev/shm /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# Kernel settings stay the host's business.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
# cgroups rooted at this namespace's own groups.
{cgroups}
ip link set lo up
# SYSTEMD_UNIT_PATH: exactly one folder, no trailing colon, so no host unit is ever loaded.
exec env -i container=handover-tests SYSTEMD_UNIT_PATH='{INSIDE_UNITS}' \
    {SYSTEMD} --system --unit={TARGET} --log-target=journal-or-kmsg
"#
    )
}

/// Runs a command to completion within `limit`; `None` if it did not finish (then it is
/// killed). Never panics, so it is safe in drop and in failure paths.
fn run_capped(mut cmd: Command, limit: Duration) -> Option<(ExitStatus, String, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().ok()?;
    let out = Lines::default();
    let err = Lines::default();
    let readers = [
        collect_output(child.stdout.take()?, out.clone(), false),
        collect_output(child.stderr.take()?, err.clone(), false),
    ];
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    // The output is complete once both pipes are at end of file; a process that kept them
    // open in the background only costs the rest of the deadline.
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    Some((status, out.text(), err.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dependencies_are_turned_off_once() {
        let unit =
            "[Unit]\nDescription=x\nDefaultDependencies=yes\n\n[Service]\nExecStart=/bin/true\n";
        let out = without_default_dependencies(unit);
        assert_eq!(out.matches("DefaultDependencies=").count(), 1);
        assert!(out.starts_with("[Unit]\nDefaultDependencies=no\nDescription=x\n"));
        let out = without_default_dependencies("[Socket]\nListenStream=80\n");
        assert!(out.starts_with("[Unit]\nDefaultDependencies=no\n"), "{out}");
        assert!(out.contains("[Socket]\nListenStream=80\n"));
    }

    #[test]
    fn shipped_paths_are_localized() {
        let out =
            localize("ExecStart=/usr/local/bin/handover start --config /etc/handover/%i.toml\n");
        assert_eq!(
            out,
            "ExecStart=/run/handover-test/bin/handover start \
             --config /run/handover-test/etc-handover/%i.toml\n"
        );
    }

    #[test]
    fn the_boot_script_never_widens_the_unit_path() {
        let script = boot_script(false);
        assert!(script.contains("SYSTEMD_UNIT_PATH='/run/handover-test/units' "));
        assert!(!script.contains("units:"), "no trailing colon");
        // The host folders are held before /run, /tmp and /var/tmp are covered, and bound
        // after /run is private again.
        let held = script.find("exec $fd<").expect("folders are held");
        let bound = script
            .find("mount --bind \"/proc/self/fd/$fd\"")
            .expect("and bound");
        let run = script.find("tmpfs /run\n").expect("/run is covered");
        for covered in ["tmpfs /run\n", "tmpfs /tmp\n", "tmpfs /var/tmp\n"] {
            let at = script.find(covered).expect("covered");
            assert!(held < at, "{covered} is covered after the folders are held");
        }
        assert!(run < bound, "binds land in the private /run");
        for private in ["/run", "/tmp", "/var/tmp", "/var/log/journal", "/dev"] {
            assert!(
                script.contains(&format!("tmpfs {private}\n")),
                "{private} is private"
            );
        }
        assert!(script.contains("remount,bind,ro /proc/sys"));
    }
}
