//! The GGUF format (llama.cpp's checkpoint file, versions 2 and 3): the magic `GGUF`, a `u32`
//! version, `u64` tensor and key-value counts, the typed key-value metadata, the tensor infos
//! (name, GGML dims innermost first, GGML type, offset into the data section), padding to
//! `general.alignment` (default 32), then the data section. All integers are little-endian.
//!
//! ```
//! use shears_tensor::io::{Gguf, GgmlType};
//! // A tiny file by hand: version 3, one tensor, one key.
//! let mut f = b"GGUF".to_vec();
//! f.extend(3u32.to_le_bytes());
//! f.extend(1u64.to_le_bytes()); // tensors
//! f.extend(1u64.to_le_bytes()); // key-value pairs
//! let string = |f: &mut Vec<u8>, s: &str| {
//!     f.extend((s.len() as u64).to_le_bytes());
//!     f.extend(s.as_bytes());
//! };
//! string(&mut f, "general.architecture");
//! f.extend(8u32.to_le_bytes()); // value type: string
//! string(&mut f, "llama");
//! string(&mut f, "w");
//! f.extend(2u32.to_le_bytes()); // two dims, innermost first: ne = [3, 2]
//! f.extend(3u64.to_le_bytes());
//! f.extend(2u64.to_le_bytes());
//! f.extend(0u32.to_le_bytes()); // GGML type F32
//! f.extend(0u64.to_le_bytes()); // offset in the data section
//! f.resize(f.len().next_multiple_of(32), 0);
//! for v in [1f32, 2., 3., 4., 5., 6.] {
//!     f.extend(v.to_le_bytes());
//! }
//! let path = std::env::temp_dir().join(format!("shears-gguf-doc-{}.gguf", std::process::id()));
//! std::fs::write(&path, &f)?;
//!
//! let g = Gguf::open(&path)?;
//! assert_eq!(g.architecture()?, "llama");
//! assert_eq!(g.tensors[0].dims, vec![2, 3]); // row-major: GGUF's ne reversed
//! assert_eq!(g.tensors[0].ggml_type, GgmlType::F32);
//! let w = g.tensor("w")?;
//! assert_eq!(w.to_vec::<f32>()?, vec![1., 2., 3., 4., 5., 6.]);
//! assert!(w.is_mapped()); // F32 borrows the file
//! # drop((w, g));
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The reader is strict: a bad magic, an unsupported version, a truncation anywhere, a length or
//! count larger than the rest of the file, invalid UTF-8, an unknown value type, a duplicate key
//! or tensor name, dims whose product overflows, a quantized row that is not whole blocks, and
//! tensor data that is misaligned, out of bounds or overlapping are each an [`Error::Format`]
//! naming the file (and the key or tensor). Corrupt counts never cause large allocations: every
//! count is checked against the bytes left before anything is reserved.
//!
//! `F32`, `F16` and `BF16` tensors load as those dtypes (borrowing the map when aligned);
//! `Q8_0`, `Q4_0` and `Q4_1` are dequantized to f32 by [`shears_kernels::quant`].

use super::bytes::FileBytes;
use super::safetensors::io_err;
use crate::storage::{Buf, CpuStorage};
use crate::{DType, Error, Result, Shape, Tensor};
use half::{bf16, f16};
use shears_kernels::{fused, quant};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Tensor types [`Gguf::tensor`] can load, as error messages list them.
const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// ggml supports at most this many dims (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// Arrays nest at most this deep (llama.cpp allows no nesting at all), so a corrupt file cannot
/// recurse without bound.
const MAX_NESTING: usize = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Value type 0.
    U8(u8),
    /// Value type 1.
    I8(i8),
    /// Value type 2.
    U16(u16),
    /// Value type 3.
    I16(i16),
    /// Value type 4.
    U32(u32),
    /// Value type 5.
    I32(i32),
    /// Value type 10.
    U64(u64),
    /// Value type 11.
    I64(i64),
    /// Value type 6.
    F32(f32),
    /// Value type 12.
    F64(f64),
    /// Value type 7 (one byte, 0 or 1).
    Bool(bool),
    /// Value type 8 (`u64` length + UTF-8 bytes).
    String(String),
    /// Value type 9 (`u32` element type + `u64` count + elements, all of one type).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer value that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }
    /// Any integer value that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }
    /// A float, or an integer converted to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The string of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The elements of an array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The flag of a bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The GGUF name of the value's type (`u32`, `string`, `array`, ...), for messages.
    fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// A tensor's GGML type. The ones shears loads have variants; every other id (known to ggml or
/// not) is `Other(id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// id 0: f32.
    F32,
    /// id 1: IEEE f16.
    F16,
    /// id 30: bfloat16.
    BF16,
    /// id 8: blocks of 32 × i8 with an f16 scale.
    Q8_0,
    /// id 2: blocks of 32 × 4-bit with an f16 scale (offset 8).
    Q4_0,
    /// id 3: blocks of 32 × 4-bit with an f16 scale and an f16 minimum.
    Q4_1,
    /// Any other GGML type id.
    Other(u32),
}

/// Every ggml type id: (name, weights per block, bytes per block). Sizes from ggml's type traits
/// (ggml/src/ggml.c, ggml-common.h); ids 4, 5 and 31–33, 36–38 were removed from ggml.
fn type_traits(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

impl GgmlType {
    /// The type of a GGML type id.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::BF16,
            8 => GgmlType::Q8_0,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            other => GgmlType::Other(other),
        }
    }
    /// The GGML type id.
    pub fn id(&self) -> u32 {
        match *self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::BF16 => 30,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Other(id) => id,
        }
    }
    /// llama.cpp's name for the type (`F32`, `Q4_1`, `Q6_K`, ...), or `type N` for an id ggml
    /// does not define.
    pub fn name(&self) -> String {
        match type_traits(self.id()) {
            Some((name, _, _)) => name.to_string(),
            None => format!("type {}", self.id()),
        }
    }
    /// (weights per block, bytes per block), or `None` for an id ggml does not define.
    pub fn block(&self) -> Option<(u64, u64)> {
        type_traits(self.id()).map(|(_, n, b)| (n, b))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// One tensor as the file describes it; no data is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Row-major dims, outermost first (GGUF's `ne` reversed): a llama weight with
    /// `ne = [in, out]` has dims `[out, in]`.
    pub dims: Vec<usize>,
    /// The GGML type of the stored data.
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Bytes of data (0 for a type id ggml does not define, whose size is unknown).
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Number of elements (product of the dims; checked not to overflow when the file was read).
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file: its metadata and tensor infos, parsed and validated, and a memory map of
/// the whole file (or, from [`Gguf::from_bytes`], its bytes in memory) that tensors borrow or are
/// dequantized from.
#[derive(Clone)]
pub struct Gguf {
    /// The file.
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// The alignment of the data section and of every tensor (`general.alignment`, default 32).
    pub alignment: u64,
    /// Every key-value pair.
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensors, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    bytes: FileBytes,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

// ---------------------------------------------------------------- parsing

/// A bounds-checked little-endian reader over the mapped file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn fail(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, None, msg)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.fail(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file is {} bytes",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A `u64` count of items of at least `min_size` bytes each, checked against the rest of the
    /// file so that nothing is reserved for items that cannot be there.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(self.fail(format!(
                "{what} {n} at offset {at} is larger than the rest of the file ({} bytes): \
                 corrupt or truncated",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let at = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.fail(format!("{what} at offset {at} is not valid UTF-8: {e}")))
    }
    /// A value of GGUF value type `ty`.
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<GgufValue> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(&what)?[0]),
            1 => GgufValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(self.u32(&what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(
                            self.fail(format!("bool {what} at offset {at} is {b}, not 0 or 1"))
                        )
                    }
                }
            }
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.fail(format!(
                        "arrays in `{key}` nest deeper than {MAX_NESTING} levels"
                    )));
                }
                let elem = self.u32(&what)?;
                let min = min_value_size(elem).ok_or_else(|| {
                    self.fail(format!(
                        "array `{key}` has unknown element value type {elem}"
                    ))
                })?;
                let n = self.count(min, &format!("element count of `{key}`"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, key)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(&what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t => {
                return Err(self.fail(format!("key `{key}` has unknown value type {t}")));
            }
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// A parsed file, before it is tied to a map.
struct Parsed {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
}

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.take(4, "the magic")?;
    if magic != b"GGUF" {
        return Err(r.fail(format!(
            "not a GGUF file: the magic is {:?}, expected \"GGUF\"",
            String::from_utf8_lossy(magic)
        )));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(r.fail(
                "GGUF version 1 is not supported (32-bit counts; re-convert the model with a \
                 current llama.cpp)",
            ))
        }
        v => {
            return Err(r.fail(format!(
                "GGUF version {v} is not supported (supported: 2, 3){}",
                if v & 0xFFFF == 0 {
                    "; a big-endian file?"
                } else {
                    ""
                }
            )))
        }
    }
    // A tensor info takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes, a
    // key-value pair 8 (key) + 4 (type) + 1 (smallest value).
    let n_tensors = r.count(24, "tensor count")?;
    let n_kv = r.count(13, "key-value count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("a metadata key")?;
        let ty = r.u32(&format!("value type of `{key}`"))?;
        let value = r.value(ty, 0, &key)?;
        if metadata.contains_key(&key) {
            return Err(r.fail(format!("metadata key `{key}` appears twice")));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(r.fail(format!(
                "metadata key `general.alignment` must be a u32 power of two, found {v:?}"
            )))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut by_name = HashMap::with_capacity(n_tensors);
    let mut rel_offsets = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format!("the name of tensor {i}"))?;
        let fail = |msg: String| Error::format(path, Some(&name), msg);
        if by_name.insert(name.clone(), i).is_some() {
            return Err(fail("tensor name appears twice".into()));
        }
        let n_dims = r.u32("n_dims").map_err(|e| with_tensor(e, &name))?;
        if n_dims > MAX_DIMS {
            return Err(fail(format!(
                "{n_dims} dims (ggml supports at most {MAX_DIMS})"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(r.u64("a dim").map_err(|e| with_tensor(e, &name))?);
        }
        let id = r.u32("the GGML type").map_err(|e| with_tensor(e, &name))?;
        let offset = r
            .u64("the data offset")
            .map_err(|e| with_tensor(e, &name))?;
        let ggml_type = GgmlType::from_id(id);

        // Strides are products of the non-zero dims, so bound that product, not only the element
        // count: ne = [0, 2^62, 2^62] holds no elements but must not overflow later.
        let bound = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d.max(1)))
            .filter(|&n| n <= isize::MAX as u64 && usize::try_from(n).is_ok());
        if bound.is_none() {
            return Err(fail(format!(
                "dims (ne) {ne:?} are too large: their product overflows"
            )));
        }
        let elems: u64 = ne.iter().product();
        let n_bytes = match ggml_type.block() {
            Some((block, bytes)) => {
                let row = ne.first().copied().unwrap_or(1);
                if row % block != 0 {
                    return Err(fail(format!(
                        "rows of {row} elements are not a multiple of the {block}-element \
                         block of {ggml_type}"
                    )));
                }
                match (elems / block).checked_mul(bytes) {
                    Some(b) if b <= isize::MAX as u64 => b,
                    _ => {
                        return Err(fail(format!(
                            "dims (ne) {ne:?} of {ggml_type} are too large: the byte size \
                             overflows"
                        )))
                    }
                }
            }
            None => 0,
        };
        if offset % alignment != 0 {
            return Err(fail(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        rel_offsets.push(offset);
        tensors.push(GgufTensorInfo {
            name,
            dims: ne.iter().rev().map(|&d| d as usize).collect(),
            ggml_type,
            offset,
            n_bytes,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let file_len = buf.len() as u64;
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    if !tensors.is_empty() && data_start > file_len {
        return Err(r.fail(format!(
            "truncated: the data section would start at {data_start} but the file is \
             {file_len} bytes"
        )));
    }
    let data_len = file_len.saturating_sub(data_start);
    for t in &mut tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(Error::format(
                path,
                Some(&t.name),
                format!(
                    "data [{}, {}) of the data section runs past its end ({data_len} bytes): \
                     truncated file?",
                    t.offset,
                    t.offset.saturating_add(t.n_bytes)
                ),
            ));
        }
        t.offset += data_start;
    }
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(Error::format(
                path,
                Some(&w[1].name),
                format!(
                    "data at file offset {} overlaps tensor `{}` ({} bytes at {})",
                    w[1].offset, w[0].name, w[0].n_bytes, w[0].offset
                ),
            ));
        }
    }
    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
    })
}

/// Adds the tensor name to a `Format` error raised while reading that tensor's info.
fn with_tensor(e: Error, name: &str) -> Error {
    match e {
        Error::Format { path, msg, .. } => Error::Format {
            path,
            tensor: Some(name.to_string()),
            msg,
        },
        e => e,
    }
}

// ---------------------------------------------------------------- the file

impl Gguf {
    /// Memory-maps and parses a GGUF file (versions 2 and 3), validating every header field and
    /// every tensor's place in the data section; tensor data is only touched by
    /// [`Gguf::tensor`]. The file must not be modified while the `Gguf` or its tensors live.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only and we never create a mutable view. Another process
        // truncating or rewriting the file in place while it is mapped is outside what Rust can
        // guard against (every mmap-based loader shares this caveat).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        Gguf::from_file_bytes(path, FileBytes::Map(Arc::new(map)))
    }

    /// [`Gguf::open`] of a whole GGUF file already in memory (`file`: every byte of it); `path`
    /// only names it in errors. The same validation; [`Gguf::tensor`] then copies elements out of
    /// `file` instead of borrowing a map. The tensor-data and GGUF-tokenizer fuzz targets drive it.
    pub fn from_bytes(path: impl AsRef<Path>, file: Vec<u8>) -> Result<Gguf> {
        Gguf::from_file_bytes(path.as_ref(), FileBytes::Heap(file.into()))
    }

    fn from_file_bytes(path: &Path, bytes: FileBytes) -> Result<Gguf> {
        let p = parse(path, &bytes)?;
        let by_name = p
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            path: path.to_path_buf(),
            version: p.version,
            alignment: p.alignment,
            metadata: p.metadata,
            tensors: p.tensors,
            bytes,
            by_name,
        })
    }

    /// The metadata and tensor infos of a whole GGUF file already in memory (`file`: every byte
    /// of it), validated as [`Gguf::open`] validates them; `path` only names it in errors. The
    /// parser fuzz target (`tensor/tests/fuzz.rs`) drives it.
    pub fn header_from_bytes(
        path: impl AsRef<Path>,
        file: &[u8],
    ) -> Result<(BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>)> {
        let p = parse(path.as_ref(), file)?;
        Ok((p.metadata, p.tensors))
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn key_error(&self, key: &str, want: &str) -> Error {
        let msg = match self.get(key) {
            None => format!("metadata key `{key}` is missing"),
            Some(v) => format!(
                "metadata key `{key}` holds a {} ({}), expected {want}",
                v.type_name(),
                short(v)
            ),
        };
        Error::format(&self.path, None, msg)
    }

    /// A non-negative integer value of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(GgufValue::as_u64)
            .ok_or_else(|| self.key_error(key, "a non-negative integer"))
    }

    /// A float, or an integer converted to `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(GgufValue::as_f64)
            .ok_or_else(|| self.key_error(key, "a number"))
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(GgufValue::as_str)
            .ok_or_else(|| self.key_error(key, "a string"))
    }

    /// An array of strings (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`, ...).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get(key)
            .and_then(GgufValue::as_array)
            .and_then(|a| a.iter().map(GgufValue::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.key_error(key, "an array of strings"))
    }

    /// The model architecture (`general.architecture`, e.g. `llama`).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The info of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| Error::format(&self.path, Some(name), "no such tensor in the file"))
    }

    fn unsupported(&self, t: &GgufTensorInfo) -> Error {
        Error::Unsupported {
            what: format!(
                "GGML type {} of tensor `{}` in {} (supported: {SUPPORTED})",
                t.ggml_type,
                t.name,
                self.path.display()
            ),
        }
    }

    /// Drops the file pages holding `t`'s bytes from this process's resident set once they have
    /// been dequantized into an owned copy, so loading a model never holds the quantized file and
    /// the dequantized weights in memory at once. Nothing to drop for bytes held in memory.
    fn release(&self, t: &GgufTensorInfo) {
        const PAGE: usize = 4096;
        let Some(map) = self.bytes.map() else {
            return;
        };
        let start = (t.offset as usize).next_multiple_of(PAGE);
        let end = (t.offset + t.n_bytes) as usize / PAGE * PAGE;
        if end > start {
            // SAFETY: the map is a read-only private mapping of a file this process never writes,
            // so no page holds private changes: MADV_DONTNEED only drops pages, and any later
            // read of them (another tensor sharing a page, a zero-copy tensor) faults the same
            // bytes back in from the file. The range lies inside the map (checked at open).
            unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                    .ok();
            }
        }
    }

    /// The bytes of a tensor's data (bounds were validated in `open`).
    fn bytes(&self, t: &GgufTensorInfo) -> &[u8] {
        &self.bytes[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// The tensor called `name`, dims row-major ([`GgufTensorInfo::dims`]): `F32` as f32 (borrowing
    /// the map when aligned, which GGUF's alignment guarantees for files it wrote), `F16` as f16,
    /// `BF16` as bf16, `Q8_0`/`Q4_0`/`Q4_1` dequantized to f32. Any other type is an
    /// [`Error::Unsupported`] naming the type, the tensor and the file.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.info_or_err(name)?;
        let n = t.elem_count();
        let (b, off) = (&self.bytes, t.offset as usize);
        let storage = match t.ggml_type {
            GgmlType::F32 => CpuStorage::F32(b.window(off, n)),
            GgmlType::F16 => CpuStorage::F16(b.window(off, n)),
            GgmlType::BF16 => CpuStorage::BF16(b.window(off, n)),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                CpuStorage::F32(self.dequantize(t)?.into())
            }
            GgmlType::Other(_) => return Err(self.unsupported(t)),
        };
        Ok(Tensor::from_cpu(storage, Shape::from(t.dims.clone())))
    }

    /// The elements of a quantized tensor as f32.
    fn dequantize(&self, t: &GgufTensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; t.elem_count()];
        self.dequantize_into(t, self.bytes(t), &mut out)?;
        self.release(t);
        Ok(out)
    }

    /// Dequantizes whole blocks `src` of `t`'s type into `dst` (Q8_0, Q4_0 and Q4_1 only).
    fn dequantize_into(&self, t: &GgufTensorInfo, src: &[u8], dst: &mut [f32]) -> Result<()> {
        match t.ggml_type {
            GgmlType::Q8_0 => quant::dequantize_q8_0(src, dst),
            GgmlType::Q4_0 => quant::dequantize_q4_0(src, dst),
            GgmlType::Q4_1 => quant::dequantize_q4_1(src, dst),
            _ => return Err(self.unsupported(t)),
        }
        Ok(())
    }

    /// Dequantizes a Q8_0/Q4_0/Q4_1 tensor straight to f16 or bf16, a chunk of blocks at a time,
    /// so no f32 copy of the whole tensor is ever held (the embedding table of a small model is
    /// larger in f32 than all its half-precision projections together).
    fn dequantize_to_half(&self, t: &GgufTensorInfo, dtype: DType, shape: Shape) -> Result<Tensor> {
        const CHUNK_BLOCKS: usize = 2048;
        let n = t.elem_count();
        let src = self.bytes(t);
        let block_bytes = match t.ggml_type.block() {
            Some((_, bytes)) => bytes as usize,
            None => return Err(self.unsupported(t)),
        };
        let mut scratch = vec![0f32; CHUNK_BLOCKS * quant::QK];
        let chunks = src
            .chunks(CHUNK_BLOCKS * block_bytes)
            .zip((0..n).step_by(CHUNK_BLOCKS * quant::QK));
        let storage = if dtype == DType::F16 {
            let mut v = vec![f16::ZERO; n];
            for (bytes, start) in chunks {
                let len = bytes.len() / block_bytes * quant::QK;
                self.dequantize_into(t, bytes, &mut scratch[..len])?;
                fused::f32_to_f16(&scratch[..len], &mut v[start..start + len]);
            }
            CpuStorage::F16(v.into())
        } else {
            let mut v = vec![bf16::ZERO; n];
            for (bytes, start) in chunks {
                let len = bytes.len() / block_bytes * quant::QK;
                self.dequantize_into(t, bytes, &mut scratch[..len])?;
                fused::f32_to_bf16(&scratch[..len], &mut v[start..start + len]);
            }
            CpuStorage::BF16(v.into())
        };
        self.release(t);
        Ok(Tensor::from_cpu(storage, shape))
    }

    /// The tensor called `name` converted to `dtype` (f32, f16 or bf16): quantized types are
    /// dequantized, floats converted (round to nearest-even). A tensor already stored as `dtype`
    /// is returned as [`Gguf::tensor`] gives it.
    pub fn tensor_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                op: "Gguf::tensor_as",
                dtype,
                expected: "F32, F16 or BF16",
            });
        }
        let t = self.info_or_err(name)?;
        let n = t.elem_count();
        let shape = Shape::from(t.dims.clone());
        let stored = match t.ggml_type {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => DType::F32,
            GgmlType::Other(_) => return Err(self.unsupported(t)),
        };
        if stored == dtype {
            return self.tensor(name);
        }
        let quantized = matches!(
            t.ggml_type,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
        );
        if quantized && dtype != DType::F32 {
            return self.dequantize_to_half(t, dtype, shape);
        }
        // f32 first (exact for f16/bf16 sources), then narrowed if asked.
        let f32s: Vec<f32> = match t.ggml_type {
            GgmlType::F16 => {
                let src: Buf<f16> = self.bytes.window(t.offset as usize, n);
                let mut v = vec![0f32; n];
                fused::f16_to_f32(&src, &mut v);
                v
            }
            GgmlType::BF16 => {
                let src: Buf<bf16> = self.bytes.window(t.offset as usize, n);
                let mut v = vec![0f32; n];
                fused::bf16_to_f32(&src, &mut v);
                v
            }
            GgmlType::F32 => self.bytes.window::<f32>(t.offset as usize, n).to_vec(),
            _ => self.dequantize(t)?,
        };
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(f32s.into()),
            DType::F16 => {
                let mut v = vec![f16::ZERO; n];
                fused::f32_to_f16(&f32s, &mut v);
                CpuStorage::F16(v.into())
            }
            _ => {
                let mut v = vec![bf16::ZERO; n];
                fused::f32_to_bf16(&f32s, &mut v);
                CpuStorage::BF16(v.into())
            }
        };
        Ok(Tensor::from_cpu(storage, shape))
    }
}

/// A value for an error message, cut short.
fn short(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => format!("{} elements", a.len()),
        GgufValue::String(s) if s.len() > 40 => {
            format!("{:?}…", s.chars().take(40).collect::<String>())
        }
        v => format!("{v:?}"),
    }
}
