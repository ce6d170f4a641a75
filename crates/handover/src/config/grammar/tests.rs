//! The value grammars, on their own.

use std::time::Duration;

use super::*;

#[test]
fn durations() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("10s", Duration::from_secs(10)),
        ("1.5s", Duration::from_millis(1500)),
        ("5m", Duration::from_secs(300)),
        ("2h", Duration::from_secs(7200)),
        ("24h", Duration::from_secs(86400)),
        ("1440m", Duration::from_secs(86400)),
        ("0s", Duration::ZERO),
        ("0ms", Duration::ZERO),
        ("0.5ms", Duration::from_micros(500)),
        ("0.000000001s", Duration::from_nanos(1)),
        ("0.0000000019s", Duration::from_nanos(1)),
        ("007s", Duration::from_secs(7)),
        ("1.25m", Duration::from_secs(75)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for (text, why) in [
        ("", "not a duration"),
        ("s", "not a duration"),
        ("10", "no unit"),
        ("1.5", "no unit"),
        ("-1s", "negative"),
        ("10x", "unknown unit"),
        ("10 s", "unknown unit"),
        ("1m30s", "unknown unit"),
        ("10S", "unknown unit"),
        ("10us", "unknown unit"),
        (".5s", "not a duration"),
        ("5.s", "not a duration"),
        ("1.2.3s", "not a duration"),
        ("+1s", "not a duration"),
        ("24.000001h", "too long"),
        ("86401s", "too long"),
        ("99999999999999999999999999999999h", "too long"),
    ] {
        let e = parse_duration(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e:?} lacks {why:?}");
    }
}

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("16K"), Ok(16384));
    assert_eq!(parse_size("16KiB"), Ok(16384));
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    for bad in ["", "K", "1.5M", "10 MiB", "10mb", "-1", "10kib"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

/// Issue 11: the command line's `--timeout` takes the file's grammar, plus bare seconds.
#[test]
fn command_line_durations() {
    for (text, expected) in [
        ("0.5", Duration::from_millis(500)),
        ("10", Duration::from_secs(10)),
        ("0", Duration::ZERO),
        ("86400", Duration::from_secs(86400)),
        ("500ms", Duration::from_millis(500)),
        ("1.5s", Duration::from_millis(1500)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
    ] {
        assert_eq!(parse_cli_duration(text), Ok(expected), "{text}");
    }
    for (text, why) in [
        ("-1", "negative"),
        ("-0.5s", "negative"),
        ("nan", "not a duration"),
        ("NaN", "not a duration"),
        ("inf", "not a duration"),
        ("", "not a duration"),
        ("1e3", "unknown unit"),
        ("86401", "too long"),
        ("1e999", "unknown unit"),
        ("99999999999999999999999999", "too long"),
        ("5 s", "unknown unit"),
    ] {
        let e = parse_cli_duration(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e:?} lacks {why:?}");
    }
    // The file still wants a unit.
    assert!(parse_duration("0.5").unwrap_err().contains("no unit"));
}

#[test]
fn signal_names() {
    assert_eq!(parse_stop_signal("usr1"), Ok(libc::SIGUSR1));
    assert!(parse_stop_signal("SIGKILL")
        .unwrap_err()
        .contains("cannot be caught"));
    let e = parse_stop_signal("SIGSTOP").unwrap_err();
    assert!(
        e.contains("not a supported stop signal") && e.contains("SIGALRM"),
        "{e}"
    );
}

#[test]
fn listen_grammar() {
    assert_eq!(
        parse_listen("127.0.0.1:80"),
        Ok(ListenAddress::Tcp("127.0.0.1:80".parse().unwrap()))
    );
    assert_eq!(
        parse_listen("/run/a.sock"),
        Ok(ListenAddress::Unix("/run/a.sock".into()))
    );
    for (text, why) in [
        ("localhost:80", "not a name"),
        ("8080", "has no address"),
        ("::1:8080", "brackets"),
        ("/a\0b", "NUL"),
        ("", "must not be empty"),
    ] {
        let e = parse_listen(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e:?} lacks {why:?}");
    }
}

#[test]
fn sizes_are_shown_in_their_largest_unit() {
    assert_eq!(show_size(16 * KIB), "16KiB");
    assert_eq!(show_size(MIB), "1MiB");
    assert_eq!(show_size(TIB), "1TiB");
    assert_eq!(show_size(4097), "4097B");
}
