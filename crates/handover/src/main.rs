//! handover: holds listening sockets, runs N workers on them, and replaces them with a new
//! generation without refusing or dropping a connection.
//!
//! This binary alone knows the command line, the configuration file format and logging;
//! the supervisor and the OS plumbing live in their own crates.

mod config;
mod env;
mod exit;
mod gendocs;
mod sockets;
mod spec;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover_proto::listen;
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
    /// Run the supervisor in the foreground (systemd's ExecStart=).
    Start {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log to stdout instead of stderr or the journal.
        #[arg(long)]
        log_to_stdout: bool,
    },
    /// Validate a configuration file without side effects.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == STUB_COMMAND) {
        run_stub(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == gendocs::COMMAND) {
        return gendocs::run::<Cli>(&args[2..]);
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
        Commands::Start {
            config,
            log_to_stdout,
        } => start(&config, environment, log_to_stdout),
    }
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

fn init_logging(environment: &Environment, log_to_stdout: bool) {
    use tracing_subscriber::fmt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The journal stamps every line itself.
    let under_journal = environment.journal_stream.is_some() && !log_to_stdout;
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    let result = match (log_to_stdout, under_journal) {
        (true, _) => builder.with_writer(std::io::stdout).try_init(),
        (false, true) => builder
            .without_time()
            .with_writer(std::io::stderr)
            .try_init(),
        (false, false) => builder.with_writer(std::io::stderr).try_init(),
    };
    let _ = result;
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("handover: {message}");
    ExitCode::from(code)
}

/// The directory for per-worker notify sockets: private, unique to this run.
fn notify_dir(config: &Config, environment: &Environment) -> PathBuf {
    let base = config
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
        });
    base.join(format!("handover.{}.notify", std::process::id()))
}

fn start(config_path: &Path, environment: Environment, log_to_stdout: bool) -> ExitCode {
    init_logging(&environment, log_to_stdout);
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => return fail(exit::CONFIG, err),
    };

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
    let sockets = match sockets::resolve(&config, inherited) {
        Ok(sockets) => sockets,
        Err(err) => return fail(exit::SOCKETS, err),
    };
    if sockets.is_empty() {
        tracing::warn!("no sockets configured or passed: workers get none");
    }

    let context = spec::SpecContext {
        inherited_env: environment.vars.clone(),
        sockets,
    };
    let generation = match context.build(&config, &ReloadOverrides::default()) {
        Ok(spec) => spec,
        Err(err) => return fail(exit::CONFIG, format!("{}: {err}", config.path.display())),
    };
    let notify_dir = notify_dir(&config, &environment);
    if let Err(err) = handover_sys::notify::create_private_dir(&notify_dir) {
        return fail(
            exit::INTERNAL,
            format!("cannot create {}: {err}", notify_dir.display()),
        );
    }
    let notify_owner = generation
        .exec
        .uid
        .map(|uid| (uid, generation.exec.gid.unwrap_or(0)));
    let plan = Plan {
        generation,
        reload: spec::reload_policy(&config),
        notify_dir: notify_dir.clone(),
        notify_owner,
    };

    let spawner = match handover_sys::spawn::Spawner::start() {
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
    let (_commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let config_path = config.path.clone();
    let reloader: handover_supervisor::Reloader = Box::new(move |overrides, current| {
        let config = Config::load(&config_path).map_err(|e| e.to_string())?;
        let new_names: Vec<&str> = config.sockets.iter().map(|s| s.name.as_str()).collect();
        let old_names: Vec<&str> = current.sockets.iter().map(|s| s.name.as_str()).collect();
        if !new_names.iter().all(|n| old_names.contains(n)) {
            return Err("the socket set changed; restart handover to change sockets".into());
        }
        context.build(&config, overrides)
    });
    let result = runtime.block_on(handover_supervisor::run(
        plan,
        spawner,
        environment.notify_socket,
        commands_rx,
        reloader,
    ));
    let _ = std::fs::remove_dir_all(&notify_dir);
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
