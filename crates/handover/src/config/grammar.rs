//! The grammars of values written as strings: durations, sizes, listen addresses and signal
//! names. Each parser takes any text and says what is wrong without naming a key; the caller
//! adds the key and the position. The command line uses the same duration parser.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::sockets::ListenAddress;

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * KIB;
pub(crate) const GIB: u64 = 1024 * MIB;
pub(crate) const TIB: u64 = 1024 * GIB;

/// Longest duration any key (and any duration on the command line) accepts.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest unix socket path in bytes: `sun_path` holds 108 bytes including the final NUL.
pub(crate) const UNIX_PATH_MAX: usize = 107;

/// What a number without a unit means to [`duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareNumber {
    /// An error that asks for a unit (the configuration file, where `"10"` is ambiguous).
    Refused,
    /// Seconds (the command line, where `--timeout 0.5` has always meant half a second).
    Seconds,
}

/// Parses a duration of the configuration file: a non-negative decimal number and a unit,
/// `ms`, `s`, `m` or `h`, such as `"250ms"`, `"10s"`, `"1.5s"` or `"5m"`, at most 24 hours.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    duration(text, BareNumber::Refused)
}

/// Parses a duration of the command line (`--timeout`): the grammar of the configuration
/// file, where a bare number also means seconds (`0.5` is `500ms`).
pub(crate) fn parse_cli_duration(text: &str) -> Result<Duration, String> {
    duration(text, BareNumber::Seconds)
}

/// The one duration grammar behind [`parse_duration`] and [`parse_cli_duration`]. The error
/// says what is wrong (without a key name).
pub(crate) fn duration(text: &str, bare: BareNumber) -> Result<Duration, String> {
    let hint = match bare {
        BareNumber::Refused => {
            "expected a number followed by a unit (ms, s, m or h), like \"10s\" or \"1.5s\""
        }
        BareNumber::Seconds => {
            "expected a number of seconds like \"0.5\", or a number followed by a unit (ms, s, \
            m or h), like \"500ms\" or \"2m\""
        }
    };
    if text.starts_with('-') {
        return Err(format!("{text:?}: a duration cannot be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?} is not a duration; {hint}"));
    }
    let unit_ns: u128 = match (unit, bare) {
        ("ms", _) => 1_000_000,
        ("s", _) | ("", BareNumber::Seconds) => 1_000_000_000,
        ("m", _) => 60 * 1_000_000_000,
        ("h", _) => 3600 * 1_000_000_000,
        ("", BareNumber::Refused) => {
            return Err(format!(
                "{text:?} has no unit; write \"{number}s\" for seconds (or use ms, m, h)"
            ))
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!("{text:?} is not a duration; {hint}"));
    }
    let too_long = || format!("{text:?} is too long; the maximum is 24h");
    // 20 digits keep `whole * unit_ns` far below u128::MAX.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return Err(too_long());
    }
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = nanos * 10 + u128::from(digit - b'0');
    }
    nanos *= unit_ns;
    // Digits beyond nanosecond precision do not matter; 18 of them are plenty.
    let fraction = &fraction[..fraction.len().min(18)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes() {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    nanos += numerator * unit_ns / denominator;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    // At most 24 hours of nanoseconds: far below u64::MAX.
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses a size: a number of bytes, optionally followed directly by a unit (`B`, `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB`; all powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{text:?} is not a size: write a number of bytes, optionally with a unit, like \"16KiB\" or \"10MiB\""
        ));
    }
    let (number, unit) = text.split_at(digits);
    let unit_size = match unit {
        "" | "B" => 1,
        "K" | "KiB" => KIB,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "T" | "TiB" => TIB,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB, MiB, GiB or TiB (K, M, G, T for short)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_size))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `16KiB`, `1MiB`, `4096B`: a size in the largest unit that divides it.
pub(crate) use handover_sys::cgroup::show_bytes as show_size;

/// The signals `stop_signal` accepts.
pub(crate) const STOP_SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGCONT", libc::SIGCONT),
    ("SIGALRM", libc::SIGALRM),
];

/// The number of a signal `stop_signal` accepts, from its name: `"SIGTERM"`, `"TERM"` and
/// `"sigterm"` all give `libc::SIGTERM`. `None` for any other name.
pub(crate) fn stop_signal_from_name(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    STOP_SIGNALS
        .iter()
        .find(|(full, _)| &full[3..] == bare)
        .map(|&(_, number)| number)
}

/// A stop signal from its name, or why the name is refused.
pub(crate) fn parse_stop_signal(name: &str) -> Result<i32, String> {
    if let Some(number) = stop_signal_from_name(name) {
        return Ok(number);
    }
    let upper = name.to_ascii_uppercase();
    if upper == "KILL" || upper == "SIGKILL" {
        return Err(
            "SIGKILL cannot be caught, so it cannot ask a worker to finish its work; \
            handover sends it by itself after stop_timeout"
                .into(),
        );
    }
    let names: Vec<&str> = STOP_SIGNALS.iter().map(|&(n, _)| n).collect();
    Err(format!(
        "{name:?} is not a supported stop signal; use one of {}",
        names.join(", ")
    ))
}

/// Parses a `listen` value, saying what is wrong and how to write it instead.
pub(crate) fn parse_listen(text: &str) -> Result<ListenAddress, String> {
    if text.starts_with('/') {
        if text.len() > UNIX_PATH_MAX {
            return Err(format!(
                "unix socket path is {} bytes, the limit is {UNIX_PATH_MAX}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err("unix socket path contains a NUL character".into());
        }
        if text.ends_with('/') {
            return Err(format!(
                "{text:?} ends with '/'; give the path of the socket file itself"
            ));
        }
        return Ok(ListenAddress::Unix(PathBuf::from(text)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ListenAddress::Tcp(addr));
    }
    const FORMS: &str = "use \"IP:port\" (like \"127.0.0.1:8080\" or \"[::1]:8080\") or an \
        absolute unix socket path";
    if text.is_empty() {
        return Err(format!("must not be empty; {FORMS}"));
    }
    if text.starts_with('@') {
        return Err(format!("abstract unix sockets are not supported; {FORMS}"));
    }
    if text.parse::<u16>().is_ok() {
        return Err(format!(
            "{text:?} has no address; write \"0.0.0.0:{text}\" (every IPv4 address), \
                \"[::]:{text}\" (every IPv6 address) or \"127.0.0.1:{text}\" (this machine only)"
        ));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("{text:?} has no port; write \"{text}:PORT\""),
            IpAddr::V6(_) => match text.rsplit_once(':') {
                // "::1:8080" is an IPv6 address, but more likely meant as [::1]:8080.
                Some((host, port))
                    if host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() =>
                {
                    format!(
                        "{text:?} is an IPv6 address without a port; an IPv6 address needs \
                        brackets, as in \"[{host}]:{port}\""
                    )
                }
                _ => format!("{text:?} has no port; write \"[{text}]:PORT\""),
            },
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is neither an address nor a path; {FORMS}"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "{text:?}: {port:?} is not a port; a port is a number from 0 to 65535"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Err(format!("{text:?}: {inner:?} is not an IPv6 address"));
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "{text:?}: an IPv6 address needs brackets, as in \"[{host}]:{port}\""
        ));
    }
    if host == "localhost" {
        return Err(format!(
            "{text:?}: the host must be an IP address, not a name (handover does no DNS \
                lookups); for localhost write \"127.0.0.1:{port}\" or \"[::1]:{port}\""
        ));
    }
    if host.is_empty() || host == "*" {
        return Err(format!(
            "{text:?} has no address; write \"0.0.0.0:{port}\" (every IPv4 address) or \
                \"[::]:{port}\" (every IPv6 address)"
        ));
    }
    Err(format!(
        "{text:?}: the host {host:?} must be an IP address, not a name (handover does no DNS \
            lookups); write the address to listen on, like \"127.0.0.1:{port}\", or \
            \"0.0.0.0:{port}\" for every interface"
    ))
}

#[cfg(test)]
mod tests;
