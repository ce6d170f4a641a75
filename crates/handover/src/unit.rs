//! `handover unit`: the systemd units that run a configuration, as docs/systemd.md would have
//! a user write them by hand (PM2's `pm2 startup`, for handover).
//!
//! Each `[[socket]]` becomes a `.socket` unit that listens on its `listen` address and passes
//! the socket under its `name` (`FileDescriptorName=`); one `.service` runs
//! `handover start` on the configuration as `Type=notify`, with `handover reload` and
//! `handover stop` as `ExecReload=` and `ExecStop=`, and systemd's deadlines derived from the
//! configuration's own so that handover's fire first.
//!
//! [`generate`] is pure (configuration in, file names and texts out); [`run`] reads the
//! configuration and prints the units or writes them into a folder.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Config, ListenAddress, SocketConfig};
use crate::exit;

/// `handover unit`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct UnitArgs {
    /// The configuration file the units run.
    #[arg(long, short)]
    config: PathBuf,
    /// The service's unit name, without `.service` [default: handover-NAME, NAME being the
    /// configuration file's name without extension].
    #[arg(long)]
    name: Option<String>,
    /// Write the units into this folder (such as /etc/systemd/system) instead of printing
    /// them.
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
    /// With --output: replace unit files that exist already.
    #[arg(long, requires = "output")]
    force: bool,
    /// The handover binary the units run [default: this one].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// One generated unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitFile {
    /// The file's name, such as `handover-web.service`.
    pub(crate) name: String,
    /// Its text.
    pub(crate) text: String,
}

/// What the units are generated for.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    /// The configuration, validated.
    pub(crate) config: &'a Config,
    /// Its absolute path, as `ExecStart=` names it.
    pub(crate) config_path: &'a Path,
    /// The absolute path of the handover binary.
    pub(crate) binary: &'a Path,
    /// The service's unit name without `.service`.
    pub(crate) name: &'a str,
}

/// What cannot be written as units.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UnitError {
    /// A socket without an address for `ListenStream=`.
    #[error(
        "socket {name:?} has from_systemd = true and no listen: a socket unit needs its \
         address; add listen = \"...\" to it (handover still never binds it itself)"
    )]
    NoAddress {
        /// The socket's name.
        name: String,
    },
    /// Port 0: the kernel would pick another port at every start.
    #[error(
        "socket {name:?} listens on port 0 (a port the kernel picks at each start): a socket \
         unit needs a fixed port"
    )]
    PortZero {
        /// The socket's name.
        name: String,
    },
    /// A value a unit file cannot hold.
    #[error("{what} {value:?} cannot be written into a unit file: {why}")]
    Unwritable {
        /// What the value is.
        what: String,
        /// The value.
        value: String,
        /// Why not.
        why: &'static str,
    },
    /// A unit name that is too long.
    #[error(
        "the unit name {0:?} is longer than systemd's 255 characters; choose a shorter --name"
    )]
    NameTooLong(String),
}

/// `handover unit`: prints the units, or writes them into `--output`.
pub(crate) fn run(args: UnitArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handover: {err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Absolute, but not through symlinks: the unit reads what the path names at each start.
    let config_path = match std::path::absolute(&args.config) {
        Ok(path) => path,
        Err(err) => return usage(format!("{}: {err}", args.config.display())),
    };
    let binary = match &args.binary {
        Some(path) if path.is_absolute() => path.clone(),
        Some(path) => {
            return usage(format!(
                "--binary {}: give an absolute path",
                path.display()
            ))
        }
        None => match std::env::current_exe() {
            Ok(path) => path,
            Err(err) => {
                return usage(format!(
                    "cannot tell where this handover binary is ({err}); give --binary PATH"
                ))
            }
        },
    };
    let name = match &args.name {
        Some(name) => match check_unit_prefix(name) {
            Ok(()) => name.clone(),
            Err(why) => return usage(format!("--name {name:?}: {why}")),
        },
        None => default_name(&config_path),
    };
    let target = Target {
        config: &config,
        config_path: &config_path,
        binary: &binary,
        name: &name,
    };
    let units = match generate(&target) {
        Ok(units) => units,
        Err(err) => {
            eprintln!("handover: {}: {err}", config_path.display());
            return ExitCode::from(exit::CONFIG);
        }
    };
    match &args.output {
        None => {
            let texts: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(texts.join("\n").as_bytes())
                .and_then(|()| stdout.flush())
            {
                // A reader that stopped early (`| head`) is no failure.
                Ok(()) => ExitCode::from(exit::OK),
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                    ExitCode::from(exit::OK)
                }
                Err(err) => {
                    eprintln!("handover: cannot write the units to stdout: {err}");
                    ExitCode::from(exit::IO)
                }
            }
        }
        Some(dir) => match write_units(dir, &units, args.force) {
            Ok(()) => {
                for unit in &units {
                    println!("wrote {}", dir.join(&unit.name).display());
                }
                println!("next: systemctl daemon-reload");
                let sockets: Vec<&str> = units
                    .iter()
                    .filter(|u| u.name.ends_with(".socket"))
                    .map(|u| u.name.as_str())
                    .collect();
                if sockets.is_empty() {
                    println!("      systemctl enable --now {name}.service");
                } else {
                    println!(
                        "      systemctl enable --now {}   (started by the first connection)",
                        sockets.join(" ")
                    );
                    println!("   or systemctl enable --now {name}.service   (started at boot)");
                }
                ExitCode::from(exit::OK)
            }
            Err(message) => {
                eprintln!("handover: {message}");
                ExitCode::from(exit::IO)
            }
        },
    }
}

fn usage(message: String) -> ExitCode {
    eprintln!("handover: {message}");
    ExitCode::from(exit::USAGE)
}

/// Writes every unit into `dir`; without `force`, refuses (before writing anything) when one
/// exists.
fn write_units(dir: &Path, units: &[UnitFile], force: bool) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a folder", dir.display()));
    }
    if !force {
        if let Some(existing) = units.iter().map(|u| dir.join(&u.name)).find(|p| {
            // A dangling symlink is there too.
            std::fs::symlink_metadata(p).is_ok()
        }) {
            return Err(format!(
                "{} exists; --force replaces it",
                existing.display()
            ));
        }
    }
    for unit in units {
        let path = dir.join(&unit.name);
        std::fs::write(&path, &unit.text)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    }
    Ok(())
}

/// `handover-STEM` for a configuration `.../STEM.toml`.
fn default_name(config_path: &Path) -> String {
    let stem = config_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() {
        "handover".to_string()
    } else {
        format!("handover-{}", escape_unit_part(&stem))
    }
}

/// Checks a `--name`: what systemd takes as the name of a unit that is no template.
fn check_unit_prefix(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.ends_with(".service") {
        return Err("give the name without .service".into());
    }
    if let Some(c) = name.chars().find(|&c| !is_unit_char(c)) {
        return Err(format!(
            "contains {c:?}; a unit name is ASCII letters, digits and \":_.-\" (use \
             systemd-escape for other characters)"
        ));
    }
    Ok(())
}

/// The characters systemd keeps in unit names as they are (`@` aside, which marks a
/// template).
fn is_unit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\')
}

/// Text made fit for a unit name: other characters as `\xNN`, as systemd-escape writes them.
fn escape_unit_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, b) in text.bytes().enumerate() {
        let c = b as char;
        // A leading '.' would make a hidden file.
        if c.is_ascii() && is_unit_char(c) && c != '\\' && !(i == 0 && c == '.') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The units for `target`: one `.socket` per `[[socket]]` (in the configuration's order),
/// then the `.service`.
pub(crate) fn generate(target: &Target<'_>) -> Result<Vec<UnitFile>, UnitError> {
    let service = format!("{}.service", target.name);
    if service.len() > 255 {
        return Err(UnitError::NameTooLong(service));
    }
    let mut units = Vec::with_capacity(target.config.sockets.len() + 1);
    for socket in &target.config.sockets {
        units.push(socket_unit(target, &service, socket)?);
    }
    let sockets: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    units.push(service_unit(target, &service, &sockets)?);
    Ok(units)
}

fn socket_unit(
    target: &Target<'_>,
    service: &str,
    socket: &SocketConfig,
) -> Result<UnitFile, UnitError> {
    let name = format!("{}-{}.socket", target.name, escape_unit_part(&socket.name));
    if name.len() > 255 {
        return Err(UnitError::NameTooLong(name));
    }
    let listen = match &socket.listen {
        None => {
            return Err(UnitError::NoAddress {
                name: socket.name.clone(),
            })
        }
        Some(ListenAddress::Tcp(addr)) if addr.port() == 0 => {
            return Err(UnitError::PortZero {
                name: socket.name.clone(),
            })
        }
        Some(ListenAddress::Tcp(addr)) => addr.to_string(),
        Some(ListenAddress::Unix(path)) => {
            let text = path_text("the unix socket path", path)?;
            if text.trim() != text {
                return Err(unwritable(
                    "the unix socket path",
                    &text,
                    "systemd drops leading and trailing spaces",
                ));
            }
            specifiers(&text)
        }
    };
    let fdname = &socket.name;
    if fdname.trim() != fdname {
        return Err(unwritable(
            "the socket name",
            fdname,
            "systemd drops leading and trailing spaces of FileDescriptorName=",
        ));
    }
    let config = path_text("the configuration path", target.config_path)?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# {name}: the socket {fdname:?} of {config},\n\
         # passed to {service}. Generated by `handover unit`; generate it again when the\n\
         # socket changes."
    );
    let _ = writeln!(text, "\n[Unit]");
    let _ = writeln!(
        text,
        "Description={}",
        specifiers(&format!("Socket {fdname:?} of {service}"))
    );
    let _ = writeln!(text, "\n[Socket]");
    let _ = writeln!(text, "ListenStream={listen}");
    let _ = writeln!(
        text,
        "# The [[socket]] name: handover takes this socket in its place."
    );
    let _ = writeln!(text, "FileDescriptorName={}", specifiers(fdname));
    let _ = writeln!(text, "Service={service}");
    let _ = writeln!(text, "Backlog={}", socket.backlog);
    if socket.reuse_port {
        let _ = writeln!(text, "ReusePort=yes");
    }
    if let Some(mode) = socket.mode {
        let _ = writeln!(text, "SocketMode={mode:04o}");
    }
    if let Some(owner) = &socket.owner {
        let (user, group) = match owner.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (owner.as_str(), None),
        };
        if !user.is_empty() {
            let _ = writeln!(text, "SocketUser={}", specifiers(user));
        }
        if let Some(group) = group {
            let _ = writeln!(text, "SocketGroup={}", specifiers(group));
        }
    }
    let _ = writeln!(text, "\n[Install]\nWantedBy=sockets.target");
    Ok(UnitFile { name, text })
}

fn service_unit(
    target: &Target<'_>,
    service: &str,
    sockets: &[String],
) -> Result<UnitFile, UnitError> {
    let config = target.config;
    let config_text = path_text("the configuration path", target.config_path)?;
    let binary = exec_word(&path_text("the handover binary", target.binary)?);
    let config_word = exec_word(&config_text);
    // How the control commands find the running handover: its configured socket, else the
    // runtime directory systemd gives all three commands.
    let instance = match &config.control.socket {
        Some(socket) => format!(
            "--socket {}",
            exec_word(&path_text("the control socket path", socket)?)
        ),
        None => "--service-name=%N".to_string(),
    };
    let stop_after = config.worker.stop_timeout.max(config.reload.drain_timeout);
    let start_within = config.reload.timeout.max(config.worker.ready_timeout);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# {service}: handover running {config_text}.\n\
         # Generated by `handover unit`; generate it again when the sockets change (the\n\
         # rest of the configuration is read at each start and reload)."
    );
    let _ = writeln!(text, "\n[Unit]");
    let _ = writeln!(
        text,
        "Description={}",
        specifiers(&format!("handover supervisor ({})", target.name))
    );
    let _ = writeln!(text, "After=network.target");
    if !sockets.is_empty() {
        let _ = writeln!(
            text,
            "# The sockets are systemd's: started with the service, passed to it, and open\n\
             # while handover restarts."
        );
        let _ = writeln!(text, "Requires={}", sockets.join(" "));
        let _ = writeln!(text, "After={}", sockets.join(" "));
    }
    let _ = writeln!(text, "\n[Service]");
    let _ = writeln!(
        text,
        "# READY=1 once the first generation is ready, RELOADING=1 and READY=1 around each\n\
         # reload, STOPPING=1, and STATUS= lines; only handover itself may notify.\n\
         Type=notify\n\
         NotifyAccess=main"
    );
    let _ = writeln!(
        text,
        "ExecStart={binary} start --config {config_word}\n\
         # Returns once the new generation serves (exit 0), or fails when the reload was\n\
         # aborted and the old generation serves on.\n\
         ExecReload={binary} reload {instance}\n\
         ExecStop={binary} stop {instance}"
    );
    let _ = writeln!(
        text,
        "# SIGTERM goes to handover alone, which stops its workers gracefully; what is left\n\
         # when TimeoutStopSec= runs out gets SIGKILL.\n\
         KillMode=mixed"
    );
    let _ = writeln!(
        text,
        "# handover's own deadlines fire first: TimeoutStopSec= is the longer of\n\
         # stop_timeout and drain_timeout ({}) plus 15s; TimeoutStartSec=, which systemd\n\
         # applies to ExecReload= too, the longer of [reload] timeout and ready_timeout ({})\n\
         # plus 30s.\n\
         TimeoutStopSec={}\n\
         TimeoutStartSec={}",
        seconds(stop_after),
        seconds(start_within),
        seconds(stop_after + Duration::from_secs(15)),
        seconds(start_within + Duration::from_secs(30)),
    );
    let _ = writeln!(
        text,
        "# The control socket and the workers' notify sockets (/run/handover/%N).\n\
         RuntimeDirectory=handover/%N\n\
         RuntimeDirectoryMode=0700\n\
         # Sockets handover binds itself survive its restarts here (FDSTORE=1).\n\
         FileDescriptorStoreMax=16\n\
         Restart=on-failure\n\
         RestartSec=200ms\n\
         # The service's cgroup subtree is handover's to arrange (and a worker's, such as one\n\
         # that runs containers); systemd still stops everything in it.\n\
         Delegate=yes"
    );
    let _ = writeln!(text, "\n[Install]\nWantedBy=multi-user.target");
    if !sockets.is_empty() {
        let _ = writeln!(text, "Also={}", sockets.join(" "));
    }
    Ok(UnitFile {
        name: service.to_string(),
        text,
    })
}

/// A duration as a unit file writes it, in whole seconds rounded up (`45s`).
fn seconds(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs += 1;
    }
    format!("{secs}s")
}

/// A path as UTF-8 text without control characters, or why it cannot be.
fn path_text(what: &str, path: &Path) -> Result<String, UnitError> {
    let Some(text) = path.to_str() else {
        return Err(unwritable(what, &path.to_string_lossy(), "it is not UTF-8"));
    };
    if text.chars().any(char::is_control) {
        return Err(unwritable(
            what,
            text,
            "it holds a control character (such as a newline)",
        ));
    }
    Ok(text.to_string())
}

fn unwritable(what: &str, value: &str, why: &'static str) -> UnitError {
    UnitError::Unwritable {
        what: what.to_string(),
        value: value.to_string(),
        why,
    }
}

/// A setting's value with `%` doubled: systemd expands `%` specifiers in it.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// One word of an `Exec*=` command line: `%` and `$` doubled (systemd expands specifiers and
/// variables), backslashes and double quotes escaped, and the whole in double quotes when it
/// holds a space, a quote, a backslash or a `;`.
fn exec_word(word: &str) -> String {
    let mut escaped = String::with_capacity(word.len() + 2);
    for c in word.chars() {
        match c {
            '%' => escaped.push_str("%%"),
            '$' => escaped.push_str("$$"),
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    let quote = word.is_empty()
        || word
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if quote {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests;
