//! safetensors IO: bit-exact round trips of every dtype, memory mapping, atomic saves, sharded
//! checkpoints, interoperability with the reference `safetensors` crate, and a strict reader that
//! turns every kind of broken file into an error naming the file (and the tensor).

use half::{bf16, f16};
use proptest::prelude::*;
use shears_tensor::{io, DType, Error, Tensor, WithDType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- helpers

/// The tensor's elements in row-major order as raw little-endian bytes.
fn raw(t: &Tensor) -> Vec<u8> {
    fn bytes<T: WithDType>(t: &Tensor) -> Vec<u8> {
        bytemuck::cast_slice(&t.to_vec::<T>().unwrap()).to_vec()
    }
    match t.dtype() {
        DType::F32 => bytes::<f32>(t),
        DType::F64 => bytes::<f64>(t),
        DType::F16 => bytes::<f16>(t),
        DType::BF16 => bytes::<bf16>(t),
        DType::U8 => bytes::<u8>(t),
        DType::U32 => bytes::<u32>(t),
        DType::I64 => bytes::<i64>(t),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn assert_same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.dtype(), b.dtype());
    assert_eq!(a.dims(), b.dims());
    assert_eq!(raw(a), raw(b), "bytes differ");
}

/// A hand-made file: 8-byte little-endian header length, the header, the data.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Both readers must fail with a `Format` error naming the file, the tensor (if given) and
/// containing `needle`.
fn assert_bad(path: &Path, tensor: Option<&str>, needle: &str) {
    let file = path.file_name().unwrap().to_str().unwrap();
    let errs = [
        ("load", io::load(path).err()),
        ("load_metadata", io::load_metadata(path).err()),
    ];
    for (what, err) in errs {
        let err = err.unwrap_or_else(|| panic!("{what} accepted a broken file"));
        let msg = err.to_string();
        match &err {
            Error::Format { tensor: t, .. } => assert_eq!(t.as_deref(), tensor, "{what}: {msg}"),
            other => panic!("{what}: expected Error::Format, got {other:?}"),
        }
        assert!(msg.contains(file), "{what}: `{msg}` does not name {file}");
        if let Some(t) = tensor {
            assert!(msg.contains(t), "{what}: `{msg}` does not name tensor {t}");
        }
        assert!(msg.contains(needle), "{what}: `{msg}` lacks `{needle}`");
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// One tensor of every dtype, with the values that trip up lossy writers: NaN payloads, -0.0,
/// subnormals, infinities, integer extremes.
fn every_dtype() -> Vec<(&'static str, Tensor)> {
    let f32v = [
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(0xffa0_0001), // signalling NaN, negative
        -0.0,
        f32::from_bits(1), // smallest subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let f64v = [
        f64::from_bits(0x7ff8_0000_dead_beef),
        -0.0,
        f64::from_bits(1),
        f64::MAX,
        f64::MIN_POSITIVE / 2.0,
        1.5,
    ];
    let f16v = [0x7e01u16, 0x8000, 0x0001, 0x7c00, 0xfc01, 0x3c00].map(f16::from_bits);
    let bf16v = [0x7fc1u16, 0x8000, 0x0001, 0xff81, 0x7f80, 0x3f80].map(bf16::from_bits);
    vec![
        ("f32", Tensor::from_slice(&f32v, [2, 3]).unwrap()),
        ("f64", Tensor::from_slice(&f64v, [3, 2]).unwrap()),
        ("f16", Tensor::from_slice(&f16v, [6]).unwrap()),
        ("bf16", Tensor::from_slice(&bf16v, [1, 6]).unwrap()),
        (
            "u8",
            Tensor::from_slice(&[0u8, 1, 127, 128, 255], [5]).unwrap(),
        ),
        (
            "u32",
            Tensor::from_slice(&[0u32, 1, u32::MAX], [3]).unwrap(),
        ),
        (
            "i64",
            Tensor::from_slice(&[i64::MIN, -1, 0, i64::MAX], [2, 2]).unwrap(),
        ),
    ]
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_every_dtype_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    let tensors = every_dtype();
    io::save(tensors.iter().map(|(n, t)| (*n, t)), &path, None).unwrap();
    let loaded = io::load(&path).unwrap();
    assert_eq!(loaded.len(), tensors.len());
    for (name, t) in &tensors {
        assert_same(&loaded[*name], t);
    }
    let header = io::load_metadata(&path).unwrap();
    let names: Vec<_> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["bf16", "f16", "f32", "f64", "i64", "u32", "u8"]);
    let f32_info = &header.tensors[2];
    assert_eq!(
        (f32_info.dtype.as_str(), &f32_info.shape[..], f32_info.bytes),
        ("F32", &[2usize, 3][..], 24)
    );
    assert_eq!(f32_info.shears_dtype(), Some(DType::F32));
    assert_eq!(header.total_bytes(), 24 + 48 + 12 + 12 + 5 + 12 + 32);
    assert_eq!(header.total_elems(), 6 + 6 + 6 + 6 + 5 + 3 + 4);
    assert!(header.metadata.is_empty());
}

#[test]
fn round_trip_zero_sized_and_rank_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shapes.safetensors");
    let tensors = [
        ("scalar", Tensor::scalar(3.5f32)),
        ("empty", Tensor::from_vec(Vec::<f32>::new(), [0]).unwrap()),
        (
            "empty3",
            Tensor::from_vec(Vec::<i64>::new(), [3, 0, 2]).unwrap(),
        ),
        ("scalar_u8", Tensor::scalar(7u8)),
        ("vec", Tensor::from_vec(vec![1f64, 2.], [2]).unwrap()),
    ];
    io::save(tensors.iter().map(|(n, t)| (*n, t)), &path, None).unwrap();
    let loaded = io::load(&path).unwrap();
    for (name, t) in &tensors {
        assert_same(&loaded[*name], t);
    }
    assert_eq!(loaded["scalar"].rank(), 0);
    assert_eq!(loaded["scalar"].to_scalar::<f32>().unwrap(), 3.5);
    let header = io::load_metadata(&path).unwrap();
    let empty3 = header.tensors.iter().find(|t| t.name == "empty3").unwrap();
    assert_eq!((empty3.shape.clone(), empty3.bytes), (vec![3, 0, 2], 0));
}

#[test]
fn round_trip_empty_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.safetensors");
    io::save(std::iter::empty::<(&str, &Tensor)>(), &path, None).unwrap();
    assert!(io::load(&path).unwrap().is_empty());
    assert!(io::load_metadata(&path).unwrap().tensors.is_empty());
}

#[test]
fn non_contiguous_and_offset_views_are_written_as_their_elements() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.safetensors");
    let base = Tensor::arange(0., 12., 1., DType::F32)
        .unwrap()
        .reshape([3, 4])
        .unwrap();
    let tt = base.t().unwrap();
    assert!(!tt.is_contiguous());
    let rows = base.narrow(0, 1, 2).unwrap(); // contiguous, but starts at element 4
    let cols = base.narrow(1, 1, 2).unwrap(); // strided
    io::save([("tt", &tt), ("rows", &rows), ("cols", &cols)], &path, None).unwrap();
    let loaded = io::load(&path).unwrap();
    assert_eq!(loaded["tt"].dims(), &[4, 3]);
    assert_eq!(
        loaded["tt"].to_vec::<f32>().unwrap(),
        tt.to_vec::<f32>().unwrap()
    );
    assert_eq!(
        loaded["rows"].to_vec::<f32>().unwrap(),
        vec![4., 5., 6., 7., 8., 9., 10., 11.]
    );
    assert_eq!(
        loaded["cols"].to_vec::<f32>().unwrap(),
        vec![1., 2., 5., 6., 9., 10.]
    );
}

#[test]
fn metadata_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.safetensors");
    let meta: BTreeMap<String, String> = [("format", "pt"), ("note", "quote \" and ünïcode")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let t = Tensor::zeros([2], DType::F16).unwrap();
    io::save([("t", &t)], &path, Some(&meta)).unwrap();
    assert_eq!(io::load_metadata(&path).unwrap().metadata, meta);
    assert_eq!(io::load(&path).unwrap().len(), 1);
}

#[test]
fn loading_maps_the_file_instead_of_copying() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapped.safetensors");
    let tensors = every_dtype();
    io::save(tensors.iter().map(|(n, t)| (*n, t)), &path, None).unwrap();
    for (name, t) in io::load(&path).unwrap() {
        assert!(t.is_mapped(), "{name} was copied");
    }
}

#[test]
fn misaligned_data_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    // A 4-byte-padded header puts the data at byte 8 + 60, misaligned for f64.
    let mut header = r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#.to_string();
    while (8 + header.len()) % 8 != 4 {
        header.push(' ');
    }
    let data: Vec<u8> = bytemuck::cast_slice(&[1.25f64, -2.5]).to_vec();
    let path = write(dir.path(), "mis.safetensors", &st_bytes(&header, &data));
    let x = &io::load(&path).unwrap()["x"];
    assert!(!x.is_mapped());
    assert_eq!(x.to_vec::<f64>().unwrap(), vec![1.25, -2.5]);
}

// ---------------------------------------------------------------- atomic writes

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn save_leaves_no_temporary_file_and_replaces_existing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let a = Tensor::from_vec(vec![1f32, 2.], [2]).unwrap();
    io::save([("a", &a)], &path, None).unwrap();
    assert_eq!(dir_entries(dir.path()), ["ckpt.safetensors"]);

    let b = Tensor::from_vec(vec![7u32; 5], [5]).unwrap();
    io::save([("b", &b)], &path, None).unwrap();
    assert_eq!(dir_entries(dir.path()), ["ckpt.safetensors"]);
    let loaded = io::load(&path).unwrap();
    assert_eq!(loaded.keys().collect::<Vec<_>>(), ["b"]);
    assert_same(&loaded["b"], &b);
}

#[test]
fn saving_over_a_loaded_file_keeps_its_tensors_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.safetensors");
    let old = Tensor::from_vec(vec![1f32, 2., 3.], [3]).unwrap();
    io::save([("w", &old)], &path, None).unwrap();
    let mapped = io::load(&path).unwrap().remove("w").unwrap();
    assert!(mapped.is_mapped());
    let new = Tensor::from_vec(vec![9f32; 1000], [1000]).unwrap();
    io::save([("w", &new)], &path, None).unwrap();
    // The rename left the old inode (and our map of it) intact.
    assert_eq!(mapped.to_vec::<f32>().unwrap(), vec![1., 2., 3.]);
    assert_eq!(io::load(&path).unwrap()["w"].dims(), &[1000]);
}

#[test]
fn save_rejects_duplicate_and_reserved_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.safetensors");
    let t = Tensor::zeros([1], DType::F32).unwrap();
    let err = io::save([("a", &t), ("a", &t)], &path, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("`a`"));
    let err = io::save([("__metadata__", &t)], &path, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn save_into_a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/x.safetensors");
    let t = Tensor::zeros([1], DType::F32).unwrap();
    let err = io::save([("t", &t)], &path, None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("x.safetensors"));
}

// ---------------------------------------------------------------- sharded checkpoints

#[test]
fn sharded_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let tensors = every_dtype();
    // 48 bytes per shard: f32 (24) + f64 (48) cannot share, and so on.
    let files = io::save_sharded(tensors.iter().map(|(n, t)| (*n, t)), &out, 48).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let n = names.len() - 1;
    assert!(n > 1, "expected several shards, got {names:?}");
    assert_eq!(names[0], format!("model-00001-of-{n:05}.safetensors"));
    assert_eq!(names[n], io::INDEX_FILE);
    let mut on_disk = names.clone();
    on_disk.sort();
    assert_eq!(dir_entries(&out), on_disk);

    // The index is what HF writes.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[n]).unwrap()).unwrap();
    assert_eq!(
        index["metadata"]["total_size"],
        24 + 48 + 12 + 12 + 5 + 12 + 32
    );
    assert_eq!(index["weight_map"]["f32"], names[0]);
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        tensors.len()
    );

    for loaded in [
        io::load_sharded(&files[n]).unwrap(),
        io::load_any(&out).unwrap(),
        io::load_any(&files[n]).unwrap(),
    ] {
        assert_eq!(loaded.len(), tensors.len());
        for (name, t) in &tensors {
            assert_same(&loaded[*name], t);
            assert!(loaded[*name].is_mapped());
        }
    }
    let header = io::load_metadata_any(&out).unwrap();
    assert_eq!(header.tensors.len(), tensors.len());
    assert_eq!(header.metadata["total_size"], "145");
    assert!(header.tensors.windows(2).all(|w| w[0].name < w[1].name));
}

#[test]
fn sharding_packs_greedily_and_gives_big_tensors_their_own_shard() {
    let dir = tempfile::tempdir().unwrap();
    let small = Tensor::zeros([4], DType::F32).unwrap(); // 16 bytes
    let big = Tensor::zeros([100], DType::F32).unwrap(); // 400 bytes
    let files = io::save_sharded(
        [("a", &small), ("b", &small), ("c", &big), ("d", &small)],
        dir.path(),
        32,
    )
    .unwrap();
    assert_eq!(files.len(), 4); // [a b] [c] [d] + index
    let shard_of = |i: usize| io::load(&files[i]).unwrap().into_keys().collect::<Vec<_>>();
    assert_eq!(shard_of(0), ["a", "b"]);
    assert_eq!(shard_of(1), ["c"]);
    assert_eq!(shard_of(2), ["d"]);
    let err = io::save_sharded([("a", &small)], dir.path(), 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }));
    let err = io::save_sharded([("a", &small), ("a", &big)], dir.path(), 1 << 20).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }));
}

fn two_shards(dir: &Path) -> PathBuf {
    let a = Tensor::zeros([4], DType::F32).unwrap();
    let b = Tensor::ones([4], DType::F32).unwrap();
    let files = io::save_sharded([("a", &a), ("b", &b)], dir, 16).unwrap();
    assert_eq!(files.len(), 3);
    files[2].clone()
}

fn assert_sharded_bad(index: &Path, file: &str, tensor: &str) {
    for err in [
        io::load_sharded(index).unwrap_err(),
        io::load_metadata_sharded(index).unwrap_err(),
        io::load_any(index.parent().unwrap()).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{err:?}");
        assert!(msg.contains(file), "`{msg}` does not name {file}");
        assert!(msg.contains(tensor), "`{msg}` does not name {tensor}");
    }
}

#[test]
fn sharded_missing_shard_names_the_shard_and_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let index = two_shards(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_sharded_bad(&index, "model-00002-of-00002.safetensors", "b");
}

#[test]
fn sharded_tensor_missing_from_its_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let index = two_shards(dir.path());
    let text = std::fs::read_to_string(&index).unwrap();
    let text = text.replace("\"b\":", "\"ghost\":");
    std::fs::write(&index, text).unwrap();
    assert_sharded_bad(&index, "model-00002-of-00002.safetensors", "ghost");
}

#[test]
fn sharded_bad_index_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("notjson.index.json", "{not json"),
        ("nomap.index.json", r#"{"metadata": {}}"#),
        (
            "escape.index.json",
            r#"{"weight_map": {"w": "../x.safetensors"}}"#,
        ),
    ] {
        let p = write(dir.path(), name, text.as_bytes());
        let err = io::load_sharded(&p).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

/// An index may only name shard files inside its own directory: absolute paths, `..` anywhere
/// and names with no file component are refused before any file is opened, naming the tensor;
/// so is a tensor listed twice (JSON maps would silently keep the last entry).
#[test]
fn sharded_index_shards_stay_inside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    // A real file outside the index's directory that an escaping index could point at.
    let outside = dir.path().join("outside.safetensors");
    io::save(
        [("w", &Tensor::ones([2], DType::F32).unwrap())],
        &outside,
        None,
    )
    .unwrap();
    let inner = dir.path().join("ckpt");
    std::fs::create_dir(&inner).unwrap();
    let abs = outside.display().to_string();
    for (shard, needle) in [
        (abs.as_str(), "must be a file name relative"),
        ("../outside.safetensors", "must be a file name relative"),
        (
            "sub/../../outside.safetensors",
            "must be a file name relative",
        ),
        ("./", "must be a file name relative"),
        (".", "must be a file name relative"),
        ("", "must be a file name relative"),
    ] {
        let text = serde_json::json!({ "weight_map": { "w": shard } }).to_string();
        let index = write(&inner, io::INDEX_FILE, text.as_bytes());
        for err in [
            io::load_sharded(&index).unwrap_err(),
            io::load_metadata_sharded(&index).unwrap_err(),
            io::load_any(&inner).unwrap_err(),
            io::index_from_bytes(&index, text.as_bytes()).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, Error::Format { .. }), "{shard:?}: {err:?}");
            assert!(
                msg.contains(needle) && msg.contains("`w`"),
                "{shard:?}: {msg}"
            );
        }
    }
    let twice = br#"{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}"#;
    let msg = io::index_from_bytes("i.json", twice)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("listed twice") && msg.contains("`w`"), "{msg}");
}

#[test]
fn index_from_bytes_groups_tensors_by_normalised_shard() {
    let json = br#"{"metadata": {"total_size": 48, "format": "pt"},
        "weight_map": {"a": "shards/x.safetensors", "b": "./shards/x.safetensors",
                       "c": "y.safetensors"}}"#;
    let index = io::index_from_bytes("model.safetensors.index.json", json).unwrap();
    let shards: Vec<(&str, Vec<&str>)> = index
        .shards
        .iter()
        .map(|(f, n)| (f.as_str(), n.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        shards,
        [
            ("shards/x.safetensors", vec!["a", "b"]),
            ("y.safetensors", vec!["c"])
        ]
    );
    assert_eq!(index.metadata["total_size"], "48");
    assert_eq!(index.metadata["format"], "pt");
}

#[test]
fn load_any_resolves_files_indexes_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_vec(vec![1u8, 2], [2]).unwrap();
    let single = dir.path().join("model.safetensors");
    io::save([("t", &t)], &single, None).unwrap();
    assert_same(&io::load_any(dir.path()).unwrap()["t"], &t);
    assert_same(&io::load_any(&single).unwrap()["t"], &t);
    assert_eq!(
        io::load_metadata_any(dir.path()).unwrap().tensors[0].name,
        "t"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = io::load_any(empty.path()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors.index.json"));

    let missing = dir.path().join("absent.safetensors");
    let err = io::load_any(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(err.to_string().contains("absent.safetensors"));
    let err = io::load(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    // A directory is not a file: an error, whichever reader is asked.
    assert!(io::load(dir.path()).is_err());
    assert!(io::load_metadata(dir.path()).is_err());
}

// ---------------------------------------------------------------- broken files

const GOOD: &str = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

#[test]
fn a_hand_made_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]}}"#;
    let mut data = f32s(&[1., 2., 3., 4.]);
    data.extend([1, 0, 1]);
    let path = write(dir.path(), "hand.safetensors", &st_bytes(header, &data));
    let loaded = io::load(&path).unwrap();
    assert_eq!(loaded["w"].to_vec2::<f32>().unwrap(), [[1., 2.], [3., 4.]]);
    // BOOL loads as U8.
    assert_eq!(loaded["b"].dtype(), DType::U8);
    assert_eq!(loaded["b"].to_vec::<u8>().unwrap(), [1, 0, 1]);
    let header = io::load_metadata(&path).unwrap();
    assert_eq!(header.metadata["format"], "pt");
    assert_eq!(header.tensors[0].dtype, "BOOL");
    assert_eq!(header.tensors[0].shears_dtype(), Some(DType::U8));
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "empty.safetensors", b"");
    assert_bad(&p, None, "empty");
}

#[test]
fn file_shorter_than_eight_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "short.safetensors", &[16, 0, 0, 0, 0]);
    assert_bad(&p, None, "too short");
}

#[test]
fn header_length_larger_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = st_bytes(GOOD, &f32s(&[0.; 4]));
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let p = write(dir.path(), "longhdr.safetensors", &bytes);
    assert_bad(&p, None, "runs past the end of the file");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = write(dir.path(), "hugehdr.safetensors", &bytes);
    assert_bad(&p, None, "header length");
}

#[test]
fn header_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = st_bytes(GOOD, &f32s(&[0.; 4]));
    bytes[10] = 0xff;
    let p = write(dir.path(), "latin.safetensors", &bytes);
    assert_bad(&p, None, "not UTF-8");
}

#[test]
fn header_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "notjson.safetensors",
        &st_bytes("{\"w\": [", &[]),
    );
    assert_bad(&p, None, "not valid JSON");
    let p = write(dir.path(), "array.safetensors", &st_bytes("[1, 2]", &[]));
    assert_bad(&p, None, "not valid JSON");
}

#[test]
fn header_entry_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "nodtype",
            r#"{"w":{"shape":[2],"data_offsets":[0,8]}}"#,
            "dtype",
        ),
        (
            "negshape",
            r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            "invalid",
        ),
        (
            "oneoff",
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}"#,
            "invalid",
        ),
        ("notobj", r#"{"w":3}"#, "invalid"),
    ];
    for (name, header, needle) in cases {
        let p = write(
            dir.path(),
            &format!("{name}.safetensors"),
            &st_bytes(header, &[0; 8]),
        );
        assert_bad(&p, Some("w"), needle);
    }
    let header = r#"{"__metadata__":{"n":3},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    let p = write(dir.path(), "metanum.safetensors", &st_bytes(header, &[0]));
    assert_bad(&p, None, "__metadata__");
}

#[test]
fn duplicate_tensor_name() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    let p = write(dir.path(), "dupe.safetensors", &st_bytes(header, &[0, 0]));
    assert_bad(&p, Some("w"), "twice");
}

#[test]
fn data_offsets_out_of_bounds_means_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "trunc.safetensors", &st_bytes(GOOD, &[0; 10]));
    assert_bad(&p, Some("w"), "run past the end of the data");
}

#[test]
fn data_offsets_overlapping() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let p = write(
        dir.path(),
        "overlap.safetensors",
        &st_bytes(header, &[0; 12]),
    );
    assert_bad(&p, Some("b"), "overlap tensor `a`");
}

#[test]
fn data_offsets_not_matching_shape_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let p = write(dir.path(), "size.safetensors", &st_bytes(header, &[0; 12]));
    assert_bad(&p, Some("w"), "needs 16");
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
    let p = write(
        dir.path(),
        "reversed.safetensors",
        &st_bytes(header, &[0; 8]),
    );
    assert_bad(&p, Some("w"), "reversed");
}

#[test]
fn unknown_dtype_is_rejected_by_name() {
    // Not in the spec: no reader can size it (inspect used to print it and exit 0).
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F33","shape":[2,2],"data_offsets":[0,16]}}"#;
    let p = write(dir.path(), "f33.safetensors", &st_bytes(header, &[0; 16]));
    assert_bad(&p, Some("w"), "unknown dtype \"F33\"");
    // Case matters in the spec's names.
    let header = r#"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#;
    let p = write(dir.path(), "lower.safetensors", &st_bytes(header, &[0; 4]));
    assert_bad(&p, Some("w"), "unknown dtype");
    // (A spec dtype shears cannot load still reads as metadata: see
    // `unsupported_dtypes_fail_to_load_but_can_be_inspected`.)
}

#[test]
fn holes_and_trailing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let p = write(dir.path(), "hole.safetensors", &st_bytes(header, &[0; 12]));
    assert_bad(&p, Some("w"), "unused");
    let p = write(
        dir.path(),
        "trailing.safetensors",
        &st_bytes(GOOD, &[0; 20]),
    );
    assert_bad(&p, None, "trailing");
}

#[test]
fn shape_product_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let big = u64::MAX / 2;
    let header =
        format!(r#"{{"w":{{"dtype":"F32","shape":[{big},{big}],"data_offsets":[0,16]}}}}"#);
    let p = write(
        dir.path(),
        "overflow.safetensors",
        &st_bytes(&header, &[0; 16]),
    );
    assert_bad(&p, Some("w"), "too large");
    // Fits in usize as elements, not as bits.
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,16]}}}}"#,
        1u64 << 60
    );
    let p = write(
        dir.path(),
        "overflow1.safetensors",
        &st_bytes(&header, &[0; 16]),
    );
    assert_bad(&p, Some("w"), "too large");
    // Zero elements, yet the strides of the non-zero dims would overflow.
    let header =
        format!(r#"{{"w":{{"dtype":"F32","shape":[0,{big},{big}],"data_offsets":[0,0]}}}}"#);
    let p = write(dir.path(), "overflow0.safetensors", &st_bytes(&header, &[]));
    assert_bad(&p, Some("w"), "too large");
}

#[test]
fn unsupported_dtypes_fail_to_load_but_can_be_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"q":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"r":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[8,10]}}"#;
    let p = write(dir.path(), "int.safetensors", &st_bytes(header, &[0; 10]));
    let err = io::load(&p).unwrap_err();
    assert!(
        matches!(&err, Error::Format { tensor: Some(t), .. } if t == "q"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("int.safetensors") && msg.contains("`q`"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "dtype I32 is not supported (supported: F32, F64, F16, BF16, U8, U32, I64, BOOL)"
        ),
        "{msg}"
    );
    let header = io::load_metadata(&p).unwrap();
    let listed: Vec<_> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.as_str(), t.bytes, t.shears_dtype()))
        .collect();
    assert_eq!(listed, [("q", "I32", 8, None), ("r", "F8_E4M3", 2, None)]);
}

// ---------------------------------------------------------------- interoperability

#[test]
fn reads_files_written_by_the_reference_crate() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let f = f32s(&[1.5, -0.0, f32::from_bits(0x7fc0_0001)]);
    let h: Vec<u8> = bytemuck::cast_slice(&[0x3c00u16, 0x7e01]).to_vec();
    let i: Vec<u8> = bytemuck::cast_slice(&[-5i64]).to_vec();
    let views = vec![
        ("f", TensorView::new(Dtype::F32, vec![3], &f).unwrap()),
        ("h", TensorView::new(Dtype::BF16, vec![1, 2], &h).unwrap()),
        ("i", TensorView::new(Dtype::I64, vec![], &i).unwrap()),
        ("b", TensorView::new(Dtype::BOOL, vec![2], &[1, 0]).unwrap()),
    ];
    let meta = Some([("k".to_string(), "v".to_string())].into_iter().collect());
    let bytes = safetensors::serialize(views, &meta).unwrap();
    let p = write(dir.path(), "ref.safetensors", &bytes);
    let loaded = io::load(&p).unwrap();
    assert_eq!(raw(&loaded["f"]), f);
    assert_eq!(
        (loaded["h"].dtype(), loaded["h"].dims()),
        (DType::BF16, &[1, 2][..])
    );
    assert_eq!(raw(&loaded["h"]), h);
    assert_eq!(loaded["i"].to_scalar::<i64>().unwrap(), -5);
    assert_eq!(loaded["b"].to_vec::<u8>().unwrap(), [1, 0]);
    assert!(loaded.values().all(Tensor::is_mapped));
    assert_eq!(io::load_metadata(&p).unwrap().metadata["k"], "v");
}

#[test]
fn the_reference_crate_reads_our_files() {
    use safetensors::{Dtype, SafeTensors};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.safetensors");
    let tensors = every_dtype();
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    io::save(tensors.iter().map(|(n, t)| (*n, t)), &path, Some(&meta)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), tensors.len());
    for (name, t) in &tensors {
        let v = st.tensor(name).unwrap();
        let want = match t.dtype() {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::U8 => Dtype::U8,
            DType::U32 => Dtype::U32,
            DType::I64 => Dtype::I64,
            d => panic!("unexpected {d:?}"),
        };
        assert_eq!(v.dtype(), want, "{name}");
        assert_eq!(v.shape().to_vec(), t.dims().to_vec(), "{name}");
        assert_eq!(v.data(), &raw(t)[..], "{name}");
    }
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["format"], "pt");
}

// ---------------------------------------------------------------- fuzzing

/// A small valid file with tensors of several dtypes, a metadata map and a zero-sized tensor.
fn fuzz_seed() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"U8","shape":[0,4],"data_offsets":[22,22]},"d":{"dtype":"BOOL","shape":[2],"data_offsets":[22,24]}}"#;
    st_bytes(header, &(0u8..24).collect::<Vec<_>>())
}

fn corrupted() -> impl Strategy<Value = Vec<u8>> {
    let seed = fuzz_seed();
    let len = seed.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 0..6),
        prop::option::of(0..len),
        prop::option::of(any::<u64>()),
        prop::option::of(0u64..(len as u64 + 16)),
    )
        .prop_map(move |(flips, truncate, raw_len, near_len)| {
            let mut b = seed.clone();
            for (i, v) in flips {
                b[i] = v;
            }
            if let Some(n) = raw_len.or(near_len) {
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
            if let Some(t) = truncate {
                b.truncate(t);
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn corrupt_or_truncated_files_never_panic(bytes in corrupted()) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "fuzz.safetensors", &bytes);
        let meta = io::load_metadata(&p);
        match io::load(&p) {
            Ok(tensors) => {
                // Whatever loaded must be readable and agree with the header.
                let meta = meta.expect("load accepted what load_metadata refused");
                prop_assert_eq!(meta.tensors.len(), tensors.len());
                for (info, (name, t)) in meta.tensors.iter().zip(&tensors) {
                    prop_assert_eq!(&info.name, name);
                    prop_assert_eq!(&info.shape[..], t.dims());
                    prop_assert_eq!(t.to_vec_f64().len(), t.elem_count());
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("fuzz.safetensors"), "{}", msg);
            }
        }
    }
}
