//! The kernel path: the export attached as a real block device (nbdfuse exposes it as a file,
//! a loop device with direct I/O turns that into a block device, since this kernel has no nbd
//! module), formatted ext4, filled with files, checked with `e2fsck -fn`, remounted and every
//! file's SHA-256 compared. A guard undoes mounts, the loop device and the FUSE mount even when
//! an assertion fails midway.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nandbox_tests::{pseudo_random, require_tool, run, run_ok, sha256_file, Server};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Everything attached for the test, torn down in reverse order on drop.
#[derive(Default)]
struct Attached {
    nbdfuse: Option<Child>,
    fuse_dir: Option<PathBuf>,
    loop_dev: Option<String>,
    mounted: Option<PathBuf>,
}

impl Attached {
    fn umount(&mut self) {
        if let Some(m) = self.mounted.take() {
            run_ok(Command::new("umount").arg(&m), TIMEOUT);
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Best effort and lazy where possible: a failed test must not leave the machine wedged.
        if let Some(m) = self.mounted.take() {
            let _ = run(Command::new("umount").arg("-l").arg(&m), TIMEOUT);
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = run(Command::new("losetup").args(["-d", &l]), TIMEOUT);
        }
        if let Some(d) = self.fuse_dir.take() {
            let _ = run(Command::new("fusermount3").arg("-uz").arg(&d), TIMEOUT);
        }
        if let Some(mut c) = self.nbdfuse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_size(path: &Path, size: u64) {
    let start = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) != size {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ext4_on_nbdfuse_and_loop_survives_fsck_and_remount() {
    for tool in [
        "nbdfuse",
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
    ] {
        require_tool(tool);
    }
    let size = 256u64 << 20;
    let server = Server::start(&["--size", "256MiB"]);
    let dir = nandbox_tests::scratch_dir();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();

    let mut att = Attached::default();
    let log = std::fs::File::create(dir.path().join("nbdfuse.log")).unwrap();
    att.nbdfuse = Some(
        Command::new("nbdfuse")
            .arg(&fuse_dir)
            .arg(server.uri())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nbdfuse"),
    );
    att.fuse_dir = Some(fuse_dir.clone());
    let file = fuse_dir.join("nbd");
    wait_for_size(&file, size);

    let loop_dev = run_ok(
        Command::new("losetup")
            .args(["--direct-io=on", "--find", "--show"])
            .arg(&file),
        TIMEOUT,
    )
    .trim()
    .to_string();
    assert!(loop_dev.starts_with("/dev/loop"), "losetup said {loop_dev}");
    att.loop_dev = Some(loop_dev.clone());

    run_ok(
        Command::new("mkfs.ext4").args(["-q", "-F", &loop_dev]),
        TIMEOUT,
    );
    run_ok(Command::new("mount").arg(&loop_dev).arg(&mnt), TIMEOUT);
    att.mounted = Some(mnt.clone());

    // Files of assorted sizes, some not a multiple of the block size, in two directories.
    let mut expected = Vec::new();
    std::fs::create_dir_all(mnt.join("sub")).unwrap();
    for i in 0..24u64 {
        let len = match i % 4 {
            0 => 1 + (i as usize * 37),
            1 => 4096 * (i as usize + 1),
            2 => (1 << 20) + 123 * i as usize,
            _ => (4 << 20) - 1,
        };
        let rel = if i % 2 == 0 {
            format!("f{i}")
        } else {
            format!("sub/f{i}")
        };
        let path = mnt.join(&rel);
        std::fs::write(&path, pseudo_random(i + 7, len)).unwrap();
        expected.push((rel, sha256_file(&path)));
    }
    run_ok(&mut Command::new("sync"), TIMEOUT);
    att.umount();

    let fsck = run(Command::new("e2fsck").args(["-fn", &loop_dev]), TIMEOUT);
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );

    // Drop the page cache's view: detach and reattach the loop device before remounting, so the
    // files are read back from the server.
    run_ok(Command::new("losetup").args(["-d", &loop_dev]), TIMEOUT);
    att.loop_dev = None;
    let loop_dev = run_ok(
        Command::new("losetup")
            .args(["--direct-io=on", "--find", "--show"])
            .arg(&file),
        TIMEOUT,
    )
    .trim()
    .to_string();
    att.loop_dev = Some(loop_dev.clone());
    run_ok(Command::new("mount").arg(&loop_dev).arg(&mnt), TIMEOUT);
    att.mounted = Some(mnt.clone());
    for (rel, sum) in &expected {
        assert_eq!(
            &sha256_file(&mnt.join(rel)),
            sum,
            "{rel} changed after remount"
        );
    }
    att.umount();
}
