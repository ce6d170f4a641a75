//! End-to-end test harness for handover: drives the real binary, plays systemd, and
//! generates load.

pub mod harness;
pub mod loadgen;
pub mod systemd;
pub mod transcript;
