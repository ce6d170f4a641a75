//! End-to-end test harness for handover: drives the real binary, plays systemd, generates
//! load, and installs the example workers' frameworks.

pub mod harness;
pub mod loadgen;
pub mod recipes;
pub mod systemd;
pub mod transcript;
