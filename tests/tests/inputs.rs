//! Issue 2: bad input from outside gets a clear error naming what and where, and a documented
//! exit code (3 config, 4 sockets, 1 start failed); nothing panics.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use handover_tests::harness::{self, output_guarded, run_handover, Handover, Options, TempDir};

/// Runs `sh -c SCRIPT` where `$H` is handover and `$C` a config file with `config`.
fn sh(label: &str, config: &str, script: &str) -> (Option<i32>, String) {
    let dir = TempDir::new(label);
    let path = dir.path().join("handover.toml");
    let mut text = harness::expand(config, dir.path());
    text.push_str(&format!(
        "\n[control]\nsocket = \"{}/control.sock\"\n",
        dir.path().display()
    ));
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("H", harness::binary("handover"))
        .env("C", &path)
        .current_dir(dir.path());
    for var in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        cmd.env_remove(var);
    }
    let (status, out, err) = output_guarded(cmd);
    let text = format!("{out}{err}");
    assert!(!text.contains("panicked"), "{text}");
    (status.code(), text)
}

const FROM_SYSTEMD: &str = r#"
[[socket]]
name = "http"
from_systemd = true

[worker]
command = ["{worker}", "--ready-after", "0"]
"#;

/// Scenario 1: sockets meant for another process, while the config needs systemd's.
#[test]
fn listen_pid_of_another_process() {
    let (code, text) = sh(
        "lpid",
        FROM_SYSTEMD,
        r#"exec 3<>/dev/null; LISTEN_PID=1 LISTEN_FDS=1 exec "$H" start --config "$C""#,
    );
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("LISTEN_PID=1") && text.contains("handover's pid is"),
        "{text}"
    );
}

/// Scenario 2: malformed socket-activation variables.
#[test]
fn malformed_listen_variables() {
    for (vars, needle) in [
        ("LISTEN_PID=$$ LISTEN_FDS=12a", r#"LISTEN_FDS="12a""#),
        ("LISTEN_PID=$$ LISTEN_FDS=-1", r#"LISTEN_FDS="-1""#),
        ("LISTEN_PID=$$ LISTEN_FDS=", r#"LISTEN_FDS="""#),
        ("LISTEN_PID=12a LISTEN_FDS=1", r#"LISTEN_PID="12a""#),
        ("LISTEN_PID=$$ LISTEN_FDS=2147483647", "LISTEN_FDS"),
        (
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b",
            "LISTEN_FDNAMES has 2 names but LISTEN_FDS=1",
        ),
        (
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b:",
            "LISTEN_FDNAMES has 3 names",
        ),
        ("LISTEN_PID=$$ LISTEN_FDS=2", "fd 3"),
    ] {
        // `exec env` keeps the shell's pid for handover, so LISTEN_PID=$pid names handover.
        let script = format!(
            "pid=$$; exec env {} \"$H\" start --config \"$C\"",
            vars.replace("$$", "$pid")
        );
        let (code, text) = sh("lfds", FROM_SYSTEMD, &script);
        assert_eq!(code, Some(4), "{vars}: {text}");
        assert!(
            text.contains(needle),
            "{vars}: expected {needle:?} in {text}"
        );
    }
}

/// Scenario 4: fd 3 is a regular file, or a UDP socket, not a listening stream socket.
#[test]
fn passed_fd_that_is_not_a_listening_socket() {
    // (dash makes fds opened by `exec 3<file` close-on-exec, so python places fd 3.)
    let (code, text) = sh(
        "regular",
        FROM_SYSTEMD,
        r#"exec python3 -c '
import os
fd = os.open("/etc/hostname", os.O_RDONLY); os.dup2(fd, 3); os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(os.environ["H"], ["handover", "start", "--config", os.environ["C"]])'"#,
    );
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("fd 3") && text.contains("not a socket"),
        "{text}"
    );
    // A datagram socket at fd 3, made by python (on every machine of this kind).
    let (code, text) = sh(
        "udp",
        FROM_SYSTEMD,
        r#"exec python3 -c '
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(os.environ["H"], ["handover", "start", "--config", os.environ["C"]])'"#,
    );
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("datagram"), "{text}");
}

/// Scenario 8: own binds that cannot work, each named with its address.
#[test]
fn bind_errors_name_the_socket_and_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = format!("[[socket]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\n\n[worker]\ncommand = [\"true\"]\n");
    let (code, text) = sh("busy", &config, r#"exec "$H" start --config "$C""#);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains(&format!(
            "socket \"web\": address 127.0.0.1:{port} is already in use"
        )),
        "{text}"
    );

    let config = "[[socket]]\nname = \"nope\"\nlisten = \"192.0.2.1:80\"\n\n[worker]\ncommand = [\"true\"]\n";
    let (code, text) = sh("notavail", config, r#"exec "$H" start --config "$C""#);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("192.0.2.1:80 is not available"), "{text}");

    // A regular file where the unix socket should be is never replaced.
    let dir = TempDir::new("unixfile");
    let path = dir.path().join("app.sock");
    std::fs::write(&path, "precious").unwrap();
    let config = format!(
        "[[socket]]\nname = \"u\"\nlisten = \"{}\"\n\n[worker]\ncommand = [\"true\"]\n",
        path.display()
    );
    let (code, text) = sh("unixfile-run", &config, r#"exec "$H" start --config "$C""#);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("not a socket; refusing to replace it"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");

    // A live unix socket is refused; a stale one (nobody listening) is replaced.
    let live_path = dir.path().join("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&live_path).unwrap();
    let config = format!(
        "[[socket]]\nname = \"u\"\nlisten = \"{}\"\n\n[worker]\ncommand = [\"true\"]\n",
        live_path.display()
    );
    let (code, text) = sh("unixlive", &config, r#"exec "$H" start --config "$C""#);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("already in use"), "{text}");
    drop(live);
    let mut h = Handover::start(
        "unixstale",
        &format!(
            "[[socket]]\nname = \"u\"\nlisten = \"{}\"\nmode = \"0660\"\n\n[worker]\ncommand = [\"{{worker}}\", \"--ready-after\", \"0\"]\n",
            live_path.display()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&live_path).unwrap().permissions().mode() & 0o777,
        0o660
    );
    std::os::unix::net::UnixStream::connect(&live_path).expect("the replaced socket listens");
    assert!(h.stop().success());
}

/// Every class of configuration error, through the real binary: exit 3 and file:line:column.
#[test]
fn config_errors_are_located() {
    let dir = TempDir::new("config-errors");
    let cases = [
        ("worker = [", ":1:", "expected"),
        ("[worker]\ncommand = [\"x\"]\ncount = 0\n", ":3:", "worker.count"),
        ("[worker]\ncommand = [\"x\"]\nbogus = 1\n", ":3:", "bogus"),
        ("[[socket]]\nname = \"a\"\nlisten = \"localhost:80\"\n[worker]\ncommand = [\"x\"]\n", ":3:", "listen"),
        ("[worker]\ncommand = [\"x\"]\nstop_timeout = \"10\"\n", ":3:", "stop_timeout"),
        ("[worker]\ncommand = [\"x\"]\nenv = { LISTEN_FDS = \"1\" }\n", ":3:", "LISTEN_FDS"),
        (&format!("[[socket]]\nname = \"a\"\nlisten = \"/{}\"\n[worker]\ncommand = [\"x\"]\n", "x".repeat(120)), ":3:", "107"),
        ("[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[socket]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n[worker]\ncommand = [\"x\"]\n", ":", "a"),
        ("", ":", "worker"),
    ];
    for (i, (text, location, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (status, _, err) = run_handover(&["check", "--config", path.to_str().unwrap()], &[]);
        assert_eq!(status.code(), Some(3), "case {i}: {err}");
        let expected = format!("{}{location}", path.display());
        assert!(
            err.contains(&expected),
            "case {i}: expected {expected:?} in {err}"
        );
        assert!(
            err.contains(needle),
            "case {i}: expected {needle:?} in {err}"
        );
    }
    let (status, _, err) = run_handover(&["check", "--config", "/nonexistent/handover.toml"], &[]);
    assert_eq!(status.code(), Some(3));
    assert!(err.contains("/nonexistent/handover.toml"), "{err}");
    let (status, _, err) = run_handover(&["check", "--config", "/dev/zero"], &[]);
    assert_eq!(status.code(), Some(3), "{err}");
    let (status, out, _) = run_handover(
        &[
            "check",
            "--config",
            &format!("{}/../examples/handover.toml", env!("CARGO_MANIFEST_DIR")),
        ],
        &[],
    );
    assert!(status.success(), "{out}");
}

/// Scenario 12: a process of another uid cannot make a worker ready.
#[test]
fn notifications_from_another_uid_do_not_count() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the sender as another uid");
        return;
    }
    // The process of the other uid is the test worker run through setpriv: it must be able
    // to execute, and its report shows that it ran (and sent READY=1 after writing it).
    let shared = TempDir::reachable("other-uid-report");
    let reports = shared.path().join("reports");
    std::fs::create_dir(&reports).expect("create reports");
    std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let worker = harness::reachable_bin("handover-test-worker");
    harness::assert_reachable_by_others(&worker);
    let mut h = Handover::start(
        "other-uid",
        &format!(
            r#"
[worker]
command = ["sh", "-c", "setpriv --reuid=65534 --regid=65534 --clear-groups '{}' --report '{}' --notify-raw 52454144593d31 --exit-after 0 0; exec sleep 1000"]
ready_timeout = "1s"
"#,
            worker.display(),
            reports.display()
        ),
        Options::default(),
    );
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    assert!(
        h.log.text().contains("not ready within"),
        "{}",
        h.log.text()
    );
    let found = harness::read_reports(&reports);
    let report = found.values().next().unwrap_or_else(|| {
        panic!(
            "the worker of uid 65534 never ran (no report in {}); log:\n{}",
            reports.display(),
            h.log.text()
        )
    });
    let uid = report["status"]["Uid"].as_str().unwrap_or_default();
    assert!(
        uid.split_whitespace().all(|u| u == "65534"),
        "the sender ran as uid 65534: {uid}"
    );
}

/// Scenario 17: a worker flooding its notify socket does not stop handover from answering,
/// nor other workers from being served.
#[test]
fn notify_flood_does_not_block_the_supervisor() {
    let h = Handover::start(
        "flood",
        r#"
[worker]
command = ["sh", "-c", "if [ \"$HANDOVER_WORKER\" = 0 ]; then exec '{worker}' --ready-after 0 --notify-raw 5354415455533d666c6f6f64 --notify-raw-repeat 200000; else exec '{worker}' --ready-after 0; fi"]
count = 2
"#,
        Options::default(),
    );
    h.log.wait_for("all 2 workers ready");
    for _ in 0..5 {
        let (st, out, err) = h.ctl(&["status"]);
        assert!(st.success(), "{out}{err}");
        assert!(out.contains("2/2 workers ready"), "{out}");
    }
}

/// Scenario 26: more ways to fail at exec, each reported with the OS error.
#[test]
fn exec_failures_name_the_cause() {
    let dir = TempDir::new("exec-causes");
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    for (command, extra, needle) in [
        (not_exec.display().to_string(), "", "Permission denied"),
        (
            "true".to_string(),
            "cwd = \"/nonexistent-dir\"\n",
            "changing directory to /nonexistent-dir",
        ),
        (
            "no-such-program-anywhere".to_string(),
            "",
            "No such file or directory",
        ),
    ] {
        let mut h = Handover::start(
            "exec-cause",
            &format!("[worker]\ncommand = [\"{command}\"]\n{extra}"),
            Options::default(),
        );
        assert_eq!(h.wait().code(), Some(1));
        assert!(h.log.text().contains(needle), "{needle}: {}", h.log.text());
    }
}

/// Notify directories left by killed runs are swept, but only those whose lock nobody holds:
/// one whose owner lives (even under a pid that means nothing here, as in another pid
/// namespace that shares the directory) is kept. An older version's directory, without a
/// lock, goes when its pid is gone.
#[test]
fn stale_notify_directories_are_swept_by_their_lock() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new("stale");
    let live = dir.path().join("handover.999999998-1.notify");
    let dead = dir.path().join("handover.999999997-1.notify");
    let old = dir.path().join("handover.999999999.notify");
    for d in [&live, &dead, &old] {
        std::fs::create_dir(d).unwrap();
    }
    let lock = |d: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(d.join(".lock"))
            .unwrap()
    };
    let held = lock(&live);
    assert_eq!(
        // SAFETY: flock on a file we opened and hold.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    drop(lock(&dead));
    let config = format!(
        "[handover]\nruntime_dir = \"{}\"\n\n[worker]\ncommand = [\"{{worker}}\"]\nready_timeout = \"200ms\"\n",
        dir.path().display()
    );
    let mut h = Handover::start("stale", &config, Options::default());
    assert_eq!(h.wait().code(), Some(1), "{}", h.log.text());
    let text = h.log.text();
    assert!(text.contains("removed 2 notify directories"), "{text}");
    assert!(live.exists(), "the directory whose lock is held stays");
    assert!(!dead.exists() && !old.exists());
    drop(held);
}

/// `--log-to-stdout`: handover's log goes to stdout, not stderr.
#[test]
fn log_to_stdout() {
    let config = "[worker]\ncommand = [\"{worker}\"]\nready_timeout = \"200ms\"\n";
    let (code, text) = sh(
        "stdout-log",
        config,
        r#""$H" start --config "$C" --log-to-stdout 2>/dev/null; echo "exit=$?""#,
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("starting 1 workers"),
        "the log reached stdout: {text}"
    );
    assert!(text.contains("exit=1"), "{text}");
}

/// Scenario 24: in a PID namespace, a decoy takes a dead worker's pid (set through
/// ns_last_pid) while the worker waits to be restarted; stopping handover must not hit it.
#[test]
fn a_recycled_worker_pid_is_never_signalled() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a PID namespace");
        return;
    }
    let config = "[worker]\ncommand = [\"{worker}\", \"--report\", \"{dir}/reports\", \"--ready-after\", \"0\"]\nrestart_backoff_initial = \"30s\"\nrestart_backoff_max = \"30s\"\n";
    let script = r#"
mkdir -p reports
exec unshare --pid --fork --mount-proc bash -c '
    "$H" start --config "$C" > handover.log 2>&1 &
    handover=$!
    for i in $(seq 1 300); do [ -n "$(ls reports)" ] && break; sleep 0.05; done
    worker=$(ls reports | head -1); worker=${worker%.json}
    kill -KILL "$worker"
    for i in $(seq 1 300); do grep -q "restarting in" handover.log && break; sleep 0.05; done
    echo $((worker - 1)) > /proc/sys/kernel/ns_last_pid
    setsid sleep 100 &
    decoy=$!
    [ "$decoy" = "$worker" ] || { echo "decoy got pid $decoy, not $worker"; exit 7; }
    kill -TERM "$handover"; wait "$handover"; echo "handover exited $?"
    if kill -0 "$decoy" 2>/dev/null; then echo "decoy alive"; kill "$decoy"; else echo "decoy killed"; fi
'
"#;
    let (code, text) = sh("pid-reuse", config, script);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("handover exited 0"), "{text}");
    assert!(text.contains("decoy alive"), "{text}");
}

/// Scenario 16: fds passed along with a notification (250 of them) are closed at once:
/// handover's fd count is the same after as before.
#[test]
fn fds_sent_with_notifications_are_closed() {
    let script = r#"
import array, os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(250)]
for _ in range(20):
    s.sendmsg([b"STATUS=junk"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, os.environ["NOTIFY_SOCKET"])
s.sendmsg([b"READY=1"], [], 0, os.environ["NOTIFY_SOCKET"])
time.sleep(1000)
"#;
    let h = Handover::start(
        "scm-rights",
        &format!(
            "[worker]\ncommand = [\"python3\", \"-c\", {}]\n",
            serde_json::to_string(script).unwrap()
        ),
        Options::default(),
    );
    h.log.wait_for("all 1 workers ready");
    let count = || {
        std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
            .unwrap()
            .count()
    };
    let after = count();
    assert!(
        after < 64,
        "handover holds {after} fds: the passed ones were not closed"
    );
}

/// A small seeded generator (splitmix64), so a failing case can be made again from its seed.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One edit of `text`: bytes deleted, inserted, flipped or truncated, lines doubled or
    /// swapped, or a value replaced by one of the kinds that have broken parsers before.
    fn mutate(&mut self, text: &mut Vec<u8>) {
        const BYTES: &[u8] =
            b"[]{}=\"',.#\n\t -_0123456789aeflnrstux\\\x00\x01\x1b\x7f\x80\xc3\xa9\xff";
        const VALUES: &[&str] = &[
            "-1",
            "0",
            "\"\"",
            "nan",
            "inf",
            "-inf",
            "1e999",
            "99999999999999999999",
            "0x",
            "[]",
            "{}",
            "[[]]",
            "\"10\"",
            "\"10s\"",
            "\"-1s\"",
            "\"25h\"",
            "true",
            "1979-05-27",
            "1979-05-27T07:32:00Z",
            "\"/\"",
            "\"a\\u0000b\"",
            "'''\nx'''",
            "\"\u{1}\"",
            "1.5",
            "\"SIGKILL\"",
            "\"0.0.0.0:99999\"",
            "{ x = 1 }",
            "[1, \"a\"]",
            "\"localhost:80\"",
        ];
        let len = text.len();
        match self.below(9) {
            0 if len > 0 => {
                let start = self.below(len);
                let end = (start + 1 + self.below(20)).min(len);
                text.drain(start..end);
            }
            1 => {
                let at = self.below(len + 1);
                let count = 1 + self.below(4);
                for _ in 0..count {
                    let byte = BYTES[self.below(BYTES.len())];
                    text.insert(at, byte);
                }
            }
            2 if len > 0 => {
                let at = self.below(len);
                text[at] ^= 1 << self.below(8);
            }
            3 => text.truncate(self.below(len + 1)),
            4 | 5 => {
                let mut lines: Vec<Vec<u8>> =
                    text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let a = self.below(lines.len());
                let b = self.below(lines.len());
                if self.below(2) == 0 {
                    let line = lines[a].clone();
                    lines.insert(b, line);
                } else {
                    lines.swap(a, b);
                }
                *text = lines.join(&b'\n');
            }
            _ => {
                // Replace what follows one `= ` up to the end of its line.
                let equals: Vec<usize> = text
                    .windows(3)
                    .enumerate()
                    .filter(|(_, w)| w == b" = ")
                    .map(|(i, _)| i + 3)
                    .collect();
                if equals.is_empty() {
                    return;
                }
                let start = equals[self.below(equals.len())];
                let end = text[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |i| start + i);
                let value = VALUES[self.below(VALUES.len())].as_bytes();
                text.splice(start..end, value.iter().copied());
            }
        }
    }
}

/// Issue 11: thousands of seeded mutations of the full example through `handover check`:
/// nothing panics, the exit status is 0 (valid) or 3 (invalid), and every error is one line
/// that names the file, a line and column of the file from 1:1, and says what is wrong.
#[test]
fn config_fuzz_through_check() {
    const CASES: usize = 3000;
    const THREADS: usize = 2;
    let example = std::fs::read(format!(
        "{}/../examples/handover.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let dir = TempDir::new("config-fuzz");
    let outcomes: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (example, dir) = (&example, dir.path());
                scope.spawn(move || {
                    let path = dir.join(format!("fuzz-{thread}.toml"));
                    let (mut valid, mut invalid) = (0, 0);
                    for case in (thread..CASES).step_by(THREADS) {
                        let seed = 11_000 + case as u64;
                        let mut mutator = Mutator(seed);
                        let mut text = example.clone();
                        for _ in 0..1 + mutator.below(3) {
                            mutator.mutate(&mut text);
                        }
                        std::fs::write(&path, &text).unwrap();
                        let output = Command::new(harness::binary("handover"))
                            .args(["check", "--config"])
                            .arg(&path)
                            .stdin(std::process::Stdio::null())
                            .output()
                            .unwrap();
                        let stdout = String::from_utf8_lossy(&output.stdout);
                        let stderr = String::from_utf8_lossy(&output.stderr);
                        let shown = String::from_utf8_lossy(&text);
                        let context =
                            || format!("seed {seed}: {stdout}{stderr}\n--- input:\n{shown}");
                        assert!(!stderr.contains("panicked"), "{}", context());
                        match output.status.code() {
                            Some(0) => {
                                assert!(stdout.contains(": valid ("), "{}", context());
                                valid += 1;
                            }
                            Some(3) => {
                                let prefix = format!("handover: {}:", path.display());
                                let rest = stderr
                                    .strip_suffix('\n')
                                    .and_then(|s| s.strip_prefix(&prefix))
                                    .unwrap_or_else(|| {
                                        panic!("not one located line: {}", context())
                                    });
                                assert!(!rest.contains('\n'), "{}", context());
                                let mut parts = rest.splitn(3, ':');
                                let line: usize = parts.next().unwrap().parse().unwrap_or(0);
                                let column: usize = parts.next().unwrap_or("").parse().unwrap_or(0);
                                let message = parts.next().unwrap_or("").trim();
                                assert!(
                                    line >= 1 && column >= 1,
                                    "position below 1:1: {}",
                                    context()
                                );
                                let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                                assert!(
                                    line <= lines.len(),
                                    "line {line} past the end: {}",
                                    context()
                                );
                                let width =
                                    String::from_utf8_lossy(lines[line - 1]).chars().count();
                                assert!(
                                    column <= width + 1,
                                    "column {column} past the line: {}",
                                    context()
                                );
                                assert!(!message.is_empty(), "empty message: {}", context());
                                invalid += 1;
                            }
                            other => panic!("exit {other:?}: {}", context()),
                        }
                    }
                    (valid, invalid)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let valid: usize = outcomes.iter().map(|o| o.0).sum();
    let invalid: usize = outcomes.iter().map(|o| o.1).sum();
    eprintln!("{valid} valid, {invalid} invalid");
    assert_eq!(valid + invalid, CASES);
    // Both outcomes happen, or the mutations would test only one side.
    assert!(
        valid >= CASES / 20 && invalid >= CASES / 4,
        "{valid} valid, {invalid} invalid"
    );
}

/// Issue 11: `--timeout` of `reload` and `stop` takes the duration grammar (bare seconds too);
/// a negative, NaN, empty or huge value is a usage error, never a panic.
#[test]
fn command_line_timeouts_are_checked() {
    let socket = "/nonexistent/handover-control.sock";
    for command in ["stop", "reload"] {
        for bad in ["-1", "nan", "", "inf", "1e999", "99999999999", "10x"] {
            let arg = format!("--timeout={bad}");
            let (status, out, err) = run_handover(&[command, &arg, "--socket", socket], &[]);
            assert_eq!(status.code(), Some(2), "{command} {arg}: {out}{err}");
            assert!(!err.contains("panicked"), "{err}");
            assert!(err.contains("--timeout"), "{command} {arg}: {err}");
        }
    }
    // Good values get as far as the socket: stop says nothing runs there.
    for good in ["0.5", "2", "500ms", "1.5s", "2m"] {
        let (status, out, err) =
            run_handover(&["stop", "--timeout", good, "--socket", socket], &[]);
        assert_eq!(status.code(), Some(0), "{good}: {out}{err}");
        assert!(out.contains("not running"), "{good}: {out}");
    }
}
