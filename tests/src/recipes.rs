//! Installing the example workers of `examples/workers/` with their real frameworks, for the
//! recipe tests: Python packages from PyPI into a virtual environment, Node packages from npm,
//! Rust crates from crates.io, each into `target/recipes/` and reused while the example's
//! dependency files stay the same.
//!
//! A framework that cannot be installed fails the test that needs it, with a message naming
//! what is missing (a tool, a Debian package, the registry); nothing is skipped. The system
//! tools (python3 with venv, node and npm, go) are Debian packages that `.ci/run` installs.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::harness;

/// An install (a download and a build) may take this long before it counts as hung.
const INSTALL_GUARD: Duration = Duration::from_secs(900);

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The example of `stack`: `examples/workers/<stack>`.
pub fn example_dir(stack: &str) -> PathBuf {
    repo_root().join("examples/workers").join(stack)
}

/// Where installs are kept between runs: `target/recipes`.
pub fn cache_dir() -> PathBuf {
    harness::bin_dir()
        .parent()
        .expect("target dir")
        .join("recipes")
}

/// Why a recipe cannot be installed: what is missing, and how to get it.
#[derive(Debug, Clone)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Finds `tool` in PATH, or says which Debian package provides it.
pub fn require_tool(tool: &str, package: &str) -> Result<PathBuf, Missing> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            Missing(format!(
                "`{tool}` is not installed (Debian package {package}; .ci/run installs it)"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs an install step to completion (guarded), failing with its output.
fn run_step(what: &str, mut cmd: Command) -> Result<(), Missing> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Missing(format!("{what}: cannot run {cmd:?}: {e}")))?;
    let out = harness::Lines::default();
    let readers = [
        harness::collect_output(child.stdout.take().expect("stdout"), out.clone(), false),
        harness::collect_output(child.stderr.take().expect("stderr"), out.clone(), false),
    ];
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > INSTALL_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Missing(format!(
                "{what}: {cmd:?} did not finish within {INSTALL_GUARD:?}; output:\n{}",
                out.text()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for reader in readers {
        let _ = reader.join();
    }
    eprintln!("recipes: {what}: {:.1?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(Missing(format!(
            "{what} failed ({status}): {cmd:?}; output:\n{}",
            out.text()
        )))
    }
}

/// Holds an exclusive lock on `target/recipes/<name>.lock`, so that two test processes never
/// install into the same directory at once.
struct DirLock(std::fs::File);

impl DirLock {
    fn take(name: &str) -> DirLock {
        std::fs::create_dir_all(cache_dir()).expect("create target/recipes");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache_dir().join(format!("{name}.lock")))
            .expect("open the install lock");
        // SAFETY: flock on an fd this function owns; it blocks until the lock is free.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        DirLock(file)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// What an install was made from: its dependency files and tool versions. An install whose
/// stamp differs is made again from scratch.
fn fingerprint(parts: &[String]) -> String {
    parts.join("\n--\n")
}

fn stamp_matches(dir: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dir.join(".handover-recipe-stamp")).is_ok_and(|s| s == stamp)
}

fn write_stamp(dir: &Path, stamp: &str) {
    std::fs::write(dir.join(".handover-recipe-stamp"), stamp).expect("write the install stamp");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn tool_version(program: &Path, arg: &str) -> Result<String, Missing> {
    let out = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing(format!("cannot run {}: {e}", program.display())))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Installs once per test process (and per stack), however many tests ask; a failure is kept
/// and returned to every later caller too.
fn once(
    stack: &str,
    install: impl FnOnce() -> Result<PathBuf, Missing>,
) -> Result<PathBuf, Missing> {
    type Cell = Arc<OnceLock<Result<PathBuf, Missing>>>;
    static CELLS: OnceLock<Mutex<BTreeMap<String, Cell>>> = OnceLock::new();
    let cell: Cell = {
        let mut cells = CELLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(cells.entry(stack.to_owned()).or_default())
    };
    let result = cell.get_or_init(|| {
        let _lock = DirLock::take(stack);
        install()
    });
    result
        .clone()
        .map_err(|missing| Missing(format!("the {stack} recipe cannot be installed: {missing}")))
}

/// A virtual environment with `examples/workers/<stack>/requirements.txt` installed from
/// PyPI; returns its `python`.
pub fn python_venv(stack: &str) -> Result<PathBuf, Missing> {
    once(stack, || {
        let python = require_tool("python3", "python3")?;
        let requirements = example_dir(stack).join("requirements.txt");
        let venv = cache_dir().join(stack).join("venv");
        let stamp = fingerprint(&[read(&requirements), tool_version(&python, "--version")?]);
        let venv_python = venv.join("bin/python");
        if stamp_matches(&venv, &stamp) && venv_python.exists() {
            return Ok(venv_python);
        }
        let _ = std::fs::remove_dir_all(&venv);
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "venv"]).arg(&venv);
        run_step(&format!("{stack}: python3 -m venv"), cmd).map_err(|e| {
            Missing(format!(
                "{e}\n(Debian needs the package python3-venv for `python3 -m venv`; .ci/run \
                 installs it)"
            ))
        })?;
        let mut cmd = Command::new(&venv_python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--quiet",
            "--requirement",
        ])
        .arg(&requirements)
        .env("PIP_NO_CACHE_DIR", "1");
        run_step(&format!("{stack}: pip install from PyPI"), cmd)?;
        write_stamp(&venv, &stamp);
        Ok(venv_python)
    })
}

/// A copy of `examples/workers/<stack>` with its `package-lock.json` installed from npm;
/// returns the directory.
pub fn npm_install(stack: &str) -> Result<PathBuf, Missing> {
    once(stack, || {
        let node = require_tool("node", "nodejs")?;
        let npm = require_tool("npm", "npm")?;
        let source = example_dir(stack);
        let dir = cache_dir().join(stack).join("app");
        let stamp = fingerprint(&[
            read(&source.join("package.json")),
            read(&source.join("package-lock.json")),
            tool_version(&node, "--version")?,
        ]);
        if !(stamp_matches(&dir, &stamp) && dir.join("node_modules").is_dir()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the npm dir");
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(source.join(file), dir.join(file)).expect("copy");
            }
            let mut cmd = Command::new(&npm);
            cmd.args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--cache",
            ])
            .arg(cache_dir().join("npm-cache"))
            .current_dir(&dir);
            run_step(&format!("{stack}: npm ci from the npm registry"), cmd)?;
            write_stamp(&dir, &stamp);
        }
        // The sources are copied every time: node resolves modules next to the script.
        for entry in std::fs::read_dir(&source).expect("read the example") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "js") {
                std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
            }
        }
        Ok(dir)
    })
}

/// `examples/workers/<stack>` built with the Debian Go toolchain (standard library only, so
/// nothing is downloaded); returns the binary.
pub fn go_build(stack: &str) -> Result<PathBuf, Missing> {
    once(stack, || {
        let go = require_tool("go", "golang-go")?;
        let out = cache_dir().join(stack).join("app");
        let mut cmd = Command::new(&go);
        cmd.args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(example_dir(stack))
            .env("GOCACHE", cache_dir().join("go-build-cache"))
            .env("GOPATH", cache_dir().join("go-path"))
            // Only the standard library: a missing module is an error, never a download.
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local");
        run_step(&format!("{stack}: go build"), cmd)?;
        Ok(out)
    })
}

/// `examples/workers/<stack>`, a Cargo project of its own, built with its `Cargo.lock` from
/// crates.io; returns the binary named `bin`.
pub fn cargo_build(stack: &str, bin: &str) -> Result<PathBuf, Missing> {
    once(stack, || {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = cache_dir().join(stack).join("target");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--locked", "--quiet", "--manifest-path"])
            .arg(example_dir(stack).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target);
        run_step(&format!("{stack}: cargo build from crates.io"), cmd)?;
        Ok(target.join("debug").join(bin))
    })
}
