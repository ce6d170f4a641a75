//! `handover-loadgen`: a command-line front end to `handover_tests::loadgen` that prints the
//! run's summary as one JSON line. It exits 0 whatever the failure counts (the caller judges
//! them) and 2 on bad usage, including any non-loopback target.

use std::net::SocketAddr;
use std::time::Duration;

use handover_tests::loadgen::{self, LoadConfig};

/// Writes a line to stderr and ignores failure: a closed log pipe must never make this
/// program panic (Rust ignores SIGPIPE, so such a write fails with EPIPE instead).
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Like `log!`, for stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: handover-loadgen --addr 127.0.0.1:8080 [--concurrency 8] [--duration-ms 5000]
                        [--max-requests 1000000] [--mode new|keepalive] [--timeout-ms 5000]
                        [--path /]

Only loopback addresses (127.0.0.0/8, ::1) are accepted. The default mode is keepalive.";

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cfg = match parse_args(&args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            out!("{USAGE}");
            return;
        }
        Err(msg) => usage_error(&msg),
    };
    if let Err(e) = cfg.validate() {
        usage_error(&format!("{e:#}"));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log!("handover-loadgen: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(loadgen::run(cfg)) {
        Ok(summary) => match serde_json::to_string(&summary) {
            Ok(line) => {
                use std::io::Write as _;
                // The summary is the whole point of the run, so losing it is an error.
                if writeln!(std::io::stdout(), "{line}").is_err() {
                    std::process::exit(1);
                }
            }
            Err(e) => {
                log!("handover-loadgen: cannot render the summary: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            log!("handover-loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}

fn usage_error(msg: &str) -> ! {
    log!("handover-loadgen: {msg}");
    log!("{USAGE}");
    std::process::exit(2);
}

/// Parses the command line; `Ok(None)` means help was asked for.
fn parse_args(args: &[String]) -> Result<Option<LoadConfig>, String> {
    let mut cfg = LoadConfig::default();
    let mut addr: Option<SocketAddr> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => {
                addr = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--addr {value:?} is not an ip:port address"))?,
                )
            }
            "--concurrency" => cfg.concurrency = number(flag, value)? as usize,
            "--duration-ms" => cfg.duration = Duration::from_millis(number(flag, value)?),
            "--max-requests" => cfg.max_requests = number(flag, value)?,
            "--timeout-ms" => cfg.request_timeout = Duration::from_millis(number(flag, value)?),
            "--mode" => {
                cfg.mode = loadgen::parse_mode(value)
                    .ok_or_else(|| format!("--mode must be new or keepalive, not {value:?}"))?
            }
            "--path" => cfg.path = value.clone(),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    cfg.addr = addr.ok_or("--addr is required")?;
    Ok(Some(cfg))
}

/// Parses a count or millisecond value; a day or a billion is beyond any sensible test.
fn number(flag: &str, value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n <= 86_400_000_000 => Ok(n),
        _ => Err(format!("{flag} needs a non-negative number, not {value:?}")),
    }
}
