//! `[handover]`: the fd map variable, the runtime directory, the watchdog, the fd store.

use crate::config::tests::check_cases;

#[test]
fn handover_errors() {
    check_cases(&[
        (
            "[handover]\nfds_env = \"1FDS\"\n",
            2,
            11,
            &["handover.fds_env: \"1FDS\" is not a valid variable name"],
        ),
        (
            "[handover]\nfds_env = \"\"\n",
            2,
            11,
            &["handover.fds_env: \"\" is not a valid variable name"],
        ),
        (
            "[handover]\nfds_env = \"MY-FDS\"\n",
            2,
            11,
            &["handover.fds_env: \"MY-FDS\" is not a valid variable name"],
        ),
        (
            "[handover]\nfds_env = \"LISTEN_FDS\"\n",
            2,
            11,
            &["handover.fds_env: LISTEN_FDS is a variable of systemd's protocols"],
        ),
        (
            "[handover]\nfds_env = \"NOTIFY_SOCKET\"\n",
            2,
            11,
            &["handover.fds_env: NOTIFY_SOCKET"],
        ),
        (
            "[handover]\nfds_env = \"WATCHDOG_FDS\"\n",
            2,
            11,
            &["handover.fds_env: WATCHDOG_FDS"],
        ),
        (
            "[handover]\nfds_env = \"HANDOVER_WORKER\"\n",
            2,
            11,
            &["handover.fds_env: HANDOVER_WORKER is already set by handover"],
        ),
        (
            "[handover]\nfds_env = 3\n",
            2,
            11,
            &["handover.fds_env: expected a string, got an integer"],
        ),
        (
            "[handover]\nruntime_dir = \"run\"\n",
            2,
            15,
            &["handover.runtime_dir: \"run\" is not an absolute path"],
        ),
        (
            "[handover]\nruntime_dir = \"/run/a-directory-whose-name-goes-on-and-on-and-on/and-on-and-on-x\"\n",
            2,
            15,
            &[
                "handover.runtime_dir: the path is 65 bytes",
                "may be at most 64",
            ],
        ),
        (
            "[handover]\ncgroups = \"yes\"\n",
            2,
            11,
            &["handover.cgroups: expected \"auto\", \"required\" or \"off\", got \"yes\""],
        ),
        (
            "[handover]\nrundir = \"/run\"\n",
            2,
            1,
            &["handover.rundir: unknown key", "`runtime_dir`"],
        ),
    ]);
}
