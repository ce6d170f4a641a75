//! The `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` variables of socket activation, parsed
//! by the rules of systemd's `sd_listen_fds_with_names()`.

/// First fd number of passed sockets (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Longest file descriptor name systemd accepts.
pub const FDNAME_MAX: usize = 255;

/// Most sockets handover accepts in `LISTEN_FDS`.
///
/// systemd itself only requires that the last fd number fit an `int`; handover's limit is
/// lower so that a corrupt value cannot make a worker try to inherit millions of fds. No real
/// socket unit comes close to it.
pub const LISTEN_FDS_MAX: usize = 4096;

/// The raw values of the three variables, as read from the environment (None = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenEnv {
    /// `LISTEN_PID`.
    pub pid: Option<String>,
    /// `LISTEN_FDS`.
    pub fds: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub fdnames: Option<String>,
}

/// Sockets passed to this process: fds `3..3+names.len()`, with one name each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// One name per fd, in fd order (fd 3 first). `"unknown"` when `LISTEN_FDNAMES` is unset.
    pub names: Vec<String>,
}

/// Why the variables were rejected. Each names the variable and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenEnvError {
    /// `LISTEN_PID` is not a positive integer.
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    /// `LISTEN_FDS` is not a positive integer that fits the fd range.
    #[error("LISTEN_FDS={0:?} is not a valid number of file descriptors")]
    BadFdCount(String),
    /// `LISTEN_FDS` is set but `LISTEN_PID` is not (or the reverse).
    #[error("{present} is set but {missing} is not")]
    Incomplete {
        /// The variable that is set.
        present: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` says.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS={fds}")]
    NameCountMismatch {
        /// Number of names.
        names: usize,
        /// Number of fds.
        fds: usize,
    },
    /// A name is not a valid fd name (printable ASCII without `:`, at most 255 bytes).
    #[error("LISTEN_FDNAMES entry {index} (fd {fd}) {name:?} is not a valid name: {why}")]
    BadName {
        /// Position in the list, from 0.
        index: usize,
        /// The fd it belongs to.
        fd: i32,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What the variables mean for a process whose pid is `own_pid`.
///
/// * `Ok(None)`: no sockets for us (variables unset, or `LISTEN_PID` names another process).
/// * `Ok(Some(spec))`: `spec.names.len()` sockets at fds 3.., named.
/// * `Err(_)`: the variables are malformed; the error names which and why.
///
/// Follows `sd_listen_fds_with_names()`: names are split on `:` without coalescing (so empty
/// names are legal), and fewer or more names than fds is an error.
///
/// Checks happen in systemd's order: `LISTEN_PID` is validated and compared with `own_pid`
/// before `LISTEN_FDS` is looked at, so variables meant for another process are never an
/// error of ours. `LISTEN_PID` must be a plain decimal in `1..=i32::MAX` (the range of
/// `pid_t`). `LISTEN_FDS=0` means no sockets, as in systemd; more than [`LISTEN_FDS_MAX`] is an
/// error. `LISTEN_FDNAMES` without the other two is ignored.
pub fn parse(env: &ListenEnv, own_pid: u32) -> Result<Option<ListenSpec>, ListenEnvError> {
    let (pid, fds) = match (env.pid.as_deref(), env.fds.as_deref()) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ListenEnvError::Incomplete {
                present: "LISTEN_PID",
                missing: "LISTEN_FDS",
            })
        }
        (None, Some(_)) => {
            return Err(ListenEnvError::Incomplete {
                present: "LISTEN_FDS",
                missing: "LISTEN_PID",
            })
        }
        (Some(pid), Some(fds)) => (pid, fds),
    };

    let pid_value =
        crate::notify::parse_pid(pid).ok_or_else(|| ListenEnvError::BadPid(pid.to_owned()))?;
    if pid_value != own_pid {
        return Ok(None);
    }

    let n = parse_fd_count(fds).ok_or_else(|| ListenEnvError::BadFdCount(fds.to_owned()))?;
    if n == 0 {
        return Ok(None);
    }

    let names = match env.fdnames.as_deref() {
        None => vec!["unknown".to_owned(); n],
        Some(joined) => split_names(joined, n)?,
    };
    Ok(Some(ListenSpec { names }))
}

/// Parses `LISTEN_FDS`: plain decimal digits, at most [`LISTEN_FDS_MAX`] (which also keeps
/// the last fd number far inside `i32`).
fn parse_fd_count(value: &str) -> Option<usize> {
    crate::notify::parse_decimal::<usize>(value).filter(|&n| n <= LISTEN_FDS_MAX)
}

/// Splits `LISTEN_FDNAMES` into exactly `n` names, checking each non-empty one.
///
/// Splitting does not coalesce separators, because systemd writes an empty entry for a socket
/// without a name and the positions must keep matching the fds.
fn split_names(joined: &str, n: usize) -> Result<Vec<String>, ListenEnvError> {
    let names: Vec<&str> = joined.split(':').collect();
    if names.len() != n {
        return Err(ListenEnvError::NameCountMismatch {
            names: names.len(),
            fds: n,
        });
    }
    names
        .iter()
        .enumerate()
        .map(|(index, &name)| {
            if !name.is_empty() {
                check_fdname(name).map_err(|why| ListenEnvError::BadName {
                    index,
                    fd: fd_for_index(index),
                    name: name.to_owned(),
                    why,
                })?;
            }
            Ok(name.to_owned())
        })
        .collect()
}

/// The fd number of the socket at `index`, saturating rather than wrapping; indexes here are
/// bounded by [`LISTEN_FDS_MAX`], so saturation never happens in practice.
fn fd_for_index(index: usize) -> i32 {
    i32::try_from(index)
        .ok()
        .and_then(|i| i.checked_add(LISTEN_FDS_START))
        .unwrap_or(i32::MAX)
}

/// Checks a name the way systemd's `fdname_is_valid()` does, saying why it is not.
///
/// A valid name is 1 to [`FDNAME_MAX`] bytes of printable ASCII (`0x20..=0x7e`) other than
/// `:`, which separates names in `LISTEN_FDNAMES`. The empty name is refused here although
/// `LISTEN_FDNAMES` may contain it; [`parse`] does not ask this function about empty entries.
pub fn check_fdname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > FDNAME_MAX {
        return Err("is longer than 255 bytes");
    }
    for b in name.bytes() {
        if b == b':' {
            return Err("contains ':'");
        }
        if !(0x20..=0x7e).contains(&b) {
            return Err("contains a non-printable or non-ASCII character");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: u32 = 4242;

    /// An environment with the given variables set.
    fn env(pid: Option<&str>, fds: Option<&str>, fdnames: Option<&str>) -> ListenEnv {
        ListenEnv {
            pid: pid.map(str::to_owned),
            fds: fds.map(str::to_owned),
            fdnames: fdnames.map(str::to_owned),
        }
    }

    /// Parses variables addressed to this test's pid.
    fn mine(fds: &str, fdnames: Option<&str>) -> Result<Option<ListenSpec>, ListenEnvError> {
        parse(&env(Some("4242"), Some(fds), fdnames), ME)
    }

    /// A successful parse with the given names.
    fn names(list: &[&str]) -> Result<Option<ListenSpec>, ListenEnvError> {
        Ok(Some(ListenSpec {
            names: list.iter().map(|s| s.to_string()).collect(),
        }))
    }

    #[test]
    fn unset_means_no_sockets() {
        assert_eq!(parse(&ListenEnv::default(), ME), Ok(None));
        assert_eq!(parse(&env(None, None, Some("a:b")), ME), Ok(None));
        assert_eq!(parse(&env(None, None, Some("bad\tname")), ME), Ok(None));
    }

    #[test]
    fn half_set_is_incomplete() {
        assert_eq!(
            parse(&env(Some("4242"), None, None), ME),
            Err(ListenEnvError::Incomplete {
                present: "LISTEN_PID",
                missing: "LISTEN_FDS"
            })
        );
        assert_eq!(
            parse(&env(None, Some("1"), Some("a")), ME),
            Err(ListenEnvError::Incomplete {
                present: "LISTEN_FDS",
                missing: "LISTEN_PID"
            })
        );
        assert_eq!(
            ListenEnvError::Incomplete {
                present: "LISTEN_FDS",
                missing: "LISTEN_PID"
            }
            .to_string(),
            "LISTEN_FDS is set but LISTEN_PID is not"
        );
    }

    #[test]
    fn bad_pids() {
        for value in [
            "",
            "12a",
            "-1",
            " 1",
            "1 ",
            "+1",
            "0",
            "00",
            "0x10",
            "2147483648",
            "4294967295",
            "4294967296",
            "99999999999999999999",
            "١٢",
        ] {
            assert_eq!(
                parse(&env(Some(value), Some("1"), None), ME),
                Err(ListenEnvError::BadPid(value.to_owned())),
                "LISTEN_PID={value:?}"
            );
        }
    }

    #[test]
    fn pid_with_leading_zeros_is_a_number() {
        assert_eq!(
            parse(&env(Some("004242"), Some("1"), None), ME),
            names(&["unknown"])
        );
    }

    #[test]
    fn other_pid_is_not_for_us() {
        assert_eq!(parse(&env(Some("1"), Some("2"), None), ME), Ok(None));
        assert_eq!(
            parse(&env(Some("2147483647"), Some("2"), None), ME),
            Ok(None)
        );
        // Variables meant for another process are not checked further.
        assert_eq!(
            parse(&env(Some("1"), Some("garbage"), Some("x:y:z")), ME),
            Ok(None)
        );
        assert_eq!(
            parse(&env(Some("1"), Some("2"), Some("bad\tname:x")), ME),
            Ok(None)
        );
        assert_eq!(parse(&env(Some("1"), Some("-5"), None), ME), Ok(None));
    }

    #[test]
    fn bad_fd_counts() {
        for value in [
            "12a",
            "-1",
            "",
            " 1",
            "1 ",
            "+1",
            "0x1",
            "4097",
            "65536",
            "2147483644",
            "2147483645",
            "2147483647",
            "99999999999999999999",
        ] {
            assert_eq!(
                mine(value, None),
                Err(ListenEnvError::BadFdCount(value.to_owned())),
                "LISTEN_FDS={value:?}"
            );
        }
    }

    #[test]
    fn zero_fds_is_no_sockets() {
        assert_eq!(mine("0", None), Ok(None));
        assert_eq!(mine("00", Some("a:b")), Ok(None));
    }

    #[test]
    fn fd_count_limit_is_inclusive() {
        let spec = mine("4096", None).expect("valid").expect("sockets");
        assert_eq!(spec.names.len(), LISTEN_FDS_MAX);
        assert!(spec.names.iter().all(|n| n == "unknown"));
    }

    #[test]
    fn unset_names_are_unknown() {
        assert_eq!(mine("1", None), names(&["unknown"]));
        assert_eq!(mine("3", None), names(&["unknown", "unknown", "unknown"]));
    }

    #[test]
    fn names_are_split_without_coalescing() {
        assert_eq!(mine("2", Some("web:admin")), names(&["web", "admin"]));
        assert_eq!(mine("3", Some("a::b")), names(&["a", "", "b"]));
        assert_eq!(mine("1", Some("")), names(&[""]));
        assert_eq!(mine("2", Some("a:")), names(&["a", ""]));
        assert_eq!(mine("2", Some(":a")), names(&["", "a"]));
        assert_eq!(mine("3", Some("::")), names(&["", "", ""]));
    }

    #[test]
    fn duplicate_names_are_legal() {
        assert_eq!(mine("3", Some("x:x:y")), names(&["x", "x", "y"]));
    }

    #[test]
    fn name_count_must_match() {
        let cases: [(&str, &str, usize, usize); 6] = [
            ("2", "a", 1, 2),
            ("2", "a:b:c", 3, 2),
            ("1", "a:", 2, 1),
            ("2", "", 1, 2),
            ("1", ":", 2, 1),
            ("3", "a:b:c:", 4, 3),
        ];
        for (fds, fdnames, got, want) in cases {
            assert_eq!(
                mine(fds, Some(fdnames)),
                Err(ListenEnvError::NameCountMismatch {
                    names: got,
                    fds: want
                }),
                "LISTEN_FDS={fds} LISTEN_FDNAMES={fdnames:?}"
            );
        }
    }

    #[test]
    fn bad_names_are_located() {
        assert_eq!(
            mine("3", Some("a:b\tc:d")),
            Err(ListenEnvError::BadName {
                index: 1,
                fd: 4,
                name: "b\tc".into(),
                why: "contains a non-printable or non-ASCII character",
            })
        );
        assert_eq!(
            mine("1", Some("café")),
            Err(ListenEnvError::BadName {
                index: 0,
                fd: 3,
                name: "café".into(),
                why: "contains a non-printable or non-ASCII character",
            })
        );
        let long = "n".repeat(256);
        assert_eq!(
            mine("2", Some(&format!(":{long}"))),
            Err(ListenEnvError::BadName {
                index: 1,
                fd: 4,
                name: long,
                why: "is longer than 255 bytes",
            })
        );
        let max = "n".repeat(255);
        assert_eq!(mine("2", Some(&format!("{max}:"))), names(&[&max, ""]));
    }

    #[test]
    fn first_bad_name_is_reported() {
        match mine("3", Some("ok:\x7f:\x01")) {
            Err(ListenEnvError::BadName { index, fd, .. }) => assert_eq!((index, fd), (1, 4)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn error_messages_name_the_variable() {
        assert_eq!(
            ListenEnvError::BadPid("x".into()).to_string(),
            "LISTEN_PID=\"x\" is not a process id"
        );
        let err = mine("1", Some("a\tb")).expect_err("bad name");
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES entry 0 (fd 3) \"a\\tb\" is not a valid name: \
             contains a non-printable or non-ASCII character"
        );
    }

    #[test]
    fn check_fdname_rules() {
        assert_eq!(check_fdname("web"), Ok(()));
        assert_eq!(
            check_fdname(" ~!\"#$%&'()*+,-./09;<=>?@AZ[\\]^_`az{|}"),
            Ok(())
        );
        assert_eq!(check_fdname(&"x".repeat(255)), Ok(()));
        assert_eq!(check_fdname(""), Err("is empty"));
        assert_eq!(
            check_fdname(&"x".repeat(256)),
            Err("is longer than 255 bytes")
        );
        assert_eq!(check_fdname("a:b"), Err("contains ':'"));
        assert_eq!(check_fdname(":"), Err("contains ':'"));
        let nonprint = Err("contains a non-printable or non-ASCII character");
        for bad in ["a\tb", "a\nb", "\x7f", "\x1f", "é", "\u{85}", "日本"] {
            assert_eq!(check_fdname(bad), nonprint, "{bad:?}");
        }
        // 128 two-byte chars are 256 bytes although only 128 characters.
        assert_eq!(
            check_fdname(&"é".repeat(128)),
            Err("is longer than 255 bytes")
        );
    }

    #[test]
    fn check_fdname_agrees_with_a_byte_rule() {
        for b in 0u8..=127 {
            let name = char::from(b).to_string();
            let valid = (0x20..=0x7e).contains(&b) && b != b':';
            assert_eq!(check_fdname(&name).is_ok(), valid, "byte {b:#x}");
        }
    }

    /// Values that are sometimes well-formed, so generated inputs reach the later checks.
    fn maybe_number() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            "[0-9]{1,3}",
            "[0-9]{8,12}",
            "[-+ 0-9a-z]{0,4}",
            ".*",
        ])
    }

    proptest! {
        #[test]
        fn never_panics(
            pid in maybe_number(),
            fds in maybe_number(),
            fdnames in proptest::option::of(".*"),
            own_pid in any::<u32>(),
            use_own_pid in any::<bool>(),
        ) {
            let pid = if use_own_pid { Some(own_pid.to_string()) } else { pid };
            let e = ListenEnv { pid, fds, fdnames };
            if let Ok(Some(spec)) = parse(&e, own_pid) {
                prop_assert!(!spec.names.is_empty() && spec.names.len() <= LISTEN_FDS_MAX);
                prop_assert!(spec.names.iter().all(|n| n.is_empty() || check_fdname(n).is_ok()));
            }
        }

        #[test]
        fn never_panics_with_names(
            fdnames in "[\\PC\\t:]{0,40}",
            n in 0usize..6,
        ) {
            let _ = mine(&n.to_string(), Some(&fdnames));
        }

        #[test]
        fn check_fdname_never_panics(name in ".*") {
            let _ = check_fdname(&name);
        }

        #[test]
        fn valid_names_round_trip(
            list in proptest::collection::vec("[ -9;-~]{0,30}", 1..40),
            own_pid in 1..=i32::MAX as u32,
        ) {
            let e = ListenEnv {
                pid: Some(own_pid.to_string()),
                fds: Some(list.len().to_string()),
                fdnames: Some(list.join(":")),
            };
            prop_assert_eq!(parse(&e, own_pid), Ok(Some(ListenSpec { names: list })));
        }

        #[test]
        fn mismatched_count_is_reported(
            list in proptest::collection::vec("[a-z]{0,5}", 1..20),
            n in 1usize..30,
        ) {
            prop_assume!(n != list.len());
            prop_assert_eq!(
                mine(&n.to_string(), Some(&list.join(":"))),
                Err(ListenEnvError::NameCountMismatch { names: list.len(), fds: n })
            );
        }
    }
}
