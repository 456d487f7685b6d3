//! Evil images through the binary: an image written by `nandbox serve --image` over NBD and shut
//! down cleanly is damaged (a data page, a live node page, every checkpoint page, the header, a
//! truncation), then
//! given to `nandbox check --image` and `nandbox serve --image`.
//!
//! `check` must exit non-zero and name what it found; `serve` must either start and serve every
//! undamaged block (the damaged one reading as an error, never as data) or exit with an error
//! naming the damage. Never a panic (exit code 101 or "panicked" in the output).
//!
//! The damage is done to the file directly, from its documented layout (docs/format: a 4 KiB
//! header with the geometry, 16-byte block states padded to 4 KiB, then pages of data + spare
//! stored inverted), so this test needs nothing from the crates it checks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nandbox_tests::{nandbox_bin, pseudo_random, run, Server};

const BLOCKS: u64 = 512; // 2 MiB export of 4 KiB blocks

/// A minimal NBD client: handshake (GO), write, read, flush.
struct Nbd(TcpStream);

impl Nbd {
    fn open(port: u16) -> Nbd {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut m = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
        m.extend_from_slice(&7u32.to_be_bytes());
        m.extend_from_slice(&6u32.to_be_bytes());
        m.extend_from_slice(&[0; 6]);
        s.write_all(&m).unwrap();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            s.read_exact(&mut d).unwrap();
            if kind == 1 {
                return Nbd(s);
            }
            assert_eq!(kind, 3, "GO refused");
        }
    }

    fn cmd(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
        let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&7u64.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(payload);
        self.0.write_all(&m).unwrap();
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        u32::from_be_bytes(h[4..8].try_into().unwrap())
    }

    fn read(&mut self, block: u64) -> Result<Vec<u8>, u32> {
        match self.cmd(0, block * 4096, 4096, &[]) {
            0 => {
                let mut d = vec![0u8; 4096];
                self.0.read_exact(&mut d).unwrap();
                Ok(d)
            }
            e => Err(e),
        }
    }
}

fn block_content(b: u64) -> Vec<u8> {
    pseudo_random(b + 1, 4096)
}

/// Writes every block through `serve --image`, flushes, stops it with SIGTERM.
fn make_image(dir: &Path) -> PathBuf {
    let image = dir.join("evil.img");
    let img = image.to_str().unwrap().to_string();
    let mut server = Server::start(&["--size", "2MiB", "--profile", "slc", "--image", &img]);
    let mut c = Nbd::open(server.port());
    for b in 0..BLOCKS {
        assert_eq!(c.cmd(1, b * 4096, 4096, &block_content(b)), 0);
    }
    // Overwrite a few so there is history; then flush.
    for b in 0..32 {
        assert_eq!(c.cmd(1, b * 4096, 4096, &block_content(b)), 0);
    }
    assert_eq!(c.cmd(3, 0, 0, &[]), 0);
    drop(c);
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}");
    image
}

/// The layout facts the damage needs, read from the image header.
struct Layout {
    page_bytes: u64,
    spare_bytes: u64,
    pages: u64,
    pages_at: u64,
}

impl Layout {
    fn of(image: &Path) -> Layout {
        let f = std::fs::File::open(image).unwrap();
        let mut h = [0u8; 32];
        f.read_exact_at(&mut h, 0).unwrap();
        let u = |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap()) as u64;
        let (page_bytes, spare_bytes, ppb, blocks) = (u(12..16), u(16..20), u(20..24), u(24..28));
        Layout {
            page_bytes,
            spare_bytes,
            pages: ppb * blocks,
            pages_at: 4096 + (blocks * 16).div_ceil(4096) * 4096,
        }
    }

    fn page_at(&self, p: u64) -> u64 {
        self.pages_at + p * (self.page_bytes + self.spare_bytes)
    }

    /// (kind, owner, seq) of page `p`'s first spare record, or None when erased / damaged.
    fn record(&self, image: &Path, p: u64) -> Option<(u8, u32, u64)> {
        let f = std::fs::File::open(image).unwrap();
        let mut s = [0u8; 32];
        f.read_exact_at(&mut s, self.page_at(p) + self.page_bytes)
            .unwrap();
        s.iter_mut().for_each(|b| *b ^= 0xFF); // stored inverted
        (&s[..4] == b"NBSR").then(|| {
            (
                s[5],
                u32::from_le_bytes(s[8..12].try_into().unwrap()),
                u64::from_le_bytes(s[12..20].try_into().unwrap()),
            )
        })
    }
}

fn flip(image: &Path, at: u64, bit: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
}

/// Runs `nandbox check --image`; returns (exit code, stdout + stderr).
fn check(image: &Path) -> (i32, String) {
    let out = run(
        Command::new(nandbox_bin())
            .arg("check")
            .arg("--image")
            .arg(image),
        Duration::from_secs(120),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("panicked") && out.status.code() != Some(101),
        "check panicked:\n{text}"
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `nandbox serve --image` expecting it to refuse; returns its error output.
fn serve_refuses(image: &Path) -> String {
    let out = run(
        Command::new(nandbox_bin())
            .args([
                "serve",
                "--control",
                "none",
                "--size",
                "2MiB",
                "--profile",
                "slc",
            ])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", nandbox_tests::free_port()),
            ])
            .arg("--image")
            .arg(image),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve accepted a refused image");
    assert!(
        !text.contains("panicked") && out.status.code() != Some(101),
        "serve panicked:\n{text}"
    );
    text
}

#[test]
fn check_and_serve_name_the_damage_or_recover() {
    let dir = nandbox_tests::scratch_dir();
    let pristine = make_image(dir.path());
    let layout = Layout::of(&pristine);
    let copy = |name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(&pristine, &p).unwrap();
        p
    };

    let (code, text) = check(&pristine);
    println!("pristine image: exit {code}\n{text}");
    assert_eq!(code, 0, "a clean image checks clean:\n{text}");

    // A data page: the newest copy of block 5.
    let page = (0..layout.pages)
        .filter_map(|p| layout.record(&pristine, p).map(|r| (p, r)))
        .filter(|(_, (kind, owner, _))| *kind == 1 && *owner == 5)
        .max_by_key(|(_, r)| r.2)
        .map(|(p, _)| p)
        .expect("a data page of block 5");
    let img = copy("data.img");
    flip(&img, layout.page_at(page) + 1000, 3);
    let (code, text) = check(&img);
    println!("data page of block 5 flipped: check exit {code}\n{text}");
    assert_ne!(code, 0, "check must report a damaged data page");
    assert!(text.contains("bad_data_crc") && text.contains("problems found"));
    let img_s = img.to_str().unwrap().to_string();
    let server = Server::start(&["--size", "2MiB", "--profile", "slc", "--image", &img_s]);
    let mut c = Nbd::open(server.port());
    for b in 0..BLOCKS {
        match c.read(b) {
            Ok(d) => assert_eq!(d, block_content(b), "block {b} served wrong data"),
            Err(e) => {
                assert_eq!(b, 5, "only block 5 is damaged, block {b} failed with {e}");
                println!("serve --image: block 5 reads errno {e}, the other blocks intact");
            }
        }
    }
    drop(c);
    drop(server);

    // The live node page of blocks 256..=511 (their group's newest node copy): that group is
    // lost, named by check and by serve's read errors; the other group serves intact. The
    // pristine image's mapping is still in its log (replayed at mount); one more serve run
    // writes the node pages, in the checkpoint its mount ends with.
    let img = copy("node.img");
    let img_s = img.to_str().unwrap().to_string();
    let mut server = Server::start(&["--size", "2MiB", "--profile", "slc", "--image", &img_s]);
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}");
    let page = (0..layout.pages)
        .filter_map(|p| layout.record(&img, p).map(|r| (p, r)))
        .filter(|(_, (kind, owner, _))| *kind == 2 && *owner == 1)
        .max_by_key(|(_, r)| r.2)
        .map(|(p, _)| p)
        .expect("a node page of group 1");
    flip(&img, layout.page_at(page) + 700, 5);
    let (code, text) = check(&img);
    println!("live node page of group 1 flipped: check exit {code}\n{text}");
    assert_ne!(code, 0, "check must report a damaged node page");
    assert!(
        text.contains("bad_nodes")
            && text.contains(&format!(
                "node page of group 1 (LBAs 256..=511) at slot {page}"
            )),
        "check must name the node page:\n{text}"
    );
    let server = Server::start(&["--size", "2MiB", "--profile", "slc", "--image", &img_s]);
    let mut c = Nbd::open(server.port());
    for b in 0..BLOCKS {
        match c.read(b) {
            Ok(d) => {
                assert!(b < 256, "block {b} of the damaged group read as data");
                assert_eq!(d, block_content(b), "block {b} served wrong data");
            }
            Err(e) => assert!(b >= 256, "block {b} outside the damaged group failed: {e}"),
        }
    }
    println!("serve --image: blocks 256..=511 read errors, blocks 0..=255 intact");
    drop(c);
    drop(server);

    // Every checkpoint page.
    let img = copy("checkpoints.img");
    let mut flipped = 0;
    for p in 0..layout.pages {
        if let Some((4, _, _)) = layout.record(&img, p) {
            flip(&img, layout.page_at(p) + 17, 2);
            flipped += 1;
        }
    }
    assert!(flipped > 0);
    let (code, text) = check(&img);
    println!("every checkpoint page flipped: check exit {code}\n{text}");
    assert_ne!(code, 0);
    assert!(
        text.contains("checkpoint"),
        "check must name the checkpoint"
    );
    let err = serve_refuses(&img);
    println!("serve --image: {err}");
    assert!(err.contains("checkpoint"));

    // The image header and a truncation.
    for (name, damage) in [("header", 0u8), ("truncated", 1)] {
        let img = copy(&format!("{name}.img"));
        if damage == 0 {
            flip(&img, 14, 1);
        } else {
            let len = std::fs::metadata(&img).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&img)
                .unwrap()
                .set_len(len / 3)
                .unwrap();
        }
        let (code, text) = check(&img);
        println!("{name}: check exit {code}\n{text}");
        assert_ne!(code, 0);
        assert!(
            text.contains(name),
            "check must name the {name} damage:\n{text}"
        );
        let err = serve_refuses(&img);
        println!("{name}: serve --image: {err}");
        assert!(
            err.contains(name),
            "serve must name the {name} damage:\n{err}"
        );
    }
}
