//! GGUF reading: a small GGUF writer (test-only) builds files with every metadata value type and
//! every supported tensor type, quantized by an independent quantizer written from the format
//! definition; metadata round trips, zero-copy F32, dequantized values within a quantization step
//! of what was put in, one error per kind of corruption, a property test that truncated and
//! bit-flipped files never panic, and the real SmolLM2 Q4_1 file checked against gguf-py.

use half::{bf16, f16};
use proptest::prelude::*;
use shears_tensor::io::{GgmlType, Gguf, GgufValue};
use shears_tensor::{DType, Error};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- a test-only writer

/// One tensor to write: name, GGML `ne` (innermost first), type id, raw data.
struct Spec {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn spec(name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Spec {
    Spec {
        name: name.into(),
        ne: ne.to_vec(),
        ty,
        data,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The GGUF value type code of a value.
fn code(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

/// A value's payload (without its type code).
fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => {
            // An empty array's element type is arbitrary; u32 here.
            out.extend(a.first().map_or(4, code).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for e in a {
                put_value(out, e);
            }
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A whole file: header, metadata, tensor infos, padding, data (each tensor padded to
/// `alignment`, the last one not, so the file ends where the data does).
fn build(version: u32, kv: &[(&str, GgufValue)], tensors: &[Spec], alignment: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut out, k);
        out.extend(code(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = vec![];
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
    }
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(alignment as usize), 0);
    pad(&mut out);
    let data_start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(data_start + off as usize, 0);
        out.extend(&t.data);
    }
    out
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shears-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---------------------------------------------------------------- an independent quantizer

fn lcg(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(2862933555777941757)
        .wrapping_add(3037000493);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// A quantized tensor: its bytes, the values its blocks encode (from the integers and the f16
/// scales this quantizer chose) and the largest half step, for the "within a step" check.
struct Quantized {
    bytes: Vec<u8>,
    decoded: Vec<f32>,
    steps: Vec<f32>,
}

fn h(x: f32) -> f16 {
    f16::from_f32(x)
}

/// Q8_0: `d = amax/127` (as f16), `q = round(x/d)` clamped to ±127.
fn quant_q8_0(x: &[f32]) -> Quantized {
    let mut q = Quantized {
        bytes: vec![],
        decoded: vec![],
        steps: vec![],
    };
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = h(amax / 127.0);
        let df = d.to_f32();
        q.bytes.extend(d.to_bits().to_le_bytes());
        for &v in b {
            let i = if df == 0.0 {
                0
            } else {
                (v / df).round().clamp(-127.0, 127.0) as i8
            };
            q.bytes.push(i as u8);
            q.decoded.push(i as f32 * df);
            q.steps.push(df);
        }
    }
    q
}

/// Q4_0: `d = amax/7` (as f16), `q = round(x/d)` clamped to -8..=7, stored as `q + 8`; weights
/// 0..16 of a block in the low nibbles, 16..32 in the high ones.
fn quant_q4_0(x: &[f32]) -> Quantized {
    quant_q4(x, false)
}

/// Q4_1: `m = min`, `d = (max - min)/15` (both f16), `q = round((x - m)/d)` clamped to 0..=15.
fn quant_q4_1(x: &[f32]) -> Quantized {
    quant_q4(x, true)
}

fn quant_q4(x: &[f32], with_min: bool) -> Quantized {
    let mut q = Quantized {
        bytes: vec![],
        decoded: vec![],
        steps: vec![],
    };
    for b in x.chunks(32) {
        let (lo, hi) = b
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, u), &v| (l.min(v), u.max(v)));
        let amax = lo.abs().max(hi.abs());
        let (d, m) = if with_min {
            (h((hi - lo) / 15.0), h(lo))
        } else {
            (h(amax / 7.0), h(0.0))
        };
        let (df, mf) = (d.to_f32(), m.to_f32());
        q.bytes.extend(d.to_bits().to_le_bytes());
        if with_min {
            q.bytes.extend(m.to_bits().to_le_bytes());
        }
        let ints: Vec<u8> = b
            .iter()
            .map(|&v| {
                let r = if df == 0.0 {
                    0.0
                } else {
                    ((v - mf) / df).round()
                };
                if with_min {
                    r.clamp(0.0, 15.0) as u8
                } else {
                    (r.clamp(-8.0, 7.0) + 8.0) as u8
                }
            })
            .collect();
        for j in 0..16 {
            q.bytes.push(ints[j] | (ints[j + 16] << 4));
        }
        for &i in &ints {
            let v = if with_min {
                i as f32 * df + mf
            } else {
                (i as f32 - 8.0) * df
            };
            q.decoded.push(v);
            // f16 rounding of d and m moves the grid by a hair past the half step.
            q.steps.push(df + mf.abs() * 1e-3);
        }
    }
    q
}

// ---------------------------------------------------------------- fixtures

fn all_values() -> Vec<(&'static str, GgufValue)> {
    use GgufValue::*;
    vec![
        ("general.architecture", String("llama".into())),
        ("general.name", String("tiny ünïcode ✓".into())),
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60000)),
        ("t.i16", I16(-30000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f32", F32(-1.5e-3)),
        ("t.f64", F64(std::f64::consts::PI)),
        ("t.true", Bool(true)),
        ("t.false", Bool(false)),
        ("t.empty", String("".into())),
        (
            "t.strings",
            Array(vec![
                String("a".into()),
                String("".into()),
                String("ç".into()),
            ]),
        ),
        ("t.ints", Array(vec![I32(1), I32(-2), I32(3)])),
        ("t.floats", Array(vec![F32(0.5), F32(-0.25)])),
        ("t.empty_array", Array(vec![])),
        (
            "t.nested",
            Array(vec![Array(vec![U8(1), U8(2)]), Array(vec![U8(3)])]),
        ),
        ("llama.block_count", U32(2)),
        ("llama.rope.freq_base", F32(10000.0)),
    ]
}

/// Row-major [3, 64] of each supported type (plus tensors of other shapes), and the values put
/// in for each (for quantized types, the originals and the quantizer's output).
struct Fixture {
    bytes: Vec<u8>,
    f32s: Vec<f32>,
    quants: Vec<(&'static str, Vec<f32>, Quantized)>,
}

fn fixture(version: u32, alignment: u64) -> Fixture {
    let f32s = lcg(3 * 64, 1, 4.0);
    type Quantizer = fn(&[f32]) -> Quantized;
    let quants: Vec<(&'static str, Vec<f32>, Quantizer, u32)> = vec![
        ("q8", lcg(3 * 64, 2, 6.0), quant_q8_0, 8),
        ("q4_0", lcg(3 * 64, 3, 2.0), quant_q4_0, 2),
        (
            "q4_1",
            lcg(3 * 64, 4, 2.0).iter().map(|v| v + 0.7).collect(),
            quant_q4_1,
            3,
        ),
    ];
    let mut tensors = vec![
        spec("f32", &[64, 3], 0, bytemuck::cast_slice(&f32s).to_vec()),
        spec(
            "f16",
            &[64, 3],
            1,
            f32s.iter()
                .flat_map(|&v| h(v).to_bits().to_le_bytes())
                .collect(),
        ),
        spec(
            "bf16",
            &[64, 3],
            30,
            f32s.iter()
                .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        ),
        spec("scalar", &[], 0, 7f32.to_le_bytes().to_vec()),
        spec(
            "vec3d",
            &[2, 3, 4],
            0,
            bytemuck::cast_slice(&lcg(24, 9, 1.0)).to_vec(),
        ),
        // One Q6_K block (256 weights, 210 bytes) and a type ggml does not define.
        spec("q6k", &[256], 14, vec![0; 210]),
        spec("mystery", &[4], 99, vec![0; 16]),
    ];
    let mut qs = vec![];
    for (name, x, f, ty) in quants {
        let q = f(&x);
        tensors.push(spec(name, &[64, 3], ty, q.bytes.clone()));
        qs.push((name, x, q));
    }
    let mut kv = all_values();
    if alignment != 32 {
        kv.push(("general.alignment", GgufValue::U32(alignment as u32)));
    }
    Fixture {
        bytes: build(version, &kv, &tensors, alignment),
        f32s,
        quants: qs,
    }
}

/// `open` must fail with a `Format` error naming the file (and `tensor`) whose message contains
/// `needle`.
fn assert_bad(bytes: &[u8], name: &str, tensor: Option<&str>, needle: &str) {
    let path = write(name, bytes);
    let err = Gguf::open(&path).expect_err(&format!("{name}: a broken file was accepted"));
    let msg = err.to_string();
    assert!(
        msg.contains(name),
        "{name}: message does not name the file: {msg}"
    );
    assert!(
        msg.contains(needle),
        "{name}: expected `{needle}` in: {msg}"
    );
    match err {
        Error::Format { tensor: t, .. } => assert_eq!(t.as_deref(), tensor, "{msg}"),
        e => panic!("{name}: expected Error::Format, got {e:?}"),
    }
}

// ---------------------------------------------------------------- round trips

#[test]
fn metadata_round_trips_every_value_type() {
    let path = write("meta.gguf", &fixture(3, 32).bytes);
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    let want = all_values();
    assert_eq!(g.metadata.len(), want.len());
    for (k, v) in &want {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u64("t.u8").unwrap(), 200);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f64("t.f32").unwrap(), -1.5e-3f32 as f64);
    assert_eq!(g.get_f64("t.i32").unwrap(), -2e9);
    assert_eq!(g.get_f64("t.f64").unwrap(), std::f64::consts::PI);
    assert_eq!(g.get_str("general.name").unwrap(), "tiny ünïcode ✓");
    assert_eq!(g.get_str_array("t.strings").unwrap(), vec!["a", "", "ç"]);
    assert_eq!(g.get("t.true").unwrap().as_bool(), Some(true));
    assert_eq!(g.get("t.i64").unwrap().as_i64(), Some(i64::MIN));
    assert_eq!(g.get("t.u64").unwrap().as_i64(), None);
    assert_eq!(g.get("t.nested").unwrap().as_array().unwrap().len(), 2);

    // Missing keys and wrong types name the file and the key.
    for (r, key) in [
        (g.get_u64("nope").map(|_| ()), "nope"),
        (g.get_u64("t.i8").map(|_| ()), "t.i8"), // negative
        (g.get_u64("general.name").map(|_| ()), "general.name"),
        (g.get_f64("t.strings").map(|_| ()), "t.strings"),
        (g.get_str("t.u32").map(|_| ()), "t.u32"),
        (g.get_str_array("t.ints").map(|_| ()), "t.ints"),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("meta.gguf") && m.contains(&format!("`{key}`")),
            "{m}"
        );
    }
}

#[test]
fn tensors_of_every_supported_type() {
    let fx = fixture(3, 32);
    let path = write("tensors.gguf", &fx.bytes);
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.tensors.len(), 10);

    let f = g.tensor_info("f32").unwrap();
    assert_eq!(f.dims, vec![3, 64]);
    assert_eq!(f.ggml_type, GgmlType::F32);
    assert_eq!(f.n_bytes, 3 * 64 * 4);
    assert_eq!(f.offset % 32, 0);
    assert_eq!(
        &fx.bytes[f.offset as usize..][..4],
        &fx.f32s[0].to_le_bytes()
    );
    assert_eq!(g.tensor_info("vec3d").unwrap().dims, vec![4, 3, 2]);
    assert_eq!(g.tensor_info("q4_1").unwrap().n_bytes, 6 * 20);
    assert_eq!(g.tensor_info("q8").unwrap().ggml_type, GgmlType::Q8_0);
    assert!(g.tensor_info("absent").is_none());

    // F32 is zero-copy and exact; F16/BF16 keep their dtype and their bits.
    let t = g.tensor("f32").unwrap();
    assert!(t.is_mapped());
    assert_eq!(t.dims(), &[3, 64]);
    assert_eq!(t.to_vec::<f32>().unwrap(), fx.f32s);
    let t = g.tensor("f16").unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert!(t.is_mapped());
    let want: Vec<f16> = fx.f32s.iter().map(|&v| h(v)).collect();
    assert_eq!(t.to_vec::<f16>().unwrap(), want);
    let t = g.tensor("bf16").unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    let want: Vec<bf16> = fx.f32s.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(t.to_vec::<bf16>().unwrap(), want);
    assert_eq!(
        g.tensor("scalar").unwrap().to_vec::<f32>().unwrap(),
        vec![7.0]
    );
    assert_eq!(g.tensor("scalar").unwrap().dims(), &[] as &[usize]);

    // Quantized types decode to exactly the values the quantizer encoded, within half a step of
    // the originals.
    for (name, x, q) in &fx.quants {
        let t = g.tensor(name).unwrap();
        assert_eq!(
            (t.dtype(), t.dims()),
            (DType::F32, &[3usize, 64][..]),
            "{name}"
        );
        let got = t.to_vec::<f32>().unwrap();
        assert_eq!(got, q.decoded, "{name}: decoded values");
        for i in 0..x.len() {
            let tol = 0.5 * q.steps[i] * 1.01 + 1e-6;
            assert!(
                (got[i] - x[i]).abs() <= tol,
                "{name}[{i}]: {} vs {} (tolerance {tol})",
                got[i],
                x[i]
            );
        }
        // And in the other float dtypes.
        let h16 = g.tensor_as(name, DType::F16).unwrap();
        assert_eq!(h16.dtype(), DType::F16);
        let want: Vec<f16> = q.decoded.iter().map(|&v| h(v)).collect();
        assert_eq!(h16.to_vec::<f16>().unwrap(), want, "{name} as f16");
        let b16 = g.tensor_as(name, DType::BF16).unwrap();
        let want: Vec<bf16> = q.decoded.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(b16.to_vec::<bf16>().unwrap(), want, "{name} as bf16");
    }

    // Conversions between the float types.
    let t = g.tensor_as("f16", DType::F32).unwrap();
    let want: Vec<f32> = fx.f32s.iter().map(|&v| h(v).to_f32()).collect();
    assert_eq!(t.to_vec::<f32>().unwrap(), want);
    let t = g.tensor_as("f32", DType::BF16).unwrap();
    let want: Vec<bf16> = fx.f32s.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(t.to_vec::<bf16>().unwrap(), want);
    assert!(g.tensor_as("f32", DType::F32).unwrap().is_mapped());
    assert!(g.tensor_as("f32", DType::U8).is_err());

    // Types shears cannot load are named, with the tensor and the file.
    for (name, ty) in [("q6k", "Q6_K"), ("mystery", "type 99")] {
        for r in [g.tensor(name), g.tensor_as(name, DType::F32)] {
            match r.unwrap_err() {
                Error::Unsupported { what } => {
                    assert!(
                        what.contains(&format!("GGML type {ty} of tensor `{name}`")),
                        "{what}"
                    );
                    assert!(
                        what.contains("tensors.gguf") && what.contains("Q4_1"),
                        "{what}"
                    );
                }
                e => panic!("expected Unsupported, got {e:?}"),
            }
        }
    }
    assert_eq!(g.tensor_info("q6k").unwrap().n_bytes, 210);
    assert_eq!(GgmlType::Other(12).name(), "Q4_K");
    assert_eq!(GgmlType::BF16.name(), "BF16");
    let e = g.tensor("absent").unwrap_err().to_string();
    assert!(e.contains("absent") && e.contains("tensors.gguf"), "{e}");
}

#[test]
fn version_2_and_custom_alignment() {
    let fx = fixture(2, 64);
    let g = Gguf::open(write("v2.gguf", &fx.bytes)).unwrap();
    assert_eq!((g.version, g.alignment), (2, 64));
    for t in &g.tensors {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
    assert_eq!(g.tensor("f32").unwrap().to_vec::<f32>().unwrap(), fx.f32s);
    assert_eq!(
        g.tensor("q4_1").unwrap().to_vec::<f32>().unwrap(),
        fx.quants[2].2.decoded
    );
}

#[test]
fn empty_file_with_no_tensors_is_fine() {
    // No tensors: no data section, and the file may end right after the metadata.
    let bytes = build(
        3,
        &[("general.architecture", GgufValue::String("x".into()))],
        &[],
        32,
    );
    let trimmed = &bytes[..4 + 4 + 16 + 8 + 20 + 4 + 8 + 1];
    let g = Gguf::open(write("empty.gguf", trimmed)).unwrap();
    assert!(g.tensors.is_empty());
    assert_eq!(g.architecture().unwrap(), "x");
}

// ---------------------------------------------------------------- corruptions

/// The header of a file: magic, version, counts.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(version.to_le_bytes());
    v.extend(n_tensors.to_le_bytes());
    v.extend(n_kv.to_le_bytes());
    v
}

/// A file with one tensor info given as raw bytes after the name, followed by `data_len` bytes
/// of data.
fn one_tensor(name: &str, after_name: &[u8], data_len: usize) -> Vec<u8> {
    let mut v = header(3, 1, 0);
    put_str(&mut v, name);
    v.extend(after_name);
    v.resize(v.len().next_multiple_of(32), 0);
    v.resize(v.len() + data_len, 0);
    v
}

fn info(ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut v = (ne.len() as u32).to_le_bytes().to_vec();
    for d in ne {
        v.extend(d.to_le_bytes());
    }
    v.extend(ty.to_le_bytes());
    v.extend(offset.to_le_bytes());
    v
}

#[test]
fn header_corruptions() {
    let good = fixture(3, 32).bytes;
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert_bad(&b, "magic.gguf", None, "not a GGUF file");
    assert_bad(b"", "empty-file.gguf", None, "truncated");
    for (v, needle) in [
        (1u32, "version 1 is not supported"),
        (4, "version 4"),
        (0x0300_0000, "big-endian"),
    ] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_bad(&b, &format!("version{v}.gguf"), None, needle);
    }
    // Counts larger than the file.
    assert_bad(
        &header(3, u64::MAX, 0),
        "ntensors.gguf",
        None,
        "tensor count",
    );
    assert_bad(&header(3, 0, 1 << 40), "nkv.gguf", None, "key-value count");
}

#[test]
fn metadata_corruptions() {
    let kv = |key: &[u8], ty: u32, value: &[u8]| {
        let mut v = header(3, 0, 1);
        v.extend((key.len() as u64).to_le_bytes());
        v.extend(key);
        v.extend(ty.to_le_bytes());
        v.extend(value);
        v
    };
    // A key length far past the end of the file: refused before anything is allocated.
    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    assert_bad(&b, "keylen.gguf", None, "larger than the rest of the file");
    assert_bad(
        &kv(b"k\xFF", 4, &[0; 4]),
        "utf8.gguf",
        None,
        "not valid UTF-8",
    );
    assert_bad(
        &kv(b"k", 13, &[0; 8]),
        "vtype.gguf",
        None,
        "unknown value type 13",
    );
    assert_bad(&kv(b"k", 7, &[2]), "bool.gguf", None, "not 0 or 1");
    assert_bad(&kv(b"k", 4, &[0; 3]), "shortval.gguf", None, "truncated");
    // A string value whose length runs past the end.
    let mut s = (1u64 << 50).to_le_bytes().to_vec();
    s.extend(b"abc");
    assert_bad(
        &kv(b"k", 8, &s),
        "strlen.gguf",
        None,
        "larger than the rest",
    );
    // An array of 2^60 u64 in a tiny file.
    let mut a = 10u32.to_le_bytes().to_vec();
    a.extend((1u64 << 60).to_le_bytes());
    a.extend([0u8; 8]);
    assert_bad(
        &kv(b"k", 9, &a),
        "arrcount.gguf",
        None,
        "element count of `k`",
    );
    let mut a = 77u32.to_le_bytes().to_vec();
    a.extend(1u64.to_le_bytes());
    assert_bad(
        &kv(b"k", 9, &a),
        "arrtype.gguf",
        None,
        "unknown element value type 77",
    );
    // Arrays nested past the limit.
    let mut deep = vec![];
    for _ in 0..6 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    assert_bad(&kv(b"k", 9, &deep), "deep.gguf", None, "nest deeper");
    // Duplicate keys.
    let b = build(
        3,
        &[("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))],
        &[],
        32,
    );
    assert_bad(&b, "dupkey.gguf", None, "`a` appears twice");
    // general.alignment of the wrong type or not a power of two.
    for (v, name) in [
        (GgufValue::U32(48), "align48.gguf"),
        (GgufValue::U32(0), "align0.gguf"),
        (GgufValue::U64(32), "alignu64.gguf"),
    ] {
        let b = build(3, &[("general.alignment", v)], &[], 32);
        assert_bad(&b, name, None, "general.alignment");
    }
}

#[test]
fn tensor_info_corruptions() {
    // Truncated inside the info, with the tensor named.
    let mut b = header(3, 1, 0);
    put_str(&mut b, "w");
    b.extend(2u32.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    assert_bad(&b, "tinfo.gguf", Some("w"), "truncated");
    let mut b = header(3, 1, 0);
    b.extend(2u64.to_le_bytes());
    b.extend(b"\xC3\x28");
    b.extend(info(&[1], 0, 0));
    assert_bad(&b, "tname.gguf", None, "not valid UTF-8");
    assert_bad(
        &one_tensor("w", &info(&[1; 5], 0, 0), 4),
        "ndims.gguf",
        Some("w"),
        "5 dims",
    );
    assert_bad(
        &one_tensor("w", &info(&[1 << 32, 1 << 32, 1 << 32], 0, 0), 0),
        "overflow.gguf",
        Some("w"),
        "overflows",
    );
    assert_bad(
        &one_tensor("w", &info(&[0, 1 << 40, 1 << 40], 0, 0), 0),
        "zero-overflow.gguf",
        Some("w"),
        "overflows",
    );
    assert_bad(
        &one_tensor("w", &info(&[1 << 62], 0, 0), 0),
        "bytes-overflow.gguf",
        Some("w"),
        "overflows",
    );
    assert_bad(
        &one_tensor("w", &info(&[48, 2], 2, 0), 72),
        "rowblock.gguf",
        Some("w"),
        "not a multiple of the 32-element block of Q4_0",
    );
    assert_bad(
        &one_tensor("w", &info(&[8], 0, 0), 31),
        "oob.gguf",
        Some("w"),
        "runs past its end",
    );
    assert_bad(
        &one_tensor("w", &info(&[8], 0, 64), 64),
        "oob2.gguf",
        Some("w"),
        "runs past its end",
    );
    assert_bad(
        &one_tensor("w", &info(&[8], 0, u64::MAX - 31), 64),
        "oob3.gguf",
        Some("w"),
        "runs past its end",
    );
    assert_bad(
        &one_tensor("w", &info(&[8], 0, 4), 64),
        "misaligned.gguf",
        Some("w"),
        "not a multiple of the alignment 32",
    );

    // Two tensors: duplicate names, then overlapping data.
    let two = |n1: &str, off1: u64, n2: &str, off2: u64| {
        let mut b = header(3, 2, 0);
        put_str(&mut b, n1);
        b.extend(info(&[16], 0, off1));
        put_str(&mut b, n2);
        b.extend(info(&[16], 0, off2));
        b.resize(b.len().next_multiple_of(32) + 128, 0);
        b
    };
    assert!(Gguf::open(write("two-ok.gguf", &two("a", 0, "b", 64))).is_ok());
    assert_bad(
        &two("a", 0, "a", 64),
        "dupname.gguf",
        Some("a"),
        "appears twice",
    );
    assert_bad(
        &two("a", 32, "b", 0),
        "overlap.gguf",
        Some("a"),
        "overlaps tensor `b`",
    );

    // Truncating the data of a valid file at any point is caught.
    let good = fixture(3, 32).bytes;
    for cut in [good.len() - 1, good.len() - 100, good.len() / 2] {
        let p = write("cut.gguf", &good[..cut]);
        let e = Gguf::open(&p).unwrap_err().to_string();
        assert!(e.contains("cut.gguf"), "{e}");
    }
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error() {
    let good = fixture(3, 32).bytes;
    let path = tmp("prefix.gguf");
    for cut in 0..good.len() {
        std::fs::write(&path, &good[..cut]).unwrap();
        match Gguf::open(&path) {
            Err(Error::Format { .. }) => {}
            r => panic!("prefix of {cut} bytes: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------- robustness

/// Opens a file and, if it opens, loads every tensor in every float dtype: nothing may panic.
fn exercise(path: &Path) {
    if let Ok(g) = Gguf::open(path) {
        for t in &g.tensors {
            let _ = g.tensor(&t.name);
            for d in [DType::F32, DType::F16, DType::BF16] {
                let _ = g.tensor_as(&t.name, d);
            }
        }
        let _ = g.architecture();
        let _ = g.get_str_array("t.strings");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn corrupt_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local!(static GOOD: Vec<u8> = fixture(3, 32).bytes);
        let mut b = GOOD.with(|g| g.clone());
        for (i, x) in flips {
            let i = i.index(b.len());
            b[i] ^= x.max(1);
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        let path = tmp(&format!("fuzz-{:?}.gguf", std::thread::current().id()).replace(['(', ')'], ""));
        std::fs::write(&path, &b).unwrap();
        exercise(&path);
    }
}

// ---------------------------------------------------------------- the real file

/// The first 64 weights of `blk.0.attn_q.weight`, dequantized by gguf-py 0.x
/// (`python3 tensor/tests/gguf_reference.py data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, which
/// uses `gguf.GGUFReader` and `gguf.quants.dequantize`). Every value is exact in f32; f64 keeps
/// the literals as printed.
const ATTN_Q_FIRST_64: [f64; 64] = [
    -0.0963134765625,
    0.1573486328125,
    -0.0963134765625,
    -0.73046875,
    1.1719970703125,
    -0.0963134765625,
    0.030517578125,
    0.6646728515625,
    0.1573486328125,
    0.030517578125,
    -0.22314453125,
    -0.73046875,
    -0.476806640625,
    0.1573486328125,
    -0.0963134765625,
    0.537841796875,
    -0.22314453125,
    0.2841796875,
    0.030517578125,
    -0.22314453125,
    0.030517578125,
    0.030517578125,
    -0.6036376953125,
    -0.22314453125,
    0.030517578125,
    0.1573486328125,
    0.030517578125,
    -0.0963134765625,
    -0.476806640625,
    0.030517578125,
    0.030517578125,
    -0.0963134765625,
    -0.34619140625,
    0.3294677734375,
    1.1402587890625,
    0.0592041015625,
    -0.88671875,
    0.1943359375,
    0.1943359375,
    -0.34619140625,
    0.0592041015625,
    -0.075927734375,
    -0.2110595703125,
    0.3294677734375,
    0.464599609375,
    -0.34619140625,
    -0.2110595703125,
    -0.616455078125,
    -0.7515869140625,
    -0.34619140625,
    0.0592041015625,
    0.0592041015625,
    -0.34619140625,
    0.1943359375,
    -0.34619140625,
    -0.075927734375,
    0.0592041015625,
    0.0592041015625,
    -0.2110595703125,
    0.0592041015625,
    -0.075927734375,
    0.1943359375,
    0.0592041015625,
    -0.88671875,
];

#[test]
fn real_smollm2_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!(
            "note: {} is absent, skipping the real-file test",
            path.display()
        );
        return;
    }
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );

    let mut types = std::collections::BTreeMap::new();
    for t in &g.tensors {
        *types.entry(t.ggml_type.name()).or_insert(0) += 1;
    }
    eprintln!("{} tensors by type: {types:?}", g.tensors.len());
    assert_eq!(types.get("Q4_1"), Some(&210));

    for (name, dims) in [
        ("token_embd.weight", [49152, 576]),
        ("blk.0.attn_q.weight", [576, 576]),
        ("blk.0.attn_k.weight", [192, 576]),
        ("blk.0.ffn_gate.weight", [1536, 576]),
        ("blk.0.ffn_down.weight", [576, 1536]),
    ] {
        let info = g.tensor_info(name).unwrap();
        eprintln!("{name}: {:?} {}", info.dims, info.ggml_type);
        assert_eq!(info.dims, dims, "{name}");
        let t = g.tensor(name).unwrap();
        assert_eq!((t.dims(), t.dtype()), (&dims[..], DType::F32));
        let v = t.to_vec::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} has non-finite weights"
        );
        let rms = (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
        let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        eprintln!("{name}: rms {rms:.4}, max |w| {max:.3}");
        assert!((1e-3..1.0).contains(&rms), "{name}: rms {rms}");
        assert!(max < 50.0, "{name}: max {max}");
    }
    assert_eq!(
        g.tensor_info("token_embd.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        g.tensor_info("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q4_1
    );
    let norm = g.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!((norm.dims(), norm.dtype()), (&[576usize][..], DType::F32));
    assert!(norm.is_mapped());

    let q = g
        .tensor("blk.0.attn_q.weight")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for (i, (&got, &want)) in q.iter().zip(&ATTN_Q_FIRST_64).enumerate() {
        assert!(
            (got as f64 - want).abs() <= 1e-6 * want.abs(),
            "blk.0.attn_q.weight[{i}]: {got} vs gguf-py {want}"
        );
    }
}
