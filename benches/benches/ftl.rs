//! FTL throughput in process: 4 KiB random writes and reads through `Ftl` over a RAM `SimNand`
//! (tlc profile, latency off), with the raw simulator's page programs as the reference peer.
//! Prints NAND operations per host operation and WAF for each workload.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nandbox_core::ftl::{blocks_for_capacity, Ftl, FtlConfig, Lba};
use nandbox_core::nand::{BlockId, Nand, PageId};
use nandbox_core::Cause;
use nandbox_sim::{profile, OwnedFtlMemory, SimNand};
use std::time::Instant;

const DEVICE_BYTES: u64 = 128 << 20;
const SLOT: usize = 4096;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn ops(nand: &SimNand) -> u64 {
    nand.ops()
}

fn bench_ftl(c: &mut Criterion) {
    let p = profile::TLC;
    let logical = (DEVICE_BYTES / SLOT as u64) as u32;
    let geo = p.geometry(blocks_for_capacity(
        p.page_bytes,
        p.pages_per_block,
        logical,
        7,
    ));
    let cfg = FtlConfig::sized_for(&geo, logical);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    let mut data = [0x5Au8; SLOT];
    // Fill the device once so writes are overwrites and GC runs in steady state.
    for lba in 0..logical {
        data[..4].copy_from_slice(&lba.to_le_bytes());
        ftl.write(Lba(lba), &data).unwrap();
    }
    ftl.flush().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let mut g = c.benchmark_group("ftl_4k");
    g.throughput(Throughput::Bytes(SLOT as u64));
    g.bench_function("random_write", |b| {
        b.iter(|| {
            let lba = rng.below(logical as u64) as u32;
            ftl.write(Lba(lba), &data).unwrap();
        })
    });
    let mut buf = [0u8; SLOT];
    g.bench_function("random_read", |b| {
        b.iter(|| {
            let lba = rng.below(logical as u64) as u32;
            ftl.read(Lba(lba), &mut buf).unwrap();
        })
    });

    // Reference peer: the simulator alone, programming whole pages in order (what a perfect
    // FTL with no mapping, GC or metadata would cost per 4 KiB).
    let mut raw = SimNand::new_ram(geo);
    let page = vec![0x5Au8; p.page_bytes as usize];
    let spare = vec![0u8; geo.spare_bytes as usize];
    let mut next = 0u32;
    let slots = geo.slots_per_page() as u64;
    g.throughput(Throughput::Bytes(p.page_bytes as u64));
    g.bench_function("raw_simnand_page_program", |b| {
        b.iter(|| {
            let n = next % geo.total_pages();
            if n.is_multiple_of(geo.pages_per_block) {
                raw.erase(BlockId(n / geo.pages_per_block)).unwrap();
            }
            raw.program(PageId(n), &page, &spare).unwrap();
            next += 1;
        })
    });
    g.finish();

    // NAND operations per host operation over a fixed steady-state run, timed against the
    // reference peer programming the same bytes as whole pages.
    let n = 50_000u64;
    let before = ops(ftl.nand());
    let st0 = *ftl.stats();
    let t = Instant::now();
    for _ in 0..n {
        let lba = rng.below(logical as u64) as u32;
        ftl.write(Lba(lba), &data).unwrap();
    }
    let ftl_secs = t.elapsed().as_secs_f64();
    let st1 = *ftl.stats();
    let w_ops = ops(ftl.nand()) - before;
    let t = Instant::now();
    for _ in 0..n / slots {
        let n = next % geo.total_pages();
        if n.is_multiple_of(geo.pages_per_block) {
            raw.erase(BlockId(n / geo.pages_per_block)).unwrap();
        }
        raw.program(PageId(n), &page, &spare).unwrap();
        next += 1;
    }
    let raw_secs = t.elapsed().as_secs_f64();
    let mb = (n * SLOT as u64) as f64 / 1e6;
    println!(
        "ftl_4k random write {:.0} MB/s vs raw SimNand page programs {:.0} MB/s: ratio {:.3}",
        mb / ftl_secs,
        mb / raw_secs,
        raw_secs / ftl_secs
    );
    let causes: Vec<String> = Cause::ALL
        .iter()
        .map(|c| {
            let b = st1.program_bytes[*c as usize] - st0.program_bytes[*c as usize];
            format!("{} {:.2}", c.name(), b as f64 / (n * SLOT as u64) as f64)
        })
        .collect();
    println!(
        "program bytes per host byte by cause: {}",
        causes.join(", ")
    );
    let before = ops(ftl.nand());
    for _ in 0..n {
        let lba = rng.below(logical as u64) as u32;
        ftl.read(Lba(lba), &mut buf).unwrap();
    }
    let r_ops = ops(ftl.nand()) - before;
    let waf = (st1.nand_program_bytes() - st0.nand_program_bytes()) as f64
        / (st1.host_write_bytes - st0.host_write_bytes) as f64;
    println!(
        "ftl_4k on tlc {} MiB: random write {:.3} NAND ops/host op (WAF {:.2}, {} slots per page), \
         random read {:.3} NAND ops/host op",
        DEVICE_BYTES >> 20,
        w_ops as f64 / n as f64,
        waf,
        slots,
        r_ops as f64 / n as f64,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench_ftl
}
criterion_main!(benches);
