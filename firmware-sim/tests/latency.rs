//! The latency model keeps dies and channels busy the way the profile says.

use nandbox_core::nand::{Nand, PageId};
use nandbox_sim::latency::{LatencyModel, Timed};
use nandbox_sim::{profile, SimNand};

#[test]
fn one_read_costs_read_time_plus_transfer() {
    let p = profile::TLC;
    let g = p.geometry(4);
    let mut m = LatencyModel::new(p, &g);
    m.begin(1_000);
    m.read(PageId(7), 4096);
    assert_eq!(m.completion(), 1_000 + p.read_ns + p.transfer_ns(4096));
}

#[test]
fn programs_on_all_dies_overlap_and_a_second_round_queues() {
    let p = profile::TLC;
    let g = p.geometry(4);
    let mut m = LatencyModel::new(p, &g);
    m.begin(0);
    let dies = p.dies();
    for page in 0..dies {
        m.program(PageId(page));
    }
    // Transfers on a channel are serialised (dies_per_channel of them), programs overlap.
    let one_round = p.dies_per_channel as u64 * p.transfer_ns(p.page_bytes as u64) + p.program_ns;
    assert_eq!(m.completion(), one_round);
    for page in dies..2 * dies {
        m.program(PageId(page));
    }
    assert!(
        m.completion() >= 2 * p.program_ns,
        "each die programs two pages in sequence"
    );
    assert!(m.completion() < 2 * one_round + p.program_ns);
}

#[test]
fn timed_nand_forwards_and_accounts() {
    let p = profile::FEMU;
    let g = p.geometry(2);
    let mut t = Timed::new(SimNand::new_ram(g), Some(LatencyModel::new(p, &g)));
    t.model().unwrap().begin(0);
    let (d, s) = (vec![1u8; 4096], vec![2u8; g.spare_bytes as usize]);
    t.program(PageId(0), &d, &s).unwrap();
    assert_eq!(
        t.model().unwrap().completion(),
        p.transfer_ns(4096) + p.program_ns
    );
    assert_eq!(t.inner().counters().programs, 1);
    t.erase(nandbox_core::nand::BlockId(0)).unwrap();
    assert_eq!(
        t.model().unwrap().completion(),
        p.transfer_ns(4096) + p.program_ns + p.erase_ns
    );
}
