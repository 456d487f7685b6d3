//! TEMPORARY: a sparse RAM block device so the NBD server can be tested end to end before the
//! firmware backend (`backend.rs`) lands. It is deleted when `serve` switches to the backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::{BlockDevice, DevError, DeviceOptions, Extent, ZeroFlags};

const BLOCK: u64 = 4096;
const SHARDS: usize = 16;

pub fn open(opts: &DeviceOptions) -> anyhow::Result<Arc<dyn BlockDevice>> {
    anyhow::ensure!(
        opts.size.is_multiple_of(BLOCK),
        "size must be a multiple of 4096"
    );
    Ok(Arc::new(RamDisk {
        size: opts.size,
        read_only: opts.read_only,
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        read_bytes: AtomicU64::new(0),
        write_bytes: AtomicU64::new(0),
    }))
}

struct RamDisk {
    size: u64,
    read_only: bool,
    shards: Vec<Mutex<HashMap<u64, Box<[u8]>>>>,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
}

impl RamDisk {
    fn shard(&self, block: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        self.shards[(block as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
    fn check(&self, offset: u64, len: u64) -> Result<(), DevError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size && len > 0 => Ok(()),
            _ => Err(DevError::Invalid("out of range".into())),
        }
    }
    /// Visits each 4 KiB block piece of `[offset, offset+len)`: (block, offset in block, length).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut pos = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let block = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            pos += n as u64;
            Some((block, within, n))
        })
    }
    fn fill(&self, offset: u64, len: u64, data: Option<&[u8]>) {
        let mut done = 0usize;
        for (block, within, n) in Self::pieces(offset, len) {
            let mut shard = self.shard(block);
            match data {
                Some(d) => {
                    let b = shard
                        .entry(block)
                        .or_insert_with(|| vec![0u8; BLOCK as usize].into());
                    b[within..within + n].copy_from_slice(&d[done..done + n]);
                }
                None if n == BLOCK as usize => {
                    shard.remove(&block);
                }
                None => {
                    if let Some(b) = shard.get_mut(&block) {
                        b[within..within + n].fill(0);
                    }
                }
            }
            done += n;
        }
    }
}

impl BlockDevice for RamDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.check(offset, buf.len() as u64)?;
        let mut done = 0usize;
        for (block, within, n) in Self::pieces(offset, buf.len() as u64) {
            match self.shard(block).get(&block) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        self.read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), DevError> {
        if self.read_only {
            return Err(DevError::ReadOnly);
        }
        self.check(offset, data.len() as u64)?;
        self.fill(offset, data.len() as u64, Some(data));
        self.write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), DevError> {
        self.check(offset, len)?;
        self.fill(offset, len, None);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> Result<(), DevError> {
        self.check(offset, len)?;
        self.fill(offset, len, None);
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        self.check(offset, u64::from(len))?;
        Ok(Self::pieces(offset, u64::from(len))
            .map(|(block, _, n)| Extent {
                length: n as u32,
                flags: if self.shard(block).contains_key(&block) {
                    0
                } else {
                    3
                },
            })
            .collect())
    }
    fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "host_read_bytes": self.read_bytes.load(Ordering::Relaxed),
            "host_write_bytes": self.write_bytes.load(Ordering::Relaxed),
            "nand_read_pages": 0, "nand_program_pages": 0, "nand_erase_blocks": 0,
            "nand_program_bytes": {"data": 0, "delta": 0, "node": 0, "compact": 0, "gc": 0,
                                   "checkpoint": 0, "padding": 0, "total": 0},
            "waf": 0.0,
            "erase_count": {"min": 0, "max": 0, "mean": 0.0},
        })
    }
    fn shutdown(&self) -> Result<(), DevError> {
        Ok(())
    }
}
