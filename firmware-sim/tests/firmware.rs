//! The firmware runner: byte-addressed requests over the FTL, on its own thread.

use nandbox_sim::firmware::{Completer, Firmware, FirmwareConfig, FirmwareError, Output, Request};
use nandbox_sim::latency::LatencyMode;
use nandbox_sim::profile;

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn unaligned_writes_read_back_and_untouched_bytes_stay_zero() {
    let fw = Firmware::start(FirmwareConfig::new(profile::FEMU, 16 * MIB)).unwrap();
    assert_eq!(fw.size(), 16 * MIB);
    let data = pattern(10_000, 3);
    fw.write(4096 * 5 + 100, data.clone(), false).unwrap();
    let back = fw.read(4096 * 5, 10_300).unwrap();
    assert!(back[..100].iter().all(|&b| b == 0));
    assert_eq!(&back[100..10_100], &data[..]);
    assert!(back[10_100..].iter().all(|&b| b == 0));
    let one = fw.read(4096 * 5 + 101, 1).unwrap();
    assert_eq!(one, vec![data[1]]);
}

#[test]
fn trim_and_zeroes_read_as_zero_and_show_as_holes() {
    let fw = Firmware::start(FirmwareConfig::new(profile::TLC, 64 * MIB)).unwrap();
    fw.write(0, vec![0xAB; 64 * 1024], false).unwrap();
    fw.trim(4096 + 10, 3 * 4096, false).unwrap();
    let back = fw.read(0, 64 * 1024).unwrap();
    assert!(back[..4096 + 10].iter().all(|&b| b == 0xAB));
    assert!(back[4096 + 10..4 * 4096 + 10].iter().all(|&b| b == 0));
    assert!(back[4 * 4096 + 10..].iter().all(|&b| b == 0xAB));
    // Blocks 2 and 3 are wholly trimmed: unmapped; 1 and 4 were zeroed partly: still mapped.
    assert_eq!(
        fw.mapping(0, 6 * 4096).unwrap(),
        vec![(2 * 4096, true), (2 * 4096, false), (2 * 4096, true)]
    );
    fw.write_zeroes(0, 4096, false, true).unwrap();
    assert_eq!(fw.mapping(0, 4096).unwrap(), vec![(4096, true)]);
    fw.write_zeroes(0, 4096, false, false).unwrap();
    assert_eq!(fw.mapping(0, 4096).unwrap(), vec![(4096, false)]);
    // A trim of the whole device is one request.
    fw.trim(0, 64 * MIB, true).unwrap();
    assert_eq!(fw.mapping(0, 64 * MIB).unwrap(), vec![(64 * MIB, false)]);
}

#[test]
fn out_of_range_requests_are_refused() {
    let fw = Firmware::start(FirmwareConfig::new(profile::FEMU, 8 * MIB)).unwrap();
    assert!(matches!(
        fw.read(8 * MIB - 1, 2),
        Err(FirmwareError::Invalid(_))
    ));
    assert!(matches!(
        fw.write(u64::MAX, vec![1], false),
        Err(FirmwareError::Invalid(_))
    ));
    assert!(matches!(
        fw.trim(8 * MIB, 1, false),
        Err(FirmwareError::Invalid(_))
    ));
    assert!(Firmware::start(FirmwareConfig::new(profile::FEMU, 4095)).is_err());
}

#[test]
fn counters_follow_the_workload() {
    let mut config = FirmwareConfig::new(profile::FEMU, 8 * MIB);
    // Constant bytes look like (and code as) float weights: this test is about the plain path.
    config.compress = false;
    let fw = Firmware::start(config).unwrap();
    fw.write(0, vec![7; 8 * 4096], false).unwrap();
    fw.flush().unwrap();
    let s = fw.snapshot().unwrap();
    assert_eq!(s.stats.host_write_bytes, 8 * 4096);
    assert!(s.stats.nand_program_bytes() >= 8 * 4096);
    assert_eq!(s.logical_bytes, 8 * MIB);
    assert_eq!(s.erase_counts.len(), s.geometry.blocks as usize);
}

#[test]
fn virtual_latency_is_accounted() {
    let mut config = FirmwareConfig::new(profile::TLC, 64 * MIB);
    config.latency = LatencyMode::Virtual;
    let fw = Firmware::start(config).unwrap();
    fw.write(0, vec![1; 4096], true).unwrap();
    fw.read(0, 4096).unwrap();
    let s = fw.snapshot().unwrap();
    assert_eq!(s.latency.writes, 1);
    assert!(
        s.latency.write_mean_ns >= profile::TLC.program_ns,
        "{:?}",
        s.latency
    );
    assert_eq!(s.latency.reads, 1);
}

#[test]
fn virtual_latency_of_a_synchronous_host_has_no_queue() {
    // A host that waits for each reply before the next read never finds the die busy with its
    // own earlier reads, however much faster than the flash it runs in wall time.
    let mut config = FirmwareConfig::new(profile::TLC, 64 * MIB);
    config.latency = LatencyMode::Virtual;
    let fw = Firmware::start(config).unwrap();
    fw.write(0, vec![1; 4096], true).unwrap();
    for _ in 0..200 {
        fw.read(0, 4096).unwrap();
    }
    let s = fw.snapshot().unwrap();
    assert_eq!(s.latency.reads, 200);
    let one = profile::TLC.read_ns + profile::TLC.transfer_ns(16384 + 256);
    assert!(
        s.latency.read_p99_ns <= one + one / 10,
        "a read waited for earlier ones: {:?}, one read {one} ns",
        s.latency
    );
}

#[test]
fn an_image_keeps_flushed_data_across_restarts() {
    let dir = std::env::temp_dir().join(format!("nandbox-fw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.img");
    let data = pattern(3 * 4096 + 17, 9);
    {
        let mut config = FirmwareConfig::new(profile::FEMU, 32 * MIB);
        config.image = Some(path.clone());
        let fw = Firmware::start(config).unwrap();
        fw.write(12_345, data.clone(), false).unwrap();
        fw.flush().unwrap();
        fw.shutdown().unwrap();
        assert!(matches!(fw.read(0, 1), Err(FirmwareError::Stopped)));
    }
    // Reopened with a different --size: the image's own size wins.
    let mut config = FirmwareConfig::new(profile::FEMU, 4 * MIB);
    config.image = Some(path.clone());
    let fw = Firmware::start(config).unwrap();
    assert_eq!(fw.size(), 32 * MIB);
    assert_eq!(fw.read(12_345, data.len()).unwrap(), data);
    drop(fw);
    std::fs::write(&path, b"not an image").unwrap();
    let mut config = FirmwareConfig::new(profile::FEMU, 32 * MIB);
    config.image = Some(path.clone());
    let err = Firmware::start(config)
        .err()
        .expect("a damaged image is refused");
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Collects completions delivered through the queue-pair interface.
#[derive(Default)]
struct Collector {
    done: std::sync::Mutex<Vec<(u64, Result<Output, FirmwareError>)>>,
    flushes: std::sync::atomic::AtomicUsize,
    changed: std::sync::Condvar,
}

impl Completer for Collector {
    fn complete(
        &self,
        tag: u64,
        result: Result<Output, FirmwareError>,
        _not_before: Option<std::time::Instant>,
    ) {
        self.done.lock().unwrap().push((tag, result));
    }
    fn flush(&self) {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_all();
    }
}

impl Collector {
    /// Waits (at most 10 s) until `n` completions have arrived and been flushed.
    fn wait_for(&self, n: usize) -> Vec<(u64, Result<Output, FirmwareError>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut done = self.done.lock().unwrap();
        while done.len() < n || self.flushes.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "only {} of {n} completions", done.len());
            done = self.changed.wait_timeout(done, left).unwrap().0;
        }
        done.sort_by_key(|(tag, _)| *tag);
        self.flushes.store(0, std::sync::atomic::Ordering::SeqCst);
        std::mem::take(&mut *done)
    }
}

#[test]
fn submitted_requests_complete_once_each_with_their_buffers() {
    let fw = Firmware::start(FirmwareConfig::new(profile::FEMU, 16 * MIB)).unwrap();
    let c = std::sync::Arc::new(Collector::default());
    let to: std::sync::Arc<dyn Completer> = c.clone();
    let data = pattern(3 * 4096 + 5, 7);
    fw.submit(
        Request::Write {
            offset: 100,
            data: data.clone(),
            fua: true,
        },
        1,
        &to,
    );
    let done = c.wait_for(1);
    assert_eq!(done, vec![(1, Ok(Output::Written(data.clone())))]);
    // A recycled read buffer of the wrong size and contents comes back holding just the data.
    for tag in 10..20u64 {
        let buf = vec![0xEE; 9000];
        let len = data.len();
        fw.submit(
            Request::Read {
                offset: 100,
                len,
                buf,
            },
            tag,
            &to,
        );
    }
    fw.submit(
        Request::Mapping {
            offset: 0,
            len: 8192,
        },
        20,
        &to,
    );
    fw.submit(
        Request::Read {
            offset: 16 * MIB,
            len: 1,
            buf: Vec::new(),
        },
        21,
        &to,
    );
    let done = c.wait_for(12);
    for (i, (tag, result)) in done.iter().enumerate().take(10) {
        assert_eq!(*tag, 10 + i as u64);
        assert_eq!(result, &Ok(Output::Read(data.clone())));
    }
    assert_eq!(done[10], (20, Ok(Output::Mapping(vec![(8192, true)]))));
    assert!(matches!(done[11], (21, Err(FirmwareError::Invalid(_)))));
    fw.shutdown().unwrap();
    fw.submit(Request::Flush, 30, &to);
    assert!(matches!(
        c.wait_for(1)[..],
        [(30, Err(FirmwareError::Stopped))]
    ));
}
