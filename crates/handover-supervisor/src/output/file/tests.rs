use super::*;

/// A directory under the target directory, removed on drop.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new(label: &str) -> TestDir {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("handover-unit-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn numbered(from: u32, to: u32) -> Vec<u8> {
    let mut data = Vec::new();
    for i in from..to {
        data.extend_from_slice(format!("line {i:06}\n").as_bytes());
    }
    data
}

fn write_all(log: &mut LogFile, data: &[u8]) {
    let (written, error) = log.write(data);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(written, data.len());
}

fn read_gz(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Waits until no file in `dir` is still being compressed.
fn settle(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rotated_files(path).iter().any(|r| !r.compressed) {
        assert!(Instant::now() < deadline, "compression never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn rotates_between_lines_into_sorted_gzipped_files() {
    let dir = TestDir::new("rotate");
    let path = dir.path().join("app.log");
    let rotation = Rotation {
        max_size: 4096,
        keep: 1000,
        compress: true,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    let data = numbered(0, 3000);
    for chunk in data.chunks(1000) {
        // Chunks cut lines in two: a half line never starts a new file.
        write_all(&mut log, chunk);
    }
    settle(&path);
    let rotated = rotated_files(&path);
    assert_eq!(rotated.len() as u64, log.rotations());
    assert!(rotated.len() >= 8, "{rotated:?}");
    let mut all = Vec::new();
    for r in &rotated {
        let name = r.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("app.log.") && name.ends_with("Z.gz"),
            "{name}"
        );
        let text = read_gz(&r.path);
        assert!(text.len() <= 4096 && text.ends_with(b"\n"), "{name}");
        all.extend(text);
    }
    all.extend(std::fs::read(&path).unwrap());
    assert_eq!(all, data);
}

#[test]
fn keeps_only_the_newest_rotations() {
    let dir = TestDir::new("keep");
    let path = dir.path().join("app.log");
    let rotation = Rotation {
        max_size: 4096,
        keep: 2,
        compress: false,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    let data = numbered(0, 3000);
    write_all(&mut log, &data);
    let rotated = rotated_files(&path);
    assert_eq!(rotated.len(), 2);
    let mut tail = std::fs::read(&rotated[0].path).unwrap();
    tail.extend(std::fs::read(&rotated[1].path).unwrap());
    tail.extend(std::fs::read(&path).unwrap());
    assert!(data.ends_with(&tail));
}

#[test]
fn a_line_longer_than_max_size_gets_a_file_of_its_own() {
    let dir = TestDir::new("long");
    let path = dir.path().join("app.log");
    let rotation = Rotation {
        max_size: 4096,
        keep: 10,
        compress: false,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    write_all(&mut log, b"short\n");
    let mut long = vec![b'x'; 10_000];
    long.push(b'\n');
    write_all(&mut log, &long);
    write_all(&mut log, b"after\n");
    let rotated = rotated_files(&path);
    assert_eq!(rotated.len(), 2);
    assert_eq!(std::fs::read(&rotated[0].path).unwrap(), b"short\n");
    assert_eq!(std::fs::read(&rotated[1].path).unwrap(), long);
    assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
}

#[test]
fn reopen_follows_a_rename_and_loses_nothing() {
    let dir = TestDir::new("reopen");
    let path = dir.path().join("app.log");
    let rotation = Rotation {
        max_size: 0,
        keep: 10,
        compress: false,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    write_all(&mut log, b"one\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    write_all(&mut log, b"two\n");
    log.reopen().unwrap();
    write_all(&mut log, b"three\n");
    assert_eq!(
        std::fs::read(dir.path().join("app.log.1")).unwrap(),
        b"one\ntwo\n"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
}

#[test]
fn copytruncate_leaves_no_hole_and_no_early_rotation() {
    let dir = TestDir::new("copytruncate");
    let path = dir.path().join("app.log");
    let rotation = Rotation {
        max_size: 8192,
        keep: 10,
        compress: false,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    write_all(&mut log, &numbered(0, 600));
    let rotations = log.rotations();
    // What logrotate's copytruncate does: copy, then truncate in place.
    std::fs::copy(&path, dir.path().join("copy")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_all(&mut log, &numbered(600, 1000));
    let text = std::fs::read(&path).unwrap();
    assert!(!text.contains(&0), "a hole of zeros");
    // handover noticed the file is short again instead of rotating at once.
    assert_eq!(log.rotations(), rotations);
    assert_eq!(text, numbered(600, 1000));
}

#[test]
fn names_keep_growing_across_runs_and_leftovers_get_compressed() {
    let dir = TestDir::new("leftovers");
    let path = dir.path().join("app.log");
    // A rotation "from the future" (a clock set back since) and an interrupted compression.
    let future = dir.path().join("app.log.2999-01-01T00-00-00.000Z");
    std::fs::write(&future, b"old\n").unwrap();
    let tmp = dir.path().join("app.log.2999-01-01T00-00-00.000Z.gz.tmp");
    std::fs::write(&tmp, b"partial").unwrap();
    let rotation = Rotation {
        max_size: 4096,
        keep: 10,
        compress: true,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    assert!(!tmp.exists());
    write_all(&mut log, &numbered(0, 600));
    settle(&path);
    let rotated = rotated_files(&path);
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    assert!(rotated.iter().all(|r| r.compressed));
    assert_eq!(read_gz(&rotated[0].path), b"old\n");
    assert!(rotated[1].stamp > rotated[0].stamp);
}

#[test]
fn unrelated_files_are_left_alone() {
    let dir = TestDir::new("unrelated");
    let path = dir.path().join("app.log");
    for name in [
        "app.log.1",
        "app.log.old.gz",
        "app.logger",
        "other.log.2026-01-01T00-00-00.000Z",
    ] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let rotation = Rotation {
        max_size: 4096,
        keep: 0,
        compress: false,
    };
    let mut log = LogFile::open(&path, rotation).unwrap();
    write_all(&mut log, &numbered(0, 1000));
    assert!(rotated_files(&path).is_empty());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "app.log",
            "app.log.1",
            "app.log.old.gz",
            "app.logger",
            "other.log.2026-01-01T00-00-00.000Z"
        ]
    );
}
