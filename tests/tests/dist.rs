//! Issue 17: the release tarball and the Debian package, as `cargo xtask dist` makes them and
//! a user gets them: what is inside, that the tarball's handover checks its own examples,
//! and that the package, unpacked into a throw-away root, boots under a real systemd and
//! serves, reloads under load without a failed request, and stops cleanly.
//!
//! `cargo xtask dist` is a release build, the slowest step of the suite: it runs once per
//! test process, for every test here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use handover_tests::harness::{self, output_guarded, TempDir};
use handover_tests::systemd::{self, Lifecycle, Systemd, INSIDE_CONFIG};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `cargo xtask dist` made.
struct Dist {
    tarball: PathBuf,
    deb: PathBuf,
}

/// Builds the artifacts once; `None` (after saying why) where the tools it needs are
/// missing, unless `HANDOVER_REQUIRE_SYSTEMD` says this machine must run everything (CI).
fn dist() -> Option<&'static Dist> {
    static DIST: OnceLock<Result<Dist, String>> = OnceLock::new();
    let built = DIST.get_or_init(|| {
        for (tool, package) in [("dpkg-deb", "dpkg"), ("strip", "binutils")] {
            let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .chain(["/usr/bin".into(), "/bin".into()])
                .any(|dir: PathBuf| dir.join(tool).is_file());
            if !found {
                return Err(format!("{tool} is not installed (package {package})"));
            }
        }
        let target_dir = harness::bin_dir()
            .parent()
            .expect("the profile folder is in a target folder")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(systemd::repo_root())
            .args(["run", "--quiet", "--package", "xtask", "--target-dir"])
            .arg(&target_dir)
            .args(["--", "dist"]);
        let output = cmd.output().expect("run cargo xtask dist");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "cargo xtask dist failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut paths = stdout.lines().map(PathBuf::from);
        let (Some(tarball), Some(deb)) = (paths.next(), paths.next()) else {
            panic!("cargo xtask dist printed no paths: {stdout}");
        };
        Ok(Dist { tarball, deb })
    });
    match built {
        Ok(dist) => Some(dist),
        Err(reason) if std::env::var_os("HANDOVER_REQUIRE_SYSTEMD").is_some() => {
            panic!("cannot build the packages, and HANDOVER_REQUIRE_SYSTEMD is set: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: cannot build the packages here: {reason}");
            None
        }
    }
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let (status, out, err) = output_guarded(cmd);
    (status.code().unwrap_or(-1), out, err)
}

fn run_ok(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let shown = format!("{:?} {args:?}", program.as_ref());
    let (code, out, err) = run(program, args);
    assert_eq!(code, 0, "{shown}: {out}{err}");
    out
}

/// Whether an ELF file still has a symbol table (`SHT_SYMTAB`): what `strip` removes.
fn has_symbol_table(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
    let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().expect("8 bytes")) as usize;
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == 2)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tarball unpacked into a fresh folder; returns that folder and the tree in it.
fn unpack_tarball(dist: &Dist, label: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(label);
    let tarball = dist.tarball.display().to_string();
    let into = dir.path().display().to_string();
    run_ok("tar", &["-xzf", &tarball, "-C", &into]);
    let name = dist
        .tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("NAME.tar.gz")
        .to_string();
    assert!(
        name.starts_with(&format!("handover-{VERSION}-")),
        "handover-VERSION-TARGET: {name}"
    );
    let tree = dir.path().join(&name);
    assert!(tree.is_dir(), "the tarball unpacks into {name}/");
    (dir, tree)
}

/// The tarball holds the stripped release binaries, the units and examples as in the
/// repository, the man pages, the completions, the README, the docs and the licences.
#[test]
fn the_tarball_holds_what_a_user_needs() {
    let Some(dist) = dist() else { return };
    let (_dir, tree) = unpack_tarball(dist, "dist-tarball");
    for binary in ["bin/handover", "bin/handover-example-http"] {
        let path = tree.join(binary);
        assert!(is_executable(&path), "{binary} is executable");
        assert!(!has_symbol_table(&path), "{binary} is stripped");
    }
    assert!(
        has_symbol_table(&harness::binary("handover")),
        "the check can tell an unstripped binary"
    );
    let version = run_ok(tree.join("bin/handover"), &["--version"]);
    assert_eq!(version.trim(), format!("handover {VERSION}"));
    for shipped in [
        "systemd/handover@.service",
        "systemd/handover-http@.socket",
        "systemd/handover-https@.socket",
        "systemd/handover-shared-http@.socket",
        "systemd/example.toml",
        "examples/handover.toml",
        "examples/demo.toml",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "docs/systemd.md",
        "docs/cli.md",
        "docs/configuration.md",
    ] {
        let packed = std::fs::read_to_string(tree.join(shipped))
            .unwrap_or_else(|e| panic!("{shipped} in the tarball: {e}"));
        assert_eq!(
            packed,
            systemd::repo_file(shipped),
            "{shipped} as in the repository"
        );
    }
    for page in ["handover.1", "handover-start.1", "handover-unit.1"] {
        let text = std::fs::read_to_string(tree.join("man/man1").join(page))
            .unwrap_or_else(|e| panic!("man/man1/{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    for script in ["handover.bash", "_handover", "handover.fish"] {
        let text = std::fs::read_to_string(tree.join("completions").join(script))
            .unwrap_or_else(|e| panic!("completions/{script}: {e}"));
        assert!(text.contains("unit"), "{script} completes the unit command");
    }
}

/// The tarball's `bin/handover check` accepts every example the tarball carries.
#[test]
fn the_tarballs_handover_checks_its_own_examples() {
    let Some(dist) = dist() else { return };
    let (_dir, tree) = unpack_tarball(dist, "dist-check");
    let handover = tree.join("bin/handover");
    for example in [
        "systemd/example.toml",
        "examples/handover.toml",
        "examples/demo.toml",
    ] {
        let path = tree.join(example).display().to_string();
        let out = run_ok(&handover, &["check", "--config", &path]);
        assert!(out.starts_with(&format!("{path}: valid (")), "{out}");
    }
}

/// The package's control data and files: where Debian puts each kind of file, units pointed
/// at /usr/bin, and no maintainer script, so installing it enables and starts nothing.
#[test]
fn the_deb_puts_each_file_where_debian_looks_for_it() {
    let Some(dist) = dist() else { return };
    let deb = dist.deb.display().to_string();
    let fields = run_ok("dpkg-deb", &["-f", &deb, "Package", "Version", "Depends"]);
    assert!(fields.contains("Package: handover\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {VERSION}-1\n")),
        "{fields}"
    );
    assert!(fields.contains("libc6 (>= 2."), "{fields}");
    let control = TempDir::new("dist-deb-control");
    let control_dir = control.path().join("DEBIAN");
    run_ok(
        "dpkg-deb",
        &["--control", &deb, &control_dir.display().to_string()],
    );
    let mut members: Vec<String> = std::fs::read_dir(&control_dir)
        .expect("control files")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    assert_eq!(
        members,
        ["control", "md5sums"],
        "no maintainer script: installing enables and starts nothing"
    );

    let listing = run_ok("dpkg-deb", &["--contents", &deb]);
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for path in [
        "./usr/bin/handover",
        "./usr/libexec/handover/handover-example-http",
        "./lib/systemd/system/handover@.service",
        "./lib/systemd/system/handover-http@.socket",
        "./lib/systemd/system/handover-https@.socket",
        "./lib/systemd/system/handover-shared-http@.socket",
        "./usr/share/man/man1/handover.1.gz",
        "./usr/share/man/man1/handover-unit.1.gz",
        "./usr/share/bash-completion/completions/handover",
        "./usr/share/zsh/vendor-completions/_handover",
        "./usr/share/fish/vendor_completions.d/handover.fish",
        "./usr/share/doc/handover/README.md",
        "./usr/share/doc/handover/copyright",
        "./usr/share/doc/handover/docs/systemd.md",
        "./usr/share/doc/handover/examples/example.toml",
        "./usr/share/doc/handover/examples/handover.toml",
    ] {
        assert!(files.contains(&path), "{path} in the package:\n{listing}");
    }
    assert!(
        !files.iter().any(|f| f.starts_with("./etc/")),
        "the package writes no configuration of its own:\n{listing}"
    );

    let root = TempDir::new("dist-deb-files");
    run_ok("dpkg", &["-x", &deb, &root.path().display().to_string()]);
    let service = std::fs::read_to_string(root.path().join("lib/systemd/system/handover@.service"))
        .expect("packaged service");
    for line in [
        "ExecStart=/usr/bin/handover start --config /etc/handover/%i.toml\n",
        "ExecReload=/usr/bin/handover reload --service-name=%N\n",
        "ExecStop=/usr/bin/handover stop --service-name=%N\n",
    ] {
        assert!(service.contains(line), "{line:?} in:\n{service}");
    }
    assert!(!has_symbol_table(&root.path().join("usr/bin/handover")));
    let example = std::fs::read_to_string(
        root.path()
            .join("usr/share/doc/handover/examples/example.toml"),
    )
    .expect("packaged example");
    assert!(
        example.contains("\"/usr/libexec/handover/handover-example-http\""),
        "the example names the packaged worker:\n{example}"
    );
    let man = std::fs::read(root.path().join("usr/share/man/man1/handover.1.gz")).expect("man");
    assert!(man.starts_with(&[0x1f, 0x8b]), "man pages are gzipped");
}

/// The package installed into a throw-away root (`dpkg -x`) boots under the real systemd
/// tier: its handover@.service with its handover-http@.socket, and its example as
/// /etc/handover/web.toml (only their paths pointed into that root), serve, reload under
/// load without a failed request, and stop cleanly.
#[test]
fn the_deb_installed_into_a_throwaway_root_serves_reloads_and_stops() {
    let Some(dist) = dist() else { return };
    let root = TempDir::new("dist-deb-root");
    let deb = dist.deb.display().to_string();
    run_ok("dpkg", &["-x", &deb, &root.path().display().to_string()]);
    let (builder, inside_root) = Systemd::builder("deb").bind(root.path(), "root");
    let packaged = |path: &str| {
        let text = std::fs::read_to_string(root.path().join(path))
            .unwrap_or_else(|e| panic!("{path} in the package: {e}"));
        text.replace(
            "/usr/bin/handover",
            &format!("{inside_root}/usr/bin/handover"),
        )
        .replace("/usr/libexec/", &format!("{inside_root}/usr/libexec/"))
        .replace("/etc/handover/", &format!("{INSIDE_CONFIG}/"))
    };
    let builder = builder
        .unit(
            "handover@.service",
            &packaged("lib/systemd/system/handover@.service"),
        )
        .unit(
            "handover-http@.socket",
            &packaged("lib/systemd/system/handover-http@.socket"),
        )
        .config(
            "web",
            &packaged("usr/share/doc/handover/examples/example.toml"),
        );
    let Some(sd) = builder.boot() else { return };
    sd.serve_reload_stop(&Lifecycle {
        service: "handover@web.service",
        socket: "handover-http@web.socket",
        port: 80,
        workers: 2,
    });
    let journal = sd.journalctl(&["-o", "verbose", "-u", "handover@web.service"]);
    assert!(
        journal.contains(&format!("_EXE={inside_root}/usr/bin/handover\n")),
        "the packaged handover ran"
    );
    // (The workers ran from the package too: the configuration names nothing else.)
}
