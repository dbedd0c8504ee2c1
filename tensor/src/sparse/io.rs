//! Sparse tensors in safetensors files, next to dense ones, under the names compressed-tensors
//! (vLLM / llm-compressor) uses where it has a format, and documented shears names elsewhere.
//! `<p>` is the prefix the caller gives; compressed-tensors uses the parameter name with a
//! trailing `.weight` removed ([`module_prefix`]), e.g. `model.layers.0.mlp.down_proj`.
//!
//! | type | format name | stored tensors (safetensors dtype, shape) |
//! |---|---|---|
//! | [`Bitmask`] | `sparse-bitmask` | `<p>.compressed` (values, `[nnz]`), `<p>.bitmask` (U8, `[rows, ceil(cols/8)]`), `<p>.shape` (I64, `[2]`), `<p>.row_offsets` (I64, `[rows]`) |
//! | [`NmSparse`] 2:4 | `sparse-24-bitmask` | `<p>.compressed` (values, `[rows, cols/2]`), `<p>.bitmask` (U8, `[rows, ceil(cols/8)]`), `<p>.shape` (I64, `[2, 1]`) |
//! | [`NmSparse`] other N:M | `shears-nm-bitmask` | `<p>.nm_values` (values, `[rows, cols/m·n]`), `<p>.nm_bitmask` (U8, `[rows, ceil(cols/8)]`), `<p>.nm_shape` (I64, `[4]` = rows, cols, n, m) |
//! | [`Csr`] | `shears-csr` | `<p>.indptr` (I64, `[rows + 1]`), `<p>.indices` (U32, `[nnz]`), `<p>.values` (values, `[nnz]`), `<p>.shape` (I64, `[2]`) |
//!
//! The compressed-tensors dtypes are those its `BitmaskCompressor` / `Sparse24BitMaskCompressor`
//! write: `torch.tensor(shape)` and the `cumsum` row offsets are int64, `numpy.packbits` gives
//! uint8. When reading, integer parts may be I64 or U32 (a BOOL bitmask loads as U8); every
//! part is validated and any problem is an [`Error::SparseFormat`] naming the tensor.
//!
//! ```
//! use shears_tensor::sparse::{self, NmSparse, SparseTensor};
//! use shears_tensor::{io, Tensor};
//! let w = Tensor::from_vec(vec![1f32, 0., 2., 0., 0., 3., 0., 4.], [2, 4])?;
//! let nm = NmSparse::from_dense(&w, 2, 4)?;
//! let path = std::env::temp_dir().join(format!("shears-sparse-io-doc-{}.safetensors", std::process::id()));
//! sparse::save_sparse(&path, [("fc", (&nm).into())], [] as [(&str, &Tensor); 0], None)?;
//! let loaded = io::load(&path)?;
//! assert_eq!(loaded["fc.compressed"].dims(), &[2, 2]); // sparse-24-bitmask layout
//! let Some(SparseTensor::Nm(back)) = sparse::load_sparse(&loaded, "fc")? else { unreachable!() };
//! assert_eq!((back.n(), back.m()), (2, 4));
//! assert_eq!(back.values_as::<f32>()?, &[1., 2., 3., 4.]);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use super::{Bitmask, Csr, NmSparse, SparseRef, SparseTensor};
use crate::{DType, Error, Result, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const OP_LOAD: &str = "load_sparse";

/// Name of a stored part.
fn part(prefix: &str, suffix: &str) -> String {
    format!("{prefix}.{suffix}")
}

fn to_i64(op: &'static str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(op, format!("{v} does not fit in int64")))
}

fn i64_tensor(op: &'static str, v: &[usize], shape: &[usize]) -> Result<Tensor> {
    let v = v
        .iter()
        .map(|&x| to_i64(op, x))
        .collect::<Result<Vec<_>>>()?;
    Tensor::from_vec(v, shape)
}

impl SparseRef<'_> {
    /// The named tensors that store this matrix under `prefix` (see the module table). Values
    /// are shared, not copied.
    pub fn to_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        const OP: &str = "save_sparse";
        let p = |s| part(prefix, s);
        Ok(match *self {
            SparseRef::Bitmask(b) => vec![
                (p("compressed"), b.values().clone()),
                (
                    p("bitmask"),
                    Tensor::from_slice(b.bits(), [b.rows(), b.row_bytes()])?,
                ),
                (p("shape"), i64_tensor(OP, &b.shape(), &[2])?),
                (
                    p("row_offsets"),
                    i64_tensor(OP, b.row_offsets(), &[b.rows()])?,
                ),
            ],
            SparseRef::Nm(s) => {
                let bits = Tensor::from_slice(s.bits(), [s.rows(), s.row_bytes()])?;
                let values = s.values().reshape([s.rows(), s.row_nnz()])?;
                if (s.n(), s.m()) == (2, 4) {
                    vec![
                        (p("compressed"), values),
                        (p("bitmask"), bits),
                        (p("shape"), i64_tensor(OP, &s.shape(), &[2, 1])?),
                    ]
                } else {
                    let dims = [s.rows(), s.cols(), s.n(), s.m()];
                    vec![
                        (p("nm_values"), values),
                        (p("nm_bitmask"), bits),
                        (p("nm_shape"), i64_tensor(OP, &dims, &[4])?),
                    ]
                }
            }
            SparseRef::Csr(c) => vec![
                (p("indptr"), i64_tensor(OP, c.indptr(), &[c.rows() + 1])?),
                (p("indices"), Tensor::from_slice(c.indices(), c.nnz())?),
                (p("values"), c.values().clone()),
                (p("shape"), i64_tensor(OP, &c.shape(), &[2])?),
            ],
        })
    }
}

impl SparseTensor {
    /// See [`SparseRef::to_tensors`].
    pub fn to_tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        self.view().to_tensors(prefix)
    }
}

/// `weight_name` without a trailing `.weight`: the prefix compressed-tensors stores a compressed
/// weight under (`model.layers.0.self_attn.q_proj.weight` → `model.layers.0.self_attn.q_proj`).
pub fn module_prefix(weight_name: &str) -> &str {
    weight_name.strip_suffix(".weight").unwrap_or(weight_name)
}

/// Writes sparse matrices (each under its prefix, see the module table) and dense tensors into
/// one `.safetensors` file at `path`, atomically (temporary file, sync, rename, as
/// [`crate::io::save`]), with an optional `__metadata__` map. Errors: a name used twice, or a
/// dense tensor named like a sparse prefix ([`Error::InvalidArgument`]), IO errors.
pub fn save_sparse<'a, S: AsRef<str>, D: AsRef<str>>(
    path: impl AsRef<Path>,
    sparse: impl IntoIterator<Item = (S, SparseRef<'a>)>,
    dense: impl IntoIterator<Item = (D, &'a Tensor)>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = Vec::new();
    let mut prefixes = BTreeSet::new();
    for (name, s) in sparse {
        let name = name.as_ref();
        prefixes.insert(name.to_string());
        all.extend(s.to_tensors(name)?);
    }
    for (name, t) in dense {
        let name = name.as_ref();
        if prefixes.contains(name) {
            return Err(Error::invalid(
                "save_sparse",
                format!("`{name}` names both a dense tensor and a sparse one"),
            ));
        }
        all.push((name.to_string(), t.clone()));
    }
    crate::io::save(all.iter().map(|(n, t)| (n.as_str(), t)), path, metadata)
}

/// How a prefix is stored, found from the tensor that only that format has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csr,
    Nm,
    /// `.bitmask`: sparse-bitmask with `.row_offsets`, sparse-24-bitmask without.
    Bitmask,
}

const ANCHORS: [(&str, Kind); 3] = [
    ("indptr", Kind::Csr),
    ("nm_bitmask", Kind::Nm),
    ("bitmask", Kind::Bitmask),
];

/// Every part name a format may use.
fn suffixes(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Csr => &["indptr", "indices", "values", "shape"],
        Kind::Nm => &["nm_values", "nm_bitmask", "nm_shape"],
        Kind::Bitmask => &["compressed", "bitmask", "shape", "row_offsets"],
    }
}

/// The parts of one prefix in a loaded map.
struct Parts<'a> {
    map: &'a BTreeMap<String, Tensor>,
    prefix: &'a str,
}

impl Parts<'_> {
    fn fail(&self, suffix: &str, msg: impl std::fmt::Display) -> Error {
        super::err(
            OP_LOAD,
            format!("tensor `{}`: {msg}", part(self.prefix, suffix)),
        )
    }
    fn get(&self, suffix: &str) -> Option<&Tensor> {
        self.map.get(&part(self.prefix, suffix))
    }
    fn req(&self, suffix: &str) -> Result<&Tensor> {
        self.get(suffix)
            .ok_or_else(|| self.fail(suffix, "is missing"))
    }
    /// The elements of an integer part (I64 or U32) as usize, with the dims checked (1-D of any
    /// length when `dims` is `None`).
    fn ints(&self, suffix: &str, dims: Option<&[usize]>) -> Result<Vec<usize>> {
        let t = self.req(suffix)?;
        if let Some(d) = dims {
            if t.dims() != d {
                return Err(self.fail(suffix, format!("has shape {}, expected {d:?}", t.shape())));
            }
        } else if t.rank() != 1 {
            return Err(self.fail(suffix, format!("must be 1-D, got shape {}", t.shape())));
        }
        self.int_values(suffix, t)
    }
    fn int_values(&self, suffix: &str, t: &Tensor) -> Result<Vec<usize>> {
        match t.dtype() {
            DType::I64 => t
                .values::<i64>()
                .iter()
                .map(|&v| {
                    usize::try_from(v)
                        .map_err(|_| self.fail(suffix, format!("holds {v} (negative)")))
                })
                .collect(),
            DType::U32 => Ok(t.values::<u32>().iter().map(|&v| v as usize).collect()),
            d => Err(self.fail(suffix, format!("has dtype {d}, expected i64 (or u32)"))),
        }
    }
    /// `[rows, cols]` from a shape part holding exactly two integers (`[2]` or `[2, 1]`).
    fn dims2(&self, suffix: &str) -> Result<(usize, usize)> {
        let t = self.req(suffix)?;
        if !matches!(t.dims(), [2] | [2, 1]) {
            return Err(self.fail(
                suffix,
                format!(
                    "has shape {}, expected [2] or [2, 1] (a 2-D weight's shape)",
                    t.shape()
                ),
            ));
        }
        let v = self.int_values(suffix, t)?;
        Ok((v[0], v[1]))
    }
    /// The packed bits: a U8 tensor of shape `[rows, ceil(cols/8)]`.
    fn bits(&self, suffix: &str, rows: usize, cols: usize) -> Result<Vec<u8>> {
        let t = self.req(suffix)?;
        if t.dtype() != DType::U8 {
            return Err(self.fail(suffix, format!("has dtype {}, expected u8", t.dtype())));
        }
        let want = [rows, cols.div_ceil(8)];
        if t.dims() != want {
            return Err(self.fail(
                suffix,
                format!(
                    "has shape {}, expected [rows, ceil(cols/8)] = {want:?}",
                    t.shape()
                ),
            ));
        }
        t.to_vec::<u8>()
    }
    /// Values stored 2-D as `[rows, row_nnz]` (N:M layouts), flattened.
    fn values_2d(&self, suffix: &str, rows: usize, row_nnz: Option<usize>) -> Result<Tensor> {
        let t = self.req(suffix)?;
        let ok = t.rank() == 2 && t.dims()[0] == rows && row_nnz.is_none_or(|k| t.dims()[1] == k);
        if !ok {
            let want = match row_nnz {
                Some(k) => format!("[{rows}, {k}]"),
                None => format!("[{rows}, cols/m·n]"),
            };
            return Err(self.fail(suffix, format!("has shape {}, expected {want}", t.shape())));
        }
        t.flatten_all()
    }
    /// Re-labels a constructor's error with the prefix.
    fn wrap(&self, e: Error) -> Error {
        let msg = match e {
            Error::SparseFormat { msg, .. } => msg,
            other => other.to_string(),
        };
        super::err(OP_LOAD, format!("`{}`: {msg}", self.prefix))
    }
}

/// Which format, if any, stores `prefix`; more than one is an error.
fn kind_of(map: &BTreeMap<String, Tensor>, prefix: &str) -> Result<Option<Kind>> {
    let found: Vec<Kind> = ANCHORS
        .iter()
        .filter(|(s, _)| map.contains_key(&part(prefix, s)))
        .map(|&(_, k)| k)
        .collect();
    match found[..] {
        [] => Ok(None),
        [k] => Ok(Some(k)),
        _ => Err(super::err(
            OP_LOAD,
            format!(
                "`{prefix}` has the parts of more than one sparse format ({})",
                ANCHORS
                    .iter()
                    .filter(|(s, _)| map.contains_key(&part(prefix, s)))
                    .map(|(s, _)| format!("`{prefix}.{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Reassembles the sparse matrix stored under `prefix` in a loaded file (the map
/// [`crate::io::load`] returns), whatever its format (see the module table), validating every
/// part: dtypes, shapes, offsets against popcounts, padding bits, value counts. `Ok(None)` when
/// no sparse format stores `prefix`. Values borrow the map's tensors (no copy for memory-mapped
/// files). Errors: [`Error::SparseFormat`] naming the tensor and the problem.
pub fn load_sparse(map: &BTreeMap<String, Tensor>, prefix: &str) -> Result<Option<SparseTensor>> {
    let Some(kind) = kind_of(map, prefix)? else {
        return Ok(None);
    };
    let p = Parts { map, prefix };
    Ok(Some(match kind {
        Kind::Bitmask => {
            let (rows, cols) = p.dims2("shape")?;
            let bits = p.bits("bitmask", rows, cols)?;
            let compressed = p.req("compressed")?;
            if p.get("row_offsets").is_some() {
                let offs = p.ints("row_offsets", Some(&[rows]))?;
                let s = Bitmask::new(rows, cols, bits, offs, compressed.clone())
                    .map_err(|e| p.wrap(e))?;
                SparseTensor::Bitmask(s)
            } else {
                let k = cols.is_multiple_of(4).then_some(cols / 2);
                let values = p.values_2d("compressed", rows, k)?;
                let s = NmSparse::new(rows, cols, 2, 4, bits, values).map_err(|e| p.wrap(e))?;
                SparseTensor::Nm(s)
            }
        }
        Kind::Nm => {
            let d = p.ints("nm_shape", Some(&[4]))?;
            let (rows, cols, n, m) = (d[0], d[1], d[2], d[3]);
            let bits = p.bits("nm_bitmask", rows, cols)?;
            let k = (n < m && m > 0 && cols.is_multiple_of(m)).then(|| cols / m * n);
            let values = p.values_2d("nm_values", rows, k)?;
            let s = NmSparse::new(rows, cols, n, m, bits, values).map_err(|e| p.wrap(e))?;
            SparseTensor::Nm(s)
        }
        Kind::Csr => {
            let (rows, cols) = p.dims2("shape")?;
            let indptr = p.ints("indptr", None)?;
            let indices = p
                .ints("indices", None)?
                .into_iter()
                .map(|c| {
                    u32::try_from(c)
                        .map_err(|_| p.fail("indices", format!("index {c} does not fit u32")))
                })
                .collect::<Result<Vec<u32>>>()?;
            let values = p.req("values")?.clone();
            let s = Csr::new(rows, cols, indptr, indices, values).map_err(|e| p.wrap(e))?;
            SparseTensor::Csr(s)
        }
    }))
}

/// Splits a loaded file into its sparse matrices (keyed by prefix, see [`load_sparse`]) and the
/// remaining dense tensors. A prefix is sparse when one of its format's distinguishing parts is
/// present (`<p>.bitmask`, `<p>.nm_bitmask`, `<p>.indptr`); all of that format's parts are then
/// consumed. Errors as [`load_sparse`], and when a prefix is also a dense tensor's name.
pub fn split_sparse(
    mut map: BTreeMap<String, Tensor>,
) -> Result<(BTreeMap<String, SparseTensor>, BTreeMap<String, Tensor>)> {
    let mut prefixes = BTreeSet::new();
    for key in map.keys() {
        for (s, _) in ANCHORS {
            if let Some(p) = key.strip_suffix(s).and_then(|k| k.strip_suffix('.')) {
                prefixes.insert(p.to_string());
            }
        }
    }
    let mut sparse = BTreeMap::new();
    for p in prefixes {
        let (Some(kind), Some(s)) = (kind_of(&map, &p)?, load_sparse(&map, &p)?) else {
            continue;
        };
        if map.contains_key(&p) {
            return Err(super::err(
                OP_LOAD,
                format!("`{p}` is stored both as a dense tensor and as a sparse one"),
            ));
        }
        for suffix in suffixes(kind) {
            map.remove(&part(&p, suffix));
        }
        sparse.insert(p, s);
    }
    Ok((sparse, map))
}
