//! `[control]`: the socket path and the allowed uids.

use crate::config::tests::check_cases;

#[test]
fn control_errors() {
    check_cases(&[
        (
            "[worker]\ncommand = [\"app\"]\n[control]\nsocket = \"control.sock\"\n",
            4,
            10,
            &["control.socket: \"control.sock\" is not an absolute path"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = 1000\n",
            4,
            14,
            &[
                "control.allow_uids: expected an array of uids",
                "got an integer",
            ],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [1000, -1]\n",
            4,
            21,
            &["control.allow_uids[1]: must be between 0 and 4294967294, got -1"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [4294967295]\n",
            4,
            15,
            &["control.allow_uids[0]: must be between 0 and 4294967294, got 4294967295"],
        ),
        (
            "[worker]\ncommand = [\"app\"]\n[control]\nallow_uids = [\"root\"]\n",
            4,
            15,
            &["control.allow_uids[0]: expected an integer, got a string"],
        ),
    ]);
}
