//! The hidden `__generate-docs` command: writes handover's man pages and shell completions
//! from the clap definitions, so they cannot drift from the real command line.
//!
//! `cargo xtask man` and `cargo xtask completions` run it; users never need to. It lives in
//! the binary because only the binary knows the CLI. `main` dispatches to it before parsing
//! the command line, as it does for the `__exec-worker` stub, rather than through a hidden
//! clap subcommand: clap_complete puts hidden subcommands into the completion scripts.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use crate::exit;

/// The first argument that selects this command.
pub(crate) const COMMAND: &str = "__generate-docs";

/// The command's own name, as installed.
const BIN_NAME: &str = "handover";

/// Writes handover's man pages or shell completions (internal: `cargo xtask man` and
/// `cargo xtask completions` run it).
#[derive(Debug, Parser)]
#[command(
    name = "handover __generate-docs",
    bin_name = "handover __generate-docs"
)]
struct Args {
    /// What to write.
    #[arg(value_enum)]
    kind: Kind,
    /// The directory to write into; created if missing. Existing files are replaced.
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// Man pages: handover.1, and handover-COMMAND.1 for each command.
    Man,
    /// Completion scripts for bash, zsh and fish.
    Completions,
}

/// Writes the pages or scripts for the command line `C`, prints each path on stdout, and
/// returns the exit code. `args` are the arguments after `__generate-docs`.
pub(crate) fn run<C: CommandFactory>(args: &[OsString]) -> ExitCode {
    let args = match Args::try_parse_from(
        std::iter::once(OsString::from(COMMAND)).chain(args.iter().cloned()),
    ) {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let command = C::command();
    let result = std::fs::create_dir_all(&args.dir).and_then(|()| match args.kind {
        Kind::Man => write_man_pages(command, &args.dir),
        Kind::Completions => write_completions(command, &args.dir),
    });
    match result {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::from(exit::OK)
        }
        Err(err) => {
            eprintln!("handover {COMMAND}: {}: {err}", args.dir.display());
            ExitCode::from(exit::INTERNAL)
        }
    }
}

fn write_completions(mut command: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut command, BIN_NAME, dir))
        .collect()
}

fn write_man_pages(command: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    // `help COMMAND` is clap's own; each command has --help, and a page of its own here.
    let mut command = command.disable_help_subcommand(true);
    // Building fills in the subcommands' display names (`handover-start`), used as titles.
    command.build();

    let mut written = Vec::new();
    let top = Man::new(command.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    top_level_sections().to_writer(&mut page)?;
    top.render_version_section(&mut page)?;
    written.push(write_page(dir, &top, &page)?);

    let mut pending: Vec<Command> = visible_subcommands(&command);
    while let Some(sub) = pending.pop() {
        pending.extend(visible_subcommands(&sub));
        let man = Man::new(sub);
        let mut page = Vec::new();
        man.render(&mut page)?;
        see_also_top_level().to_writer(&mut page)?;
        written.push(write_page(dir, &man, &page)?);
    }
    written.sort();
    Ok(written)
}

fn visible_subcommands(command: &Command) -> Vec<Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect()
}

fn write_page(dir: &Path, man: &Man, page: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(man.get_filename());
    std::fs::write(&path, page)?;
    Ok(path)
}

/// One `.TP` entry: a bold tag, then its description.
fn entry(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(tag)]);
    roff.text([roman(text)]);
}

/// The sections clap knows nothing about: signals, exit status, environment, see also.
fn top_level_sections() -> Roff {
    let mut roff = Roff::new();

    roff.control("SH", ["SIGNALS"]);
    entry(
        &mut roff,
        "SIGTERM, SIGINT",
        "Stop: every worker gets its stop_signal and has stop_timeout to exit before it is \
         killed; handover exits once all are gone. The fourth stop signal kills every worker \
         at once and exits with status 1.",
    );
    entry(
        &mut roff,
        "SIGHUP",
        "Reload: read the configuration again, start a new generation of workers, and once \
         it is ready, drain the old one. If the new generation fails, it is stopped and the \
         old one keeps serving. A reload asked for during a reload runs after it.",
    );
    entry(&mut roff, "SIGUSR2", "Write the current state to the log.");

    roff.control("SH", ["EXIT STATUS"]);
    let codes: [(u8, &str); 8] = [
        (exit::OK, "Stopped cleanly, or the command succeeded."),
        (
            exit::START_FAILED,
            "The first generation of workers never became ready, or the stop was forced \
             by a fourth stop signal; for logs, a log file could not be read; for unit, a \
             unit file exists or could not be written.",
        ),
        (exit::USAGE, "The command line is wrong."),
        (
            exit::CONFIG,
            "The configuration file is invalid (for unit: or cannot be written as units).",
        ),
        (
            exit::SOCKETS,
            "A listening socket could not be set up: binding failed, or the sockets passed \
             by systemd are invalid.",
        ),
        (
            exit::CONTROL,
            "The control socket could not be used (another instance runs, or none runs).",
        ),
        (
            exit::REQUEST_FAILED,
            "A request made through the control socket failed or timed out.",
        ),
        (
            exit::INTERNAL,
            "Any other error, such as failing to create the runtime directory.",
        ),
    ];
    for (code, text) in codes {
        entry(&mut roff, &code.to_string(), text);
    }

    roff.control("SH", ["ENVIRONMENT"]);
    entry(
        &mut roff,
        "HANDOVER_LOG",
        "Which log lines to write, as a tracing filter (default: info), e.g. debug.",
    );
    entry(
        &mut roff,
        "LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES",
        "Sockets passed by systemd's socket activation. handover uses a passed socket in \
         place of binding the [[socket]] entry of the same name.",
    );
    entry(
        &mut roff,
        "NOTIFY_SOCKET",
        "When set, handover reports READY=1, RELOADING=1, STOPPING=1 and STATUS= to systemd.",
    );
    entry(
        &mut roff,
        "RUNTIME_DIRECTORY, XDG_RUNTIME_DIR, TMPDIR",
        "Where the workers' notification sockets go when runtime_dir is not configured.",
    );
    entry(
        &mut roff,
        "JOURNAL_STREAM",
        "When it names handover's stderr (as systemd sets it for a service), handover logs \
         to the journal natively, with its fields as HANDOVER_* journal fields. Text lines \
         that go to the journal stream anyway (--log-to-stdout under systemd) carry no time. \
         When it names the stdout of reload, stop, abort or scale (ExecReload=, ExecStop=), \
         they print nothing on success: handover's own log has the same progress.",
    );

    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("systemd.socket"),
        roman("(5), "),
        bold("systemd.service"),
        roman("(5), "),
        bold("sd_notify"),
        roman("(3), "),
        bold("sd_listen_fds"),
        roman("(3). The configuration file is described in "),
        italic("docs/configuration.md"),
        roman(" in handover's source."),
    ]);
    roff
}

fn see_also_top_level() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold(BIN_NAME),
        roman("(1), for the signals handover handles, its exit status and its environment."),
    ]);
    roff
}
