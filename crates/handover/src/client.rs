//! The command-line side of the control socket: finding the instance, sending one request,
//! printing what comes back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handover_proto::control::{self, Request, Response};
use handover_proto::status::{Phase, Status};

use crate::config::Config;
use crate::env::Environment;

/// Where an instance's control socket is.
///
/// In order: `control.socket` from the configuration; `$RUNTIME_DIRECTORY/control.sock` (set
/// by systemd's `RuntimeDirectory=`, for ExecStart and ExecReload alike); otherwise
/// `/run/handover/NAME/control.sock` for root or `$XDG_RUNTIME_DIR/handover/NAME/control.sock`,
/// where NAME is `--service-name` or the configuration file's name without extension.
/// Never /tmp.
pub(crate) fn socket_path(
    config: Option<&Config>,
    service_name: Option<&str>,
    config_path: Option<&Path>,
    environment: &Environment,
) -> Result<PathBuf, String> {
    if let Some(path) = config.and_then(|c| c.control.socket.clone()) {
        return Ok(path);
    }
    if let Some(dir) = &environment.runtime_directory {
        return Ok(dir.join("control.sock"));
    }
    let name = match (service_name, config_path) {
        (Some(name), _) => name.to_string(),
        (None, Some(path)) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "handover".into()),
        (None, None) => {
            return Err("say which instance: --config FILE or --service-name NAME".into())
        }
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{name:?} is not a usable instance name"));
    }
    let base = if handover_sys::users::effective_uid() == 0 {
        PathBuf::from("/run/handover")
    } else {
        match &environment.xdg_runtime_dir {
            Some(dir) => dir.join("handover"),
            None => {
                return Err("XDG_RUNTIME_DIR is not set: set control.socket in the configuration (handover never puts its control socket in /tmp)".into())
            }
        }
    };
    Ok(base.join(name).join("control.sock"))
}

/// A failed control request.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// Nothing listens there (no socket file, or a stale one).
    NotRunning(String),
    /// Could not reach the instance.
    Connect(String),
    /// The instance answered with a failure.
    Failed(String),
}

/// Sends `request` and hands every response line to `on_response` until the final one.
/// Returns the final response (or `None` at end of file) and the server's pid.
pub(crate) fn request(
    path: &Path,
    request: &Request,
    deadline: Option<Duration>,
    mut on_response: impl FnMut(&Response),
) -> Result<(Option<Response>, Option<i32>), ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|err| match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => ClientError::NotRunning(format!(
            "no handover is running on {} ({err})",
            path.display()
        )),
        _ => ClientError::Connect(format!("cannot connect to {}: {err}", path.display())),
    })?;
    let pid = handover_sys::control::listening_pid(path)
        .ok()
        .flatten()
        .flatten();
    let started = Instant::now();
    stream
        .set_read_timeout(deadline)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    // A write error is not final: the server may have answered (a refusal) and closed
    // before reading; its answer is still there to read.
    let write_error = stream.write_all(request.to_line().as_bytes()).err();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                if let Some(err) = write_error {
                    return Err(ClientError::Connect(format!("sending the request: {err}")));
                }
                return Ok((None, pid));
            }
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Failed(format!(
                    "no answer within {:.0?}",
                    started.elapsed()
                )));
            }
            Err(err) => return Err(ClientError::Connect(format!("reading the answer: {err}"))),
        }
        let response = control::parse_response(line.trim_ascii_end())
            .map_err(|e| ClientError::Failed(format!("unreadable answer: {e}")))?;
        on_response(&response);
        if response.is_final() {
            return Ok((Some(response), pid));
        }
    }
}

fn ms(value: Option<u64>) -> String {
    match value {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{}m", ms / 60_000),
        Some(ms) => format!("{}h", ms / 3_600_000),
    }
}

/// Renders `handover status` as a table.
pub(crate) fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let phase = match status.phase {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
    };
    out.push_str(&format!(
        "handover pid {}, {phase}, up {}: {}\n",
        status.pid,
        ms(Some(status.uptime_ms)),
        status.status
    ));
    if let Some(generation) = status.reloading {
        out.push_str(&format!("reload in progress: generation {generation}\n"));
    }
    if let Some(cgroups) = &status.cgroups {
        out.push_str(&format!("cgroups: {cgroups}\n"));
    }
    if let Some(controllers) = &status.cgroup_controllers {
        out.push_str(&format!("cgroup controllers: {controllers}\n"));
    }
    out.push_str("\nSOCKET       FD  ADDRESS                         FROM      MODE\n");
    for socket in &status.sockets {
        let mode = match &socket.shared_because {
            Some(why) => format!("{} ({why})", socket.mode),
            None => socket.mode.clone(),
        };
        out.push_str(&format!(
            "{:<12} {:<3} {:<31} {:<9} {mode}\n",
            socket.name,
            socket.fd,
            socket.address,
            if socket.from_systemd {
                "systemd"
            } else {
                "handover"
            }
        ));
    }
    if !status.logs.is_empty() {
        out.push_str("\nLOG FILE                                 DROPPED LINES  ROTATIONS\n");
        for log in &status.logs {
            out.push_str(&format!(
                "{:<40} {:<14} {}\n",
                log.path, log.dropped, log.rotations
            ));
        }
    }
    for generation in &status.generations {
        out.push_str(&format!(
            "\ngeneration {} ({}, {} workers, age {})\n",
            generation.generation,
            generation.state.name(),
            generation.count,
            ms(Some(generation.age_ms))
        ));
        out.push_str("  WORKER  PID      STATE     READY FOR  RESTARTS  LAST EXIT\n");
        for worker in &generation.workers {
            let pid = worker
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "  {:<7} {:<8} {:<9} {:<10} {:<9} {}\n",
                worker.index,
                pid,
                worker.state.name(),
                ms(worker.ready_for_ms),
                worker.restarts,
                worker.last_exit.as_deref().unwrap_or("-")
            ));
        }
        for worker in generation.workers.iter().filter(|w| w.crash_looping) {
            out.push_str(&format!(
                "  worker {} is crash-looping: {} failures in a row\n",
                worker.index, worker.failures_in_a_row
            ));
        }
        for worker in &generation.workers {
            let Some(cgroup) = &worker.cgroup else {
                continue;
            };
            let mut line = format!("  worker {} cgroup {}", worker.index, cgroup.path);
            if let Some(usec) = cgroup.cpu_usec {
                line.push_str(&format!(", CPU {:.2}s", usec as f64 / 1e6));
            }
            if let Some(bytes) = cgroup.memory_bytes {
                line.push_str(&format!(", memory {} KiB", bytes / 1024));
            }
            if let Some(pids) = cgroup.pids {
                let noun = if pids == 1 { "process" } else { "processes" };
                line.push_str(&format!(", {pids} {noun}"));
            }
            if let Some(kills) = cgroup.oom_kills.filter(|&k| k > 0) {
                let noun = if kills == 1 { "OOM kill" } else { "OOM kills" };
                line.push_str(&format!(", {kills} {noun}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
        for worker in &generation.workers {
            let Some(health) = &worker.health else {
                continue;
            };
            let pid = worker
                .pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            let mut line = format!("  worker {}{pid} is {}", worker.index, health.state);
            if let (Some(ago), Some(passed)) = (health.last_check_ms_ago, health.last_passed) {
                let how = if passed { "passed" } else { "failed" };
                line.push_str(&format!(", last check {how} {} ago", ms(Some(ago))));
            }
            if health.failures_in_a_row > 0 {
                line.push_str(&format!(", {} failed in a row", health.failures_in_a_row));
            }
            if let Some(left) = health.watchdog_left_ms {
                line.push_str(&format!(", watchdog due in {}", ms(Some(left))));
            }
            if let Some(reason) = &health.reason {
                line.push_str(&format!(": {reason}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
