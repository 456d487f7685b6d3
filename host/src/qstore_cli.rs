//! `nandbox qstore pack|extract|info`: the `.qst` container around the chunk records of
//! `nandbox_core::codec::qstore`.
//!
//! ```text
//! header (48 B) | directory | INT8 section | high-precision section
//! ```
//!
//! The INT8 section holds everything an INT8 load needs: per quantized tensor its INT8 records
//! (scales and INT8 values), and every tensor that is not quantized (ZipNN-coded or raw), since
//! both loads need those. The high-precision section starts with the original safetensors header
//! and holds each quantized tensor's high-precision records. So `extract --precision int8` reads
//! the header, the directory and the INT8 section and nothing else; the tool counts the bytes it
//! reads and `--report-bytes-read` prints them. Byte layouts: docs/format/qstore.md.
//!
//! Memory: one tensor at a time (plus per-thread chunk workspaces). `pack` streams the INT8
//! section into the output and the high-precision section into a side file appended at the end,
//! then writes the header and directory; the INT8 extraction streams tensor data into a side
//! file and writes the safetensors header, which needs every length, in front of it.
//!
//! 2-D BF16/F16 tensors are quantized. Everything else (1-D biases and norms, F32 tensors of any
//! shape, other dtypes) is stored plain: ZipNN-coded when its dtype is a float and that is
//! smaller, raw otherwise. A 2-D BF16/F16 tensor so small that its INT8 records alone outweigh
//! its plain form is stored plain too, and the INT8 load quantizes it (same exact quantizer).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use nandbox_core::codec::entropy::{DecoderTables, EncoderScratch};
use nandbox_core::codec::qstore::chunk::{
    hp_record_len, int8_record_len, max_hp_len, max_int8_len, rows_touched, HP_HEADER_LEN,
    INT8_HEADER_LEN,
};
use nandbox_core::codec::qstore::format::{DirEntry, FileHeader, Storage, HEADER_LEN, MAX_DIMS};
use nandbox_core::codec::qstore::{
    chunk_elems, decode_hp, decode_int8, encode_chunk, encode_int8, quantize_row, row_scale,
    HalfKind, QstoreError, Workspace,
};
use nandbox_core::codec::zipnn;

use crate::safetensors::{self, Dtype};
use crate::stdout::outln;

/// The QStore file tool's commands.
#[derive(Subcommand)]
pub enum QstoreCommand {
    /// Store MODEL.safetensors once, for high precision and for INT8.
    Pack {
        /// The model (safetensors).
        model: PathBuf,
        /// The .qst file to write.
        out: PathBuf,
        /// INT8 values to store instead of quantizing: a safetensors file with, per tensor NAME,
        /// an I8 tensor NAME and an F32 tensor NAME.SCB. A tensor whose weights fall outside
        /// these values' runs has its high precision stored ZipNN-coded instead.
        #[arg(long)]
        int8: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long, value_parser = crate::zipnn_cli::parse_threads)]
        threads: Option<usize>,
    },
    /// Write the model at one precision as safetensors.
    Extract {
        /// The .qst file.
        input: PathBuf,
        /// `high`: the original file, byte for byte; `int8`: per quantized tensor NAME an I8
        /// tensor NAME and an F32 tensor NAME.SCB of row scales, other tensors unchanged.
        #[arg(long, value_enum)]
        precision: Precision,
        /// Output safetensors file.
        #[arg(short = 'o', long = "output")]
        out: PathBuf,
        /// Print how many bytes of the .qst file were read.
        #[arg(long)]
        report_bytes_read: bool,
        /// Worker threads (default: all cores).
        #[arg(long, value_parser = crate::zipnn_cli::parse_threads)]
        threads: Option<usize>,
    },
    /// List tensors, their storage and the section sizes.
    Info {
        /// The .qst file.
        input: PathBuf,
    },
}

/// Which model `extract` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// The original BF16/FP16 (and other) tensors.
    High,
    /// LLM.int8: I8 weights and F32 row scales.
    Int8,
}

pub fn run(cmd: QstoreCommand) -> Result<()> {
    match cmd {
        QstoreCommand::Pack {
            model,
            out,
            int8,
            threads,
        } => {
            let t = Instant::now();
            let s = pack(&model, &out, int8.as_deref(), threads_or_default(threads))?;
            let secs = t.elapsed().as_secs_f64();
            outln!(
                "packed {} -> {}: {} -> {} bytes (INT8 section {}, high-precision section {}), {:.1} MB/s",
                model.display(),
                out.display(),
                s.input_len,
                s.output_len,
                s.int8_len,
                s.hp_len,
                s.input_len as f64 / secs / 1e6
            )?;
            Ok(())
        }
        QstoreCommand::Extract {
            input,
            precision,
            out,
            report_bytes_read,
            threads,
        } => {
            let t = Instant::now();
            let (read, total, written) =
                extract(&input, precision, &out, threads_or_default(threads))?;
            let secs = t.elapsed().as_secs_f64();
            if report_bytes_read {
                outln!(
                    "bytes read: {read} of {total} ({:.2}%)",
                    100.0 * read as f64 / total as f64
                )?;
            }
            outln!(
                "extracted {written} bytes in {:.3} s ({:.1} MB/s of output)",
                secs,
                written as f64 / secs / 1e6
            )?;
            Ok(())
        }
        QstoreCommand::Info { input } => info(&input),
    }
}

fn threads_or_default(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get().min(crate::zipnn_cli::MAX_THREADS))
    })
    .max(1)
}

// ---------------------------------------------------------------------------------------------
// Dtypes and tensor geometry.

/// safetensors dtype ↔ the one-byte code in the directory (docs/format/qstore.md).
const DTYPE_CODES: [Dtype; 15] = [
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::F8E5M2,
    Dtype::F8E4M3,
    Dtype::I16,
    Dtype::U16,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I32,
    Dtype::U32,
    Dtype::F32,
    Dtype::F64,
    Dtype::I64,
    Dtype::U64,
];

fn dtype_code(d: Dtype) -> u8 {
    DTYPE_CODES.iter().position(|&x| x == d).unwrap_or(0) as u8
}

fn dtype_from_code(c: u8) -> Option<Dtype> {
    DTYPE_CODES.get(c as usize).copied()
}

/// 2-D BF16/F16 tensors with no zero dimension: the INT8 model holds them as I8 + scales.
fn quantizable(d: Dtype, shape: &[u64]) -> bool {
    half_kind(d).is_some() && shape.len() == 2 && shape.iter().all(|&x| x > 0)
}

fn half_kind(d: Dtype) -> Option<HalfKind> {
    match d {
        Dtype::BF16 => Some(HalfKind::Bf16),
        Dtype::F16 => Some(HalfKind::Fp16),
        _ => None,
    }
}

fn zipnn_dtype(d: Dtype) -> Option<zipnn::Dtype> {
    match d {
        Dtype::BF16 => Some(zipnn::Dtype::Bf16),
        Dtype::F16 => Some(zipnn::Dtype::Fp16),
        Dtype::F32 => Some(zipnn::Dtype::Fp32),
        _ => None,
    }
}

/// One chunk of a quantized tensor: elements `start..start + len`.
#[derive(Clone, Copy, Debug)]
struct ChunkPos {
    start: u64,
    len: usize,
    cols: u64,
}

impl ChunkPos {
    fn col0(&self) -> u32 {
        (self.start % self.cols) as u32
    }
    fn first_row(&self) -> usize {
        (self.start / self.cols) as usize
    }
    fn rows(&self) -> usize {
        rows_touched(self.cols as u32, self.col0(), self.len)
    }
}

fn chunks_of(rows: u64, cols: u64) -> Vec<ChunkPos> {
    let total = rows * cols;
    let step = chunk_elems(cols);
    (0..total.div_ceil(step))
        .map(|k| ChunkPos {
            start: k * step,
            len: (total - k * step).min(step) as usize,
            cols,
        })
        .collect()
}

/// One worker thread's memory, reused by every tensor of a command: a chunk workspace and the
/// two record buffers, so no chunk allocates and zeroes half a megabyte.
struct Scratch {
    ws: Box<Workspace>,
    int8: Vec<u8>,
    hp: Vec<u8>,
}

/// The worker threads' memory; `map` runs jobs on one thread per slot.
struct Workers {
    slots: Vec<Mutex<Scratch>>,
}

impl Workers {
    fn new(threads: usize) -> Workers {
        Workers {
            slots: (0..threads.max(1))
                .map(|_| {
                    Mutex::new(Scratch {
                        ws: Box::new(Workspace::new()),
                        int8: Vec::new(),
                        hp: Vec::new(),
                    })
                })
                .collect(),
        }
    }

    /// Runs `f(scratch, job)` for every job; results come back in job order, the first error
    /// wins.
    fn map<T: Send>(
        &self,
        jobs: usize,
        f: impl Fn(&mut Scratch, usize) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..jobs).map(|_| None).collect());
        std::thread::scope(|s| {
            for slot in self.slots.iter().take(jobs.max(1)) {
                let (next, results, f) = (&next, &results, &f);
                s.spawn(move || {
                    let mut scratch = slot.lock().expect("no worker panics");
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        if j >= jobs {
                            break;
                        }
                        let r = f(&mut scratch, j);
                        let failed = r.is_err();
                        results.lock().expect("no worker panics")[j] = Some(r);
                        if failed {
                            next.store(jobs, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(jobs);
        for r in results.into_inner().expect("no worker panics") {
            match r {
                Some(r) => out.push(r?),
                None => bail!("a chunk was not processed after an earlier error"),
            }
        }
        Ok(out)
    }
}

/// Grows `buf` to at least `n` bytes (contents unspecified: the coders overwrite or clear).
fn at_least(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

// ---------------------------------------------------------------------------------------------
// Pack.

struct PackSummary {
    input_len: u64,
    output_len: u64,
    int8_len: u64,
    hp_len: u64,
}

/// Magic of the record at the start of the high-precision section that keeps the original
/// safetensors header.
const ST_HEADER_MAGIC: [u8; 4] = *b"QSSH";

struct Given {
    q: Vec<i8>,
    scales: Vec<f32>,
}

fn read_given(path: &Path) -> Result<(Vec<u8>, safetensors::Header)> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let h = safetensors::parse(&file).with_context(|| format!("parsing {}", path.display()))?;
    Ok((file, h))
}

fn given_for(
    file: &[u8],
    h: &safetensors::Header,
    name: &str,
    rows: u64,
    cols: u64,
) -> Result<Option<Given>> {
    let Some(q) = h.tensors.iter().find(|t| t.name == name) else {
        return Ok(None);
    };
    let scb_name = format!("{name}.SCB");
    let scb = h
        .tensors
        .iter()
        .find(|t| t.name == scb_name)
        .ok_or_else(|| anyhow!("--int8: tensor {name:?} has no {scb_name:?}"))?;
    if q.dtype != Dtype::I8 || q.shape != [rows, cols] {
        bail!("--int8: {name:?} must be I8 of shape [{rows}, {cols}]");
    }
    if scb.dtype != Dtype::F32 || scb.shape != [rows] {
        bail!("--int8: {scb_name:?} must be F32 of shape [{rows}]");
    }
    let qb = &file[q.range.start as usize..q.range.end as usize];
    let sb = &file[scb.range.start as usize..scb.range.end as usize];
    Ok(Some(Given {
        q: qb.iter().map(|&b| b as i8).collect(),
        scales: sb
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }))
}

fn zipnn_code(dtype: zipnn::Dtype, data: &[u8]) -> Result<Vec<u8>> {
    let chunk = zipnn::DEFAULT_CHUNK_SIZE;
    let mut planes = vec![0u8; data.len().min(chunk as usize)];
    let mut out = vec![0u8; zipnn::max_compressed_len(dtype, chunk, data.len())];
    let mut scratch = Box::new(EncoderScratch::new());
    let n = zipnn::compress(dtype, chunk, data, &mut planes, &mut out, &mut scratch)
        .map_err(|e| anyhow!("ZipNN coding: {e}"))?;
    out.truncate(n);
    Ok(out)
}

fn zipnn_decode(src: &[u8], expected_len: u64) -> Result<Vec<u8>> {
    // A ZipNN chunk of 256 KiB never codes below ~30 bytes; refuse absurd sizes before
    // allocating for them.
    if expected_len > (src.len() as u64 + 1).saturating_mul(1 << 16) {
        bail!(
            "corrupted: {expected_len} bytes cannot come from a {}-byte ZipNN container",
            src.len()
        );
    }
    let h = zipnn::ContainerHeader::parse(src).map_err(|e| anyhow!("{e}"))?;
    if h.total_len != expected_len {
        bail!(
            "corrupted: ZipNN container holds {} bytes, the directory says {expected_len}",
            h.total_len
        );
    }
    let mut planes = vec![0u8; h.chunk_size as usize];
    let mut segments = vec![
        zipnn::Segment {
            dtype: zipnn::Dtype::Raw,
            len: 0
        };
        h.segments as usize
    ];
    let mut out = vec![0u8; expected_len as usize];
    let mut tables = Box::new(DecoderTables::new());
    zipnn::decompress(src, &mut planes, &mut segments, &mut out, &mut tables)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

/// What one tensor contributes to the two sections.
struct Stored {
    storage: Storage,
    int8: Vec<u8>,
    hp: Vec<u8>,
}

/// Packs `model` into `out`, one tensor in memory at a time: the INT8 section streams into the
/// output behind a placeholder header and directory (their size depends only on the tensor
/// names and ranks), the high-precision section into a side file appended at the end, and the
/// header and directory are written last.
fn pack(model: &Path, out: &Path, int8: Option<&Path>, threads: usize) -> Result<PackSummary> {
    // The rename at the end would replace an input with the packed file.
    crate::outpath::ensure_not_input(model, out)?;
    if let Some(i) = int8 {
        crate::outpath::ensure_not_input(i, out)?;
    }
    let mut input = File::open(model).with_context(|| format!("opening {}", model.display()))?;
    let header = safetensors::read_header(&mut input)
        .with_context(|| format!("parsing {}", model.display()))?;
    let given_file = int8.map(read_given).transpose()?;
    let workers = Workers::new(threads);
    let staged = crate::outpath::stage(out, "qst.partial")?;
    let tmp = staged.tmp.clone();
    let hp_tmp = tmp.with_extension("hp.partial");
    for t in [&tmp, &hp_tmp] {
        crate::outpath::ensure_not_input(model, t)?;
    }
    let result = pack_to(
        &mut input,
        &header,
        given_file.as_ref(),
        &workers,
        &tmp,
        &hp_tmp,
    )
    .and_then(|s| {
        staged.finish()?;
        Ok(s)
    });
    let _ = std::fs::remove_file(&hp_tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn pack_to(
    input: &mut File,
    header: &safetensors::Header,
    given_file: Option<&(Vec<u8>, safetensors::Header)>,
    workers: &Workers,
    tmp: &Path,
    hp_tmp: &Path,
) -> Result<PackSummary> {
    let mut entries = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        if t.shape.len() > MAX_DIMS {
            bail!("tensor {:?} has more than {MAX_DIMS} dimensions", t.name);
        }
        let mut dims = [0u64; MAX_DIMS];
        dims[..t.shape.len()].copy_from_slice(&t.shape);
        entries.push(DirEntry {
            name: &t.name,
            dtype: dtype_code(t.dtype),
            storage: Storage::Raw,
            ndim: t.shape.len(),
            dims,
            int8_off: 0,
            int8_len: 0,
            hp_off: 0,
            hp_len: 0,
        });
    }
    let dir_len: usize = entries.iter().map(|e| e.encoded_len()).sum();
    let create = |p: &Path| -> Result<std::io::BufWriter<File>> {
        Ok(std::io::BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))
    };
    let mut o = create(tmp)?;
    o.write_all(&vec![0u8; HEADER_LEN + dir_len])?;
    let mut hp = create(hp_tmp)?;

    // The high-precision section opens with the original header, so `high` is byte-identical.
    hp.write_all(&ST_HEADER_MAGIC)?;
    hp.write_all(&(header.raw_json.len() as u64).to_le_bytes())?;
    hp.write_all(&crc32fast::hash(&header.raw_json).to_le_bytes())?;
    hp.write_all(&header.raw_json)?;
    let mut hp_len = 16 + header.raw_json.len() as u64;
    let mut int8_len = 0u64;
    for (t, e) in header.tensors.iter().zip(entries.iter_mut()) {
        let mut data = vec![0u8; t.len() as usize];
        input.seek(SeekFrom::Start(t.range.start))?;
        input
            .read_exact(&mut data)
            .with_context(|| format!("reading tensor {:?}", t.name))?;
        let s = pack_tensor(t, &data, given_file, workers)
            .with_context(|| format!("tensor {:?}", t.name))?;
        e.storage = s.storage;
        e.int8_off = int8_len;
        e.int8_len = s.int8.len() as u64;
        e.hp_off = hp_len;
        e.hp_len = s.hp.len() as u64;
        o.write_all(&s.int8)?;
        hp.write_all(&s.hp)?;
        int8_len += e.int8_len;
        hp_len += e.hp_len;
    }
    hp.into_inner().map_err(|e| e.into_error())?;
    let mut hp_in = File::open(hp_tmp)?;
    std::io::copy(&mut hp_in, &mut o).context("appending the high-precision section")?;

    let mut dir = vec![0u8; dir_len];
    let mut at = 0;
    for e in &entries {
        at += e.write(&mut dir[at..]).map_err(|e| anyhow!("{e}"))?;
    }
    let fh = FileHeader {
        tensors: u32::try_from(entries.len()).context("too many tensors")?,
        dir_len: dir_len as u64,
        int8_len,
        hp_len,
        dir_crc: crc32fast::hash(&dir),
    };
    let mut hb = [0u8; HEADER_LEN];
    fh.write(&mut hb);
    let mut f = o.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&hb)?;
    f.write_all(&dir)?;
    f.sync_all().context("writing the .qst file")?;
    Ok(PackSummary {
        input_len: header.file_len,
        output_len: HEADER_LEN as u64 + fh.dir_len + fh.int8_len + fh.hp_len,
        int8_len: fh.int8_len,
        hp_len: fh.hp_len,
    })
}

fn pack_tensor(
    t: &safetensors::TensorInfo,
    data: &[u8],
    given_file: Option<&(Vec<u8>, safetensors::Header)>,
    workers: &Workers,
) -> Result<Stored> {
    // Plain storage: ZipNN when it is smaller than the bytes themselves (not for tiny tensors,
    // whose container header outweighs them), raw otherwise.
    let plain = || -> Result<Stored> {
        let mut raw = data.to_vec();
        raw.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        if let Some(zd) = zipnn_dtype(t.dtype).filter(|_| !data.is_empty()) {
            let z = zipnn_code(zd, data)?;
            if z.len() < raw.len() {
                return Ok(Stored {
                    storage: Storage::Zipnn,
                    int8: z,
                    hp: Vec::new(),
                });
            }
        }
        Ok(Stored {
            storage: Storage::Raw,
            int8: raw,
            hp: Vec::new(),
        })
    };
    let Some(kind) = half_kind(t.dtype).filter(|_| quantizable(t.dtype, &t.shape)) else {
        return plain();
    };
    let (rows, cols) = (t.shape[0], t.shape[1]);
    if cols > u32::MAX as u64 {
        bail!("rows wider than 2^32 elements are not supported");
    }
    let w: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let given = match given_file {
        Some((f, h)) => given_for(f, h, &t.name, rows, cols)?,
        None => None,
    };
    let scales: Vec<f32> = match &given {
        Some(g) => g.scales.clone(),
        None => w
            .chunks_exact(cols as usize)
            .map(|row| row_scale(kind, row).1)
            .collect(),
    };
    let chunks = chunks_of(rows, cols);
    let coded = workers.map(chunks.len(), |scratch, k| {
        let c = chunks[k];
        let r0 = c.first_row();
        let ws_w = &w[c.start as usize..c.start as usize + c.len];
        let sc = &scales[r0..r0 + c.rows()];
        let gq = given
            .as_ref()
            .map(|g| &g.q[c.start as usize..c.start as usize + c.len]);
        let Scratch { ws, int8, hp } = scratch;
        let i8b = at_least(int8, max_int8_len(c.len, c.rows()));
        let hpb = at_least(hp, max_hp_len(c.len));
        match encode_chunk(kind, cols as u32, c.col0(), ws_w, sc, gq, ws, i8b, hpb) {
            Ok((a, b)) => Ok(Some((i8b[..a].to_vec(), hpb[..b].to_vec()))),
            Err(QstoreError::NotContained(_)) if given.is_some() => Ok(None),
            Err(e) => Err(anyhow!("chunk {k}: {e}")),
        }
    })?;
    if coded.iter().all(|c| c.is_some()) {
        let mut s = Stored {
            storage: Storage::Qstore,
            int8: Vec::new(),
            hp: Vec::new(),
        };
        for (a, b) in coded.into_iter().flatten() {
            s.int8.extend_from_slice(&a);
            s.hp.extend_from_slice(&b);
        }
        // A tiny tensor's record headers can outweigh its data. When even the INT8 records
        // alone are larger than the plain tensor, keep it plain in the INT8 section and let the
        // INT8 load quantize it (the quantizer is exact, so the INT8 model is the same): both
        // loads then read less. Not for given INT8 values, which may differ from the quantizer's.
        // Only a one-chunk tensor can be that small; skip the trial coding of the others.
        if given.is_none() && chunks.len() == 1 {
            let p = plain()?;
            if p.int8.len() <= s.int8.len() {
                return Ok(p);
            }
        }
        return Ok(s);
    }
    // Given INT8 values that do not contain the weights: keep them for the INT8 load, and the
    // high precision as plain ZipNN.
    let g = given
        .as_ref()
        .expect("only given values can fail containment");
    let mut scratch = workers.slots[0].lock().expect("no worker panics");
    let ws = &mut scratch.ws;
    let mut int8 = Vec::new();
    for c in &chunks {
        let r0 = c.first_row();
        let mut i8b = vec![0u8; max_int8_len(c.len, c.rows())];
        let n = encode_int8(
            cols as u32,
            c.col0(),
            &g.q[c.start as usize..c.start as usize + c.len],
            &scales[r0..r0 + c.rows()],
            ws,
            &mut i8b,
        )
        .map_err(|e| anyhow!("{e}"))?;
        int8.extend_from_slice(&i8b[..n]);
    }
    let zd = zipnn_dtype(t.dtype).expect("BF16/F16 have a ZipNN dtype");
    Ok(Stored {
        storage: Storage::QstoreFallback,
        int8,
        hp: zipnn_code(zd, data)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading a .qst file.

/// A .qst file read by ranges, counting every byte read.
struct Source {
    file: File,
    len: u64,
    read: u64,
}

impl Source {
    fn open(path: &Path) -> Result<Source> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        Ok(Source { file, len, read: 0 })
    }

    fn read_at(&mut self, off: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            bail!(
                "{what}: bytes {off}+{len} lie beyond the end of the {}-byte file (truncated?)",
                self.len
            );
        }
        let mut buf = vec![0u8; len as usize];
        self.file.seek(SeekFrom::Start(off))?;
        self.file
            .read_exact(&mut buf)
            .with_context(|| format!("reading {what}"))?;
        self.read += len;
        Ok(buf)
    }
}

/// A directory entry with owned name.
struct Entry {
    name: String,
    dtype: Dtype,
    storage: Storage,
    shape: Vec<u64>,
    int8_off: u64,
    int8_len: u64,
    hp_off: u64,
    hp_len: u64,
}

impl Entry {
    fn bytes(&self) -> Result<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("tensor {:?}: corrupted: shape overflows", self.name))
    }
}

struct Opened {
    src: Source,
    header: FileHeader,
    entries: Vec<Entry>,
}

fn open(path: &Path) -> Result<Opened> {
    let mut src = Source::open(path)?;
    let hb = src.read_at(0, HEADER_LEN as u64, "file header")?;
    let header =
        FileHeader::new_checked(&hb, src.len).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let dir = src.read_at(HEADER_LEN as u64, header.dir_len, "directory")?;
    if crc32fast::hash(&dir) != header.dir_crc {
        bail!("{}: corrupted: directory CRC", path.display());
    }
    let mut entries = Vec::new();
    let mut at = 0usize;
    for i in 0..header.tensors {
        let (e, n) =
            DirEntry::parse(&dir[at..]).map_err(|e| anyhow!("directory entry {i}: {e}"))?;
        at += n;
        e.check_ranges(header.int8_len, header.hp_len)
            .map_err(|err| anyhow!("tensor {:?}: {err}", e.name))?;
        let dtype = dtype_from_code(e.dtype)
            .ok_or_else(|| anyhow!("tensor {:?}: unknown dtype code {}", e.name, e.dtype))?;
        let entry = Entry {
            name: e.name.to_string(),
            dtype,
            storage: e.storage,
            shape: e.dims[..e.ndim].to_vec(),
            int8_off: e.int8_off,
            int8_len: e.int8_len,
            hp_off: e.hp_off,
            hp_len: e.hp_len,
        };
        if matches!(entry.storage, Storage::Qstore | Storage::QstoreFallback)
            && (half_kind(dtype).is_none()
                || entry.shape.len() != 2
                || entry.shape.contains(&0)
                || entry.shape[1] > u32::MAX as u64)
        {
            bail!(
                "tensor {:?}: corrupted: quantized storage for a {dtype} tensor of shape {:?}",
                entry.name,
                entry.shape
            );
        }
        let bytes = entry.bytes()?;
        // Sizes a record can describe, checked before anything is allocated for them.
        if matches!(entry.storage, Storage::Qstore | Storage::QstoreFallback) {
            let chunks = (bytes / 2).div_ceil(chunk_elems(entry.shape[1]));
            let hp_min = if entry.storage == Storage::Qstore {
                HP_HEADER_LEN as u64
            } else {
                0
            };
            if chunks.saturating_mul(INT8_HEADER_LEN as u64) > entry.int8_len
                || chunks.saturating_mul(hp_min) > entry.hp_len
            {
                bail!(
                    "tensor {:?}: corrupted: {chunks} chunks cannot fit in its {} + {} bytes",
                    entry.name,
                    entry.int8_len,
                    entry.hp_len
                );
            }
        }
        entries.push(entry);
    }
    if at != dir.len() {
        bail!(
            "{}: corrupted: directory has {} trailing bytes",
            path.display(),
            dir.len() - at
        );
    }
    Ok(Opened {
        src,
        header,
        entries,
    })
}

/// Splits a tensor's concatenated records into one slice per chunk.
fn split_records<'a>(
    part: &'a [u8],
    n_chunks: usize,
    len_of: fn(&[u8]) -> Result<usize, QstoreError>,
    what: &str,
) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::with_capacity(n_chunks);
    let mut at = 0usize;
    for k in 0..n_chunks {
        let rest = &part[at..];
        let n = len_of(rest).map_err(|e| anyhow!("{what} chunk {k}: {e}"))?;
        let rec = rest
            .get(..n)
            .ok_or_else(|| anyhow!("{what} chunk {k}: corrupted: record truncated"))?;
        out.push(rec);
        at += n;
    }
    if at != part.len() {
        bail!(
            "{what}: corrupted: {} bytes after the last chunk",
            part.len() - at
        );
    }
    Ok(out)
}

/// Decodes a non-quantized tensor (stored in the INT8 section).
fn decode_plain(e: &Entry, part: &[u8]) -> Result<Vec<u8>> {
    let len = e.bytes()?;
    match e.storage {
        Storage::Raw => {
            if part.len() as u64 != len + 4 {
                bail!("corrupted: raw tensor length");
            }
            let (data, crc) = part.split_at(part.len() - 4);
            if crc32fast::hash(data).to_le_bytes() != crc {
                bail!("corrupted: raw tensor CRC");
            }
            Ok(data.to_vec())
        }
        Storage::Zipnn => zipnn_decode(part, len),
        _ => bail!("not a plain tensor"),
    }
}

/// Quantizes a plainly stored 2-D tensor, for the INT8 load: I8 bytes and row scales.
fn quantize_plain(kind: HalfKind, cols: u64, data: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let w: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut q = vec![0i8; w.len()];
    let mut scales = Vec::with_capacity(w.len() / cols as usize);
    for (row, qr) in w
        .chunks_exact(cols as usize)
        .zip(q.chunks_exact_mut(cols as usize))
    {
        scales.push(quantize_row(kind, row, qr));
    }
    (q.into_iter().map(|v| v as u8).collect(), scales)
}

/// INT8 values and row scales of a quantized tensor.
fn decode_int8_tensor(e: &Entry, part: &[u8], workers: &Workers) -> Result<(Vec<u8>, Vec<f32>)> {
    let (rows, cols) = (e.shape[0], e.shape[1]);
    let chunks = chunks_of(rows, cols);
    let recs = split_records(part, chunks.len(), int8_record_len, "INT8 record")?;
    let parts = workers.map(chunks.len(), |scratch, k| {
        let ws = &mut scratch.ws;
        let c = chunks[k];
        let mut q = vec![0i8; c.len];
        let mut s = vec![0f32; c.rows()];
        let (n, _) = decode_int8(recs[k], cols as u32, c.col0(), &mut q, &mut s, ws)
            .map_err(|e| anyhow!("INT8 record chunk {k}: {e}"))?;
        if n != c.len {
            bail!(
                "INT8 record chunk {k}: corrupted: holds {n} weights, expected {}",
                c.len
            );
        }
        Ok((q, s))
    })?;
    let mut q = Vec::with_capacity((rows * cols) as usize);
    let mut scales = vec![0f32; rows as usize];
    for (c, (qc, sc)) in chunks.iter().zip(parts) {
        q.extend(qc.iter().map(|&v| v as u8));
        let r0 = c.first_row();
        for (k, s) in sc.into_iter().enumerate() {
            // A row cut over several chunks repeats its scale; they must agree.
            if c.col0() != 0 && k == 0 && scales[r0].to_bits() != s.to_bits() {
                bail!("corrupted: row {r0} has two different scales");
            }
            scales[r0 + k] = s;
        }
    }
    Ok((q, scales))
}

/// High-precision bytes of a quantized tensor.
fn decode_hp_tensor(
    e: &Entry,
    int8_part: &[u8],
    hp_part: &[u8],
    workers: &Workers,
) -> Result<Vec<u8>> {
    if e.storage == Storage::QstoreFallback {
        return zipnn_decode(hp_part, e.bytes()?);
    }
    let kind = half_kind(e.dtype).expect("checked at open");
    let (rows, cols) = (e.shape[0], e.shape[1]);
    let chunks = chunks_of(rows, cols);
    let i8recs = split_records(int8_part, chunks.len(), int8_record_len, "INT8 record")?;
    let hprecs = split_records(
        hp_part,
        chunks.len(),
        hp_record_len,
        "high-precision record",
    )?;
    let parts = workers.map(chunks.len(), |scratch, k| {
        let ws = &mut scratch.ws;
        let c = chunks[k];
        let mut out = vec![0u16; c.len];
        let n = decode_hp(
            kind,
            cols as u32,
            c.col0(),
            i8recs[k],
            hprecs[k],
            ws,
            &mut out,
        )
        .map_err(|e| anyhow!("chunk {k}: {e}"))?;
        if n != c.len {
            bail!(
                "chunk {k}: corrupted: holds {n} weights, expected {}",
                c.len
            );
        }
        Ok(out)
    })?;
    let mut bytes = Vec::with_capacity((rows * cols * 2) as usize);
    for p in parts {
        for w in p {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
    }
    Ok(bytes)
}

/// Writes the output next to its final name and renames it into place, so a failed
/// extraction leaves no half-written model behind.
fn extract(
    input: &Path,
    precision: Precision,
    out: &Path,
    threads: usize,
) -> Result<(u64, u64, u64)> {
    // The rename at the end would replace the .qst with the extracted model.
    crate::outpath::ensure_not_input(input, out)?;
    let staged = crate::outpath::stage(out, "partial")?;
    let tmp = staged.tmp.clone();
    crate::outpath::ensure_not_input(input, &tmp)?;
    match extract_to(input, precision, &tmp, threads) {
        Ok(r) => {
            if let Err(e) = staged.finish() {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn extract_to(
    input: &Path,
    precision: Precision,
    tmp: &Path,
    threads: usize,
) -> Result<(u64, u64, u64)> {
    let Opened {
        mut src,
        header,
        entries,
    } = open(input)?;
    let workers = Workers::new(threads);
    let int8_base = header.int8_start();
    let hp_base = header.hp_start();
    let mut w = std::io::BufWriter::new(
        File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut written = 0u64;
    match precision {
        Precision::High => {
            let rec = src.read_at(hp_base, 16.min(header.hp_len), "original header record")?;
            if rec.len() < 16 || rec[..4] != ST_HEADER_MAGIC {
                bail!("corrupted: original safetensors header record magic");
            }
            let json_len = u64::from_le_bytes(rec[4..12].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
            if json_len > safetensors::MAX_HEADER_LEN || 16 + json_len > header.hp_len {
                bail!("corrupted: original safetensors header length");
            }
            let json = src.read_at(hp_base + 16, json_len, "original safetensors header")?;
            if crc32fast::hash(&json) != crc {
                bail!("corrupted: original safetensors header CRC");
            }
            // The header must describe exactly the tensors of the directory, in order.
            let mut total = 8 + json_len;
            for e in &entries {
                total = total
                    .checked_add(e.bytes()?)
                    .ok_or_else(|| anyhow!("corrupted: tensor sizes overflow"))?;
            }
            let st = safetensors::parse_header(&json, total)
                .context("corrupted: original safetensors header")?;
            if st.tensors.len() != entries.len()
                || st
                    .tensors
                    .iter()
                    .zip(&entries)
                    .any(|(t, e)| t.name != e.name || t.dtype != e.dtype || t.shape != e.shape)
            {
                bail!("corrupted: original safetensors header does not match the directory");
            }
            w.write_all(&json_len.to_le_bytes())?;
            w.write_all(&json)?;
            written += 8 + json_len;
            for e in &entries {
                let int8_part = src.read_at(int8_base + e.int8_off, e.int8_len, &e.name)?;
                let data = match e.storage {
                    Storage::Raw | Storage::Zipnn => decode_plain(e, &int8_part),
                    Storage::Qstore | Storage::QstoreFallback => {
                        if e.hp_off < 16 + json_len {
                            bail!("tensor {:?}: corrupted: overlaps the header record", e.name);
                        }
                        let hp_part = src.read_at(hp_base + e.hp_off, e.hp_len, &e.name)?;
                        decode_hp_tensor(e, &int8_part, &hp_part, &workers)
                    }
                }
                .with_context(|| format!("tensor {:?}", e.name))?;
                w.write_all(&data)?;
                written += data.len() as u64;
            }
        }
        Precision::Int8 => {
            // Tensor data streams into a side file; the header, which needs every length, is
            // written first once they are all known.
            let data_tmp = tmp.with_extension("data.partial");
            let r =
                int8_data(&mut src, &entries, int8_base, &workers, &data_tmp).and_then(|meta| {
                    let json = int8_header(&meta)?;
                    w.write_all(&(json.len() as u64).to_le_bytes())?;
                    w.write_all(&json)?;
                    let mut d = File::open(&data_tmp)?;
                    let n = std::io::copy(&mut d, &mut w).context("writing the INT8 model")?;
                    Ok(8 + json.len() as u64 + n)
                });
            let _ = std::fs::remove_file(&data_tmp);
            written = r?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((src.read, src.len, written))
}

/// One tensor of the INT8 model: name, dtype, shape, byte length.
type Int8Meta = (String, Dtype, Vec<u64>, u64);

/// Decodes every tensor an INT8 load needs, in directory order, appending its bytes to the
/// file `path`; returns what the header must list.
fn int8_data(
    src: &mut Source,
    entries: &[Entry],
    int8_base: u64,
    workers: &Workers,
    path: &Path,
) -> Result<Vec<Int8Meta>> {
    let mut d = std::io::BufWriter::new(
        File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut meta = Vec::new();
    let mut put = |name: String, dtype: Dtype, shape: Vec<u64>, data: &[u8]| -> Result<()> {
        d.write_all(data)?;
        meta.push((name, dtype, shape, data.len() as u64));
        Ok(())
    };
    for e in entries {
        let part = src.read_at(int8_base + e.int8_off, e.int8_len, &e.name)?;
        let (q, s) = match e.storage {
            Storage::Raw | Storage::Zipnn => {
                let data =
                    decode_plain(e, &part).with_context(|| format!("tensor {:?}", e.name))?;
                match half_kind(e.dtype).filter(|_| quantizable(e.dtype, &e.shape)) {
                    Some(kind) => quantize_plain(kind, e.shape[1], &data),
                    None => {
                        put(e.name.clone(), e.dtype, e.shape.clone(), &data)?;
                        continue;
                    }
                }
            }
            Storage::Qstore | Storage::QstoreFallback => decode_int8_tensor(e, &part, workers)
                .with_context(|| format!("tensor {:?}", e.name))?,
        };
        put(e.name.clone(), Dtype::I8, e.shape.clone(), &q)?;
        let sb: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(format!("{}.SCB", e.name), Dtype::F32, vec![e.shape[0]], &sb)?;
    }
    d.into_inner().map_err(|e| e.into_error())?;
    Ok(meta)
}

/// The safetensors header of the INT8 model (JSON padded with spaces to a multiple of 8 bytes,
/// as the reference writer does).
fn int8_header(meta: &[Int8Meta]) -> Result<Vec<u8>> {
    let mut obj = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, len) in meta {
        if obj.contains_key(name) {
            bail!("the INT8 model would hold two tensors named {name:?}");
        }
        let end = offset + len;
        obj.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut raw = serde_json::to_vec(&serde_json::Value::Object(obj))?;
    while raw.len() % 8 != 0 {
        raw.push(b' ');
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------------------------
// Info.

fn info(input: &Path) -> Result<()> {
    let o = open(input)?;
    let h = &o.header;
    let total = o.src.len;
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    outln!(
        "{}: {total} bytes, format version 1, {} tensors",
        input.display(),
        h.tensors
    )?;
    outln!(
        "  header + directory      {:>12} bytes ({:.2}%)",
        HEADER_LEN as u64 + h.dir_len,
        pct(HEADER_LEN as u64 + h.dir_len)
    )?;
    outln!(
        "  INT8 section            {:>12} bytes ({:.2}%)",
        h.int8_len,
        pct(h.int8_len)
    )?;
    outln!(
        "  high-precision section  {:>12} bytes ({:.2}%)",
        h.hp_len,
        pct(h.hp_len)
    )?;
    outln!(
        "  an INT8 load reads      {:>12} bytes ({:.2}%)",
        h.hp_start(),
        pct(h.hp_start())
    )?;
    outln!(
        "{:<56} {:>5} {:>14} {:>13} {:>12} {:>12} {:>12}",
        "tensor",
        "dtype",
        "shape",
        "storage",
        "bytes",
        "INT8 bytes",
        "HP bytes"
    )?;
    for e in &o.entries {
        let storage = match e.storage {
            Storage::Raw => "raw",
            Storage::Zipnn => "zipnn",
            Storage::Qstore => "qstore",
            Storage::QstoreFallback => "qstore+zipnn",
        };
        outln!(
            "{:<56} {:>5} {:>14} {:>13} {:>12} {:>12} {:>12}",
            e.name,
            e.dtype.name(),
            format!("{:?}", e.shape),
            storage,
            e.bytes()?,
            e.int8_len,
            e.hp_len
        )?;
    }
    Ok(())
}
