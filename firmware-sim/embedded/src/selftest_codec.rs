//! Self-test of the ZipNN codec on the microcontroller: a BF16 sample made in code is coded and
//! decoded bit-exact in fixed memory, it actually shrinks, and damaged containers are refused
//! with an error rather than a panic or a hang.

use cortex_m_semihosting::hprintln;
use nandbox_core::codec::{
    entropy::{DecoderTables, EncoderScratch},
    zipnn::{self, Dtype, Segment},
};

use crate::{
    bf16,
    board::{Testbench, CODEC_CHUNK, SAMPLE_BYTES},
    report::Report,
    static_once,
};

/// The codec's working memory: firmware state, so it lives in .bss/.data and is counted there.
pub struct CodecMemory {
    /// rANS encoder scratch (histogram, frequencies, symbol table).
    pub encoder: EncoderScratch,
    /// rANS decoding table.
    pub decoder: DecoderTables,
    /// Byte planes of one chunk.
    pub planes: [u8; CODEC_CHUNK as usize],
    /// The container's segment table (one segment here).
    pub segments: [Segment; 1],
}

/// Runs the codec checks.
pub fn run(report: &mut Report, bench: &mut Testbench) {
    let Some(mem) = static_once!(
        CodecMemory = CodecMemory {
            encoder: EncoderScratch::new(),
            decoder: DecoderTables::new(),
            planes: [0; CODEC_CHUNK as usize],
            segments: [Segment {
                dtype: Dtype::Raw,
                len: 0
            }],
        }
    ) else {
        report.check("zipnn: codec memory handed out once", false);
        return;
    };
    hprintln!(
        "footprint: codec working memory {} bytes (encoder {}, decoder {}, planes {})",
        core::mem::size_of::<CodecMemory>(),
        core::mem::size_of::<EncoderScratch>(),
        core::mem::size_of::<DecoderTables>(),
        CODEC_CHUNK
    );

    bf16::fill_sample(&mut bench.sample, 0x00C0_FFEE);
    let coded = zipnn::compress(
        Dtype::Bf16,
        CODEC_CHUNK,
        &bench.sample,
        &mut mem.planes,
        &mut bench.coded,
        &mut mem.encoder,
    );
    let Some(coded_len) = report.check_ok("zipnn: BF16 sample compresses in fixed memory", coded)
    else {
        return;
    };
    // Ratio in thousandths: the exponent plane of normal-ish weights is highly skewed, so the
    // container must come out clearly smaller than the input (ZipNN reports ~0.67 on real BF16).
    let permille = coded_len * 1000 / SAMPLE_BYTES;
    hprintln!(
        "     zipnn: {} -> {} bytes, ratio 0.{:03}",
        SAMPLE_BYTES,
        coded_len,
        permille
    );
    report.check("zipnn: BF16 sample ratio below 0.80", permille < 800);

    bench.decoded.fill(0);
    let decoded = zipnn::decompress(
        &bench.coded[..coded_len],
        &mut mem.planes,
        &mut mem.segments,
        &mut bench.decoded,
        &mut mem.decoder,
    );
    let exact = matches!(decoded, Ok(n) if n == SAMPLE_BYTES) && bench.decoded == bench.sample;
    report.check(
        "zipnn: round trip is bit-exact (NaN, Inf, -0, subnormals, odd tail)",
        exact,
    );

    // One flipped bit deep inside a chunk record must be caught by its CRC.
    let at = coded_len * 2 / 3;
    bench.coded[at] ^= 0x10;
    let flipped = zipnn::decompress(
        &bench.coded[..coded_len],
        &mut mem.planes,
        &mut mem.segments,
        &mut bench.decoded,
        &mut mem.decoder,
    );
    bench.coded[at] ^= 0x10;
    report.check(
        "zipnn: a flipped bit is refused as corrupt",
        flipped.is_err(),
    );
    if let Err(e) = flipped {
        hprintln!("     zipnn: flipped bit at {}: {}", at, e);
    }

    let truncated = zipnn::decompress(
        &bench.coded[..coded_len - 5],
        &mut mem.planes,
        &mut mem.segments,
        &mut bench.decoded,
        &mut mem.decoder,
    );
    report.check(
        "zipnn: a truncated container is refused",
        truncated.is_err(),
    );
}
