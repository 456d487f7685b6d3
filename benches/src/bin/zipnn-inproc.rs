//! In-process ZipNN speed, for `bench/zipnn.sh`: the same measurement the script makes of the
//! zipnn Python package (best wall time of whole-buffer compress and decompress on one thread,
//! no file I/O, no process start), so the two are compared like for like.
//!
//! `zipnn-inproc PAYLOAD bf16|fp16|fp32 ROUNDS` prints `ratio comp decomp comp_cpu decomp_cpu
//! comp_cpu_median decomp_cpu_median`: MB/s of original bytes by best wall time, by best thread
//! CPU time (steadier on a shared machine: time the thread spends descheduled does not count)
//! and by median thread CPU time.

use std::time::Instant;

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best wall, best CPU and median CPU seconds of `rounds` runs of `f` (the median as well:
/// on a shared machine the best run can be a lucky one).
fn best(rounds: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    let mut wall = f64::MAX;
    let mut cpus = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        let (t, c) = (Instant::now(), thread_cpu());
        f();
        cpus.push(thread_cpu() - c);
        wall = wall.min(t.elapsed().as_secs_f64());
    }
    cpus.sort_by(f64::total_cmp);
    (wall, cpus[0], cpus[cpus.len() / 2])
}

use nandbox_core::codec::entropy::{DecoderTables, EncoderScratch};
use nandbox_core::codec::zipnn::{self, Dtype, Segment};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, dtype, rounds] = &args[..] else {
        eprintln!("usage: zipnn-inproc PAYLOAD bf16|fp16|fp32 ROUNDS");
        std::process::exit(2);
    };
    let dtype = match dtype.as_str() {
        "bf16" => Dtype::Bf16,
        "fp16" => Dtype::Fp16,
        "fp32" => Dtype::Fp32,
        other => panic!("unknown dtype {other}"),
    };
    let rounds: usize = rounds.parse().expect("ROUNDS is a number");
    let src = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let chunk = zipnn::DEFAULT_CHUNK_SIZE;
    let mut out = vec![0u8; zipnn::max_compressed_len(dtype, chunk, src.len())];
    let mut planes = vec![0u8; chunk as usize];
    let mut scratch = Box::new(EncoderScratch::new());
    let mut tables = Box::new(DecoderTables::new());
    let mut back = vec![0u8; src.len()];
    let mut segs = [Segment {
        dtype: Dtype::Raw,
        len: 0,
    }];
    let mut len = 0;
    let comp = best(rounds, || {
        len = zipnn::compress(dtype, chunk, &src, &mut planes, &mut out, &mut scratch)
            .expect("compress");
    });
    let decomp = best(rounds, || {
        zipnn::decompress(&out[..len], &mut planes, &mut segs, &mut back, &mut tables)
            .expect("decompress");
    });
    assert!(back == src, "round trip differs");
    let mb = src.len() as f64 / 1e6;
    println!(
        "{:.4} {:.0} {:.0} {:.0} {:.0} {:.0} {:.0}",
        len as f64 / src.len() as f64,
        mb / comp.0,
        mb / decomp.0,
        mb / comp.1,
        mb / decomp.1,
        mb / comp.2,
        mb / decomp.2
    );
}
