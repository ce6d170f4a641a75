//! `cargo xtask man` and `cargo xtask completions`: build handover and have its hidden
//! `__generate-docs` command write the files, so they come from the very clap definitions
//! the binary parses with.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace;

/// Writes man pages to `target/man`.
pub(crate) fn run_man(args: &[String]) -> Result<()> {
    generate(args, "man")
}

/// Writes bash, zsh and fish completions to `target/completions`.
pub(crate) fn run_completions(args: &[String]) -> Result<()> {
    generate(args, "completions")
}

fn generate(args: &[String], kind: &str) -> Result<()> {
    if !args.is_empty() {
        bail!("takes no arguments, got {args:?}");
    }
    workspace::build(&["handover"])?;
    let handover = workspace::bin_dir()?.join("handover");
    let out_dir = workspace::target_dir()?.join(kind);
    // The files written are printed by handover, one path a line.
    let status = Command::new(&handover)
        .args(["__generate-docs", kind])
        .arg(&out_dir)
        .status()
        .with_context(|| format!("cannot run {}", handover.display()))?;
    if !status.success() {
        bail!("handover __generate-docs {kind} failed ({status})");
    }
    Ok(())
}
