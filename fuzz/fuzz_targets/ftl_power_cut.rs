//! The FTL against a reference disk, with a power cut where the fuzzer says.
//!
//! Input: bytes 0..2 are the cut point (NAND operations before the torn one; past the end of the
//! workload means the power goes off after the last operation, with no flush); byte 2: bit 7
//! turns the delta engine on (writes are then small updates it keeps as deltas), bit 0 asks for
//! a second cut during the recovery that follows, bits 1..7 its depth; the rest are operations
//! (2 bytes each: kind, LBA).
//! After the cut the array is remounted and every LBA must read its last flushed version or one
//! written since (DESIGN.md, "Guarantees"): never a torn mix, garbage or another block's data.
//! Then the recovered FTL must take more writes, flush, remount cleanly and read them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::SLOT_BYTES;
use nandbox_fuzz::{config, content, delta_content, geometry, version_of, Lent, LOGICAL};
use nandbox_sim::{OwnedFtlMemory, SimNand};

#[derive(Clone, Copy, Debug)]
enum Op {
    Write(u32, u32),
    Trim(u32, u32),
    Flush,
    Idle,
}

/// Per LBA: the flushed version and every version written (or trimmed: 0) since.
struct Model {
    flushed: Vec<u32>,
    since: Vec<Vec<u32>>,
}

impl Model {
    fn new() -> Model {
        Model {
            flushed: vec![0; LOGICAL as usize],
            since: vec![Vec::new(); LOGICAL as usize],
        }
    }
    fn apply(&mut self, op: Op) {
        match op {
            Op::Write(l, v) => self.since[l as usize].push(v),
            Op::Trim(first, n) => (first..first + n).for_each(|l| self.since[l as usize].push(0)),
            Op::Flush => {
                for (f, s) in self.flushed.iter_mut().zip(&mut self.since) {
                    if let Some(&last) = s.last() {
                        *f = last;
                    }
                    s.clear();
                }
            }
            Op::Idle => {}
        }
    }
    fn check(&self, ftl: &mut Ftl<'_, impl nandbox_core::nand::Nand>, at: &str) -> Vec<u32> {
        let mut buf = [0u8; SLOT_BYTES];
        (0..LOGICAL)
            .map(|lba| {
                ftl.read(Lba(lba), &mut buf)
                    .unwrap_or_else(|e| panic!("{at}: read {lba}: {e:?}"));
                let v = version_of(lba, &buf)
                    .unwrap_or_else(|| panic!("{at}: LBA {lba} reads garbage or another's data"));
                let i = lba as usize;
                assert!(
                    self.flushed[i] == v || self.since[i].contains(&v),
                    "{at}: LBA {lba} reads v{v}; flushed v{}, since {:?}",
                    self.flushed[i],
                    self.since[i]
                );
                v
            })
            .collect()
    }
}

fn ops(bytes: &[u8]) -> Vec<Op> {
    let mut v = 1;
    bytes
        .chunks_exact(2)
        .take(600)
        .map(|b| {
            let lba = b[1] as u32 % LOGICAL;
            match b[0] % 16 {
                0 => Op::Trim(lba, (b[0] as u32 >> 4) % 8 + 1).clamp_trim(),
                1 | 2 => Op::Flush,
                3 => Op::Idle,
                _ => {
                    v += 1;
                    Op::Write(lba, v)
                }
            }
        })
        .collect()
}

trait ClampTrim {
    fn clamp_trim(self) -> Self;
}

impl ClampTrim for Op {
    fn clamp_trim(self) -> Op {
        match self {
            Op::Trim(first, n) => Op::Trim(first, n.min(LOGICAL - first)),
            other => other,
        }
    }
}

fn block(delta: bool, l: u32, v: u32) -> [u8; SLOT_BYTES] {
    if delta {
        delta_content(l, v)
    } else {
        content(l, v)
    }
}

fn run(ftl: &mut Ftl<'_, SimNand>, op: Op, delta: bool) -> bool {
    let r = match op {
        Op::Write(l, v) => ftl.write(Lba(l), &block(delta, l, v)),
        Op::Trim(first, n) => ftl.trim(Lba(first), n),
        Op::Flush => ftl.flush(),
        Op::Idle => ftl.idle().map(|_| ()),
    };
    r.is_ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let cut = u16::from_le_bytes([data[0], data[1]]) as u64;
    let recovery_cut = data[2] & 0x7F;
    let delta = data[2] & 0x80 != 0;
    let ops = ops(&data[3..]);
    let (g, cfg) = (geometry(), config());
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    ftl.set_delta(delta);
    ftl.nand_mut().power_cut_after(cut);
    let mut model = Model::new();
    for &op in &ops {
        if run(&mut ftl, op, delta) {
            model.apply(op);
        } else {
            assert!(
                ftl.nand().power_lost(),
                "cut {cut}: {op:?} failed without a cut"
            );
            // The operation in flight may or may not have taken effect.
            if !matches!(op, Op::Flush) {
                model.apply(op);
            }
            break;
        }
    }
    let mut nand = ftl.into_nand();
    nand.restore_power();
    if recovery_cut & 1 == 1 {
        let depth = u64::from(recovery_cut >> 1);
        nand.power_cut_after(depth);
        if Ftl::mount(Lent(&mut nand), mem.lend()).is_err() {
            assert!(nand.power_lost(), "cut {cut}: mount failed without a cut");
        }
        nand.restore_power();
    }
    let at = format!("cut {cut}, recovery byte {recovery_cut}, delta {delta}");
    let mut ftl =
        Ftl::mount(nand, mem.lend()).unwrap_or_else(|e| panic!("{at}: mount failed: {e:?}"));
    ftl.set_delta(delta);
    let seen = model.check(&mut ftl, &at);
    // What was read is now the state to keep; write over it, flush, remount, compare.
    let mut model = Model::new();
    model.flushed = seen;
    for i in 0..16u32 {
        let lba = (i * 7 + cut as u32) % LOGICAL;
        let v = 1_000_000 + i;
        ftl.write(Lba(lba), &block(delta, lba, v))
            .unwrap_or_else(|e| panic!("{at}: write after recovery: {e:?}"));
        model.apply(Op::Write(lba, v));
    }
    ftl.flush()
        .unwrap_or_else(|e| panic!("{at}: flush after recovery: {e:?}"));
    model.apply(Op::Flush);
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap_or_else(|e| panic!("{at}: remount: {e:?}"));
    model.check(&mut ftl, &format!("{at}, after recovery"));
});
