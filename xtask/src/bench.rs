//! `cargo xtask bench reload|idle|logs|health`: figures for docs/benchmarks.md.
//!
//! Both benches build the workspace in release and run the release `handover` with the
//! release example worker on a free 127.0.0.1 port. `cargo xtask` itself runs a debug build
//! of this crate, which would make the load generator the bottleneck, so after building, the
//! bench re-executes the release build of xtask to do the measuring.
//!
//! The figures are printed as plain lines; nothing is asserted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use handover_tests::loadgen::{self, LoadConfig, Mode, Summary};

/// Set in the environment of the re-executed release xtask: the build is done.
const BUILT_ENV: &str = "HANDOVER_BENCH_BUILT";
/// Anything the bench waits for (a ready generation, one reload) may take at most this.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// The load never runs longer than this, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(3600);
/// Nor attempts more requests than this.
const LOAD_MAX_REQUESTS: u64 = 500_000_000;
/// One load generator run; runs follow each other until the bench stops the load.
const LOAD_SLICE: Duration = Duration::from_secs(1);
/// A request taking longer than this counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: cargo xtask bench reload [--reloads 100] [--workers 4] [--concurrency 16]
                                [--mode new|keepalive] [--boot-ms 200]
                                [--worker example|batching] [--steering on|off]
                                [--cgroups on|off] [--boot-cpu on|off] [--start-nice 0..19]
                                [--start-cpu-weight 1..10000] [--limits on|off]
       cargo xtask bench idle [--workers 4] [--seconds 10] [--cgroups on|off] [--limits on|off]
       cargo xtask bench logs [--workers 4] [--megabytes 200]
       cargo xtask bench health [--workers 64] [--seconds 10]";

/// Entry point for `cargo xtask bench ...`; `args` follow `bench`.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(what) = args.first() else {
        bail!("{USAGE}");
    };
    let mut options = Options::parse(&args[1..])?;
    if what == "health" && !args.iter().any(|a| a == "--workers") {
        options.workers = 64;
    }
    match what.as_str() {
        "reload" | "idle" | "logs" | "health" => {}
        "-h" | "--help" => {
            println!("{USAGE}");
            return Ok(());
        }
        other => bail!("unknown bench {other:?}\n{USAGE}"),
    }
    if std::env::var_os(BUILT_ENV).is_none() {
        return build_and_reexec(args);
    }
    let paths = Paths::find()?;
    // First, so every set of figures says what it measured.
    println!("commit: {}", measured_commit(&paths.root));
    match what.as_str() {
        "reload" => bench_reload(&paths, &options),
        "logs" => bench_logs(&paths, &options),
        "health" => bench_health(&paths, &options),
        _ => bench_idle(&paths, &options),
    }
}

#[derive(Debug, Clone)]
struct Options {
    reloads: usize,
    workers: u32,
    concurrency: usize,
    mode: Mode,
    boot_ms: u64,
    seconds: u64,
    megabytes: u64,
    worker: Worker,
    steering: bool,
    cgroups: bool,
    boot_cpu: bool,
    start_nice: u64,
    /// `start_cpu_weight` of the example worker; 0 leaves it unset.
    start_cpu_weight: u64,
    /// Every cgroup limit set (generous ones), to measure what they cost.
    limits: bool,
}

/// The program the reload bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    /// `handover-example-http`, which drains politely.
    Example,
    /// The test worker with `--accept-batch 16`: it accepts greedily and drops what it has
    /// not answered when told to stop, as frameworks that batch their accepts do.
    Batching,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut o = Options {
            reloads: 100,
            workers: 4,
            concurrency: 16,
            mode: Mode::NewConnection,
            boot_ms: 200,
            seconds: 10,
            megabytes: 200,
            worker: Worker::Example,
            steering: true,
            cgroups: true,
            boot_cpu: false,
            start_nice: 0,
            start_cpu_weight: 0,
            limits: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = |max: u64| -> anyhow::Result<u64> {
                match value.parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => bail!("{flag} needs a number in 1..={max}, not {value:?}"),
                }
            };
            let on_off = || -> anyhow::Result<bool> {
                match value.as_str() {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    _ => bail!("{flag} must be on or off, not {value:?}"),
                }
            };
            match flag.as_str() {
                "--reloads" => o.reloads = number(100_000)? as usize,
                "--workers" => o.workers = number(1024)? as u32,
                "--concurrency" => {
                    o.concurrency = number(loadgen::MAX_CONCURRENCY as u64)? as usize
                }
                "--boot-ms" => o.boot_ms = number(600_000)?,
                "--seconds" => o.seconds = number(3600)?,
                "--megabytes" => o.megabytes = number(100_000)?,
                "--mode" => {
                    o.mode = loadgen::parse_mode(value).with_context(|| {
                        format!("--mode must be new or keepalive, not {value:?}")
                    })?
                }
                "--worker" => {
                    o.worker = match value.as_str() {
                        "example" => Worker::Example,
                        "batching" => Worker::Batching,
                        _ => bail!("--worker must be example or batching, not {value:?}"),
                    }
                }
                "--steering" => o.steering = on_off()?,
                "--boot-cpu" => o.boot_cpu = on_off()?,
                "--start-nice" => {
                    o.start_nice = match value.parse::<u64>() {
                        Ok(n) if n <= 19 => n,
                        _ => bail!("--start-nice needs a number in 0..=19, not {value:?}"),
                    }
                }
                "--start-cpu-weight" => o.start_cpu_weight = number(10_000)?,
                "--limits" => o.limits = on_off()?,
                "--cgroups" => o.cgroups = on_off()?,
                _ => bail!("unknown argument {flag:?}\n{USAGE}"),
            }
        }
        Ok(o)
    }
}

/// Where the workspace and its release binaries are.
struct Paths {
    root: PathBuf,
    release: PathBuf,
}

impl Paths {
    fn find() -> anyhow::Result<Paths> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    root.join(dir)
                }
            }
            None => root.join("target"),
        };
        Ok(Paths {
            root,
            release: target.join("release"),
        })
    }

    fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.release.join(name);
        if !path.exists() {
            bail!("{} is missing; the release build failed?", path.display());
        }
        Ok(path)
    }
}

/// `cargo build --release --workspace --bins`, then the release xtask does the rest.
fn build_and_reexec(args: &[String]) -> anyhow::Result<()> {
    let paths = Paths::find()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: cargo build --release --workspace --bins");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--workspace", "--bins"])
        .current_dir(&paths.root)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("the release build failed: {status}");
    }
    let status = Command::new(paths.bin("xtask")?)
        .arg("bench")
        .args(args)
        .env(BUILT_ENV, "1")
        .status()
        .context("running the release xtask")?;
    if !status.success() {
        bail!("the bench failed: {status}");
    }
    Ok(())
}

/// The commit the bench measures: `git rev-parse --short HEAD`, with `-dirty` when tracked
/// files differ from it (untracked files are not looked at, as `git describe --dirty`
/// does not); `unknown` with the reason outside a git checkout.
fn measured_commit(root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout, or git is not installed)".into();
    };
    let changes = git(&["status", "--porcelain", "--untracked-files=no"]);
    describe_commit(&head, changes.as_deref())
}

/// `head`, with `-dirty` when `git status --porcelain` printed something (or could not say).
fn describe_commit(head: &str, changes: Option<&str>) -> String {
    match changes {
        Some("") => head.to_string(),
        _ => format!("{head}-dirty"),
    }
}

// ---- handover under observation ------------------------------------------------------------

/// Log lines, each with the moment it was read.
type Stamped = Vec<(Instant, String)>;

/// handover's log lines with the moment each was read.
#[derive(Clone, Default)]
struct Log(Arc<(Mutex<Stamped>, Condvar)>);

impl Log {
    fn push(&self, line: String) {
        let (lock, cvar) = &*self.0;
        lock.lock().expect("log lock").push((Instant::now(), line));
        cvar.notify_all();
    }

    /// Every line read so far that contains `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let lines = self.0 .0.lock().expect("log lock");
        lines
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.0 .0.lock().expect("log lock");
        lines.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Waits for the `n`th line containing `needle`; returns it and when it was read.
    fn wait_nth(&self, needle: &str, n: usize) -> anyhow::Result<(Instant, String)> {
        let (lock, cvar) = &*self.0;
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut lines = lock.lock().expect("log lock");
        loop {
            if let Some(hit) = lines.iter().filter(|(_, l)| l.contains(needle)).nth(n - 1) {
                return Ok(hit.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                let tail: Vec<&str> = lines
                    .iter()
                    .rev()
                    .take(30)
                    .rev()
                    .map(|(_, l)| l.as_str())
                    .collect();
                bail!(
                    "waited {WAIT_LIMIT:?} for line {n} containing {needle:?}; last lines:\n{}",
                    tail.join("\n")
                );
            }
            lines = cvar
                .wait_timeout(lines, deadline - now)
                .expect("log lock")
                .0;
        }
    }
}

/// A running release handover; stopped (and if need be killed) when dropped.
struct Running {
    child: Child,
    log: Log,
    port: u16,
    _dir: TempDir,
}

impl Running {
    /// handover with `workers` of `worker` on a socket with steering on or off; `o`'s
    /// `--boot-cpu` and `--start-nice` apply to the example worker.
    fn start_worker(
        paths: &Paths,
        workers: u32,
        boot_ms: u64,
        worker: Worker,
        steering: bool,
        extra: &str,
        o: &Options,
    ) -> anyhow::Result<Running> {
        let command = match worker {
            Worker::Example => {
                let bin = paths.bin("handover-example-http")?;
                let cpu = if o.boot_cpu { r#", "--boot-cpu""# } else { "" };
                // Further [worker] keys follow the command's line.
                let weight = if o.start_cpu_weight > 0 {
                    format!("\nstart_cpu_weight = {}", o.start_cpu_weight)
                } else {
                    String::new()
                };
                format!(
                    "[{bin:?}, \"--boot-ms\", \"{boot_ms}\", \"--idle-grace-ms\", \"200\"{cpu}]\nstart_nice = {}{weight}{}",
                    o.start_nice,
                    limits_extra(o)
                )
            }
            Worker::Batching => {
                let bin = paths.bin("handover-test-worker")?;
                format!(
                    r#"[{bin:?}, "--serve", "--ready-after", "{boot_ms}", "--accept-batch", "16", "--answer-delay-ms", "20"]"#
                )
            }
        };
        Running::start_with_socket(paths, workers, &command, extra, steering)
    }

    /// handover running `count` workers of `command` (a TOML array), with `extra` appended to
    /// the configuration (`{dir}` in it is the scratch directory).
    fn start_with(
        paths: &Paths,
        workers: u32,
        command: &str,
        extra: &str,
    ) -> anyhow::Result<Running> {
        Running::start_with_socket(paths, workers, command, extra, true)
    }

    /// [`Running::start_with`] on a socket with steering on or off.
    fn start_with_socket(
        paths: &Paths,
        workers: u32,
        command: &str,
        extra: &str,
        steering: bool,
    ) -> anyhow::Result<Running> {
        let dir = TempDir::new(paths)?;
        let port = free_port()?;
        let extra = extra.replace("{dir}", &dir.0.display().to_string());
        let control = dir.0.join("control.sock").display().to_string();
        let config = format!(
            r#"# written by cargo xtask bench
[[socket]]
name = "http"
listen = "127.0.0.1:{port}"
steering = {steering}

[worker]
command = {command}
count = {workers}
ready_timeout = "60s"
stop_timeout = "10s"

[reload]
drain_timeout = "10s"
max_draining = 4

[control]
socket = "{control}"
{extra}"#
        );
        let config_path = dir.0.join("handover.toml");
        std::fs::write(&config_path, config).context("writing the config")?;
        let mut cmd = Command::new(paths.bin("handover")?);
        cmd.arg("start")
            .arg("--config")
            .arg(&config_path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .env_remove("HANDOVER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting handover")?;
        let log = Log::default();
        let stderr = child.stderr.take().context("handover's stderr")?;
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.push(line);
                }
            });
        }
        let running = Running {
            child,
            log,
            port,
            _dir: dir,
        };
        running
            .log
            .wait_nth(&format!("all {workers} workers ready"), 1)?;
        Ok(running)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn config(&self) -> PathBuf {
        self._dir.0.join("handover.toml")
    }

    fn dir(&self) -> &Path {
        &self._dir.0
    }

    fn signal(&self, signal: i32) {
        // Only while the child is unreaped, so the pid cannot be anybody else's.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// SIGTERM, then wait (bounded); SIGKILL if handover does not exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + WAIT_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    eprintln!("bench: handover exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        bail!("handover did not stop within {WAIT_LIMIT:?}")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A scratch directory under the target directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(paths: &Paths) -> anyhow::Result<TempDir> {
        let dir = paths
            .release
            .join("bench-tmp")
            .join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(listener.local_addr()?.port())
}

/// The numeric `key: value` lines of /proc/PID/status (values without their units).
fn proc_status(pid: i32) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(':') {
                if let Some(n) = value.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    map.insert(key.to_string(), n);
                }
            }
        }
    }
    map
}

/// Context switches summed over every thread of `pid`: (voluntary, involuntary, threads).
fn context_switches(pid: i32) -> (u64, u64, usize) {
    let mut sums = (0, 0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return sums;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        sums.2 += 1;
        for line in text.lines() {
            let value = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let Some(n) = value("voluntary_ctxt_switches:") {
                sums.0 += n;
            }
            if let Some(n) = value("nonvoluntary_ctxt_switches:") {
                sums.1 += n;
            }
        }
    }
    sums
}

fn print_memory(pid: i32) {
    let status = proc_status(pid);
    let kib = |k: &str| status.get(k).copied().unwrap_or(0);
    println!("handover VmRSS: {} KiB", kib("VmRSS"));
    println!("handover VmHWM: {} KiB", kib("VmHWM"));
    // What of the RSS is handover's own memory, and what pages of files (its code, libc).
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    for key in ["Pss_Anon", "Pss_File"] {
        let value = rollup
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?");
        println!("handover {key}: {value} KiB");
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("handover open fds: {fds}");
    // The sentinel is a process of handover's too: its RSS is nearly all pages it shares
    // with handover (libc, handover's code); what it costs on its own is its private memory.
    let sentinel = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|child| {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            let parent = proc_status(*child).get("PPid").copied();
            comm.trim() == "handover-sentin" && parent == Some(pid as u64)
        });
    match sentinel {
        Some(sentinel) => {
            let rollup = std::fs::read_to_string(format!("/proc/{sentinel}/smaps_rollup"))
                .unwrap_or_default();
            let field = |key: &str| -> u64 {
                rollup
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            let private = field("Private_Clean") + field("Private_Dirty");
            println!(
                "sentinel VmRSS: {} KiB (private to it: {private} KiB)",
                field("Rss")
            );
            println!(
                "handover + sentinel, counting shared pages once: {} KiB",
                kib("VmRSS") + private
            );
        }
        None => println!("sentinel: none found"),
    }
}

// ---- background load --------------------------------------------------------------------

/// The load generator in its own thread, in back-to-back runs until stopped.
/// The bench's load: [`loadgen::Background`] with the bench's limits.
struct BackgroundLoad(loadgen::Background);

impl BackgroundLoad {
    fn start(port: u16, mode: Mode, concurrency: usize) -> BackgroundLoad {
        let cfg = LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            concurrency,
            duration: LOAD_SLICE,
            max_requests: LOAD_MAX_REQUESTS,
            mode,
            request_timeout: REQUEST_TIMEOUT,
            path: "/".into(),
        };
        BackgroundLoad(loadgen::Background::start(cfg, LOAD_LIMIT))
    }

    fn finish(self) -> anyhow::Result<(Summary, bool)> {
        self.0.finish()
    }
}

// ---- the benches ------------------------------------------------------------------------

fn bench_reload(paths: &Paths, o: &Options) -> anyhow::Result<()> {
    let mut handover = Running::start_worker(
        paths,
        o.workers,
        o.boot_ms,
        o.worker,
        o.steering,
        cgroups_extra(o),
        o,
    )?;
    let pid = handover.pid();
    let load = BackgroundLoad::start(handover.port, o.mode, o.concurrency);
    let mut reported = Vec::with_capacity(o.reloads);
    let mut observed = Vec::with_capacity(o.reloads);
    let began = Instant::now();
    for n in 1..=o.reloads {
        // At most three old generations left draining (max_draining is 4).
        if n > 3 {
            handover
                .log
                .wait_nth("generation draining has no workers left", n - 3)?;
        }
        // As `ExecReload=handover reload` does: the client returns once the reload is done.
        let sent = Instant::now();
        let status = Command::new(paths.bin("handover")?)
            .arg("reload")
            .arg("--config")
            .arg(handover.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running handover reload")?;
        observed.push(sent.elapsed());
        if !status.success() {
            bail!("handover reload {n} failed: {status}");
        }
        let (_, line) = handover.log.wait_nth("reload done in", n)?;
        reported.push(
            reported_duration(&line)
                .with_context(|| format!("no duration in the reload line {line:?}"))?,
        );
    }
    let reloading = began.elapsed();
    let (summary, limited) = load.finish()?;
    let aborted = handover.log.count("reload aborted");

    let mode = match o.mode {
        Mode::NewConnection => "new",
        Mode::KeepAlive => "keepalive",
    };
    let worker = match o.worker {
        Worker::Example => "example",
        Worker::Batching => "batching",
    };
    println!(
        "bench reload: {} reloads, {} workers ({worker}), --boot-ms {}{}, mode {mode}, concurrency {}, steering {}, cgroups {}, start_nice {}, start_cpu_weight {}, limits {}",
        o.reloads,
        o.workers,
        o.boot_ms,
        if o.boot_cpu { " (computing)" } else { "" },
        o.concurrency,
        if o.steering { "on" } else { "off" },
        if o.cgroups { "on" } else { "off" },
        o.start_nice,
        if o.start_cpu_weight > 0 {
            o.start_cpu_weight.to_string()
        } else {
            "unset".into()
        },
        if o.limits { "on" } else { "off" },
    );
    let cgroups = handover.log.lines_with("cgroup");
    if let Some(line) = cgroups.first() {
        println!(
            "handover says: {}",
            line.split("  INFO ").last().unwrap_or(line)
        );
    }
    println!("reloading took: {:.1} s", reloading.as_secs_f64());
    println!("requests: {}", summary.requests);
    println!("ok: {}", summary.ok);
    let f = &summary.failures;
    println!(
        "failures: {} (refused {}, reset {}, timeout {}, bad_status {}, other {})",
        summary.failed(),
        f.refused,
        f.reset,
        f.timeout,
        f.bad_status,
        f.other
    );
    println!(
        "keep-alive retries after an idle close: {}",
        summary.idle_close_retries
    );
    println!("connections: {}", summary.connections);
    if summary.elapsed_ms > 0 {
        println!(
            "throughput: {:.0} requests/s",
            summary.requests as f64 * 1000.0 / summary.elapsed_ms as f64
        );
    }
    if limited {
        println!("note: the load stopped at its own limit before the reloads ended");
    }
    println!("aborted reloads: {aborted}");
    let boot = Duration::from_millis(o.boot_ms);
    print_quantiles(
        "reload time minus boot (handover's \"reload done in\")",
        &reported,
        boot,
    );
    print_quantiles(
        "reload time minus boot (`handover reload` run to its exit)",
        &observed,
        boot,
    );
    let handed_over: Vec<Duration> = handover
        .log
        .lines_with("handed over in ")
        .iter()
        .filter_map(|line| logged_duration(line, "handed over in "))
        .collect();
    print_quantiles(
        "old generation kept after the switch (\"handed over in\", before its stop signal)",
        &handed_over,
        Duration::ZERO,
    );
    println!(
        "max request latency: {:.1} ms",
        summary.latency_us.max as f64 / 1000.0
    );
    println!(
        "request latency p99 (worst 1 s window): {:.1} ms",
        summary.latency_us.p99 as f64 / 1000.0
    );
    print_memory(pid);
    handover.stop()?;
    Ok(())
}

fn bench_idle(paths: &Paths, o: &Options) -> anyhow::Result<()> {
    let mut handover = Running::start_worker(
        paths,
        o.workers,
        0,
        Worker::Example,
        true,
        cgroups_extra(o),
        o,
    )?;
    let pid = handover.pid();
    // The log lines of the start are flushed by now; idleness starts here.
    std::thread::sleep(Duration::from_millis(500));
    let before = context_switches(pid);
    let main_before = proc_status(pid);
    let window = Duration::from_secs(o.seconds);
    std::thread::sleep(window);
    let after = context_switches(pid);
    let main_after = proc_status(pid);
    let delta = |k: &str| {
        main_after.get(k).copied().unwrap_or(0) - main_before.get(k).copied().unwrap_or(0)
    };
    println!(
        "bench idle: {} workers, {} s without requests or signals, cgroups {}, limits {}",
        o.workers,
        o.seconds,
        if o.cgroups { "on" } else { "off" },
        if o.limits { "on" } else { "off" }
    );
    println!(
        "voluntary context switches, main thread (/proc/PID/status): {}",
        delta("voluntary_ctxt_switches")
    );
    println!(
        "voluntary context switches, all {} threads: {} ({:.2}/s)",
        after.2,
        after.0 - before.0,
        (after.0 - before.0) as f64 / window.as_secs_f64()
    );
    println!(
        "involuntary context switches, all threads: {}",
        after.1 - before.1
    );
    print_memory(pid);
    handover.stop()?;
    Ok(())
}

/// `[worker]` keys for `--limits on`: every cgroup limit, each far above what the workers
/// use, so that only their cost shows.
fn limits_extra(o: &Options) -> &'static str {
    if o.limits {
        "\nmemory_max = \"1GiB\"\nmemory_high = \"900MiB\"\ncpu_quota = \"200%\"\ncpu_weight = 100\npids_max = 4096"
    } else {
        ""
    }
}

/// The configuration that turns cgroups off, for `--cgroups off`.
fn cgroups_extra(o: &Options) -> &'static str {
    if o.cgroups {
        ""
    } else {
        "\n[handover]\ncgroups = \"off\"\n"
    }
}

/// `cargo xtask bench health`: what checking every worker's health every second costs
/// handover: its CPU time and its wakeups (voluntary context switches) over `--seconds`,
/// with `[health] check = "http"` and without, `--workers` example workers, no load.
fn bench_health(paths: &Paths, o: &Options) -> anyhow::Result<()> {
    let bin = paths.bin("handover-example-http")?;
    let command = format!(r#"[{bin:?}, "--idle-grace-ms", "200"]"#);
    let window = Duration::from_secs(o.seconds);
    println!(
        "bench health: {} example workers, {} s without requests, HTTP check every 1 s",
        o.workers, o.seconds
    );
    for (label, extra) in [
        ("without [health]", ""),
        (
            "with [health]   ",
            "\n[health]\ncheck = \"http\"\npath = \"/ok\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
        ),
    ] {
        let mut handover = Running::start_with(paths, o.workers, &command, extra)?;
        let pid = handover.pid();
        // The first checks and the start's log lines are done by now.
        std::thread::sleep(Duration::from_secs(2));
        let (switches, cpu) = (context_switches(pid), cpu_seconds(pid));
        std::thread::sleep(window);
        let (switches_after, cpu_after) = (context_switches(pid), cpu_seconds(pid));
        let failed = handover.log.count("health check failed");
        let wakeups = switches_after.0 - switches.0;
        let checks = if extra.is_empty() {
            0
        } else {
            u64::from(o.workers) * o.seconds
        };
        println!(
            "{label}: CPU {:.1} ms/s ({:.1}% of one core), {:.1} wakeups/s over {} threads, about {checks} checks, {failed} failed",
            (cpu_after - cpu) * 1000.0 / window.as_secs_f64(),
            (cpu_after - cpu) * 100.0 / window.as_secs_f64(),
            wakeups as f64 / window.as_secs_f64(),
            switches_after.2,
        );
        if checks > 0 {
            println!(
                "  per check: {:.1} us of CPU, {:.2} wakeups",
                (cpu_after - cpu) * 1e6 / checks as f64,
                wakeups as f64 / checks as f64
            );
        }
        print_memory(pid);
        handover.stop()?;
    }
    Ok(())
}

/// Length of a flood line, newline excluded.
const FLOOD_LINE: u64 = 99;

/// `cargo xtask bench logs`: workers that write as fast as they can, their output written to
/// a file by handover (without and with rotation and gzip), against the same workers writing
/// to a file themselves.
fn bench_logs(paths: &Paths, o: &Options) -> anyhow::Result<()> {
    let lines_per_worker = o.megabytes * 1_000_000 / u64::from(o.workers) / (FLOOD_LINE + 1);
    let bytes_per_worker = lines_per_worker * FLOOD_LINE;
    let expected = lines_per_worker * u64::from(o.workers);
    // Lines of 99 'x' without the last newline, which handover adds at end of file.
    let flood =
        format!("head -c {bytes_per_worker} /dev/zero | tr -c x x | fold -w {FLOOD_LINE}; echo");
    println!(
        "bench logs: {} workers, {} lines of {} bytes in all ({} MB)",
        o.workers,
        expected,
        FLOOD_LINE + 1,
        expected * (FLOOD_LINE + 1) / 1_000_000
    );

    // The workers alone, each writing to its own file.
    let dir = TempDir::new(paths)?;
    let started = Instant::now();
    let children: Vec<Child> = (0..o.workers)
        .map(|i| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("({flood}) > {}/direct-{i}.log", dir.0.display()))
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("starting the direct writers")?;
    for mut child in children {
        child.wait()?;
    }
    let direct = started.elapsed();
    print_throughput("workers writing their own files", expected, direct);
    drop(dir);

    for (label, logs) in [
        ("through handover, one file, no rotation", "max_size = 0\n"),
        (
            "through handover, rotated at 10 MiB and gzipped",
            "max_size = \"10MiB\"\nkeep = 1000\n",
        ),
    ] {
        let command =
            format!(r#"["/bin/sh", "-c", "{flood}; echo flood done >&2; exec sleep 3600"]"#);
        // `ready` belongs to [worker], which the command ends; [logs] comes after [reload].
        let command = format!("{command}\nready = \"delay\"\nready_delay = \"1ms\"");
        let logs_table = format!("\n[logs]\nstdout = \"{{dir}}/out.log\"\nstderr = \"-\"\n{logs}");
        let handover = Running::start_with(paths, o.workers, &command, &logs_table)?;
        let started = Instant::now();
        let pid = handover.pid();
        let cpu_before = cpu_seconds(pid);
        let out = handover.dir().join("out.log");
        // Done when the files stop changing (and nothing waits for compression) for a while;
        // cheap checks only, so that the measuring does not slow down what it measures.
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut last = (0u64, 0usize, true);
        let mut changed = Instant::now();
        while Instant::now() < deadline && changed.elapsed() < Duration::from_millis(500) {
            let now = files_state(&out);
            if now != last {
                last = now;
                changed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = changed.duration_since(started);
        let cpu = cpu_seconds(pid) - cpu_before;
        let lines = count_lines(&out)?;
        let dropped = dropped_lines(paths, &handover.dir().join("handover.toml"));
        println!("{label}:");
        print_throughput("  written", lines, elapsed);
        println!(
            "  handover CPU: {cpu:.2} s ({:.2} s per million lines)",
            cpu / (lines.max(1) as f64 / 1e6)
        );
        println!(
            "  lines dropped (buffer full): {dropped}; unaccounted for: {}",
            expected.saturating_sub(lines + dropped)
        );
        print_memory(pid);
    }
    Ok(())
}

/// Size of the log file, number of rotated files, and whether one is not compressed yet.
fn files_state(path: &Path) -> (u64, usize, bool) {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rotated = 0;
    let mut pending = false;
    if let Some(entries) = path.parent().and_then(|d| std::fs::read_dir(d).ok()) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}.")) {
                rotated += 1;
                pending |= !file.ends_with(".gz");
            }
        }
    }
    (size, rotated, pending)
}

/// The `dropped` count `handover status --json` gives for the first log file.
fn dropped_lines(paths: &Paths, config: &Path) -> u64 {
    let Ok(bin) = paths.bin("handover") else {
        return 0;
    };
    let Ok(out) = Command::new(bin)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // `"dropped":N` without a JSON dependency in xtask.
    text.split("\"dropped\":")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn print_throughput(label: &str, lines: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{label}: {lines} lines in {seconds:.2} s: {:.0} lines/s, {:.0} MB/s of worker output",
        lines as f64 / seconds,
        (lines * (FLOOD_LINE + 1)) as f64 / seconds / 1e6
    );
}

/// Lines in `path` and its rotated files (decompressed with `gzip -dc`).
fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let dir = path.parent().context("no parent")?;
    let name = path
        .file_name()
        .context("no name")?
        .to_string_lossy()
        .into_owned();
    let mut total = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file == name {
            total += newlines(&std::fs::read(entry.path()).unwrap_or_default());
        } else if file.starts_with(&format!("{name}.")) && file.ends_with(".gz") {
            let out = Command::new("gzip")
                .arg("-dc")
                .arg(entry.path())
                .output()
                .context("running gzip -dc")?;
            total += newlines(&out.stdout);
        } else if file.starts_with(&format!("{name}.")) && !file.ends_with(".tmp") {
            total += newlines(&std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    Ok(total)
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here 11 and 12 (state is field 3).
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// p50 and p99 (nearest rank) of `samples` minus `boot`, in milliseconds.
fn print_quantiles(label: &str, samples: &[Duration], boot: Duration) {
    if samples.is_empty() {
        return;
    }
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort();
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    };
    let ms = |d: Duration| (d.as_secs_f64() - boot.as_secs_f64()) * 1000.0;
    println!(
        "{label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(sorted[sorted.len() - 1])
    );
}

/// The duration in "reload done in 55.386887ms: ...", as Rust's `Debug` writes it.
fn reported_duration(line: &str) -> Option<Duration> {
    logged_duration(line, "reload done in ")
}

/// The duration after `prefix` in a log line, as Rust's `Debug` writes it.
fn logged_duration(line: &str, prefix: &str) -> Option<Duration> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let token = rest.split([':', ' ']).next()?;
    let split = token.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = token.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_says_when_the_tree_is_dirty() {
        assert_eq!(describe_commit("071d681", Some("")), "071d681");
        assert_eq!(
            describe_commit("071d681", Some(" M xtask/src/bench.rs")),
            "071d681-dirty"
        );
        assert_eq!(describe_commit("071d681", None), "071d681-dirty");
    }

    #[test]
    fn the_commit_of_this_checkout_is_found() {
        let commit = measured_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        if Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.git")
            .exists()
        {
            let head = commit.trim_end_matches("-dirty");
            assert!(
                head.len() >= 7 && head.bytes().all(|b| b.is_ascii_hexdigit()),
                "{commit}"
            );
        }
    }

    #[test]
    fn durations_in_reload_lines_parse() {
        let line = "2026-11-21T19:39:30.606936Z  INFO reload done in 55.386887ms: generation 2 serves generation=2";
        let got = reported_duration(line).unwrap().as_nanos();
        assert!(got.abs_diff(55_386_887) <= 1, "{got}");
        assert_eq!(
            reported_duration("reload done in 1.5s: x"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            reported_duration("reload done in 900µs: x"),
            Some(Duration::from_micros(900))
        );
        assert_eq!(reported_duration("reload done in soon"), None);
    }

    #[test]
    fn options_parse_and_reject() {
        let args =
            |v: &[&str]| Options::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let o = args(&["--reloads", "5", "--mode", "keepalive", "--boot-ms", "50"]).unwrap();
        assert_eq!((o.reloads, o.mode, o.boot_ms), (5, Mode::KeepAlive, 50));
        assert!(args(&["--reloads", "0"]).is_err());
        assert!(args(&["--mode", "udp"]).is_err());
        assert!(args(&["--workers"]).is_err());
        let o = args(&["--worker", "batching", "--steering", "off"]).unwrap();
        assert_eq!((o.worker, o.steering), (Worker::Batching, false));
        assert!(args(&["--worker", "nginx"]).is_err());
        assert!(args(&["--steering", "yes"]).is_err());
        let o = args(&["--boot-cpu", "on", "--start-nice", "10", "--cgroups", "off"]).unwrap();
        assert_eq!((o.boot_cpu, o.start_nice, o.cgroups), (true, 10, false));
        assert!(args(&["--start-nice", "20"]).is_err());
        assert!(args(&["--boot-cpu", "1"]).is_err());
        assert_eq!(
            logged_duration(
                "x INFO handed over in 212.5ms: no connection",
                "handed over in "
            ),
            Some(Duration::from_micros(212_500))
        );
    }
}
