//! Mutation fuzzing of the checkpoint parsers (harness: `shears_tensor::test_util::fuzz`), from
//! the committed seeds in `fuzz_corpus/` (made by `fuzz_corpus/make_seeds.py`):
//! - the safetensors header with its offsets against the data, and the GGUF header (every
//!   metadata type, tensor infos, alignment, quant block sizes);
//! - a sharded checkpoint's `model.safetensors.index.json` (`index/`): a parsed index only names
//!   shard files inside its directory, each tensor once;
//! - compressed-tensors decoding (`compressed/` and `st_compressed.safetensors`): a whole file's
//!   bytes through `load_from_bytes` and `split_sparse`; a decoded matrix agrees with its stored
//!   shape, its values and its own invariants;
//! - tensor data: safetensors f32/f16/bf16/... files to tensors, and GGUF F32/F16/BF16 and
//!   Q8_0/Q4_0/Q4_1 dequantization (`quant/`), to every dtype: a loaded tensor has the dims and
//!   element count its header gives.
//!
//! CI runs `SHEARS_FUZZ_EXECS` executions per target (default 20 000, about a second); a long run:
//! `SHEARS_FUZZ_EXECS=10000000 cargo test --release -p shears-tensor --test fuzz -- --nocapture`.
//! `SHEARS_FUZZ_SEED` picks another random sequence. A failure prints the input (hex): add it to
//! the corpus as a regression seed.

use shears_tensor::io::{self, safetensors, GgmlType, Gguf};
use shears_tensor::sparse::{self, SparseTensor};
use shears_tensor::test_util::fuzz::{self, Counting};
use shears_tensor::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The seeds ending in `.ext` in `fuzz_corpus/<sub>` (`sub` empty: `fuzz_corpus/` itself).
fn seeds_in(sub: &str, ext: &str) -> Vec<Vec<u8>> {
    fuzz::seeds(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz_corpus")
            .join(sub),
        ext,
    )
}

fn seeds(ext: &str) -> Vec<Vec<u8>> {
    seeds_in("", ext)
}

#[test]
fn fuzz_safetensors_header() {
    fuzz::run("safetensors", &seeds("safetensors"), |b| {
        safetensors::metadata_from_bytes("fuzz.safetensors", b).is_ok()
    });
}

#[test]
fn fuzz_gguf_header() {
    fuzz::run("gguf", &seeds("gguf"), |b| {
        Gguf::header_from_bytes("fuzz.gguf", b).is_ok()
    });
}

#[test]
fn fuzz_sharded_index() {
    fuzz::run("sharded index", &seeds_in("index", "json"), |b| {
        let Ok(index) = io::index_from_bytes("model.safetensors.index.json", b) else {
            return false;
        };
        let mut seen = BTreeSet::new();
        for (file, names) in &index.shards {
            let inside = Path::new(file)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            assert!(!file.is_empty() && inside, "shard `{file}` escapes");
            assert!(!names.is_empty(), "shard `{file}` holds no tensor");
            for n in names {
                assert!(seen.insert(n), "`{n}` listed twice");
            }
        }
        true
    });
}

/// The integer values of a stored shape part (I64 or U32).
fn ints(t: &Tensor) -> Vec<usize> {
    t.to_vec_f64().iter().map(|&v| v as usize).collect()
}

/// A decoded sparse matrix against the parts it came from (`all`: the file's tensors) and its
/// own invariants; `input` bytes bound what it may expand to.
fn check_sparse(prefix: &str, s: &SparseTensor, all: &BTreeMap<String, Tensor>, input: usize) {
    let [rows, cols] = s.shape();
    let part = |suffix: &str| &all[&format!("{prefix}.{suffix}")];
    match s {
        SparseTensor::Bitmask(b) => {
            assert_eq!(ints(part("shape")), [rows, cols], "{prefix}");
            assert_eq!(b.bits().len(), rows * b.row_bytes(), "{prefix}");
            let ones: usize = b.bits().iter().map(|x| x.count_ones() as usize).sum();
            assert_eq!(ones, b.nnz(), "{prefix}");
            assert_eq!(b.row_offsets().len(), rows, "{prefix}");
            assert_eq!(b.values().elem_count(), b.nnz(), "{prefix}");
        }
        SparseTensor::Nm(m) => {
            let dims = match all.get(&format!("{prefix}.nm_shape")) {
                Some(t) => ints(t)[..2].to_vec(),
                None => ints(part("shape")),
            };
            assert_eq!(dims, [rows, cols], "{prefix}");
            assert!(0 < m.n() && m.n() < m.m() && cols % m.m() == 0, "{prefix}");
            assert_eq!(m.nnz(), rows * (cols / m.m()) * m.n(), "{prefix}");
            assert_eq!(m.values().elem_count(), m.nnz(), "{prefix}");
        }
        SparseTensor::Csr(c) => {
            assert_eq!(ints(part("shape")), [rows, cols], "{prefix}");
            assert_eq!(c.indptr().len(), rows + 1, "{prefix}");
            assert_eq!(c.indptr()[rows], c.nnz(), "{prefix}");
            assert!(c.indices().iter().all(|&i| (i as usize) < cols), "{prefix}");
            assert_eq!(c.values().elem_count(), c.nnz(), "{prefix}");
        }
    }
    assert!(s.nnz() <= rows * cols, "{prefix}");
    assert!(matches!(s.dtype(), DType::F32 | DType::F16 | DType::BF16));
    // CSR's dense size is not bounded by the file (a 1-row matrix may claim 2^32 columns): expand
    // only what stays within the harness's allocation bound.
    if rows * cols <= 4 * input {
        let dense = s.to_dense().expect("a decoded matrix expands");
        assert_eq!(dense.dims(), [rows, cols], "{prefix}");
        let nonzero = dense.to_vec_f64().iter().filter(|&&v| v != 0.0).count();
        assert!(
            nonzero <= s.nnz(),
            "{prefix}: {nonzero} nonzeros > nnz {}",
            s.nnz()
        );
    }
}

#[test]
fn fuzz_compressed_tensors() {
    let mut seeds = seeds("safetensors");
    seeds.extend(seeds_in("compressed", "safetensors"));
    fuzz::run("compressed-tensors", &seeds, |b| {
        let Ok(all) = safetensors::load_from_bytes("fuzz.safetensors", b) else {
            return false;
        };
        let Ok((sparse, dense)) = sparse::split_sparse(all.clone()) else {
            return false;
        };
        for (prefix, s) in &sparse {
            check_sparse(prefix, s, &all, b.len());
        }
        for (name, t) in &dense {
            assert_eq!(t.dims(), all[name].dims(), "{name}");
        }
        true
    });
}

#[test]
fn fuzz_safetensors_data() {
    fuzz::run("safetensors data", &seeds("safetensors"), |b| {
        let Ok(map) = safetensors::load_from_bytes("fuzz.safetensors", b) else {
            return false;
        };
        let header =
            safetensors::metadata_from_bytes("fuzz.safetensors", b).expect("a loaded header");
        assert_eq!(map.len(), header.tensors.len());
        for info in &header.tensors {
            let t = &map[&info.name];
            assert_eq!(t.dims(), &info.shape[..], "{}", info.name);
            assert_eq!(t.elem_count(), info.elem_count(), "{}", info.name);
            assert_eq!(Some(t.dtype()), info.shears_dtype(), "{}", info.name);
            if t.dtype().is_float() {
                let f = t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
                assert_eq!(f.len(), info.elem_count(), "{}", info.name);
            }
        }
        true
    });
}

#[test]
fn fuzz_gguf_data() {
    let mut seeds = seeds("gguf");
    seeds.extend(seeds_in("quant", "gguf"));
    fuzz::run("gguf data", &seeds, |b| {
        let Ok(g) = Gguf::from_bytes("fuzz.gguf", b.to_vec()) else {
            return false;
        };
        let mut all = true;
        for info in &g.tensors {
            for dtype in [None, Some(DType::F32), Some(DType::F16), Some(DType::BF16)] {
                let r = match dtype {
                    None => g.tensor(&info.name),
                    Some(d) => g.tensor_as(&info.name, d),
                };
                match r {
                    Ok(t) => {
                        assert_eq!(t.dims(), &info.dims[..], "{}", info.name);
                        assert_eq!(t.elem_count(), info.elem_count(), "{}", info.name);
                        assert!(dtype.is_none_or(|d| t.dtype() == d), "{}", info.name);
                    }
                    // Only a type shears does not read may fail once the header parsed.
                    Err(e) => {
                        assert!(matches!(info.ggml_type, GgmlType::Other(_)), "{e}");
                        all = false;
                    }
                }
            }
        }
        all
    });
}
