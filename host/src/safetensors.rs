//! A small, strict reader and writer of the safetensors file header.
//!
//! Layout of a safetensors file: an 8-byte little-endian header length `n`, `n` bytes of a JSON
//! object (optionally padded with spaces), then the data region. Each JSON key other than
//! `__metadata__` names a tensor: `{"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}`
//! with offsets relative to the start of the data region. `__metadata__` is a string-to-string map.
//!
//! The file is untrusted: every length and offset is checked against the file's size, the size a
//! tensor's dtype and shape imply, and its neighbours (tensors may neither overlap nor leave holes,
//! as the format requires). Any violation is an `Err`, never a panic. Tensors are exposed in file
//! order (by data offset), each with its absolute byte range, so tools can stream a file tensor by
//! tensor and keep the original header bytes verbatim.

// Shared by the zipnn and qstore tools; not every item is used by both.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;

/// Largest header accepted. The reference implementation uses the same cap: a header is a few
/// kilobytes per thousand tensors, and the cap keeps a corrupted length from causing a huge read.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Element types of safetensors tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    const ALL: [(Dtype, &'static str); 15] = [
        (Dtype::Bool, "BOOL"),
        (Dtype::U8, "U8"),
        (Dtype::I8, "I8"),
        (Dtype::F8E5M2, "F8_E5M2"),
        (Dtype::F8E4M3, "F8_E4M3"),
        (Dtype::I16, "I16"),
        (Dtype::U16, "U16"),
        (Dtype::F16, "F16"),
        (Dtype::BF16, "BF16"),
        (Dtype::I32, "I32"),
        (Dtype::U32, "U32"),
        (Dtype::F32, "F32"),
        (Dtype::F64, "F64"),
        (Dtype::I64, "I64"),
        (Dtype::U64, "U64"),
    ];

    /// Parses the name used in the JSON header (`"BF16"`, `"F32"`, ...).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// The name used in the JSON header.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(d, _)| *d == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's key in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions (empty for a scalar).
    pub shape: Vec<u64>,
    /// Absolute byte range in the file (data region start + `data_offsets`).
    pub range: Range<u64>,
}

impl TensorInfo {
    /// Number of bytes of the tensor's data.
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// A parsed, validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header's bytes exactly as in the file (JSON plus any padding), without the 8-byte
    /// length prefix. Kept so a tool can reproduce the original file bit for bit.
    pub raw_json: Vec<u8>,
    /// `__metadata__`, if present.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Tensors in file order (ascending data offset).
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data region: `8 + raw_json.len()`.
    pub data_start: u64,
    /// Size of the whole file the header was validated against.
    pub file_len: u64,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// The file is shorter than the 8-byte length prefix.
    TooShort,
    /// The header length is larger than the file or [`MAX_HEADER_LEN`].
    HeaderLength(u64),
    /// The header is not a JSON object of the expected shape.
    Json(String),
    /// A tensor entry is invalid (reason given).
    Tensor {
        /// The tensor's key.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The tensors leave a hole in, or do not reach the end of, the data region.
    Coverage(String),
    /// Reading the file failed.
    Io(String),
}

impl fmt::Display for SafetensorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SafetensorsError::TooShort => write!(f, "safetensors: file shorter than 8 bytes"),
            SafetensorsError::HeaderLength(n) => {
                write!(f, "safetensors: header length {n} does not fit the file")
            }
            SafetensorsError::Json(e) => write!(f, "safetensors: bad JSON header: {e}"),
            SafetensorsError::Tensor { name, reason } => {
                write!(f, "safetensors: tensor {name:?}: {reason}")
            }
            SafetensorsError::Coverage(e) => write!(f, "safetensors: data region: {e}"),
            SafetensorsError::Io(e) => write!(f, "safetensors: {e}"),
        }
    }
}

impl std::error::Error for SafetensorsError {}

fn tensor_err(name: &str, reason: impl Into<String>) -> SafetensorsError {
    SafetensorsError::Tensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Reads the header length prefix. `None` when fewer than 8 bytes are given.
pub fn header_len(prefix: &[u8]) -> Option<u64> {
    let b: [u8; 8] = prefix.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// True when `prefix` (the first bytes of a file of `file_len` bytes) plausibly starts a
/// safetensors file: a length that fits, followed by `{`. Cheap detection for tools.
pub fn looks_like_safetensors(prefix: &[u8], file_len: u64) -> bool {
    match header_len(prefix) {
        Some(n) => {
            (2..=MAX_HEADER_LEN).contains(&n)
                && n <= file_len.saturating_sub(8)
                && prefix.get(8) == Some(&b'{')
        }
        None => false,
    }
}

/// Parses and validates the header JSON `raw_json` of a file of `file_len` bytes.
pub fn parse_header(raw_json: &[u8], file_len: u64) -> Result<Header, SafetensorsError> {
    let header_len = raw_json.len() as u64;
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&s| s <= file_len && header_len <= MAX_HEADER_LEN)
        .ok_or(SafetensorsError::HeaderLength(header_len))?;
    let data_len = file_len - data_start;

    let value: serde_json::Value =
        serde_json::from_slice(raw_json).map_err(|e| SafetensorsError::Json(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| SafetensorsError::Json("top level is not an object".into()))?;

    let mut metadata = None;
    let mut tensors = Vec::with_capacity(object.len());
    for (name, entry) in object {
        if name == "__metadata__" {
            let map = entry
                .as_object()
                .ok_or_else(|| SafetensorsError::Json("__metadata__ is not an object".into()))?;
            let mut m = BTreeMap::new();
            for (k, v) in map {
                let s = v.as_str().ok_or_else(|| {
                    SafetensorsError::Json(format!("__metadata__[{k:?}] is not a string"))
                })?;
                m.insert(k.clone(), s.to_string());
            }
            metadata = Some(m);
            continue;
        }
        let e = entry
            .as_object()
            .ok_or_else(|| tensor_err(name, "entry is not an object"))?;
        for key in e.keys() {
            if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
                return Err(tensor_err(name, format!("unknown field {key:?}")));
            }
        }
        let dtype_name = e
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| tensor_err(name, "missing dtype"))?;
        let dtype = Dtype::from_name(dtype_name)
            .ok_or_else(|| tensor_err(name, format!("unsupported dtype {dtype_name:?}")))?;
        let shape = e
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| tensor_err(name, "missing shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| tensor_err(name, "shape entry is not a u64"))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let offsets = e
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| tensor_err(name, "data_offsets is not [begin, end]"))?;
        let begin = offsets[0]
            .as_u64()
            .ok_or_else(|| tensor_err(name, "data_offsets[0] is not a u64"))?;
        let end = offsets[1]
            .as_u64()
            .ok_or_else(|| tensor_err(name, "data_offsets[1] is not a u64"))?;
        if begin > end || end > data_len {
            return Err(tensor_err(
                name,
                format!("data_offsets [{begin}, {end}] outside the {data_len}-byte data region"),
            ));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| tensor_err(name, "shape overflows"))?;
        if expected != end - begin {
            return Err(tensor_err(
                name,
                format!(
                    "{dtype} shape {shape:?} needs {expected} bytes but data_offsets span {}",
                    end - begin
                ),
            ));
        }
        tensors.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            range: data_start + begin..data_start + end,
        });
    }

    // File order; the format requires the data region to be exactly covered.
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    let mut cursor = data_start;
    for t in &tensors {
        if t.range.start != cursor {
            return Err(SafetensorsError::Coverage(format!(
                "tensor {:?} starts at data offset {} but the previous data ends at {}",
                t.name,
                t.range.start - data_start,
                cursor - data_start
            )));
        }
        cursor = t.range.end;
    }
    if cursor != file_len {
        return Err(SafetensorsError::Coverage(format!(
            "tensors end at data offset {} but the data region is {data_len} bytes",
            cursor - data_start
        )));
    }

    Ok(Header {
        raw_json: raw_json.to_vec(),
        metadata,
        tensors,
        data_start,
        file_len,
    })
}

/// Parses a whole file held in memory.
pub fn parse(file: &[u8]) -> Result<Header, SafetensorsError> {
    let n = header_len(file).ok_or(SafetensorsError::TooShort)?;
    let end = 8u64
        .checked_add(n)
        .filter(|&e| e <= file.len() as u64 && n <= MAX_HEADER_LEN)
        .ok_or(SafetensorsError::HeaderLength(n))?;
    parse_header(&file[8..end as usize], file.len() as u64)
}

/// Reads and validates the header of a seekable file, leaving the position unspecified.
pub fn read_header<R: Read + Seek>(r: &mut R) -> Result<Header, SafetensorsError> {
    let io = |e: std::io::Error| SafetensorsError::Io(e.to_string());
    let file_len = r.seek(SeekFrom::End(0)).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    if file_len < 8 {
        return Err(SafetensorsError::TooShort);
    }
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix).map_err(io)?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_LEN || n > file_len - 8 {
        return Err(SafetensorsError::HeaderLength(n));
    }
    let mut raw = vec![0u8; n as usize];
    r.read_exact(&mut raw).map_err(io)?;
    parse_header(&raw, file_len)
}

/// One tensor to write.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Key in the header; must not be `__metadata__`.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: &'a [u64],
    /// The tensor's bytes (little-endian elements); length must match dtype and shape.
    pub data: &'a [u8],
}

/// Builds the header JSON (padded with spaces to a multiple of 8 bytes, as the reference writer
/// does, so the data region is aligned) for tensors laid out in the given order.
pub fn build_header(
    metadata: Option<&BTreeMap<String, String>>,
    tensors: &[TensorRef<'_>],
) -> Result<Vec<u8>, SafetensorsError> {
    let mut obj = serde_json::Map::new();
    if let Some(m) = metadata {
        let mm = m
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(mm));
    }
    let mut offset = 0u64;
    for t in tensors {
        if t.name == "__metadata__" || obj.contains_key(t.name) {
            return Err(tensor_err(t.name, "duplicate or reserved name"));
        }
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected != Some(t.data.len() as u64) {
            return Err(tensor_err(
                t.name,
                "data length does not match dtype and shape",
            ));
        }
        let end = offset + t.data.len() as u64;
        obj.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut raw = serde_json::to_vec(&serde_json::Value::Object(obj))
        .map_err(|e| SafetensorsError::Json(e.to_string()))?;
    while raw.len() % 8 != 0 {
        raw.push(b' ');
    }
    Ok(raw)
}

/// Writes a complete safetensors file; tensors' data follow in the given order.
pub fn write<W: Write>(
    w: &mut W,
    metadata: Option<&BTreeMap<String, String>>,
    tensors: &[TensorRef<'_>],
) -> Result<(), SafetensorsError> {
    let io = |e: std::io::Error| SafetensorsError::Io(e.to_string());
    let raw = build_header(metadata, tensors)?;
    w.write_all(&(raw.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&raw).map_err(io)?;
    for t in tensors {
        w.write_all(t.data).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let a = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let b = [9u8, 10];
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        let mut out = Vec::new();
        write(
            &mut out,
            Some(&meta),
            &[
                TensorRef {
                    name: "z",
                    dtype: Dtype::F32,
                    shape: &[2],
                    data: &a,
                },
                TensorRef {
                    name: "a",
                    dtype: Dtype::BF16,
                    shape: &[1, 1],
                    data: &b,
                },
            ],
        )
        .unwrap();
        out
    }

    #[test]
    fn round_trip_keeps_file_order_and_ranges() {
        let file = sample();
        let h = parse(&file).unwrap();
        assert_eq!(h.raw_json.len() % 8, 0);
        assert_eq!(h.metadata.unwrap()["k"], "v");
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        let z = &h.tensors[0];
        assert_eq!(
            &file[z.range.start as usize..z.range.end as usize],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(h.tensors[1].dtype, Dtype::BF16);
        assert_eq!(h.tensors[1].range.end, file.len() as u64);
        let mut cur = std::io::Cursor::new(&file);
        assert_eq!(read_header(&mut cur).unwrap().tensors, h.tensors);
    }

    #[test]
    fn rejects_truncation_and_every_prefix_without_panic() {
        let file = sample();
        for cut in 0..file.len() {
            assert!(
                parse(&file[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    #[test]
    fn rejects_bad_offsets_holes_and_sizes() {
        let mk = |json: &str, data: usize| {
            let mut f = (json.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(json.as_bytes());
            f.extend(std::iter::repeat_n(0u8, data));
            f
        };
        let ok = r#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(parse(&mk(ok, 4)).is_ok());
        // Hole at the end, too short, size mismatch, overlap, hole at start, bad dtype, huge len.
        assert!(parse(&mk(ok, 5)).is_err());
        assert!(parse(&mk(ok, 3)).is_err());
        let bad = [
            r#"{"t":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
            r#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"u":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#,
            r#"{"t":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}}"#,
            r#"{"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,4]}}"#,
            r#"{"t":{"dtype":"F16","shape":[18446744073709551615,2],"data_offsets":[0,4]}}"#,
            r#"{"t":{"dtype":"F16","shape":[2],"data_offsets":[4,0]}}"#,
            r#"[1,2]"#,
        ];
        for j in bad {
            assert!(parse(&mk(j, 4)).is_err(), "{j} accepted");
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert_eq!(parse(&huge), Err(SafetensorsError::HeaderLength(u64::MAX)));
    }
}
