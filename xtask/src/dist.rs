//! `cargo xtask dist`: the release tarball and the Debian package.
//!
//! Both come from one release build of handover and the example worker (stripped), the
//! man pages and shell completions that handover's `__generate-docs` writes, the units and
//! examples of the repository, README.md, docs/ and the licences:
//!
//! - `target/dist/handover-VERSION-TARGET.tar.gz` unpacks anywhere into
//!   `handover-VERSION-TARGET/`: `bin/`, `systemd/` (the units and example.toml as in the
//!   repository, which expect the binaries in /usr/local/bin), `examples/`, `man/man1/`,
//!   `completions/`, README.md, `docs/` and the licences.
//! - `target/dist/handover_VERSION-1_ARCH.deb` installs `/usr/bin/handover`, the example
//!   worker as `/usr/libexec/handover/handover-example-http`, the units in
//!   `/lib/systemd/system` (pointed at /usr/bin), gzipped man pages in
//!   `/usr/share/man/man1`, completions where bash-completion, zsh and fish look for them,
//!   and README, docs, copyright and examples in `/usr/share/doc/handover`. It has no
//!   maintainer scripts: installing it enables and starts nothing.
//!
//! The package is built here with `dpkg-deb` rather than with cargo-deb: dpkg-deb is part of
//! every Debian system, so CI installs nothing for it, while cargo-deb would have to be
//! built by CI first; and the man pages and completions, which cargo-deb does not make, are
//! generated here anyway.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::workspace;

/// The package's version: the workspace's, with Debian revision 1.
const DEB_REVISION: &str = "1";
/// The `Maintainer:` of the package.
const MAINTAINER: &str = "handover developers <handover@users.noreply.invalid>";
/// The units of `systemd/` that are shipped, and the example configuration next to them.
const UNITS: [&str; 4] = [
    "handover@.service",
    "handover-http@.socket",
    "handover-https@.socket",
    "handover-shared-http@.socket",
];
const SYSTEMD_EXAMPLE: &str = "systemd/example.toml";
/// The examples of `examples/`.
const EXAMPLES: [&str; 2] = ["examples/handover.toml", "examples/demo.toml"];
/// Where the shipped units and example expect the binaries, and where the package puts them.
const SOURCE_BIN_DIR: &str = "/usr/local/bin/";
const DEB_HANDOVER: &str = "/usr/bin/handover";
const DEB_LIBEXEC: &str = "/usr/libexec/handover/";

/// What `cargo xtask dist` made.
pub(crate) struct Artifacts {
    pub(crate) tarball: PathBuf,
    pub(crate) deb: PathBuf,
}

/// Entry point for `cargo xtask dist`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("takes no arguments, got {args:?}");
    }
    let artifacts = build()?;
    println!("{}", artifacts.tarball.display());
    println!("{}", artifacts.deb.display());
    Ok(())
}

fn build() -> Result<Artifacts> {
    for (tool, package) in [
        ("strip", "binutils"),
        ("tar", "tar"),
        ("dpkg-deb", "dpkg"),
        ("md5sum", "coreutils"),
    ] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (Debian package {package}); cargo xtask dist needs it");
        }
    }
    let root = workspace::root();
    let target_dir = workspace::target_dir()?;
    release_build(&target_dir)?;
    let release = target_dir.join("release");
    let version = env!("CARGO_PKG_VERSION");
    let triple = host_triple()?;
    let epoch = source_date_epoch(root);
    let dist = target_dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("create {}", dist.display()))?;
    let work = dist.join("work");
    remove_dir(&work)?;

    // Generated once, from the release binary, for both layouts.
    let generated = work.join("generated");
    let man = generated.join("man");
    let completions = generated.join("completions");
    for (kind, dir) in [("man", &man), ("completions", &completions)] {
        let status = Command::new(release.join("handover"))
            .args(["__generate-docs", kind])
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .context("run handover __generate-docs")?;
        if !status.success() {
            bail!("handover __generate-docs {kind} failed ({status})");
        }
    }

    let name = format!("handover-{version}-{triple}");
    let tree = work.join(&name);
    tarball_tree(root, &release, &generated, &tree)?;
    let tarball = dist.join(format!("{name}.tar.gz"));
    make_tarball(&work, &name, &tarball, epoch)?;

    let arch = deb_architecture()?;
    let deb_version = format!("{version}-{DEB_REVISION}");
    let deb_root = work.join("deb");
    deb_tree(root, &release, &generated, &deb_root)?;
    let deb = dist.join(format!("handover_{deb_version}_{arch}.deb"));
    make_deb(&deb_root, &deb_version, &arch, &deb, epoch)?;
    remove_dir(&work)?;
    Ok(Artifacts { tarball, deb })
}

/// `cargo build --release --locked` of handover and the example worker.
fn release_build(target_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace::root())
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "handover",
            "-p",
            "example-worker",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("the release build failed ({status})");
    }
    Ok(())
}

/// The layout of the tarball, in `tree`.
fn tarball_tree(root: &Path, release: &Path, generated: &Path, tree: &Path) -> Result<()> {
    for binary in ["handover", "handover-example-http"] {
        install_binary(&release.join(binary), &tree.join("bin").join(binary))?;
    }
    for unit in UNITS {
        install(
            &root.join("systemd").join(unit),
            &tree.join("systemd").join(unit),
        )?;
    }
    install(&root.join(SYSTEMD_EXAMPLE), &tree.join(SYSTEMD_EXAMPLE))?;
    for example in EXAMPLES {
        install(&root.join(example), &tree.join(example))?;
    }
    for page in files_in(&generated.join("man"))? {
        install(&page, &tree.join("man/man1").join(file_name(&page)?))?;
    }
    for script in files_in(&generated.join("completions"))? {
        install(&script, &tree.join("completions").join(file_name(&script)?))?;
    }
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        install(&root.join(file), &tree.join(file))?;
    }
    for doc in files_in(&root.join("docs"))? {
        install(&doc, &tree.join("docs").join(file_name(&doc)?))?;
    }
    Ok(())
}

/// The files of the package, below `deb_root` (without `DEBIAN/`).
fn deb_tree(root: &Path, release: &Path, generated: &Path, deb_root: &Path) -> Result<()> {
    let at = |path: &str| deb_root.join(path.trim_start_matches('/'));
    install_binary(&release.join("handover"), &at(DEB_HANDOVER))?;
    install_binary(
        &release.join("handover-example-http"),
        &at(&format!("{DEB_LIBEXEC}handover-example-http")),
    )?;
    for unit in UNITS {
        let text = read(&root.join("systemd").join(unit))?;
        let text = if unit.ends_with(".service") {
            let handover = format!("{SOURCE_BIN_DIR}handover");
            if !text.contains(&handover) {
                bail!("systemd/{unit} no longer names {handover}: update xtask/src/dist.rs");
            }
            text.replace(&handover, DEB_HANDOVER)
        } else {
            text
        };
        write(&at(&format!("/lib/systemd/system/{unit}")), &text, 0o644)?;
    }
    for page in files_in(&generated.join("man"))? {
        let gz = format!("{}.gz", file_name(&page)?);
        write_bytes(
            &at(&format!("/usr/share/man/man1/{gz}")),
            &gzip(&std::fs::read(&page)?)?,
            0o644,
        )?;
    }
    let completions = generated.join("completions");
    for (script, place) in [
        (
            "handover.bash",
            "/usr/share/bash-completion/completions/handover",
        ),
        ("_handover", "/usr/share/zsh/vendor-completions/_handover"),
        (
            "handover.fish",
            "/usr/share/fish/vendor_completions.d/handover.fish",
        ),
    ] {
        install(&completions.join(script), &at(place))?;
    }
    let doc = at("/usr/share/doc/handover");
    install(&root.join("README.md"), &doc.join("README.md"))?;
    for file in files_in(&root.join("docs"))? {
        install(&file, &doc.join("docs").join(file_name(&file)?))?;
    }
    write(&doc.join("copyright"), &copyright(root)?, 0o644)?;
    let example = read(&root.join(SYSTEMD_EXAMPLE))?;
    let worker = format!("{SOURCE_BIN_DIR}handover-example-http");
    if !example.contains(&worker) {
        bail!("{SYSTEMD_EXAMPLE} no longer names {worker}: update xtask/src/dist.rs");
    }
    let example = example.replace(&worker, &format!("{DEB_LIBEXEC}handover-example-http"));
    write(&doc.join("examples/example.toml"), &example, 0o644)?;
    for file in EXAMPLES {
        let source = root.join(file);
        install(&source, &doc.join("examples").join(file_name(&source)?))?;
    }
    Ok(())
}

/// `tar` of `work/name` into `out` (gzipped), with the files owned by root and dated
/// `epoch`, in name order, so the same tree gives the same archive.
fn make_tarball(work: &Path, name: &str, out: &Path, epoch: u64) -> Result<()> {
    let output = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
        ])
        .arg(format!("--mtime=@{epoch}"))
        .arg("-C")
        .arg(work)
        .args(["-cf", "-", name])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run tar")?;
    if !output.status.success() {
        bail!("tar failed ({})", output.status);
    }
    write_bytes(out, &gzip(&output.stdout)?, 0o644)
}

/// `DEBIAN/control` and `DEBIAN/md5sums` for `deb_root`, then `dpkg-deb --build`.
fn make_deb(deb_root: &Path, version: &str, arch: &str, out: &Path, epoch: u64) -> Result<()> {
    let handover = std::fs::read(deb_root.join(DEB_HANDOVER.trim_start_matches('/')))?;
    let mut depends = Vec::new();
    if let Some(glibc) = newest_glibc(&handover) {
        depends.push(format!("libc6 (>= {glibc})"));
    }
    if contains(&handover, b"libgcc_s.so.1\0") {
        depends.push("libgcc-s1".to_string());
    }
    let files = all_files(deb_root)?;
    let mut size = 0;
    for file in &files {
        size += std::fs::metadata(file)?.len();
    }
    let control = format!(
        "Package: handover\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {}\n\
         Depends: {}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: systemd-native socket-activation supervisor\n \
         handover holds listening sockets (passed by systemd's socket activation, or\n \
         bound itself), runs N workers on them, and reloads them a generation at a\n \
         time without refusing or dropping a connection. It runs as a Type=notify\n \
         service; systemctl reload returns once the new generation serves.\n \
         .\n \
         The package installs the units handover@.service and handover-http@.socket\n \
         (and more) and enables or starts none of them; handover unit writes units\n \
         for a configuration of your own. See /usr/share/doc/handover/README.md.\n",
        size.div_ceil(1024),
        depends.join(", ")
    );
    let debian = deb_root.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    let relative: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(deb_root)
                .map(|p| p.display().to_string())
                .context("a file outside the package root")
        })
        .collect::<Result<_>>()?;
    let sums = Command::new("md5sum")
        .current_dir(deb_root)
        .args(&relative)
        .output()
        .context("cannot run md5sum")?;
    if !sums.status.success() {
        bail!("md5sum failed ({})", sums.status);
    }
    write_bytes(&debian.join("md5sums"), &sums.stdout, 0o644)?;
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(deb_root)
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdout(Stdio::null())
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    Ok(())
}

/// debian/copyright in the machine-readable format, from the licence files.
fn copyright(root: &Path) -> Result<String> {
    let mit = read(&root.join("LICENSE-MIT"))?;
    let body: Vec<String> = mit
        .lines()
        .skip_while(|l| !l.starts_with("Permission is hereby granted"))
        .map(|l| {
            if l.is_empty() {
                " .".into()
            } else {
                format!(" {l}")
            }
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: handover\n\n\
         Files: *\n\
         Copyright: The handover developers\n\
         License: MIT or Apache-2.0\n\n\
         License: MIT\n{}\n\n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
        body.join("\n")
    ))
}

/// The newest `GLIBC_2.N` symbol version a binary asks for (its dynamic string table names
/// them), such as `2.34`.
fn newest_glibc(binary: &[u8]) -> Option<String> {
    let mut newest: Option<Vec<u32>> = None;
    let needle = b"GLIBC_";
    let mut at = 0;
    while let Some(pos) = find(&binary[at..], needle) {
        let start = at + pos + needle.len();
        let end = binary[start..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .map_or(binary.len(), |n| start + n);
        let parts: Option<Vec<u32>> = std::str::from_utf8(&binary[start..end])
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.split('.').map(|p| p.parse().ok()).collect())
            .and_then(|v| v);
        if let Some(parts) = parts {
            if newest.as_ref().is_none_or(|n| parts > *n) {
                newest = Some(parts);
            }
        }
        at = end.max(start);
    }
    newest.map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// `rustc -vV`'s host triple: the target of the build.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("cannot run rustc")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")
}

/// The Debian architecture of this machine (the build is for the host).
fn deb_architecture() -> Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("cannot run dpkg --print-architecture")?;
    let arch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || arch.is_empty() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(arch)
}

/// The date of the files in the archives: `SOURCE_DATE_EPOCH` when set, else the time of
/// the last commit, else 0.
fn source_date_epoch(root: &Path) -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|e| e.parse().ok())
    {
        return epoch;
    }
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // No name and time 0 in the header: the same input gives the same bytes.
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn install_binary(from: &Path, to: &Path) -> Result<()> {
    install(from, to)?;
    set_mode(to, 0o755)?;
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg(to)
        .status()
        .context("cannot run strip")?;
    if !status.success() {
        bail!("strip {} failed ({status})", to.display());
    }
    Ok(())
}

fn install(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
    write_bytes(to, &bytes, 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(path, text.as_bytes(), mode)
}

fn write_bytes(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// The regular files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Every regular file below `dir` but `DEBIAN/`, sorted.
fn all_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                if path != dir.join("DEBIAN") {
                    pending.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/sbin".into(),
            "/bin".into(),
        ])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_glibc_version_is_found() {
        let dynstr = b"\0libc.so.6\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.9\0GLIBC_PRIVATE\0";
        assert_eq!(newest_glibc(dynstr).as_deref(), Some("2.34"));
        assert_eq!(newest_glibc(b"no versions"), None);
        assert_eq!(newest_glibc(b"GLIBC_"), None);
    }

    #[test]
    fn the_copyright_file_carries_the_mit_text() {
        let text = copyright(workspace::root()).unwrap();
        assert!(
            text.starts_with("Format: https://www.debian.org/"),
            "{text}"
        );
        assert!(text.contains("License: MIT or Apache-2.0\n"), "{text}");
        assert!(
            text.contains("\n Permission is hereby granted, free of charge"),
            "{text}"
        );
        // Paragraphs of a field are separated by " .", never by an empty line.
        let mit =
            &text[text.find("License: MIT\n").unwrap()..text.find("License: Apache").unwrap()];
        assert!(!mit.trim_end().contains("\n\n"), "{mit}");
    }
}
