//! Running the real `handover` binary in tests: build and find binaries, write configs, play
//! systemd (pass sockets, listen on a `NOTIFY_SOCKET`), collect logs, and clean up always.
//!
//! Waiting is done on events (a log line, a datagram, a file, a process exit) with generous
//! deadlines that only guard against hangs; nothing here measures speed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The guard deadline for anything a test waits for.
pub const GUARD: Duration = Duration::from_secs(30);

/// The directory holding this build's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Builds every binary of the workspace once per test process and returns the path of `name`.
///
/// Integration tests run the real binaries; building them here makes a plain `cargo test`
/// never run a stale `handover`.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bin_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let target_dir = dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--quiet", "--target-dir"])
            .arg(&target_dir);
        if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the workspace's binaries failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A fresh private directory, removed on drop (kept when `HANDOVER_KEEP_TEST_DIRS` is set).
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates one under the target directory (`test-tmp`), next to the build; under
    /// [`reachable_dir`] when the build's path is not plain or short (see [`is_plain`] and
    /// [`MAX_BASE`]), since tests splice their folder's path into scripts and configuration
    /// files, and put unix sockets in it.
    pub fn new(label: &str) -> TempDir {
        let build = bin_dir();
        if is_plain(&build) && short_enough(&build.join("test-tmp")) {
            TempDir::under(&build.join("test-tmp"), label)
        } else {
            TempDir::under(&reachable_dir().join("tmp"), label)
        }
    }

    /// Creates one that every user can reach (see [`reachable_dir`]), mode 0755: for tests
    /// whose workers or clients run as another user.
    pub fn reachable(label: &str) -> TempDir {
        let dir = TempDir::under(&reachable_dir().join("tmp"), label);
        set_mode(dir.path(), 0o755);
        dir
    }

    fn under(base: &Path, label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        let dir = base.join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HANDOVER_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// The first of `path` and its ancestors that other users cannot search (no `o+x`), with
/// its mode; `None` when every user can reach `path`.
pub fn blocking_ancestor(path: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut chain: Vec<&Path> = path.ancestors().collect();
    chain.reverse();
    for dir in chain {
        if dir.as_os_str().is_empty() {
            continue;
        }
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() && meta.mode() & 0o001 == 0 => {
                return Some((dir.to_path_buf(), meta.mode() & 0o7777));
            }
            Ok(_) => {}
            Err(_) => return Some((dir.to_path_buf(), 0)),
        }
    }
    None
}

/// Panics, naming the folder in the way, unless every user can reach `path`: a worker or
/// client started as another user would otherwise fail with nothing but "permission
/// denied", or not at all.
pub fn assert_reachable_by_others(path: &Path) {
    if let Some((dir, mode)) = blocking_ancestor(path) {
        panic!(
            "{} is not reachable by other users: {} has mode {mode:04o} (no search permission \
             for others); use harness::reachable_bin and TempDir::reachable for what another \
             user runs or writes",
            path.display(),
            dir.display()
        );
    }
}

/// The longest path a folder of test folders may have: a unix socket's path has at most 107
/// bytes, tests put `LABEL-PID-N/control.sock` (up to about 55 bytes) below it, and a test
/// that makes its folder handover's `runtime_dir` must stay within the 64 bytes handover
/// allows there (with a label of up to 6 bytes).
pub const MAX_BASE: usize = 40;

fn short_enough(base: &Path) -> bool {
    base.as_os_str().len() <= MAX_BASE
}

/// Whether `path` can go into a shell script or a TOML string as it is: ASCII letters,
/// digits and `/._-+,:=@` only. A checkout may be anywhere ("/home/me/My Projects"), and
/// tests write `{worker}` into `sh -c` scripts.
pub fn is_plain(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"/._-+,:=@".contains(&b))
}

/// A folder every user can reach, with a plain and short path (see [`is_plain`] and
/// [`MAX_BASE`]): for what tests run as another user (a worker with `user = "nobody"`, a
/// client run through setpriv), and for the test folders and binaries that tests splice
/// into scripts.
///
/// The target directory when it is all that. Otherwise (a checkout in a 0700 home such as
/// /root, in a path with spaces, or deep in a tree) a folder of this user's own under the
/// system's temporary folder (`$TMPDIR`, else /tmp), one per build: `handover-tests-UID/HASH`.
/// It is checked to be a real folder owned by this user and writable by nobody else, since a
/// name under /tmp could have been prepared by anyone.
pub fn reachable_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let build = bin_dir();
        let shared = build.join("test-tmp").join("reachable");
        if blocking_ancestor(&build).is_none()
            && is_plain(&build)
            && short_enough(&shared.join("tmp"))
        {
            std::fs::create_dir_all(&shared).expect("create test-tmp/reachable");
            set_mode(&shared, 0o755);
            return shared;
        }
        let tmp = std::env::temp_dir();
        let unfit = match blocking_ancestor(&tmp) {
            Some((dir, mode)) => Some(format!("{} has mode {mode:04o}", dir.display())),
            None if !is_plain(&tmp) => Some("its path is not plain".to_string()),
            // handover-tests-UID/HASH/tmp adds about 33 bytes.
            None if tmp.as_os_str().len() + 33 > MAX_BASE => {
                Some(format!("its path is longer than {} bytes", MAX_BASE - 33))
            }
            None => None,
        };
        if let Some(why) = unfit {
            panic!(
                "the build {} is not a folder every user can reach with a plain and short \
                 path, and neither is the temporary folder {} ({why}); set TMPDIR to such a \
                 folder (/tmp is one), or build elsewhere (CARGO_TARGET_DIR)",
                build.display(),
                tmp.display()
            );
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        build.hash(&mut hasher);
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let own = tmp.join(format!("handover-tests-{uid}"));
        let dir = own.join(format!("{:08x}", hasher.finish() as u32));
        for folder in [&own, &dir] {
            match std::fs::create_dir(folder) {
                Ok(()) => set_mode(folder, 0o755),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("create {}: {e}", folder.display()),
            }
            check_own_folder(folder, uid);
        }
        dir
    })
    .clone()
}

/// Panics unless `folder` is a real folder (not a symlink) owned by `uid` and writable by
/// nobody else.
fn check_own_folder(folder: &Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    let mode = meta.mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != uid || mode & 0o022 != 0 {
        panic!(
            "{} is not a folder of uid {uid} that only it can write to (uid {}, mode \
             {mode:04o}); remove it, or set TMPDIR elsewhere",
            folder.display(),
            meta.uid()
        );
    }
}

/// This build's binary `name`, where every user can execute it and with a plain path:
/// itself when the build is both, else a copy in [`reachable_dir`] (made once per test
/// process).
pub fn reachable_bin(name: &str) -> PathBuf {
    static COPIED: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = binary(name);
    if blocking_ancestor(&built).is_none() && is_plain(&built) {
        return built;
    }
    let copied = COPIED.get_or_init(Default::default);
    let mut copied = copied.lock().expect("lock");
    if let Some(path) = copied.get(name) {
        return path.clone();
    }
    let bin = reachable_dir().join("bin");
    match std::fs::create_dir(&bin) {
        Ok(()) => set_mode(&bin, 0o755),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("create {}: {e}", bin.display()),
    }
    // Written aside and renamed, so a concurrent test run never executes half a copy.
    let target = bin.join(name);
    let aside = bin.join(format!(".{name}.{}", std::process::id()));
    std::fs::copy(&built, &aside)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), aside.display()));
    set_mode(&aside, 0o755);
    std::fs::rename(&aside, &target).unwrap_or_else(|e| panic!("rename {}: {e}", aside.display()));
    copied.insert(name.to_string(), target.clone());
    target
}

/// A local TCP port that was free a moment ago.
///
/// Picked below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port the
/// kernel hands out for port 0 is also one it hands out to outgoing connections, and the load
/// tests open thousands of those a second, so such a port was often taken again before
/// handover could bind it ("address already in use").
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1000 {
        let span = u64::from(ephemeral_low - LOWEST);
        for _ in 0..64 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let port = LOWEST + (hasher.finish() % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Collected output lines of a process, with waiting for a line.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (lock, cvar) = &*self.0;
        lock.lock().expect("lines lock").push(line);
        cvar.notify_all();
    }

    /// Everything so far, joined by newlines.
    pub fn text(&self) -> String {
        self.0 .0.lock().expect("lines lock").join("\n")
    }

    /// Waits until a line contains `needle`; returns it. Panics after [`GUARD`].
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_count(needle, 1)
    }

    /// Waits until `count` lines contain `needle`; returns the last of them.
    pub fn wait_for_count(&self, needle: &str, count: usize) -> String {
        let (lock, cvar) = &*self.0;
        let deadline = Instant::now() + GUARD;
        let mut lines = lock.lock().expect("lines lock");
        loop {
            let hits: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
            if hits.len() >= count {
                return hits[count - 1].clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out waiting for {count} line(s) containing {needle:?}; output so far:\n{}", lines.join("\n"));
            }
            lines = cvar
                .wait_timeout(lines, deadline - now)
                .expect("lines lock")
                .0;
        }
    }

    /// How many lines contain `needle` now.
    pub fn count(&self, needle: &str) -> usize {
        self.0
             .0
            .lock()
            .expect("lines lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    lines: Lines,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    collect_output(stream, lines, echo)
}

/// Reads `stream` line by line into `lines` on a thread of its own (echoing each line to the
/// test's stderr when `echo`); the thread ends at end of file.
pub fn collect_output(
    stream: impl std::io::Read + Send + 'static,
    lines: Lines,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("  | {line}");
            }
            lines.push(line);
        }
    })
}

/// A `NOTIFY_SOCKET` the test listens on, as systemd would.
pub struct NotifyListener {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far.
    pub received: Vec<String>,
}

impl NotifyListener {
    /// Binds at `dir/notify.sock`.
    pub fn new(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifyListener {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// The path to put in `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a datagram containing `needle` (as a line); returns the whole datagram.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + GUARD;
        if let Some(found) = self
            .received
            .iter()
            .find(|d| d.lines().any(|l| l == needle || l.starts_with(needle)))
        {
            return found.clone();
        }
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for notification {needle:?}; got {:?}",
                self.received
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set timeout");
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => panic!("notify recv: {err}"),
            };
            let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.received.push(datagram.clone());
            if datagram
                .lines()
                .any(|l| l == needle || l.starts_with(needle))
            {
                return datagram;
            }
        }
    }
}

/// How to start handover.
#[derive(Default)]
pub struct Options {
    /// Extra environment variables for handover.
    pub env: Vec<(String, String)>,
    /// Sockets to pass through `systemd-socket-activate`: (listen address, name).
    pub activate: Vec<(String, String)>,
    /// Listen for handover's own sd_notify messages.
    pub notify: bool,
    /// Echo handover's output to the test's stderr.
    pub echo: bool,
    /// A command that starts handover: the harness appends what it would run (handover, or
    /// `systemd-socket-activate` with handover) with its arguments, e.g. `unshare --mount sh
    /// -c 'mount ... && exec "$@"' sh`. It must exec that command in place, so that the pid
    /// the harness knows is handover's (or systemd-socket-activate's, as without a wrapper).
    /// `{dir}` and the other placeholders of the config are replaced here too. The handover
    /// it runs is [`reachable_bin`]'s, since a wrapper may change users.
    pub wrapper: Vec<String>,
    /// The test's directory must be reachable by every user (see [`TempDir::reachable`]),
    /// e.g. for a control socket that another uid connects to.
    pub reachable: bool,
}

/// A running `handover start`, killed (with its workers) when dropped.
pub struct Handover {
    child: Option<Child>,
    /// The test's directory (config, reports).
    pub dir: TempDir,
    /// handover's stderr and stdout lines.
    pub log: Lines,
    /// The systemd side of handover's notifications, when requested.
    pub notify: Option<NotifyListener>,
    /// The config file.
    pub config: PathBuf,
    exit: Option<ExitStatus>,
    /// The threads reading handover's stdout and stderr; they end at end of file.
    collectors: Vec<std::thread::JoinHandle<()>>,
}

impl Handover {
    /// Writes `config` (with `{dir}` replaced by the test directory and `{worker}` by the
    /// test worker's path) and starts handover on it.
    pub fn start(label: &str, config: &str, options: Options) -> Handover {
        let dir = if options.reachable {
            TempDir::reachable(label)
        } else {
            TempDir::new(label)
        };
        let config = with_control(expand(config, dir.path()), dir.path());
        std::fs::create_dir_all(dir.path().join("reports")).expect("create reports dir");
        let config_path = dir.path().join("handover.toml");
        std::fs::write(&config_path, config).expect("write config");
        let notify = options.notify.then(|| NotifyListener::new(dir.path()));
        // A wrapper may run handover as another user (setpriv): then it needs a copy every
        // user can reach.
        let handover = if options.wrapper.is_empty() {
            binary("handover")
        } else {
            reachable_bin("handover")
        };
        let wrapper: Vec<String> = options
            .wrapper
            .iter()
            .map(|arg| expand(arg, dir.path()))
            .collect();
        let mut cmd = if options.activate.is_empty() {
            wrapped(&wrapper, handover.as_os_str())
        } else {
            let mut cmd = wrapped(&wrapper, "systemd-socket-activate".as_ref());
            for (address, _) in &options.activate {
                cmd.arg("-l").arg(address);
            }
            let names: Vec<&str> = options.activate.iter().map(|(_, n)| n.as_str()).collect();
            cmd.arg(format!("--fdname={}", names.join(":")));
            for (key, value) in &options.env {
                cmd.arg("-E").arg(format!("{key}={value}"));
            }
            if let Some(listener) = &notify {
                cmd.arg("-E")
                    .arg(format!("NOTIFY_SOCKET={}", listener.path().display()));
            }
            cmd.arg("-E").arg("HANDOVER_TEST_PARENT_MARKER=1");
            cmd.arg("--").arg(&handover);
            cmd
        };
        cmd.arg("start").arg("--config").arg(&config_path);
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        cmd.env_remove("JOURNAL_STREAM");
        for (key, value) in &options.env {
            cmd.env(key, value);
        }
        if let Some(listener) = &notify {
            cmd.env("NOTIFY_SOCKET", listener.path());
        }
        cmd.current_dir(dir.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn handover");
        let log = Lines::default();
        let collectors = vec![
            collect(
                child.stdout.take().expect("stdout"),
                log.clone(),
                options.echo,
            ),
            collect(
                child.stderr.take().expect("stderr"),
                log.clone(),
                options.echo,
            ),
        ];
        if !options.activate.is_empty() {
            // systemd-socket-activate starts its program on the first connection.
            log.wait_for("Listening on");
            let first = &options.activate[0].0;
            if !first.starts_with('/') {
                let deadline = Instant::now() + GUARD;
                while std::net::TcpStream::connect(first.as_str()).is_err() {
                    assert!(Instant::now() < deadline, "could not knock on {first}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                let _ = std::os::unix::net::UnixStream::connect(first);
            }
        }
        Handover {
            child: Some(child),
            dir,
            log,
            notify,
            config: config_path,
            exit: None,
            collectors,
        }
    }

    /// handover's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends a signal to handover.
    pub fn signal(&self, signal: i32) {
        // Only while our child is unreaped, so the pid cannot belong to anybody else.
        let pid = self.pid();
        if pid > 0 && self.exit.is_none() {
            unsafe_kill(pid, signal);
        }
    }

    /// Waits for handover to exit (guarded), returning its status.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let child = self.child.as_mut().expect("child");
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                // Every line handover wrote is in the log once its output reached end of
                // file (a process it left behind could hold it open: then give up waiting).
                let until = Instant::now() + Duration::from_secs(5);
                while self.collectors.iter().any(|c| !c.is_finished()) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "handover did not exit; log:\n{}",
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Runs `handover ARGS --socket SOCKET` (a control command) to completion; returns
    /// (status, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        // By socket, not by config: tests rewrite the config file between reloads.
        let socket = self.control_socket().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", socket.as_str()]);
        run_handover(&all, &[])
    }

    /// `handover status --json`, parsed; fails the test when the command fails or prints
    /// no JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let (status, out, err) = self.ctl(&["status", "--json"]);
        assert!(status.success(), "status --json failed: {out}{err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
    }

    /// Replaces the config file (for the next reload) with `template`, expanded like the one
    /// `start` wrote and keeping this test's control socket.
    pub fn rewrite_config(&self, template: &str) {
        let text = with_control(expand(template, self.dir.path()), self.dir.path());
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Waits until `n` worker reports exist in `{dir}/reports` and returns them, by pid.
    pub fn reports(&self, n: usize) -> BTreeMap<i32, serde_json::Value> {
        let dir = self.dir.path().join("reports");
        let deadline = Instant::now() + GUARD;
        loop {
            let reports = read_reports(&dir);
            if reports.len() >= n {
                return reports;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} reports in {}; handover's log:\n{}",
                dir.display(),
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `program` as it is, or run by `wrapper` (see [`Options::wrapper`]).
fn wrapped(wrapper: &[String], program: &std::ffi::OsStr) -> Command {
    match wrapper.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                unsafe_kill(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

fn unsafe_kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: i32) {
    unsafe_kill(pid, signal)
}

/// Gives a config without a `[control]` section the test's own control socket (the default
/// path is shared by instance name, so parallel tests would collide).
fn with_control(mut config: String, dir: &Path) -> String {
    if !config.contains("[control]") {
        config.push_str(&format!(
            "\n[control]\nsocket = \"{}/control.sock\"\n",
            dir.display()
        ));
    }
    config
}

/// Replaces `{dir}`, `{worker}` and `{http}` in a config template.
///
/// The paths go into TOML strings and `sh -c` scripts as they are, so they are plain (see
/// [`is_plain`]): test folders and binaries move to [`reachable_dir`] when the checkout's
/// path is not.
pub fn expand(template: &str, dir: &Path) -> String {
    assert!(
        is_plain(dir),
        "the test folder {} has a path that scripts cannot hold as it is",
        dir.display()
    );
    template
        .replace("{dir}", &dir.display().to_string())
        .replace(
            "{worker}",
            &reachable_bin("handover-test-worker").display().to_string(),
        )
        .replace(
            "{http}",
            &reachable_bin("handover-example-http").display().to_string(),
        )
}

/// Waits until `dir` holds `n` `*.json` reports; returns them by pid.
pub fn wait_reports(dir: &Path, n: usize) -> BTreeMap<i32, serde_json::Value> {
    let deadline = Instant::now() + GUARD;
    loop {
        let reports = read_reports(dir);
        if reports.len() >= n {
            return reports;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} reports in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reports in `dir`, by pid.
pub fn read_reports(dir: &Path) -> BTreeMap<i32, serde_json::Value> {
    let mut reports = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return reports;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    if let Some(pid) = value["pid"].as_i64() {
                        reports.insert(pid as i32, value);
                    }
                }
            }
        }
    }
    reports
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid)
        .is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z") | Some("X") | None))
}

/// The pids whose parent is `parent` (zombies included).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| {
            stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()))
                == Some(parent)
        })
        .collect()
}

/// Waits (guarded) until none of `pids` is alive.
pub fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + GUARD;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "processes still alive: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes whose environment contains `marker` (as `HANDOVER_TEST_MARKER=marker`).
pub fn marked_processes(marker: &str) -> Vec<i32> {
    let needle = format!("HANDOVER_TEST_MARKER={marker}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// The body of `GET /` on 127.0.0.1:`port` (the whole answer after its head), with a
/// generous deadline.
pub fn http_get_body(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_string(),
        _ => panic!("not a 200 answer: {answer:?}"),
    }
}

/// A handover sentinel's name, as `ps` shows it: the first 15 bytes of `handover-sentinel`.
pub const SENTINEL_COMM: &str = "handover-sentin";

/// Whether `pid` is a handover sentinel.
pub fn is_sentinel(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == SENTINEL_COMM)
}

/// Whether a test must stop here because a precondition is `missing` (its reason): says so
/// and returns true, or fails the test when `HANDOVER_REQUIRE_SYSTEMD` is set, as for the
/// systemd tier: CI runs as root with every tool installed, so there a missing one is a
/// broken machine.
pub fn skip(missing: Option<String>) -> bool {
    let Some(reason) = missing else {
        return false;
    };
    if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() {
        panic!("{reason}, and HANDOVER_REQUIRE_SYSTEMD is set");
    }
    eprintln!("skipped: {reason}");
    true
}

/// A marker unique to this test run.
pub fn unique_marker(label: &str) -> String {
    format!(
        "{label}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

/// Runs `handover` with `args` to completion (guarded); returns (status, stdout, stderr).
pub fn run_handover(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(binary("handover"));
    cmd.args(args).stdin(Stdio::null());
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_guarded(cmd)
}

/// Runs a command to completion with the guard deadline.
pub fn output_guarded(mut cmd: Command) -> (ExitStatus, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let out = Lines::default();
    let err = Lines::default();
    let readers = [
        collect_output(child.stdout.take().expect("stdout"), out.clone(), false),
        collect_output(child.stderr.take().expect("stderr"), err.clone(), false),
    ];
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "command did not finish: {:?}\nstderr so far:\n{}",
                cmd,
                err.text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes reach end of file once the process and anything it left behind have closed
    // them; only then is the output complete.
    for reader in readers {
        let _ = reader.join();
    }
    (status, out.text(), err.text())
}
