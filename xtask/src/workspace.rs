//! Where the workspace and its build output are, and building binaries into it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace's root directory (the parent of `xtask/`).
pub(crate) fn root() -> &'static Path {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // An absolute path (cargo sets it so), so it always has a parent.
    xtask_dir.parent().unwrap_or(xtask_dir)
}

/// The target directory cargo built this xtask into, wherever it is configured to be: the
/// binaries xtask builds go next to xtask itself.
pub(crate) fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find xtask's own executable")?;
    // <target>/<profile>/xtask
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not inside a target directory", exe.display()))
}

/// Where `build` puts binaries: `<target>/debug`.
pub(crate) fn bin_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("debug"))
}

/// Runs `cargo build -p PACKAGE...` (dev profile) into [`target_dir`].
pub(crate) fn build(packages: &[&str]) -> Result<()> {
    // `cargo xtask` is `cargo run`, which sets CARGO to the cargo that runs us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root())
        .arg("build")
        .arg("--target-dir")
        .arg(target_dir()?);
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build -p {} failed ({status})", packages.join(" -p "));
    }
    Ok(())
}
