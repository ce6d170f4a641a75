//! `[reload]`: timeouts, strategies and their keys.

use crate::config::tests::check_cases;

#[test]
fn reload_errors() {
    check_cases(&[
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nbatch_size = 2\n",
            4,
            14,
            &["reload.batch_size: only applies with strategy = \"rolling\""],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"all-at-once\"\nmax_extra = 2\n",
            5,
            13,
            &["reload.max_extra: only applies with strategy = \"rolling\""],
        ),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"blue-green\"\n", 4, 12, &["reload.strategy: expected \"all-at-once\" or \"rolling\""]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nbatch_size = 0\n", 5, 14, &["reload.batch_size: must be between 1 and 1024, got 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nmax_extra = 0\n", 5, 13, &["reload.max_extra: must be between 1 and 1024, got 0"]),
        (
            "[worker]\ncommand = [\"app\"]\n[reload]\nstrategy = \"rolling\"\nbatch_size = 4\nmax_extra = 2\n",
            6,
            13,
            &["reload.max_extra: must be at least batch_size (4), got 2"],
        ),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nmax_draining = 0\n", 4, 16, &["reload.max_draining: must be between 1 and 64, got 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nmax_draining = 65\n", 4, 16, &["reload.max_draining: must be between 1 and 64, got 65"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ncanary = \"yes\"\n", 4, 10, &["reload.canary: expected true or false, got a string"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ntimeout = \"0s\"\n", 4, 11, &["reload.timeout: must be more than 0"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ntimeout = 300\n", 4, 11, &["reload.timeout: a duration needs a unit"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\ndrain_timeout = \"forever\"\n", 4, 17, &["reload.drain_timeout: \"forever\" is not a duration"]),
        ("[worker]\ncommand = [\"app\"]\n[reload]\nbatchsize = 2\n", 4, 1, &["reload.batchsize: unknown key"]),
    ]);
}
