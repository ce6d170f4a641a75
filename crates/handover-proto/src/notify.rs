//! Parsing of sd_notify datagrams, by the rules systemd's own receiver applies.
//!
//! A datagram is newline-separated `KEY=VALUE` assignments. The receiver drops a whole message
//! that is empty, contains a NUL byte, or is longer than [`NOTIFY_BUFFER_MAX`]; single lines it
//! does not understand are ignored, never fatal.

/// Largest datagram accepted, as in systemd (`PIPE_BUF`). Longer messages are dropped whole.
pub const NOTIFY_BUFFER_MAX: usize = 4096;

/// Longest STATUS= text kept after sanitising.
pub const STATUS_MAX: usize = 256;

/// What one datagram said, field by field. Fields absent from the datagram are `None`/`false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    /// `READY=1`.
    pub ready: bool,
    /// `RELOADING=1`.
    pub reloading: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`.
    pub watchdog_trigger: bool,
    /// `BARRIER=1`: the sender passed an fd and waits until the receiver closes it.
    pub barrier: bool,
    /// `STATUS=` text, with control characters replaced and cut to [`STATUS_MAX`] bytes
    /// on a char boundary.
    pub status: Option<String>,
    /// `ERRNO=` as a non-negative number.
    pub errno: Option<i32>,
    /// `MAINPID=` (recorded, never acted upon for workers).
    pub main_pid: Option<u32>,
    /// `EXTEND_TIMEOUT_USEC=`.
    pub extend_timeout_usec: Option<u64>,
    /// `MONOTONIC_USEC=`.
    pub monotonic_usec: Option<u64>,
    /// `WATCHDOG_USEC=`: a new watchdog interval for the sender (0 turns it off).
    pub watchdog_usec: Option<u64>,
    /// `FDSTORE=1`.
    pub fdstore: bool,
    /// `FDNAME=`.
    pub fdname: Option<String>,
}

/// Why a whole datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The datagram had no bytes.
    #[error("empty notification datagram")]
    Empty,
    /// The datagram exceeded [`NOTIFY_BUFFER_MAX`] bytes.
    #[error("notification datagram of {0} bytes exceeds the {NOTIFY_BUFFER_MAX}-byte limit")]
    TooLong(usize),
    /// The datagram contained a NUL byte.
    #[error("notification datagram contains a NUL byte")]
    EmbeddedNul,
    /// The datagram is not valid UTF-8.
    #[error("notification datagram is not valid UTF-8")]
    NotUtf8,
}

/// Parses one datagram.
///
/// The whole datagram is dropped (an `Err`) only when it is empty, longer than
/// [`NOTIFY_BUFFER_MAX`], contains a NUL byte or is not UTF-8. Anything else is accepted line
/// by line: a line without `=`, with an unknown key or with a value the key does not allow is
/// skipped, so a message of pure junk parses to [`NotifyMessage::default()`].
///
/// Boolean fields are only ever switched on (`READY=0` does not undo an earlier `READY=1`).
/// For the valued fields the last valid assignment wins; an invalid one leaves the field as it
/// was.
pub fn parse(datagram: &[u8]) -> Result<NotifyMessage, NotifyError> {
    if datagram.is_empty() {
        return Err(NotifyError::Empty);
    }
    if datagram.len() > NOTIFY_BUFFER_MAX {
        return Err(NotifyError::TooLong(datagram.len()));
    }
    // A NUL would end the message early for a C receiver, so systemd refuses such messages
    // rather than guess which half the sender meant.
    if datagram.contains(&0) {
        return Err(NotifyError::EmbeddedNul);
    }
    let text = std::str::from_utf8(datagram).map_err(|_| NotifyError::NotUtf8)?;

    let mut msg = NotifyMessage::default();
    for line in text.split('\n') {
        // Senders written on or for other platforms sometimes end lines with CRLF; accepting
        // it costs nothing and keeps `READY=1\r\n` from being silently ignored.
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some((key, value)) = line.split_once('=') {
            apply(&mut msg, key, value);
        }
    }
    Ok(msg)
}

/// Records one `KEY=VALUE` assignment in `msg`, ignoring what it does not understand.
fn apply(msg: &mut NotifyMessage, key: &str, value: &str) {
    match key {
        "READY" => msg.ready |= value == "1",
        "RELOADING" => msg.reloading |= value == "1",
        "STOPPING" => msg.stopping |= value == "1",
        "FDSTORE" => msg.fdstore |= value == "1",
        "BARRIER" => msg.barrier |= value == "1",
        "WATCHDOG" => match value {
            "1" => msg.watchdog = true,
            "trigger" => msg.watchdog_trigger = true,
            _ => {}
        },
        "STATUS" => msg.status = Some(sanitize_status(value)),
        "ERRNO" => set_if_some(&mut msg.errno, parse_decimal::<i32>(value)),
        "MAINPID" => set_if_some(&mut msg.main_pid, parse_pid(value)),
        "EXTEND_TIMEOUT_USEC" => {
            set_if_some(&mut msg.extend_timeout_usec, parse_decimal::<u64>(value));
        }
        "MONOTONIC_USEC" => set_if_some(&mut msg.monotonic_usec, parse_decimal::<u64>(value)),
        "WATCHDOG_USEC" => set_if_some(&mut msg.watchdog_usec, parse_decimal::<u64>(value)),
        "FDNAME" if crate::listen::check_fdname(value).is_ok() => {
            msg.fdname = Some(value.to_owned());
        }
        _ => {}
    }
}

/// Overwrites `slot` only with a valid value, so a later malformed line cannot erase an
/// earlier good one.
fn set_if_some<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

/// Parses a plain decimal number: ASCII digits only, so signs, spaces and `+` are refused
/// (Rust's `FromStr` would accept a leading `+`, which systemd's parsers do not).
pub(crate) fn parse_decimal<T: std::str::FromStr>(value: &str) -> Option<T> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Parses a process id: a plain decimal number in `1..=i32::MAX`, because `pid_t` is signed
/// and a larger value would turn negative (a process group) when handed to `kill()`.
pub(crate) fn parse_pid(value: &str) -> Option<u32> {
    parse_decimal::<u32>(value).filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
}

/// Makes `STATUS=` text safe to log and display: every control character (C0, DEL and C1,
/// tabs included) becomes `?`, then the text is cut to at most [`STATUS_MAX`] bytes without
/// splitting a character.
fn sanitize_status(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(STATUS_MAX));
    for c in value.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > STATUS_MAX {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses text that the test expects to be accepted.
    fn ok(text: &str) -> NotifyMessage {
        parse(text.as_bytes()).expect("message should be accepted")
    }

    #[test]
    fn empty_is_dropped() {
        assert_eq!(parse(b""), Err(NotifyError::Empty));
    }

    #[test]
    fn nul_is_dropped() {
        assert_eq!(parse(b"READY=1\0"), Err(NotifyError::EmbeddedNul));
        assert_eq!(parse(b"\0"), Err(NotifyError::EmbeddedNul));
        assert_eq!(
            parse(b"READY=1\nSTATUS=a\0b\n"),
            Err(NotifyError::EmbeddedNul)
        );
    }

    #[test]
    fn non_utf8_is_dropped() {
        assert_eq!(parse(b"READY=1\nSTATUS=\xff\n"), Err(NotifyError::NotUtf8));
        assert_eq!(parse(b"\xc3"), Err(NotifyError::NotUtf8));
    }

    #[test]
    fn length_limit_is_inclusive() {
        let mut exact = b"READY=1\n".to_vec();
        exact.resize(NOTIFY_BUFFER_MAX, b'x');
        assert_eq!(exact.len(), 4096);
        assert!(parse(&exact).expect("4096 bytes fit").ready);

        let mut over = exact.clone();
        over.push(b'x');
        assert_eq!(parse(&over), Err(NotifyError::TooLong(4097)));
    }

    #[test]
    fn too_long_is_reported_before_content_checks() {
        let mut over = vec![0u8; NOTIFY_BUFFER_MAX + 10];
        over[0] = 0xff;
        assert_eq!(parse(&over), Err(NotifyError::TooLong(4106)));
    }

    #[test]
    fn ten_thousand_junk_lines_are_too_long() {
        let junk = "junk\n".repeat(10_000);
        assert_eq!(
            parse(junk.as_bytes()),
            Err(NotifyError::TooLong(junk.len()))
        );
    }

    #[test]
    fn as_many_lines_as_fit_are_fine() {
        // 4096 newlines make 4097 empty lines, the most a datagram can hold.
        let newlines = "\n".repeat(NOTIFY_BUFFER_MAX);
        assert_eq!(ok(&newlines), NotifyMessage::default());

        let mut text = "x\n=\n==\n\r\n".repeat(1000);
        text.truncate(NOTIFY_BUFFER_MAX - "\nREADY=1".len());
        text.push_str("\nREADY=1");
        assert_eq!(text.len(), NOTIFY_BUFFER_MAX);
        let msg = ok(&text);
        assert!(msg.ready);
        assert_eq!(
            msg,
            NotifyMessage {
                ready: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn ready_among_junk() {
        let msg = ok("garbage\n=\nFOO=bar\nready=1\n READY=1\nREADY=1\nREADY\nSTATUS\n");
        assert_eq!(
            msg,
            NotifyMessage {
                ready: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn junk_only_is_default() {
        for text in [
            "x", "\n", "FOO=1", "READY", "=1", "=", "READY =1", "\r\n", "ÄÖÜ=1",
        ] {
            assert_eq!(ok(text), NotifyMessage::default(), "{text:?}");
        }
    }

    #[test]
    fn boolean_flags_need_exactly_one() {
        type Get = fn(&NotifyMessage) -> bool;
        let flags: [(&str, Get); 5] = [
            ("READY", |m| m.ready),
            ("RELOADING", |m| m.reloading),
            ("STOPPING", |m| m.stopping),
            ("FDSTORE", |m| m.fdstore),
            ("BARRIER", |m| m.barrier),
        ];
        for (key, get) in flags {
            let set = ok(&format!("{key}=1"));
            assert!(get(&set), "{key}=1");
            assert_eq!(set, {
                let mut only = NotifyMessage::default();
                apply(&mut only, key, "1");
                only
            });
            for value in ["0", "1x", "", " 1", "1 ", "01", "true", "yes", "2"] {
                let msg = ok(&format!("{key}={value}"));
                assert_eq!(msg, NotifyMessage::default(), "{key}={value:?}");
            }
        }
    }

    #[test]
    fn flags_are_not_cleared_by_later_lines() {
        let msg = ok("READY=1\nREADY=0\nSTOPPING=1\nSTOPPING=\n");
        assert!(msg.ready);
        assert!(msg.stopping);
    }

    #[test]
    fn watchdog_values() {
        assert_eq!(
            ok("WATCHDOG=1"),
            NotifyMessage {
                watchdog: true,
                ..Default::default()
            }
        );
        assert_eq!(
            ok("WATCHDOG=trigger"),
            NotifyMessage {
                watchdog_trigger: true,
                ..Default::default()
            }
        );
        let both = ok("WATCHDOG=1\nWATCHDOG=trigger");
        assert!(both.watchdog && both.watchdog_trigger);
        for value in ["0", "", "Trigger", "trigger ", "1x", "TRIGGER"] {
            assert_eq!(
                ok(&format!("WATCHDOG={value}")),
                NotifyMessage::default(),
                "{value:?}"
            );
        }
        assert_eq!(ok("WATCHDOG_USEC=2500000").watchdog_usec, Some(2_500_000));
        assert_eq!(ok("WATCHDOG_USEC=0").watchdog_usec, Some(0));
        for value in ["", "-1", "+5", "1s", "99999999999999999999999"] {
            assert_eq!(ok(&format!("WATCHDOG_USEC={value}")).watchdog_usec, None);
        }
    }

    #[test]
    fn crlf_lines() {
        let msg = ok("READY=1\r\nSTATUS=up\r\nMAINPID=42\r\n");
        assert!(msg.ready);
        assert_eq!(msg.status.as_deref(), Some("up"));
        assert_eq!(msg.main_pid, Some(42));
    }

    #[test]
    fn only_one_carriage_return_is_stripped() {
        // A second CR belongs to the value and is sanitised like any control character.
        assert_eq!(ok("STATUS=a\r\r\n").status.as_deref(), Some("a?"));
        assert_eq!(ok("READY=1\r\r\n"), NotifyMessage::default());
    }

    #[test]
    fn trailing_newline_is_fine() {
        assert!(ok("READY=1\n").ready);
        assert!(ok("READY=1").ready);
        assert!(ok("\n\nREADY=1\n\n").ready);
    }

    #[test]
    fn status_is_kept() {
        assert_eq!(
            ok("STATUS=Serving 3 clients").status.as_deref(),
            Some("Serving 3 clients")
        );
        assert_eq!(ok("STATUS=").status.as_deref(), Some(""));
        assert_eq!(ok("STATUS=a=b=c").status.as_deref(), Some("a=b=c"));
        assert_eq!(ok("STATUS=grüße ✓").status.as_deref(), Some("grüße ✓"));
    }

    #[test]
    fn status_control_characters_become_question_marks() {
        assert_eq!(ok("STATUS=a\tb").status.as_deref(), Some("a?b"));
        assert_eq!(ok("STATUS=a\x7fb").status.as_deref(), Some("a?b"));
        assert_eq!(ok("STATUS=\x1b[31mred").status.as_deref(), Some("?[31mred"));
        assert_eq!(
            ok("STATUS=x\u{85}y\u{9b}z").status.as_deref(),
            Some("x?y?z")
        );
        assert_eq!(ok("STATUS=\x01\x02\x03").status.as_deref(), Some("???"));
    }

    #[test]
    fn status_is_truncated_on_a_char_boundary() {
        let long = "a".repeat(1000);
        let msg = ok(&format!("STATUS={long}"));
        assert_eq!(msg.status.as_deref(), Some(&long[..STATUS_MAX]));

        // 255 ASCII bytes leave one byte, too little for the two-byte 'é'.
        let text = format!("STATUS={}é", "a".repeat(255));
        assert_eq!(ok(&text).status, Some("a".repeat(255)));

        // 254 ASCII bytes leave exactly room for 'é'.
        let text = format!("STATUS={}éz", "a".repeat(254));
        assert_eq!(ok(&text).status, Some(format!("{}é", "a".repeat(254))));

        let emoji = "😀".repeat(100);
        let status = ok(&format!("STATUS={emoji}")).status.expect("status set");
        assert_eq!(status, "😀".repeat(64));
        assert_eq!(status.len(), STATUS_MAX);
    }

    #[test]
    fn last_status_wins() {
        assert_eq!(
            ok("STATUS=one\nSTATUS=two\n").status.as_deref(),
            Some("two")
        );
        assert_eq!(ok("STATUS=one\nSTATUS=\n").status.as_deref(), Some(""));
    }

    #[test]
    fn errno_values() {
        let cases: [(&str, Option<i32>); 13] = [
            ("0", Some(0)),
            ("2", Some(2)),
            ("007", Some(7)),
            ("2147483647", Some(i32::MAX)),
            ("2147483648", None),
            ("-1", None),
            ("+2", None),
            (" 2", None),
            ("2 ", None),
            ("", None),
            ("0x10", None),
            ("٣", None),
            ("99999999999999999999999", None),
        ];
        for (value, want) in cases {
            assert_eq!(ok(&format!("ERRNO={value}")).errno, want, "ERRNO={value:?}");
        }
    }

    #[test]
    fn main_pid_values() {
        let cases: [(&str, Option<u32>); 9] = [
            ("1", Some(1)),
            ("4242", Some(4242)),
            ("2147483647", Some(2_147_483_647)),
            ("2147483648", None),
            ("4294967295", None),
            ("0", None),
            ("-5", None),
            ("+5", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                ok(&format!("MAINPID={value}")).main_pid,
                want,
                "MAINPID={value:?}"
            );
        }
    }

    #[test]
    fn usec_values() {
        let cases: [(&str, Option<u64>); 8] = [
            ("0", Some(0)),
            ("5000000", Some(5_000_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-1", None),
            ("+1", None),
            ("1.5", None),
            ("", None),
        ];
        for (value, want) in cases {
            let text = format!("EXTEND_TIMEOUT_USEC={value}\nMONOTONIC_USEC={value}");
            let msg = ok(&text);
            assert_eq!(msg.extend_timeout_usec, want, "{value:?}");
            assert_eq!(msg.monotonic_usec, want, "{value:?}");
        }
    }

    #[test]
    fn invalid_number_does_not_drop_the_message() {
        let msg = ok("READY=1\nMAINPID=abc\nERRNO=-3\nSTATUS=ok");
        assert_eq!(
            msg,
            NotifyMessage {
                ready: true,
                status: Some("ok".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn invalid_value_keeps_the_earlier_valid_one() {
        let msg = ok("MAINPID=10\nMAINPID=x\nERRNO=5\nERRNO=\n");
        assert_eq!(msg.main_pid, Some(10));
        assert_eq!(msg.errno, Some(5));
        assert_eq!(ok("MAINPID=10\nMAINPID=11").main_pid, Some(11));
    }

    #[test]
    fn fdname_values() {
        assert_eq!(ok("FDNAME=web").fdname.as_deref(), Some("web"));
        assert_eq!(
            ok("FDNAME=with space").fdname.as_deref(),
            Some("with space")
        );
        let max = "n".repeat(255);
        assert_eq!(ok(&format!("FDNAME={max}")).fdname, Some(max));
        for bad in ["", "a:b", "tab\there", "é", &"n".repeat(256)] {
            assert_eq!(ok(&format!("FDNAME={bad}")).fdname, None, "{bad:?}");
        }
        assert_eq!(
            ok("FDNAME=good\nFDNAME=bad:name").fdname.as_deref(),
            Some("good")
        );
    }

    #[test]
    fn full_message() {
        let msg = ok(
            "READY=1\nSTATUS=Up\nMAINPID=7\nERRNO=0\nEXTEND_TIMEOUT_USEC=1\n\
                      MONOTONIC_USEC=2\nFDSTORE=1\nFDNAME=s\nBARRIER=1\nRELOADING=1\n\
                      STOPPING=1\nWATCHDOG=1\nWATCHDOG=trigger\nWATCHDOG_USEC=3\n",
        );
        assert_eq!(
            msg,
            NotifyMessage {
                ready: true,
                reloading: true,
                stopping: true,
                watchdog: true,
                watchdog_trigger: true,
                barrier: true,
                status: Some("Up".into()),
                errno: Some(0),
                main_pid: Some(7),
                extend_timeout_usec: Some(1),
                monotonic_usec: Some(2),
                watchdog_usec: Some(3),
                fdstore: true,
                fdname: Some("s".into()),
            }
        );
    }

    #[test]
    fn errors_have_messages() {
        assert_eq!(
            NotifyError::TooLong(5000).to_string(),
            "notification datagram of 5000 bytes exceeds the 4096-byte limit"
        );
    }

    /// A message whose every field survives rendering and parsing unchanged.
    fn valid_message() -> impl Strategy<Value = NotifyMessage> {
        let flags = proptest::collection::vec(any::<bool>(), 7);
        let values = (
            proptest::option::of("[^\\p{Cc}]{0,64}"),
            proptest::option::of(0..=i32::MAX),
            proptest::option::of(1..=i32::MAX as u32),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[ -9;-~]{1,40}"),
            proptest::option::of(any::<u64>()),
        );
        (flags, values).prop_map(
            |(f, (status, errno, main_pid, extend, mono, fdname, watchdog_usec))| {
                let flag = |i: usize| f.get(i).copied().unwrap_or(false);
                NotifyMessage {
                    ready: flag(0),
                    reloading: flag(1),
                    stopping: flag(2),
                    watchdog: flag(3),
                    watchdog_trigger: flag(4),
                    barrier: flag(5),
                    fdstore: flag(6),
                    status,
                    errno,
                    main_pid,
                    extend_timeout_usec: extend,
                    monotonic_usec: mono,
                    watchdog_usec,
                    fdname,
                }
            },
        )
    }

    /// Renders a message as the lines a sender would write.
    fn render(msg: &NotifyMessage) -> Vec<String> {
        let mut lines = Vec::new();
        let flags = [
            (msg.ready, "READY=1"),
            (msg.reloading, "RELOADING=1"),
            (msg.stopping, "STOPPING=1"),
            (msg.watchdog, "WATCHDOG=1"),
            (msg.watchdog_trigger, "WATCHDOG=trigger"),
            (msg.barrier, "BARRIER=1"),
            (msg.fdstore, "FDSTORE=1"),
        ];
        lines.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, line)| line.to_string()),
        );
        if let Some(s) = &msg.status {
            lines.push(format!("STATUS={s}"));
        }
        if let Some(v) = msg.errno {
            lines.push(format!("ERRNO={v}"));
        }
        if let Some(v) = msg.main_pid {
            lines.push(format!("MAINPID={v}"));
        }
        if let Some(v) = msg.extend_timeout_usec {
            lines.push(format!("EXTEND_TIMEOUT_USEC={v}"));
        }
        if let Some(v) = msg.monotonic_usec {
            lines.push(format!("MONOTONIC_USEC={v}"));
        }
        if let Some(v) = msg.watchdog_usec {
            lines.push(format!("WATCHDOG_USEC={v}"));
        }
        if let Some(v) = &msg.fdname {
            lines.push(format!("FDNAME={v}"));
        }
        lines
    }

    /// Lines mixing known keys with arbitrary values, to reach every branch of `apply`.
    fn keyed_line() -> impl Strategy<Value = String> {
        const KEYS: &[&str] = &[
            "READY",
            "RELOADING",
            "STOPPING",
            "WATCHDOG",
            "BARRIER",
            "FDSTORE",
            "STATUS",
            "ERRNO",
            "MAINPID",
            "EXTEND_TIMEOUT_USEC",
            "MONOTONIC_USEC",
            "WATCHDOG_USEC",
            "FDNAME",
        ];
        let key = prop_oneof![
            4 => proptest::sample::select(KEYS).prop_map(String::from),
            1 => "[A-Z_]{0,8}",
        ];
        let value = prop_oneof!["[0-9]{0,25}", "[-+ 0-9a-z]{0,5}", "[^\\x00\\n]{0,300}"];
        (key, value).prop_map(|(k, v)| format!("{k}={v}"))
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_keyed_lines(lines in proptest::collection::vec(keyed_line(), 0..40)) {
            let text = lines.join("\n");
            match parse(text.as_bytes()) {
                Ok(msg) => {
                    if let Some(status) = &msg.status {
                        prop_assert!(status.len() <= STATUS_MAX);
                        prop_assert!(!status.chars().any(char::is_control));
                    }
                    if let Some(name) = &msg.fdname {
                        prop_assert!(crate::listen::check_fdname(name).is_ok());
                    }
                    if let Some(pid) = msg.main_pid {
                        prop_assert!(pid > 0 && pid <= i32::MAX as u32);
                    }
                    if let Some(errno) = msg.errno {
                        prop_assert!(errno >= 0);
                    }
                }
                Err(e) => prop_assert!(matches!(e, NotifyError::TooLong(_) | NotifyError::Empty)),
            }
        }

        #[test]
        fn valid_messages_round_trip(
            (msg, lines) in valid_message().prop_flat_map(|msg| {
                let junk = proptest::collection::vec("[a-z= ]{0,12}", 0..5);
                let lines = (Just(render(&msg)), junk)
                    .prop_map(|(mut lines, junk)| { lines.extend(junk); lines })
                    .prop_shuffle();
                (Just(msg), lines)
            }),
            crlf in any::<bool>(),
            trailing in any::<bool>(),
        ) {
            let sep = if crlf { "\r\n" } else { "\n" };
            let mut text = lines.join(sep);
            if trailing {
                text.push_str(sep);
            }
            if text.is_empty() {
                prop_assert_eq!(parse(text.as_bytes()), Err(NotifyError::Empty));
            } else {
                prop_assert_eq!(parse(text.as_bytes()), Ok(msg));
            }
        }
    }
}
