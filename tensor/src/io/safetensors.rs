//! The safetensors format (<https://github.com/huggingface/safetensors>): an 8-byte little-endian
//! header length `N`, `N` bytes of JSON header
//! (`{"name": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "__metadata__": {..}}`),
//! then the packed tensor data. Sharded checkpoints (an index and several such files) are in
//! [`crate::io`].
//!
//! The reader is strict and checks everything it maps before any tensor is built: the header
//! length against the file, UTF-8, JSON, duplicate names, shapes that overflow, offsets that run
//! past the data, overlap, leave holes or disagree with shape × dtype. A file the reference
//! implementation accepts is accepted here; a broken one is an [`Error::Format`] naming the file
//! and, when one is at fault, the tensor.
//!
//! ```
//! use shears_tensor::{io, Tensor};
//! let path = std::env::temp_dir().join(format!("shears-st-doc-{}.safetensors", std::process::id()));
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2])?;
//! io::save([("w", &w)], &path, None)?;
//! let header = io::load_metadata(&path)?; // reads the header only
//! assert_eq!(header.tensors[0].shape, vec![2, 2]);
//! assert_eq!(header.tensors[0].dtype, "F32");
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::bytes::FileBytes;
use super::write_atomic;
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Shape, Tensor};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Headers longer than this are refused (the reference implementation's limit), so a corrupt
/// length cannot make us parse gigabytes of JSON.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The dtypes [`load`] can turn into tensors, as the error message lists them.
const SUPPORTED: &str = "F32, F64, F16, BF16, U8, U32, I64, BOOL";

/// One tensor as described by a header; no data is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (checkpoint key).
    pub name: String,
    /// The safetensors dtype name as written in the file (`F32`, `BF16`, `I8`, ...), including
    /// dtypes shears cannot load.
    pub dtype: String,
    /// The dims, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// Bytes of data the tensor occupies in the file.
    pub bytes: usize,
}

impl TensorInfo {
    /// Number of elements (product of the dims; checked not to overflow when the header was read).
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
    /// The dtype [`load`] gives this tensor (`BOOL` loads as [`DType::U8`]), or `None` when
    /// shears does not support it.
    pub fn shears_dtype(&self) -> Option<DType> {
        shears_dtype(&self.dtype)
    }
}

/// What a safetensors header (or a sharded checkpoint's headers) holds: the tensors, sorted by
/// name, and the free-form `__metadata__` string map (for a sharded checkpoint, the index's
/// `metadata`, with non-string values written as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The tensors, sorted by name.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
    /// Total number of elements (parameters) over all tensors.
    pub fn total_elems(&self) -> usize {
        self.tensors.iter().map(TensorInfo::elem_count).sum()
    }
}

fn shears_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "U8" | "BOOL" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
    }
}

/// Every dtype the safetensors spec names, for error messages.
const KNOWN_DTYPES: &str = "BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F4, F6_E2M3, F6_E3M2, I16, \
                            U16, F16, BF16, I32, U32, F32, I64, U64, F64, C64";

/// Bits per element of every dtype the safetensors spec names, so that offsets can be checked
/// even for tensors shears cannot load.
fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------- header parsing

/// A tensor entry of a validated header.
struct Entry {
    info: TensorInfo,
    /// Start of the tensor's bytes, relative to the start of the data section.
    begin: usize,
}

/// A validated header: entries sorted by name.
struct Parsed {
    entries: Vec<Entry>,
    metadata: BTreeMap<String, String>,
}

impl Parsed {
    fn into_header(self) -> Header {
        Header {
            tensors: self.entries.into_iter().map(|e| e.info).collect(),
            metadata: self.metadata,
        }
    }
}

/// A JSON object's entries in file order with duplicate keys kept (serde_json's maps would
/// silently keep the last one), so that a reader can reject duplicates by name: the header's
/// top-level object here, a sharded index's `weight_map` in [`crate::io`].
pub(super) struct OrderedMap<V>(pub(super) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<OrderedMap<V>, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, V>()? {
                    v.push(kv);
                }
                Ok(OrderedMap(v))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Reads the 8-byte header length from `prefix` (the file's first bytes) and checks it against
/// the file length; returns `N`.
fn header_len(path: &Path, prefix: &[u8], file_len: u64) -> Result<usize> {
    if file_len == 0 {
        return Err(Error::format(
            path,
            None,
            "file is empty, not a safetensors file",
        ));
    }
    let first8 = match prefix.get(..8) {
        Some(b) if file_len >= 8 => b,
        _ => {
            return Err(Error::format(
                path,
                None,
                format!("file is {file_len} bytes, too short for the 8-byte header length"),
            ))
        }
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(first8);
    let n = u64::from_le_bytes(le);
    if n > MAX_HEADER_BYTES {
        return Err(Error::format(
            path,
            None,
            format!("header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (corrupt file?)"),
        ));
    }
    if n > file_len - 8 {
        return Err(Error::format(
            path,
            None,
            format!(
                "header length {n} runs past the end of the file ({file_len} bytes): truncated?"
            ),
        ));
    }
    // n <= MAX_HEADER_BYTES, which fits in usize on every supported target.
    Ok(n as usize)
}

/// Parses and validates the JSON header against a data section of `data_len` bytes.
fn parse_header(path: &Path, json: &[u8], data_len: usize) -> Result<Parsed> {
    let text = std::str::from_utf8(json)
        .map_err(|e| Error::format(path, None, format!("header is not UTF-8: {e}")))?;
    let OrderedMap::<serde_json::Value>(raw) = serde_json::from_str(text)
        .map_err(|e| Error::format(path, None, format!("header is not valid JSON: {e}")))?;

    let mut metadata = None;
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for (name, value) in raw {
        if !seen.insert(name.clone()) {
            return Err(Error::format(
                path,
                Some(&name),
                "appears twice in the header",
            ));
        }
        if name == "__metadata__" {
            let m: BTreeMap<String, String> = serde_json::from_value(value).map_err(|e| {
                Error::format(
                    path,
                    None,
                    format!("__metadata__ must map strings to strings: {e}"),
                )
            })?;
            metadata = Some(m);
            continue;
        }
        let fail = |msg: String| Error::format(path, Some(&name), msg);
        let t: RawTensor = serde_json::from_value(value)
            .map_err(|e| fail(format!("invalid header entry: {e}")))?;
        let [begin, end] = t.data_offsets;
        // A dtype outside the spec is an error, as in the reference reader (its dtype enum
        // rejects unknown names): nothing can size, check or read such a tensor.
        let Some(bits) = dtype_bits(&t.dtype) else {
            return Err(fail(format!(
                "unknown dtype {:?} (the safetensors dtypes are {KNOWN_DTYPES})",
                t.dtype
            )));
        };
        // Every stride is a product of non-zero dims, so bound that product (in bits, times the
        // element width) too, not only the element count: a shape like [0, 2^40, 2^40] must not
        // overflow later.
        let bound = t
            .shape
            .iter()
            .try_fold(bits, |acc, &d| acc.checked_mul(d.max(1)))
            .filter(|&b| b <= isize::MAX as usize);
        if bound.is_none() {
            return Err(fail(format!(
                "shape {:?} is too large (overflows)",
                t.shape
            )));
        }
        let elems: usize = t.shape.iter().product();
        if begin > end {
            return Err(fail(format!("data_offsets [{begin}, {end}] are reversed")));
        }
        if end > data_len {
            return Err(fail(format!(
                "data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes): \
                 truncated file?"
            )));
        }
        // `bound` above (in bits) keeps this from overflowing.
        let want = (elems * bits).div_ceil(8);
        if end - begin != want {
            return Err(fail(format!(
                "data_offsets [{begin}, {end}] hold {} bytes but shape {:?} of dtype {} needs \
                 {want}",
                end - begin,
                t.shape,
                t.dtype
            )));
        }
        entries.push(Entry {
            info: TensorInfo {
                name,
                dtype: t.dtype,
                shape: t.shape,
                bytes: end - begin,
            },
            begin,
        });
    }

    // The spec forbids overlaps and holes (no polyglot files): the data must be tiled exactly.
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by_key(|e| (e.begin, e.begin + e.info.bytes));
    let mut cursor = 0usize;
    let mut prev: Option<&str> = None;
    for e in order {
        let (b, end) = (e.begin, e.begin + e.info.bytes);
        if b < cursor {
            return Err(Error::format(
                path,
                Some(&e.info.name),
                format!(
                    "data_offsets [{b}, {end}] overlap tensor `{}`",
                    prev.unwrap_or_default()
                ),
            ));
        }
        if b > cursor {
            return Err(Error::format(
                path,
                Some(&e.info.name),
                format!("data_offsets [{b}, {end}] leave bytes {cursor}..{b} unused (holes are not allowed)"),
            ));
        }
        cursor = end;
        prev = Some(&e.info.name);
    }
    if cursor != data_len {
        return Err(Error::format(
            path,
            None,
            format!(
                "the data section is {data_len} bytes but the tensors cover only {cursor} \
                 (trailing bytes)"
            ),
        ));
    }
    entries.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(Parsed {
        entries,
        metadata: metadata.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------- single files

/// Reads only the header of a `.safetensors` file: every tensor's name, dtype, shape and size,
/// and the `__metadata__` map. The data is not read, but the offsets are validated against the
/// file length.
pub fn load_metadata(path: impl AsRef<Path>) -> Result<Header> {
    let path = path.as_ref();
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut prefix = Vec::with_capacity(8);
    (&mut file)
        .take(8)
        .read_to_end(&mut prefix)
        .map_err(io_err(path))?;
    let n = header_len(path, &prefix, file_len)?;
    let mut json = vec![0u8; n];
    file.read_exact(&mut json).map_err(io_err(path))?;
    let data_len = usize::try_from(file_len - 8 - n as u64)
        .map_err(|_| Error::format(path, None, "file too large for this platform"))?;
    Ok(parse_header(path, &json, data_len)?.into_header())
}

/// [`load_metadata`] of a whole `.safetensors` file already in memory (`file`: every byte of it);
/// `path` only names it in errors. The same validation, without a file (the parser fuzz target,
/// `tensor/tests/fuzz.rs`, drives it).
pub fn metadata_from_bytes(path: impl AsRef<Path>, file: &[u8]) -> Result<Header> {
    let path = path.as_ref();
    let n = header_len(path, file, file.len() as u64)?;
    // `header_len` checked 8 + n ≤ file.len().
    let data_start = 8 + n;
    Ok(parse_header(path, &file[8..data_start], file.len() - data_start)?.into_header())
}

/// Loads every tensor of a `.safetensors` file, keyed by name. The file is memory-mapped once and
/// each tensor borrows its window of the map ([`Tensor::is_mapped`]); a tensor whose data is not
/// aligned for its dtype is copied instead. `BOOL` loads as `U8`; other dtypes shears does not
/// support (`I8`, `I32`, `F8_*`, ...) are an [`Error::Format`] naming the tensor.
///
/// The file must not be modified while tensors borrow it; [`save`] replaces files by rename, which
/// leaves existing maps intact.
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and we never create a mutable view. Another process truncating
    // or rewriting the file in place while it is mapped is outside what Rust can guard against
    // (every mmap-based loader shares this caveat); shears itself only replaces files by rename.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    load_file_bytes(path, FileBytes::Map(Arc::new(map)))
}

/// [`load`] of a whole `.safetensors` file already in memory (`file`: every byte of it); `path`
/// only names it in errors. The same validation and the same tensors, each holding a copy of its
/// elements (none borrows `file`). The tensor-data fuzz targets (`tensor/tests/fuzz.rs`) drive
/// it; `sparse::split_sparse` of its result decodes a compressed-tensors file in memory.
pub fn load_from_bytes(path: impl AsRef<Path>, file: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    load_file_bytes(path.as_ref(), FileBytes::Heap(Arc::from(file)))
}

/// Validates the header of `bytes` (a whole file) and builds every tensor over its data.
fn load_file_bytes(path: &Path, bytes: FileBytes) -> Result<BTreeMap<String, Tensor>> {
    let n = header_len(path, &bytes, bytes.len() as u64)?;
    let data_start = 8 + n;
    let parsed = parse_header(path, &bytes[8..data_start], bytes.len() - data_start)?;
    let mut out = BTreeMap::new();
    for e in parsed.entries {
        let t = build_tensor(path, &bytes, data_start + e.begin, &e.info)?;
        out.insert(e.info.name, t);
    }
    Ok(out)
}

/// One tensor over its (validated) window of the file.
fn build_tensor(
    path: &Path,
    bytes: &FileBytes,
    offset: usize,
    info: &TensorInfo,
) -> Result<Tensor> {
    let n = info.elem_count();
    let Some(dtype) = info.shears_dtype() else {
        return Err(Error::format(
            path,
            Some(&info.name),
            format!(
                "dtype {} is not supported (supported: {SUPPORTED})",
                info.dtype
            ),
        ));
    };
    let storage = match dtype {
        DType::F32 => CpuStorage::F32(bytes.window(offset, n)),
        DType::F64 => CpuStorage::F64(bytes.window(offset, n)),
        DType::F16 => CpuStorage::F16(bytes.window(offset, n)),
        DType::BF16 => CpuStorage::BF16(bytes.window(offset, n)),
        DType::U8 => CpuStorage::U8(bytes.window(offset, n)),
        DType::U32 => CpuStorage::U32(bytes.window(offset, n)),
        DType::I64 => CpuStorage::I64(bytes.window(offset, n)),
    };
    Ok(Tensor::from_cpu(storage, Shape::from(info.shape.clone())))
}

/// A tensor ready to be written: its name and contiguous form.
pub(super) struct Prepared {
    pub(super) name: String,
    tensor: Tensor,
}

impl Prepared {
    pub(super) fn bytes(&self) -> &[u8] {
        let r = self
            .tensor
            .layout()
            .contiguous_range()
            .expect("made contiguous in `prepare`");
        let s = self.tensor.dtype().size_in_bytes();
        &self.tensor.cpu().as_bytes()[r.start * s..r.end * s]
    }
}

/// Makes every tensor contiguous and checks the names.
pub(super) fn prepare<'a, S: AsRef<str>>(
    op: &'static str,
    tensors: impl IntoIterator<Item = (S, &'a Tensor)>,
) -> Result<Vec<Prepared>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, t) in tensors {
        let name = name.as_ref();
        if name == "__metadata__" {
            return Err(Error::invalid(
                op,
                "`__metadata__` is reserved and cannot name a tensor",
            ));
        }
        if !seen.insert(name.to_string()) {
            return Err(Error::invalid(
                op,
                format!("duplicate tensor name `{name}`"),
            ));
        }
        out.push(Prepared {
            name: name.to_string(),
            tensor: t.contiguous()?,
        });
    }
    Ok(out)
}

/// Writes a prepared list to `path` atomically.
pub(super) fn save_prepared(
    mut tensors: Vec<&Prepared>,
    path: &Path,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    // Widest dtypes first, as the reference writer does: with the header padded to 8 bytes every
    // tensor then starts aligned for its dtype, so loading can map instead of copy.
    tensors.sort_by(|a, b| {
        let (da, db) = (a.tensor.dtype(), b.tensor.dtype());
        db.size_in_bytes()
            .cmp(&da.size_in_bytes())
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut header = String::from("{");
    if let Some(m) = metadata.filter(|m| !m.is_empty()) {
        header.push_str("\"__metadata__\":");
        header.push_str(&json(m));
    }
    let mut offset = 0usize;
    for t in &tensors {
        if header.len() > 1 {
            header.push(',');
        }
        let nbytes = t.bytes().len();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            json(&t.name),
            safetensors_dtype(t.tensor.dtype()),
            json(t.tensor.dims()),
            offset,
            offset + nbytes
        ));
        offset += nbytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for t in &tensors {
            w.write_all(t.bytes())?;
        }
        Ok(())
    })
}

/// JSON text of a string, a string map or a list of dims.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    // These types have no failing `Serialize` impl (string keys, no non-finite floats).
    serde_json::to_string(v).expect("strings, string maps and usize lists always serialize")
}

/// Writes `tensors` to a `.safetensors` file at `path`, with an optional `__metadata__` map.
/// Non-contiguous tensors are made contiguous; data is written bit for bit. The file is written
/// to a temporary file in the same directory, synced, then renamed over `path`, so `path` never
/// holds a half-written file. Duplicate names (or the reserved `__metadata__`) are an
/// [`Error::InvalidArgument`].
pub fn save<'a, S: AsRef<str>>(
    tensors: impl IntoIterator<Item = (S, &'a Tensor)>,
    path: impl AsRef<Path>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let prepared = prepare("save", tensors)?;
    save_prepared(prepared.iter().collect(), path.as_ref(), metadata)
}
