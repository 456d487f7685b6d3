//! `nandbox zipnn compress|decompress`: the ZipNN container as a file tool.
//!
//! The tool drives [`nandbox_core::codec::zipnn`]'s chunk functions: it reads a batch of chunks,
//! codes them on `--threads` threads (each with its own scratch memory), and writes the records
//! in order, so memory stays at a few chunks per thread whatever the file size.
//!
//! A `.safetensors` input (by extension or by its header) becomes one raw segment holding the
//! 8-byte length and JSON header, then one segment per tensor in file order, coded by the
//! tensor's dtype (F32, F16, BF16; everything else stored raw). Decompression concatenates the
//! segments, so it gives back the identical file without having to understand it.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use nandbox_core::codec::entropy::{DecoderTables, EncoderScratch};
use nandbox_core::codec::zipnn::{self, ContainerHeader, Dtype, Segment, ZipnnError};

use crate::safetensors;

/// Inputs larger than this show a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Chunks handed to each thread per batch: enough to amortise spawning, few enough to bound
/// memory (a batch is `threads × CHUNKS_PER_THREAD × 256 KiB`).
const CHUNKS_PER_THREAD: usize = 8;

/// The ZipNN file tool's commands.
#[derive(Subcommand)]
pub enum ZipnnCommand {
    /// Compress a safetensors file, or a raw tensor payload given `--dtype`.
    Compress(CompressArgs),
    /// Restore the original file from a container.
    Decompress(DecompressArgs),
}

/// Element type of a raw payload.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// IEEE single precision.
    Fp32,
}

/// `nandbox zipnn compress`.
#[derive(Args)]
pub struct CompressArgs {
    /// File to compress.
    input: PathBuf,
    /// Container to write.
    output: PathBuf,
    /// Treat the input as a raw payload of this element type instead of a safetensors file.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Worker threads (chunks are coded in parallel).
    #[arg(long, default_value_t = default_threads(), value_parser = parse_threads)]
    threads: usize,
}

/// `nandbox zipnn decompress`.
#[derive(Args)]
pub struct DecompressArgs {
    /// Container to read.
    input: PathBuf,
    /// File to write.
    output: PathBuf,
    /// Worker threads (chunks are decoded in parallel).
    #[arg(long, default_value_t = default_threads(), value_parser = parse_threads)]
    threads: usize,
}

/// Most worker threads a tool takes: each holds a few chunks of scratch memory (about 0.6 MiB
/// for qstore), so a slip such as `--threads 100000` would exhaust RAM instead of running.
pub const MAX_THREADS: usize = 256;

/// Parses `--threads`: 1 to [`MAX_THREADS`]; 0 is an error rather than silently 1.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a thread count from 1 to {MAX_THREADS}"
        )),
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
}

/// Runs one command.
pub fn run(cmd: ZipnnCommand) -> Result<()> {
    let mut created = false;
    let (output, result) = match cmd {
        ZipnnCommand::Compress(a) => (a.output.clone(), compress(&a, &mut created)),
        ZipnnCommand::Decompress(a) => (a.output.clone(), decompress(&a, &mut created)),
    };
    // Never leave a half-written output that could be mistaken for a good one; but a file this
    // run never opened (the input was missing or bad) is the user's and stays, and a device or
    // pipe named as the output (/dev/stdout) is not ours to unlink.
    if result.is_err() && created && std::fs::metadata(&output).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::remove_file(&output);
    }
    result
}

fn zipnn_dtype(d: DtypeArg) -> Dtype {
    match d {
        DtypeArg::Bf16 => Dtype::Bf16,
        DtypeArg::Fp16 => Dtype::Fp16,
        DtypeArg::Fp32 => Dtype::Fp32,
    }
}

fn tensor_dtype(d: safetensors::Dtype) -> Dtype {
    match d {
        safetensors::Dtype::BF16 => Dtype::Bf16,
        safetensors::Dtype::F16 => Dtype::Fp16,
        safetensors::Dtype::F32 => Dtype::Fp32,
        _ => Dtype::Raw,
    }
}

fn open(path: &Path) -> Result<(File, u64)> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    Ok((f, len))
}

/// The output file, unbuffered: records and chunks are written whole (hundreds of KiB), so a
/// buffer would only add a copy of every byte. `created` records that it was truncated, so a
/// failure from here on removes it.
fn create(input: &Path, path: &Path, created: &mut bool) -> Result<File> {
    crate::outpath::ensure_not_input(input, path)?;
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    *created = true;
    Ok(f)
}

fn progress(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if total > PROGRESS_THRESHOLD && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Chunks per batch. One thread codes one chunk at a time, so its buffers stay in cache and
/// only a chunk's worth of memory is ever touched.
fn batch_len(threads: usize) -> usize {
    if threads == 1 {
        1
    } else {
        threads * CHUNKS_PER_THREAD
    }
}

/// Per-thread scratch memory.
struct Worker {
    planes: Vec<u8>,
    enc: Box<EncoderScratch>,
    dec: Box<DecoderTables>,
}

impl Worker {
    fn new() -> Self {
        Worker {
            planes: vec![0; zipnn::DEFAULT_CHUNK_SIZE as usize],
            enc: Box::new(EncoderScratch::new()),
            dec: Box::new(DecoderTables::new()),
        }
    }
}

/// One chunk of a batch: its container-wide index, dtype, input and output bytes.
struct Job {
    index: u64,
    dtype: Dtype,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Original length (decompression) or record length (compression) once done.
    len: usize,
}

/// Slot `i` of the job pool, created on first use; buffers are reused from batch to batch so
/// big chunks are not allocated (and page-faulted in) again for every chunk.
fn take_job(jobs: &mut Vec<Job>, i: usize, index: u64, dtype: Dtype) -> &mut Job {
    if jobs.len() <= i {
        jobs.push(Job {
            index,
            dtype,
            input: Vec::new(),
            output: Vec::new(),
            len: 0,
        });
    }
    let j = &mut jobs[i];
    j.index = index;
    j.dtype = dtype;
    j
}

/// Runs `work` over the jobs on up to `workers.len()` threads; returns the first error.
fn run_batch<F>(jobs: &mut [Job], workers: &mut [Worker], work: F) -> Result<()>
where
    F: Fn(&mut Job, &mut Worker) -> Result<(), ZipnnError> + Sync,
{
    if workers.len() == 1 || jobs.len() == 1 {
        return Ok(jobs.iter_mut().try_for_each(|j| work(j, &mut workers[0]))?);
    }
    let per = jobs.len().div_ceil(workers.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks_mut(per)
            .zip(workers.iter_mut())
            .map(|(part, w)| {
                let work = &work;
                s.spawn(move || part.iter_mut().try_for_each(|j| work(j, w)))
            })
            .collect();
        // Join every thread; report the error of the lowest chunks first.
        let mut first = Ok(());
        for h in handles {
            let r = match h.join() {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => Err(anyhow!("a worker thread panicked")),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Segments of the input: the safetensors layout, or one raw payload segment.
fn plan_segments(a: &CompressArgs, file: &mut File, len: u64) -> Result<(u16, Vec<Segment>)> {
    if let Some(d) = a.dtype {
        return Ok((
            0,
            vec![Segment {
                dtype: zipnn_dtype(d),
                len,
            }],
        ));
    }
    let by_name = a
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let mut prefix = [0u8; 9];
    let got = read_up_to(file, &mut prefix)?;
    if !by_name && !safetensors::looks_like_safetensors(&prefix[..got], len) {
        bail!(
            "{} is not a safetensors file; pass --dtype bf16|fp16|fp32 to compress it as a raw \
             tensor payload",
            a.input.display()
        );
    }
    let header = safetensors::read_header(file)
        .with_context(|| format!("reading the safetensors header of {}", a.input.display()))?;
    let mut segs = vec![Segment {
        dtype: Dtype::Raw,
        len: header.data_start,
    }];
    segs.extend(header.tensors.iter().map(|t| Segment {
        dtype: tensor_dtype(t.dtype),
        len: t.len(),
    }));
    Ok((zipnn::FLAG_SAFETENSORS, segs))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn compress(a: &CompressArgs, created: &mut bool) -> Result<()> {
    let threads = a.threads.max(1);
    let (mut file, len) = open(&a.input)?;
    let (flags, segments) = plan_segments(a, &mut file, len)?;
    // Unbuffered: chunks are read whole straight into their job buffers.
    let mut input = File::open(&a.input)?;
    let mut out = create(&a.input, &a.output, created)?;

    let chunk = zipnn::DEFAULT_CHUNK_SIZE;
    let mut table = vec![0u8; zipnn::HEADER_LEN + segments.len() * zipnn::SEGMENT_ENTRY_LEN];
    ContainerHeader::write(flags, chunk, &segments, &mut table).map_err(|e| anyhow!("{e}"))?;
    out.write_all(&table)
        .with_context(|| format!("writing {}", a.output.display()))?;

    let bar = progress(len);
    let mut workers: Vec<Worker> = (0..threads).map(|_| Worker::new()).collect();
    let batch = batch_len(threads);
    let mut index = 0u64;
    let mut jobs: Vec<Job> = Vec::with_capacity(batch);
    for seg in &segments {
        let mut left = seg.len;
        while left > 0 {
            let mut used = 0;
            while left > 0 && used < batch {
                let n = left.min(u64::from(chunk)) as usize;
                let j = take_job(&mut jobs, used, index, seg.dtype);
                j.input.resize(n, 0);
                input
                    .read_exact(&mut j.input)
                    .with_context(|| format!("{} changed while reading", a.input.display()))?;
                j.output
                    .resize(zipnn::max_chunk_record_len(seg.dtype, n), 0);
                used += 1;
                index += 1;
                left -= n as u64;
            }
            let jobs = &mut jobs[..used];
            run_batch(jobs, &mut workers, |j, w| {
                j.len = zipnn::encode_chunk(
                    j.dtype,
                    j.index,
                    &j.input,
                    &mut w.planes,
                    &mut j.output,
                    &mut w.enc,
                )?;
                Ok(())
            })?;
            for j in jobs.iter() {
                out.write_all(&j.output[..j.len])
                    .with_context(|| format!("writing {}", a.output.display()))?;
                bar.inc(j.input.len() as u64);
            }
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", a.output.display()))?;
    bar.finish_and_clear();
    Ok(())
}

fn decompress(a: &DecompressArgs, created: &mut bool) -> Result<()> {
    let threads = a.threads.max(1);
    let (file, container_len) = open(&a.input)?;
    // Unbuffered: two reads a record (its header, then its payload straight into the job).
    let mut input = file;
    let name = a.input.display();

    let mut head = [0u8; zipnn::HEADER_LEN];
    input.read_exact(&mut head).map_err(|_| {
        anyhow!(
            "{name}: {}",
            ZipnnError::CorruptedHeader("file shorter than the header")
        )
    })?;
    let header = ContainerHeader::parse(&head).map_err(|e| anyhow!("{name}: {e}"))?;
    let table_len = header.table_end() as u64;
    if table_len > container_len {
        bail!(
            "{name}: {}",
            ZipnnError::CorruptedHeader("segment table truncated")
        );
    }
    let mut table = head.to_vec();
    table.resize(header.table_end(), 0);
    input.read_exact(&mut table[zipnn::HEADER_LEN..])?;
    let mut segments = vec![
        Segment {
            dtype: Dtype::Raw,
            len: 0
        };
        header.segments as usize
    ];
    header
        .check_table(&table, &mut segments)
        .map_err(|e| anyhow!("{name}: {e}"))?;

    let mut out = create(&a.input, &a.output, created)?;
    let bar = progress(header.total_len);
    let mut workers: Vec<Worker> = (0..threads).map(|_| Worker::new()).collect();
    for w in &mut workers {
        w.planes.resize(header.chunk_size as usize, 0);
    }
    let batch = batch_len(threads);
    let chunk = u64::from(header.chunk_size);
    let mut index = 0u64;
    let mut jobs: Vec<Job> = Vec::with_capacity(batch);
    for seg in &segments {
        let mut left = seg.len;
        while left > 0 {
            let mut used = 0;
            while left > 0 && used < batch {
                let n = left.min(chunk) as usize;
                let truncated = |_| {
                    anyhow!(
                        "{name}: {}",
                        ZipnnError::CorruptedChunk {
                            chunk: index,
                            reason: "record truncated"
                        }
                    )
                };
                let j = take_job(&mut jobs, used, index, seg.dtype);
                j.input.resize(zipnn::CHUNK_HEADER_LEN, 0);
                input.read_exact(&mut j.input).map_err(truncated)?;
                let payload = zipnn::chunk_payload_len(seg.dtype, index, &j.input, n)
                    .map_err(|e| anyhow!("{name}: {e}"))?;
                j.input.resize(zipnn::CHUNK_HEADER_LEN + payload, 0);
                input
                    .read_exact(&mut j.input[zipnn::CHUNK_HEADER_LEN..])
                    .map_err(truncated)?;
                j.output.resize(n, 0);
                j.len = n;
                used += 1;
                index += 1;
                left -= n as u64;
            }
            let jobs = &mut jobs[..used];
            run_batch(jobs, &mut workers, |j, w| {
                zipnn::decode_chunk(
                    j.dtype,
                    j.index,
                    &j.input,
                    &mut w.planes,
                    &mut j.output,
                    &mut w.dec,
                )
            })
            .with_context(|| name.to_string())?;
            for j in jobs.iter() {
                out.write_all(&j.output[..j.len])
                    .with_context(|| format!("writing {}", a.output.display()))?;
                bar.inc(j.len as u64);
            }
        }
    }
    let mut extra = [0u8; 1];
    if read_up_to(&mut input, &mut extra)? != 0 {
        bail!(
            "{name}: {}",
            ZipnnError::CorruptedHeader("trailing bytes after the last chunk")
        );
    }
    out.flush()
        .with_context(|| format!("writing {}", a.output.display()))?;
    bar.finish_and_clear();
    Ok(())
}
