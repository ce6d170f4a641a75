//! handover: holds listening sockets, runs N workers on them, and replaces them with a new
//! generation without refusing or dropping a connection.
//!
//! This binary alone knows the command line, the configuration file format and logging;
//! the supervisor and the OS plumbing live in their own crates.
#![forbid(unsafe_code)]

mod client;
mod config;
mod env;
mod exit;
mod gendocs;
mod journal_stream;
mod logging;
mod logs;
mod sockets;
mod spec;
mod unit;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover_proto::listen;
use std::time::Duration;

use handover_proto::control::{Request, Response};
use handover_supervisor::{Outcome, Plan, ReloadOverrides};
use handover_sys::stub::{StubArgs, STUB_COMMAND};

use crate::config::Config;
use crate::env::Environment;

/// A systemd-native socket-activation supervisor: holds the listening sockets, runs N workers
/// on them, and reloads them with no refused or dropped connection.
#[derive(Debug, Parser)]
#[command(name = "handover", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the supervisor (systemd's ExecStart=). Foreground unless --daemon.
    Start {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The instance name (systemd's %N), for the default control socket path.
        #[arg(long)]
        service_name: Option<String>,
        /// Log to stdout instead of stderr or the journal.
        #[arg(long)]
        log_to_stdout: bool,
        /// Detach: return once the first generation is ready (exit 0) or failed (exit 1).
        #[arg(long)]
        daemon: bool,
        /// With --daemon: write the supervisor's pid to this file.
        #[arg(long, requires = "daemon")]
        pidfile: Option<PathBuf>,
        /// With --daemon: append logs to this file (default: discard).
        #[arg(long, requires = "daemon")]
        log_file: Option<PathBuf>,
    },
    /// Start a new generation and wait until it serves (systemd's ExecReload=).
    ///
    /// Exits 0 once the new generation is ready and the old one drains; non-zero with the
    /// reason when the reload was aborted, refused or timed out (the old generation serves on).
    Reload {
        #[command(flatten)]
        instance: Instance,
        /// Abort the reload if it has not finished after this long: seconds (0.5) or a
        /// duration with a unit (500ms, 1.5s, 2m), at most 24h.
        #[arg(long, value_name = "SECONDS", value_parser = config::parse_cli_duration)]
        timeout: Option<Duration>,
        /// Number of workers of the new generation.
        #[arg(long)]
        workers: Option<u32>,
        /// Set a variable in the new generation (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Replace the environment with the --env variables instead of overriding.
        #[arg(long)]
        replace_env: bool,
        /// Working directory of the new generation.
        #[arg(long)]
        cwd: Option<PathBuf>,
    },
    /// Stop gracefully and wait until everything is down (systemd's ExecStop=).
    Stop {
        #[command(flatten)]
        instance: Instance,
        /// Give up waiting after this long: seconds (0.5) or a duration with a unit (500ms,
        /// 1.5s, 2m), at most 24h.
        #[arg(long, value_name = "SECONDS", value_parser = config::parse_cli_duration)]
        timeout: Option<Duration>,
    },
    /// Show generations, workers and sockets.
    Status {
        #[command(flatten)]
        instance: Instance,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the last lines of workers' log files; with --follow, new lines as they come.
    ///
    /// Reads the files that [logs] of the configuration names (never the control socket),
    /// oldest line first; lines of two files are merged by the time in their tags. Lines
    /// are printed as they are in the file, tag included.
    Logs {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Keep printing new lines as they are written, across rotation, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only lines of this worker index, of any generation (needs tagged lines).
        #[arg(long, value_name = "N")]
        worker: Option<u32>,
        /// Only lines of this stream (needs tagged lines).
        #[arg(long, value_enum)]
        stream: Option<logs::Stream>,
        /// How many lines to print first.
        #[arg(long, short = 'n', value_name = "LINES", default_value_t = 20)]
        lines: usize,
    },
    /// Abort a running reload; the old generation keeps serving.
    Abort {
        #[command(flatten)]
        instance: Instance,
    },
    /// Change the number of workers of the serving generation.
    Scale {
        #[command(flatten)]
        instance: Instance,
        /// The new number of workers.
        count: u32,
    },
    /// Validate a configuration file without side effects.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print (or write into a folder) the systemd units that run a configuration.
    ///
    /// One .socket unit per [[socket]] (its listen address as ListenStream=, its name as
    /// FileDescriptorName=) and a Type=notify .service running handover start, with
    /// handover reload and handover stop as ExecReload= and ExecStop=.
    Unit(unit::UnitArgs),
    /// Print the version.
    Version,
}

/// Which running instance a command talks to.
#[derive(Debug, clap::Args)]
struct Instance {
    /// The instance's configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The instance name (systemd's %N), as given to `start --service-name`.
    #[arg(long)]
    service_name: Option<String>,
    /// The control socket itself.
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == STUB_COMMAND) {
        run_stub(&args[2..]);
    }
    if args
        .get(1)
        .is_some_and(|a| a == handover_sys::sentinel::SENTINEL_COMMAND)
    {
        handover_sys::sentinel::run();
    }
    if args.get(1).is_some_and(|a| a == gendocs::COMMAND) {
        return gendocs::run::<Cli>(&args[2..]);
    }
    // Before any thread exists, so that every thread gets it: a mask inherited from whoever
    // started handover would hide SIGTERM, SIGHUP and the others from it.
    if let Err(err) = handover_sys::process::unblock_all_signals() {
        eprintln!("handover: cannot unblock signals: {err}");
        return ExitCode::from(exit::INTERNAL);
    }
    if let Err(err) = handover_sys::fd::ensure_std_fds() {
        eprintln!("handover: cannot set up standard fds: {err}");
        return ExitCode::from(exit::INTERNAL);
    }
    // Read once, before any thread exists; never changed afterwards.
    let environment = Environment::read();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    match cli.command {
        Commands::Version => {
            println!("handover {}", env!("CARGO_PKG_VERSION"));
            ExitCode::from(exit::OK)
        }
        Commands::Check { config } => match Config::load(&config) {
            Ok(config) => {
                println!(
                    "{}: valid ({} socket{}, {} worker{})",
                    config.path.display(),
                    config.sockets.len(),
                    if config.sockets.len() == 1 { "" } else { "s" },
                    config.worker.count,
                    if config.worker.count == 1 { "" } else { "s" },
                );
                ExitCode::from(exit::OK)
            }
            Err(err) => {
                eprintln!("handover: {err}");
                ExitCode::from(exit::CONFIG)
            }
        },
        Commands::Unit(args) => unit::run(args),
        Commands::Start {
            config,
            service_name,
            log_to_stdout,
            daemon,
            pidfile,
            log_file,
        } => {
            let options = StartOptions {
                service_name,
                log_to_stdout,
                daemon,
                pidfile,
                log_file,
            };
            start(&config, environment, options)
        }
        Commands::Reload {
            instance,
            timeout,
            workers,
            env,
            replace_env,
            cwd,
        } => {
            let mut pairs = Vec::new();
            for item in env {
                match item.split_once('=') {
                    Some((key, value)) if !key.is_empty() => {
                        pairs.push((key.to_string(), value.to_string()))
                    }
                    _ => return usage(format!("--env {item:?}: expected KEY=VALUE")),
                }
            }
            let cwd = match cwd.map(|c| c.into_os_string().into_string()) {
                Some(Ok(cwd)) => Some(cwd),
                Some(Err(_)) => return usage("--cwd must be valid UTF-8"),
                None => None,
            };
            // At most 24 hours: the milliseconds fit in a u64.
            let timeout_ms = timeout.map(|t| t.as_millis() as u64);
            let request = Request::Reload {
                workers,
                env: pairs,
                replace_env,
                cwd,
                timeout_ms,
            };
            control_command(&instance, &environment, request, None)
        }
        Commands::Stop { instance, timeout } => {
            control_command(&instance, &environment, Request::Stop, timeout)
        }
        Commands::Status { instance, json } => {
            let path = match instance_socket(&instance, &environment) {
                Ok(path) => path,
                Err(code) => return code,
            };
            match client::request(
                &path,
                &Request::Status,
                Some(Duration::from_secs(10)),
                |_| {},
            ) {
                Ok((Some(Response::Status { status }), _)) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&status).unwrap_or_default()
                        );
                    } else {
                        print!("{}", client::render_status(&status));
                    }
                    ExitCode::from(exit::OK)
                }
                Ok((other, _)) => report_failure(other),
                Err(err) => client_error(err),
            }
        }
        Commands::Logs {
            config,
            follow,
            worker,
            stream,
            lines,
        } => match Config::load(&config) {
            Ok(config) => {
                let options = logs::Options {
                    follow,
                    lines,
                    filter: logs::Filter { worker, stream },
                };
                logs::run(&config.path, &config.logs, &options)
            }
            Err(err) => {
                eprintln!("handover: {err}");
                ExitCode::from(exit::CONFIG)
            }
        },
        Commands::Abort { instance } => {
            control_command(&instance, &environment, Request::Abort, None)
        }
        Commands::Scale { instance, count } => {
            control_command(&instance, &environment, Request::Scale { count }, None)
        }
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("handover: {message}");
    ExitCode::from(exit::USAGE)
}

fn instance_socket(instance: &Instance, environment: &Environment) -> Result<PathBuf, ExitCode> {
    if let Some(socket) = &instance.socket {
        return Ok(socket.clone());
    }
    let config = match &instance.config {
        Some(path) => match Config::load(path) {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("handover: {err}");
                return Err(ExitCode::from(exit::CONFIG));
            }
        },
        None => None,
    };
    client::socket_path(
        config.as_ref(),
        instance.service_name.as_deref(),
        instance.config.as_deref(),
        environment,
    )
    .map_err(|message| {
        eprintln!("handover: {message}");
        ExitCode::from(exit::USAGE)
    })
}

fn client_error(err: client::ClientError) -> ExitCode {
    match err {
        client::ClientError::NotRunning(message) | client::ClientError::Connect(message) => {
            eprintln!("handover: {message}");
            ExitCode::from(exit::CONTROL)
        }
        client::ClientError::Failed(message) => {
            eprintln!("handover: {message}");
            ExitCode::from(exit::REQUEST_FAILED)
        }
    }
}

fn report_failure(response: Option<Response>) -> ExitCode {
    let message = match response {
        Some(Response::Failed { reason }) => format!("reload failed: {reason}"),
        Some(Response::Busy { generation }) => {
            format!("busy: a reload to generation {generation} is running")
        }
        Some(Response::Error { message }) => message,
        Some(other) => format!("unexpected answer: {other:?}"),
        None => "the connection closed without an answer".into(),
    };
    eprintln!("handover: {message}");
    ExitCode::from(exit::REQUEST_FAILED)
}

/// Sends a request that needs no special rendering, printing progress lines as they come.
fn control_command(
    instance: &Instance,
    environment: &Environment,
    request: Request,
    wait: Option<Duration>,
) -> ExitCode {
    let path = match instance_socket(instance, environment) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let is_stop = request == Request::Stop;
    // Under systemd (ExecReload=, ExecStop=) stdout is the unit's journal, which holds
    // handover's own lines of the same progress already: say nothing on success. Failures
    // go to stderr, always.
    let quiet = journal_stream::is_journal(environment, journal_stream::Output::Stdout);
    let say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    // A reload's own timeout is enforced by handover; the client only guards against a
    // handover that stops answering altogether.
    let deadline = match &request {
        Request::Reload {
            timeout_ms: Some(ms),
            ..
        } => Some(Duration::from_millis(*ms) + Duration::from_secs(30)),
        Request::Reload { .. } | Request::Stop => wait,
        _ => Some(Duration::from_secs(30)),
    };
    let started = std::time::Instant::now();
    let result = client::request(&path, &request, deadline, |response| match response {
        Response::Progress { message } => say(message),
        Response::Stopping => say("stopping"),
        _ => {}
    });
    match result {
        Ok((Some(Response::Done { generation }), _)) => {
            say(&format!("reload done: generation {generation} serves"));
            ExitCode::from(exit::OK)
        }
        Ok((Some(Response::Ok { message }), _)) => {
            say(&message);
            ExitCode::from(exit::OK)
        }
        Ok((None, pid)) if is_stop => {
            // End of file: handover closed the connection on its way out. Wait for the
            // process itself to be gone.
            if let Some(pid) = pid {
                while process_alive(pid) {
                    if wait.is_some_and(|w| started.elapsed() >= w) {
                        eprintln!(
                            "handover: pid {pid} still running after {:.0?}",
                            started.elapsed()
                        );
                        return ExitCode::from(exit::REQUEST_FAILED);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            say("stopped");
            ExitCode::from(exit::OK)
        }
        Ok((other, _)) => report_failure(other),
        Err(client::ClientError::NotRunning(message)) if is_stop => {
            // Nothing to stop is not a failure: systemd runs ExecStop= also after handover
            // exited by itself. Said also under systemd: no line of handover's says it.
            println!("not running ({message})");
            ExitCode::from(exit::OK)
        }
        Err(client::ClientError::Failed(message)) if is_stop => {
            eprintln!("handover: still stopping: {message}");
            ExitCode::from(exit::REQUEST_FAILED)
        }
        Err(err) => client_error(err),
    }
}

/// Whether `pid` is a live process (a zombie has exited: only its parent has not reaped it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next()),
            Some("Z") | Some("X") | None
        ),
        Err(_) => false,
    }
}

/// Options of `handover start`.
struct StartOptions {
    service_name: Option<String>,
    log_to_stdout: bool,
    daemon: bool,
    pidfile: Option<PathBuf>,
    log_file: Option<PathBuf>,
}

/// The `__exec-worker` stub: never returns.
fn run_stub(args: &[OsString]) -> ! {
    match StubArgs::parse(args) {
        Ok(stub) => handover_sys::stub::run(stub, std::env::vars_os().collect()),
        Err(err) => {
            eprintln!("handover {STUB_COMMAND}: {err} (this command is internal to handover)");
            std::process::exit(exit::USAGE as i32)
        }
    }
}

/// The supervisor's view of `[logs]`.
fn output_config(logs: &config::LogsConfig, journal: bool) -> handover_supervisor::OutputConfig {
    handover_supervisor::OutputConfig {
        stdout: logs.stdout.clone(),
        stderr: logs.stderr.clone(),
        tag: logs.tag,
        max_line: logs.max_line as usize,
        rotation: handover_supervisor::Rotation {
            max_size: logs.max_size,
            keep: logs.keep,
            compress: logs.compress,
        },
        buffer: logs.buffer as usize,
        journal,
        format: logs.format,
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    // A plain line would break a stream of records that a log collector parses.
    if !logging::structured() {
        eprintln!("handover: {message}");
    }
    ExitCode::from(code)
}

/// Hands the sockets handover bound itself to systemd's fd store, so that a restart gets them
/// back (as `LISTEN_FDS` with their names) and never closes them. Needs
/// `FileDescriptorStoreMax=` in the unit; without it systemd ignores the request.
fn store_sockets(sockets: &[handover_supervisor::ListenSocket]) {
    use std::os::fd::AsFd;
    for socket in sockets.iter().filter(|s| !s.from_systemd) {
        let states = [
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(&socket.name),
        ];
        match sd_notify::notify_with_fds(false, &states, &[socket.fd.as_fd()]) {
            Ok(()) => tracing::info!(socket = %socket.name, "handed to systemd's fd store"),
            Err(err) => {
                tracing::warn!(socket = %socket.name, "could not hand the socket to systemd's fd store: {err}")
            }
        }
    }
}

/// Binds the probe endpoint's socket (`[endpoint] listen`), close-on-exec and non-blocking,
/// never given to a worker.
fn bind_endpoint(
    listen: &config::ListenAddress,
) -> Result<handover_supervisor::endpoint::EndpointSocket, String> {
    use handover_supervisor::endpoint::EndpointSocket;
    use handover_sys::bind::{bind_listener, BindAddress, BindSpec};
    let address = match listen {
        config::ListenAddress::Tcp(addr) => BindAddress::Tcp(*addr),
        config::ListenAddress::Unix(path) => BindAddress::Unix(path.clone()),
    };
    let spec = BindSpec {
        address,
        backlog: 128,
        reuse_port: false,
        mode: None,
        owner: None,
    };
    let fd = bind_listener(&spec).map_err(|err| format!("endpoint: {err}"))?;
    let socket = match listen {
        config::ListenAddress::Tcp(_) => EndpointSocket::Tcp(std::net::TcpListener::from(fd)),
        config::ListenAddress::Unix(_) => {
            EndpointSocket::Unix(std::os::unix::net::UnixListener::from(fd))
        }
    };
    let nonblocking = match &socket {
        EndpointSocket::Tcp(listener) => listener.set_nonblocking(true),
        EndpointSocket::Unix(listener) => listener.set_nonblocking(true),
    };
    nonblocking.map_err(|err| format!("endpoint: {err}"))?;
    if let EndpointSocket::Tcp(listener) = &socket {
        if let Ok(local) = listener.local_addr() {
            tracing::info!("endpoint: /ready and /live on http://{local}");
        }
    } else {
        tracing::info!("endpoint: /ready and /live on {listen}");
    }
    Ok(socket)
}

/// Where SIGUSR2 state dumps go: the working directory, `$HOME`, `$TMPDIR`, /tmp.
fn dump_dirs(environment: &Environment) -> Vec<PathBuf> {
    let var = |key: &str| {
        environment
            .vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| PathBuf::from(v))
    };
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    dirs.extend(var("HOME"));
    dirs.extend(var("TMPDIR"));
    dirs.push(PathBuf::from("/tmp"));
    dirs
}

/// The cgroup subtree of `[handover] cgroups`, and what status says of it; an error when
/// cgroups are required and the host has none to give.
#[allow(clippy::type_complexity)]
fn cgroups(
    config: &Config,
    environment: &Environment,
) -> Result<
    (
        Option<std::sync::Arc<handover_sys::cgroup::CgroupRoot>>,
        String,
    ),
    String,
> {
    use config::CgroupMode;
    if config.handover.cgroups == CgroupMode::Off {
        return Ok((None, "off: [handover] cgroups = \"off\"".into()));
    }
    match handover_sys::cgroup::setup(environment.systemd_service) {
        Ok((root, origin)) => {
            let how = match origin {
                handover_sys::cgroup::Origin::Delegated => "delegated by systemd",
                handover_sys::cgroup::Origin::Created => "created for this run",
            };
            tracing::info!(
                "a cgroup for each worker, below {} ({how})",
                root.path().display()
            );
            let status = format!("on: {}", root.path().display());
            Ok((Some(std::sync::Arc::new(root)), status))
        }
        Err(why) if config.handover.cgroups == CgroupMode::Required => Err(format!(
            "{}: handover.cgroups is \"required\", but {why}",
            config.path.display()
        )),
        Err(why) => {
            tracing::info!("workers get no cgroups of their own: {why}");
            Ok((None, format!("off: {why}")))
        }
    }
}

/// The directory for per-worker notify sockets: private, unique to this run.
/// Where the directory for per-worker notify sockets goes (it gets a unique name there).
fn notify_base(config: &Config, environment: &Environment) -> PathBuf {
    config
        .handover
        .runtime_dir
        .clone()
        .or_else(|| environment.runtime_directory.clone())
        .or_else(|| environment.xdg_runtime_dir.clone())
        .unwrap_or_else(|| {
            if handover_sys::users::effective_uid() == 0 {
                PathBuf::from("/run")
            } else {
                std::env::temp_dir()
            }
        })
}

fn start(config_path: &Path, environment: Environment, options: StartOptions) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handover: {err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Detach before anything else: no thread may exist when forking.
    let mut ready_pipe = None;
    if options.daemon {
        match handover_sys::daemon::daemonize(options.log_file.as_deref()) {
            Ok(handover_sys::daemon::Daemonized::Parent(code)) => return ExitCode::from(code),
            Ok(handover_sys::daemon::Daemonized::Daemon(pipe)) => ready_pipe = Some(pipe),
            Err(err) => {
                eprintln!("handover: cannot detach: {err}");
                return ExitCode::from(exit::INTERNAL);
            }
        }
        if let Some(pidfile) = &options.pidfile {
            if let Err(err) = std::fs::write(pidfile, format!("{}\n", std::process::id())) {
                eprintln!("handover: cannot write {}: {err}", pidfile.display());
                return ExitCode::from(exit::INTERNAL);
            }
        }
    }
    let journal = logging::init(&environment, options.log_to_stdout, config.logs.format);

    // Sockets from systemd: checked and adopted before any thread starts.
    let own_pid = std::process::id();
    let foreign_pid = environment
        .listen
        .pid
        .as_deref()
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|&p| p != own_pid);
    let spec = match listen::parse(&environment.listen, own_pid) {
        Ok(spec) => spec,
        Err(err) => {
            return fail(
                exit::SOCKETS,
                format!("invalid socket activation variables: {err}"),
            )
        }
    };
    let inherited = match &spec {
        Some(spec) => match handover_sys::inherit::take_listen_fds(spec) {
            Ok(sockets) => sockets,
            Err(err) => return fail(exit::SOCKETS, format!("sockets passed by systemd: {err}")),
        },
        None => Vec::new(),
    };
    if let Some(foreign) = foreign_pid {
        if config.sockets.iter().any(|s| s.from_systemd) {
            return fail(
                exit::SOCKETS,
                format!(
                    "LISTEN_PID={foreign} but handover's pid is {own_pid}: the sockets were meant for another process, and the configuration requires sockets from systemd"
                ),
            );
        }
        tracing::warn!("ignoring LISTEN_FDS: LISTEN_PID={foreign} is not handover's pid {own_pid}");
    }
    // Claimed before any listening socket is bound, so a second instance is told "already
    // running" rather than "address in use".
    let control_path = match client::socket_path(
        Some(&config),
        options.service_name.as_deref(),
        Some(config_path),
        &environment,
    ) {
        Ok(path) => path,
        Err(err) => return fail(exit::CONTROL, format!("control socket: {err}")),
    };
    let create_parent = config.control.socket.is_none() && environment.runtime_directory.is_none();
    let control = match handover_sys::control::bind_control(
        &control_path,
        create_parent,
        !config.control.allow_uids.is_empty(),
    ) {
        Ok(control) => control,
        Err(err) => return fail(exit::CONTROL, format!("control socket: {err}")),
    };
    tracing::info!("control socket: {}", control.path().display());
    // Opened only once this instance is known to be the only one: opening a log file also
    // compresses rotated files a killed run left behind, which must not race with the
    // compression of a running handover.
    let output = match handover_supervisor::Output::open(&output_config(&config.logs, journal)) {
        Ok(output) => std::sync::Arc::new(output),
        Err(err) => return fail(exit::CONFIG, format!("{}: {err}", config.path.display())),
    };
    // From here on handover's own lines queue behind workers' where they share a
    // destination; until this returns, after the last of them (the writers then finish).
    let _routing = logging::Routing::start(output.clone());
    let steering = std::sync::Arc::new(handover_supervisor::steering::Steering::new());
    let sockets = match sockets::resolve(&config, inherited, &steering) {
        Ok(sockets) => sockets,
        Err(err) => return fail(exit::SOCKETS, err),
    };
    if environment.notify_socket && config.handover.fd_store {
        store_sockets(&sockets);
    }
    if sockets.is_empty() {
        tracing::warn!("no sockets configured or passed: workers get none");
    }
    let endpoint = match config
        .endpoint
        .listen
        .as_ref()
        .map(bind_endpoint)
        .transpose()
    {
        Ok(endpoint) => endpoint,
        Err(err) => return fail(exit::SOCKETS, err),
    };

    let context = spec::SpecContext {
        inherited_env: environment.vars.clone(),
    };
    let generation = match context.build(&config, sockets, &ReloadOverrides::default()) {
        Ok(spec) => spec,
        Err(err) => return fail(exit::CONFIG, format!("{}: {err}", config.path.display())),
    };
    let notify_base = notify_base(&config, &environment);
    let swept = handover_sys::notify::sweep_stale_dirs(&notify_base);
    if swept > 0 {
        tracing::info!(
            "removed {swept} notify director{} left by handover runs that were killed",
            if swept == 1 { "y" } else { "ies" }
        );
    }
    let notify = match handover_sys::notify::create_private_dir(&notify_base) {
        Ok(notify) => notify,
        Err(err) => {
            return fail(
                exit::INTERNAL,
                format!(
                    "cannot create a notify directory in {}: {err}",
                    notify_base.display()
                ),
            )
        }
    };
    let notify_dir = notify.path().to_path_buf();
    let notify_owner = generation
        .exec
        .uid
        .map(|uid| (uid, generation.exec.gid.unwrap_or(0)));
    let ready_pipe = ready_pipe.map(std::sync::Arc::new);
    if config.worker.start_nice > 0 && handover_sys::users::effective_uid() != 0 {
        tracing::warn!(
            "worker.start_nice is ignored: handover needs root to give the workers their \
             priority back once they are ready"
        );
    }
    let (cgroups, cgroups_status) = match cgroups(&config, &environment) {
        Ok(found) => found,
        Err(message) => return fail(exit::CONFIG, message),
    };
    match spec::check_limits(&config, cgroups.as_deref(), &cgroups_status) {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(message) => return fail(exit::CONFIG, message),
    }
    // Started before any worker, so that every one is recorded.
    let sentinel = match handover_sys::sentinel::Sentinel::start() {
        Ok(sentinel) => {
            // A SIGKILLed handover takes the cgroups it made with it (under systemd, the
            // unit's cgroup is systemd's to end).
            for root in cgroups.iter().flat_map(|root| root.owned_roots()) {
                sentinel.record_cgroup(&root);
            }
            Some(std::sync::Arc::new(sentinel))
        }
        Err(err) => {
            tracing::warn!(
                "could not start the sentinel ({err}): if handover is killed, children of \
                 its workers may outlive it"
            );
            None
        }
    };
    let plan = Plan {
        steering: Some(steering.clone()),
        sentinel: sentinel.clone(),
        generation,
        reload: spec::reload_policy(&config),
        notify_dir: notify_dir.clone(),
        notify_owner,
        dump_dirs: dump_dirs(&environment),
        on_ready: ready_pipe.clone(),
        watchdog: environment.watchdog,
        watchdog_min_workers: config.handover.watchdog_min_workers,
        output: output.clone(),
        cgroups,
        cgroups_status,
    };

    let spawner = match handover_sys::spawn::Spawner::start_with(sentinel) {
        Ok(spawner) => spawner,
        Err(err) => {
            return fail(
                exit::INTERNAL,
                format!("cannot start the spawning thread: {err}"),
            )
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return fail(
                exit::INTERNAL,
                format!("cannot start the event loop: {err}"),
            )
        }
    };
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let access = handover_supervisor::control_server::Access {
        own_uid: handover_sys::users::effective_uid(),
        allowed: config.control.allow_uids.clone(),
    };
    let control_fd = match control.fd.try_clone() {
        Ok(fd) => fd,
        Err(err) => return fail(exit::INTERNAL, format!("control socket: {err}")),
    };
    let commands_tx_endpoint = commands_tx.clone();
    let served = runtime.block_on(async {
        handover_supervisor::control_server::serve(control_fd, access, commands_tx)
    });
    if let Err(err) = served {
        return fail(exit::INTERNAL, format!("control socket: {err}"));
    }
    if let Some(endpoint) = endpoint {
        let commands = commands_tx_endpoint;
        if let Err(err) =
            runtime.block_on(async { handover_supervisor::endpoint::serve(endpoint, commands) })
        {
            return fail(exit::INTERNAL, format!("endpoint: {err}"));
        }
    } else {
        drop(commands_tx_endpoint);
    }
    let config_path = config.path.clone();
    let logs_at_start = config.logs.clone();
    let endpoint_at_start = config.endpoint.clone();
    let reload_steering = steering.clone();
    let reload_cgroups = plan.cgroups.clone();
    let reload_cgroups_status = plan.cgroups_status.clone();
    let reloader: handover_supervisor::Reloader = std::sync::Arc::new(move |overrides, current| {
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        if config.logs != logs_at_start {
            tracing::warn!(
                "[logs] changed in {}: the change takes effect at the next start",
                config_path.display()
            );
        }
        if config.endpoint != endpoint_at_start {
            tracing::warn!(
                "[endpoint] changed in {}: the change takes effect at the next start",
                config_path.display()
            );
        }
        let warnings =
            spec::check_limits(&config, reload_cgroups.as_deref(), &reload_cgroups_status)?;
        warnings.iter().for_each(|w| tracing::warn!("{w}"));
        let sockets = sockets::for_reload(&config, &current.sockets, &reload_steering)?;
        for stranger in reload_steering.strangers() {
            tracing::warn!("{stranger}");
        }
        Ok((
            context.build(&config, sockets, overrides)?,
            spec::reload_policy(&config),
        ))
    });
    let result = runtime.block_on(handover_supervisor::run(
        plan,
        spawner,
        environment.notify_socket,
        commands_rx,
        reloader,
    ));
    let _ = std::fs::remove_dir_all(&notify_dir);
    drop(control);
    if let (Some(pipe), Ok(result)) = (&ready_pipe, &result) {
        if let Outcome::StartFailed(reason) = &result.outcome {
            handover_sys::daemon::report(pipe, Err(reason));
        }
    }
    drop(ready_pipe);
    match result {
        Ok(result) => match result.outcome {
            Outcome::Stopped => {
                tracing::info!("stopped");
                ExitCode::from(exit::OK)
            }
            Outcome::StartFailed(reason) => {
                fail(exit::START_FAILED, format!("start failed: {reason}"))
            }
            Outcome::Forced => fail(exit::START_FAILED, "stop forced by repeated signals"),
        },
        Err(err) => fail(exit::INTERNAL, err),
    }
}
