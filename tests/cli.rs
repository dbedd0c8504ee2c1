//! The `shears` binary, run as a user would: help and version, `inspect` on files, sharded
//! checkpoints and directories (table and `--json`), and clean `error:` exits on bad input.

mod common;

use shears::tensor::{io, DType, Tensor};
use std::path::Path;
use std::process::{Command, Output};

fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the shears binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Writes a small checkpoint: w (F32 [2, 3]), emb (BF16 [4, 2]), scale (F64 scalar).
fn checkpoint(path: &Path) {
    let w = Tensor::zeros([2, 3], DType::F32).unwrap();
    let emb = Tensor::zeros([4, 2], DType::BF16).unwrap();
    let scale = Tensor::scalar(1f64);
    io::save([("w", &w), ("emb", &emb), ("scale", &scale)], path, None).unwrap();
}

#[test]
fn help_lists_inspect() {
    let o = shears(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("inspect"), "{out}");
    assert!(out.contains("Usage"), "{out}");
    let o = shears(&["inspect", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--json"));
}

#[test]
fn version_prints_the_crate_version() {
    let o = shears(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("shears {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let o = shears(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("inspect"));
}

#[test]
fn inspect_prints_a_table_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    checkpoint(&path);
    let o = shears(&["inspect", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["name", "dtype", "shape", "bytes"]);
    // Sorted by name; columns: name, dtype, shape, bytes.
    let rows: Vec<String> = lines[1..4]
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        ["emb BF16 [4, 2] 16", "scale F64 [] 8", "w F32 [2, 3] 24"]
    );
    assert!(
        lines[4].starts_with("total: 3 tensors, 48 bytes"),
        "{}",
        lines[4]
    );
    assert!(lines[4].contains("15 parameters"), "{}", lines[4]);
}

#[test]
fn inspect_json_prints_one_object_per_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    checkpoint(&path);
    let o = shears(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let objects: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(
        objects[2],
        serde_json::json!({"name": "w", "dtype": "F32", "shape": [2, 3], "bytes": 24})
    );
    assert_eq!(objects[0]["dtype"], "BF16");
    let first = stdout(&o).lines().next().unwrap().to_string();
    assert_eq!(
        first,
        r#"{"name":"emb","dtype":"BF16","shape":[4,2],"bytes":16}"#
    );
    assert_eq!(objects[1]["shape"], serde_json::json!([]));
}

#[test]
fn inspect_reads_sharded_checkpoints_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tensor::zeros([8], DType::F32).unwrap();
    let b = Tensor::zeros([2, 2], DType::F16).unwrap();
    let files = io::save_sharded([("a", &a), ("b", &b)], dir.path(), 16).unwrap();
    assert_eq!(files.len(), 3);
    for target in [dir.path(), files[2].as_path()] {
        let o = shears(&["inspect", "--json", target.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let names: Vec<String> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].to_string())
            .collect();
        assert_eq!(names, ["\"a\"", "\"b\""]);
    }
    let o = shears(&["inspect", dir.path().to_str().unwrap()]);
    assert!(
        stdout(&o).contains("total: 2 tensors, 40 bytes"),
        "{}",
        stdout(&o)
    );
}

fn assert_clean_failure(o: &Output, file: &str) {
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(file), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Error {"), "debug formatting leaked: {err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn inspect_missing_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.safetensors");
    let o = shears(&["inspect", path.to_str().unwrap()]);
    assert_clean_failure(&o, "nowhere.safetensors");
}

#[test]
fn inspect_corrupt_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.safetensors");
    std::fs::write(&path, b"\x10\0\0\0\0\0\0\0this is not json").unwrap();
    let o = shears(&["inspect", path.to_str().unwrap()]);
    assert_clean_failure(&o, "corrupt.safetensors");
    let truncated = dir.path().join("truncated.safetensors");
    checkpoint(&truncated);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 4]).unwrap();
    let o = shears(&["inspect", "--json", truncated.to_str().unwrap()]);
    assert_clean_failure(&o, "truncated.safetensors");
}

#[test]
fn inspect_rejects_an_unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f33.safetensors");
    let header = br#"{"w":{"dtype":"F33","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(&path, bytes).unwrap();
    let p = path.to_str().unwrap();
    for args in [vec!["inspect", p], vec!["inspect", "--json", p]] {
        let o = shears(&args);
        assert_clean_failure(&o, "f33.safetensors");
        assert!(
            stderr(&o).contains("unknown dtype \"F33\""),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn inspect_reads_a_gguf_file() {
    // The fetched default model (skips when `shears fetch` has not run).
    let gguf = common::default_model();
    if !gguf.exists() {
        eprintln!(
            "skipping: {} is missing (run `shears fetch`)",
            gguf.display()
        );
        return;
    }
    let o = shears(&["inspect", "--json", gguf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 30 layers × 9 tensors + token_embd + output_norm (the head is tied).
    assert_eq!(rows.len(), 30 * 9 + 2, "{out}");
    let q = rows
        .iter()
        .find(|r| r["name"] == "blk.0.attn_q.weight")
        .expect("blk.0.attn_q.weight listed");
    assert_eq!(q["shape"], serde_json::json!([576, 576]));
    assert_eq!(q["dtype"], "Q4_1");
    // Q4_1: 20 bytes per block of 32 weights.
    assert_eq!(q["bytes"], 576 * 576 / 32 * 20);
    let o = shears(&["inspect", gguf.to_str().unwrap()]);
    assert!(
        o.status.success() && stdout(&o).contains("total: 272 tensors"),
        "{}",
        stdout(&o)
    );
}
