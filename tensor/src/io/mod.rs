//! Checkpoint IO: safetensors files, HF sharded checkpoints and directories holding either.
//! Loading memory-maps the file and tensors borrow it (no copy); saving is atomic (temporary
//! file, fsync, rename: [`write_atomic`], which every file the workspace writes goes through),
//! so a crash never leaves a half-written checkpoint behind. GGUF files (llama.cpp's format, with
//! Q8_0/Q4_0/Q4_1 dequantized on load) are read by [`Gguf`].
//!
//! ```
//! use shears_tensor::{io, DType, Tensor};
//! let dir = std::env::temp_dir().join(format!("shears-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("model.safetensors");
//!
//! let w = Tensor::randn([4, 3], 0.0, 1.0, DType::F32, 0)?;
//! let mask = Tensor::from_vec(vec![1u8, 0, 1], [3])?;
//! io::save([("w", &w.t()?), ("mask", &mask)], &path, None)?; // the transpose is written contiguous
//!
//! let loaded = io::load_any(&dir)?; // a file, an index.json, or a directory holding either
//! assert_eq!(loaded["w"].dims(), &[3, 4]);
//! assert_eq!(loaded["w"].to_vec::<f32>()?, w.t()?.to_vec::<f32>()?);
//! assert!(loaded["w"].is_mapped()); // borrows the file
//! assert_eq!(loaded["mask"].to_vec::<u8>()?, vec![1, 0, 1]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod atomic;
mod bytes;
pub mod gguf;
pub mod safetensors;

pub use self::atomic::{write_atomic, AtomicFile};
pub use self::gguf::{GgmlType, Gguf, GgufTensorInfo, GgufValue};
pub use self::safetensors::{load, load_metadata, save, Header, TensorInfo};

use self::safetensors::{io_err, prepare, save_prepared, OrderedMap, Prepared};
use crate::{Error, Result, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The single-file checkpoint name a directory may hold (HF `save_pretrained`).
pub const SINGLE_FILE: &str = "model.safetensors";

/// The file name of a sharded checkpoint's index, as written by HF `save_pretrained`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// What a checkpoint path points at.
enum Target {
    File(PathBuf),
    Index(PathBuf),
}

fn resolve(path: &Path) -> Result<Target> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(Target::File(single));
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Ok(Target::Index(index));
        }
        return Err(Error::format(
            path,
            None,
            format!("directory holds neither {SINGLE_FILE} nor {INDEX_FILE}"),
        ));
    }
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    Ok(if is_json {
        Target::Index(path.to_path_buf())
    } else {
        Target::File(path.to_path_buf())
    })
}

/// Loads a checkpoint from a `.safetensors` file, a sharded checkpoint's `*.index.json`, or a
/// directory holding `model.safetensors` (preferred) or `model.safetensors.index.json`.
pub fn load_any(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    match resolve(path.as_ref())? {
        Target::File(p) => load(p),
        Target::Index(p) => load_sharded(p),
    }
}

/// Reads the header(s) of whatever [`load_any`] accepts, without reading tensor data; for a
/// sharded checkpoint every shard's header is read and checked against the index.
pub fn load_metadata_any(path: impl AsRef<Path>) -> Result<Header> {
    match resolve(path.as_ref())? {
        Target::File(p) => load_metadata(p),
        Target::Index(p) => load_metadata_sharded(p),
    }
}

// ---------------------------------------------------------------- sharded checkpoints (HF)

#[derive(serde::Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: OrderedMap<String>,
}

/// A sharded checkpoint's index (`model.safetensors.index.json`), parsed and validated by
/// [`index_from_bytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardIndex {
    /// Shard file → the tensor names the weight map assigns to it (in index order). A shard file is
    /// a path relative to the index's directory, `/`-separated, with `.` components dropped.
    pub shards: BTreeMap<String, Vec<String>>,
    /// The index's `metadata` (`total_size`, ...), non-string values written as JSON.
    pub metadata: BTreeMap<String, String>,
}

/// Parses and validates a sharded checkpoint's index held in memory (`json`: the bytes of
/// `model.safetensors.index.json`); `path` only names it in errors. [`load_sharded`] and
/// [`load_metadata_sharded`] read the index through it; the sharded-index fuzz target
/// (`tensor/tests/fuzz.rs`) drives it. Errors ([`Error::Format`] naming the index and, when one is
/// at fault, the tensor): not JSON, no `weight_map` object of strings, a tensor listed twice, and a
/// shard file that is empty or not a path inside the index's directory (absolute, `..`, a drive
/// prefix, or only `.`), so that an index can never point the loader at files elsewhere.
pub fn index_from_bytes(path: impl AsRef<Path>, json: &[u8]) -> Result<ShardIndex> {
    let path = path.as_ref();
    let raw: RawIndex = serde_json::from_slice(json)
        .map_err(|e| Error::format(path, None, format!("not a valid safetensors index: {e}")))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (name, shard) in raw.weight_map.0 {
        if !seen.insert(name.clone()) {
            return Err(Error::format(
                path,
                Some(&name),
                "listed twice in the index's weight_map",
            ));
        }
        let mut parts = Vec::new();
        let mut inside = !shard.is_empty();
        for c in Path::new(&shard).components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy()),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => inside = false,
            }
        }
        if !inside || parts.is_empty() {
            return Err(Error::format(
                path,
                Some(&name),
                format!(
                    "shard `{shard}` must be a file name relative to the index's directory \
                     (no absolute path, no `..`)"
                ),
            ));
        }
        shards.entry(parts.join("/")).or_default().push(name);
    }
    let metadata = raw
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            v => (k, v.to_string()),
        })
        .collect();
    Ok(ShardIndex { shards, metadata })
}

/// An index read from a file: shard path (joined to the index's directory) → its tensor names.
struct Index {
    shards: BTreeMap<PathBuf, Vec<String>>,
    metadata: BTreeMap<String, String>,
}

/// Reads and validates the index at `path` ([`index_from_bytes`]).
fn read_index(path: &Path) -> Result<Index> {
    let json = std::fs::read(path).map_err(io_err(path))?;
    let index = index_from_bytes(path, &json)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let shards = index
        .shards
        .into_iter()
        .map(|(file, names)| (dir.join(file), names))
        .collect();
    Ok(Index {
        shards,
        metadata: index.metadata,
    })
}

fn missing_shard(index: &Path, shard: &Path, first: &str) -> Error {
    Error::format(
        shard,
        Some(first),
        format!("shard listed in {} does not exist", index.display()),
    )
}

fn missing_tensor(index: &Path, shard: &Path, name: &str) -> Error {
    Error::format(
        shard,
        Some(name),
        format!("listed in {} but missing from this shard", index.display()),
    )
}

/// Loads a sharded checkpoint from its `model.safetensors.index.json`
/// (`{"metadata": {"total_size": N}, "weight_map": {"name": "model-00001-of-00002.safetensors"}}`).
/// Each shard is memory-mapped once; only the tensors the weight map lists are returned. A
/// missing shard or a listed tensor absent from its shard is an [`Error::Format`] naming the
/// shard and the tensor.
pub fn load_sharded(index_path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let index_path = index_path.as_ref();
    let index = read_index(index_path)?;
    let mut out = BTreeMap::new();
    for (shard, names) in index.shards {
        if !shard.is_file() {
            return Err(missing_shard(index_path, &shard, &names[0]));
        }
        let mut tensors = load(&shard)?;
        for name in names {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| missing_tensor(index_path, &shard, &name))?;
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Reads the headers of a sharded checkpoint (no data): the tensors its weight map lists, each
/// checked against its shard's header, and the index's `metadata`.
pub fn load_metadata_sharded(index_path: impl AsRef<Path>) -> Result<Header> {
    let index_path = index_path.as_ref();
    let index = read_index(index_path)?;
    let mut tensors = Vec::new();
    for (shard, names) in index.shards {
        if !shard.is_file() {
            return Err(missing_shard(index_path, &shard, &names[0]));
        }
        let mut infos: BTreeMap<String, TensorInfo> = load_metadata(&shard)?
            .tensors
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        for name in names {
            let t = infos
                .remove(&name)
                .ok_or_else(|| missing_tensor(index_path, &shard, &name))?;
            tensors.push(t);
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Header {
        tensors,
        metadata: index.metadata,
    })
}

/// Writes a sharded checkpoint into `dir` (created if needed): tensors are packed in the given
/// order into `model-0000i-of-0000N.safetensors` files of at most `max_shard_bytes` of data each
/// (a larger tensor gets a shard of its own), then `model.safetensors.index.json` is written.
/// Each file is written atomically, the index last. Returns the shard paths followed by the
/// index path. Always writes at least one shard.
pub fn save_sharded<'a, S: AsRef<str>>(
    tensors: impl IntoIterator<Item = (S, &'a Tensor)>,
    dir: impl AsRef<Path>,
    max_shard_bytes: usize,
) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    if max_shard_bytes == 0 {
        return Err(Error::invalid(
            "save_sharded",
            "max_shard_bytes must be positive",
        ));
    }
    let prepared = prepare("save_sharded", tensors)?;
    let mut shards: Vec<Vec<&Prepared>> = vec![vec![]];
    let mut filled = 0usize;
    for t in &prepared {
        let n = t.bytes().len();
        let current = shards.last_mut().expect("never empty");
        if !current.is_empty() && filled.saturating_add(n) > max_shard_bytes {
            shards.push(vec![t]);
            filled = n;
        } else {
            current.push(t);
            filled += n;
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let count = shards.len();
    let mut paths = Vec::with_capacity(count + 1);
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        for t in &shard {
            weight_map.insert(t.name.clone(), file.clone());
            total_size += t.bytes().len();
        }
        let path = dir.join(&file);
        save_prepared(shard, &path, None)?;
        paths.push(path);
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let text = serde_json::to_string_pretty(&index).expect("a JSON value always serializes");
    let index_path = dir.join(INDEX_FILE);
    write_atomic(&index_path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })?;
    paths.push(index_path);
    Ok(paths)
}
