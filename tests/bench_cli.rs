//! `shears bench kernels` run as a script would: every stdout line of `--json` is one object with
//! the documented fields and positive numbers; the table form and bad arguments behave. `shears
//! bench --model` (on the fetched SmolLM2) reports its KV cache and the time-matched pass.

mod common;

use std::process::{Command, Output};

fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the shears binary runs")
}

fn positive(v: &serde_json::Value, key: &str, line: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {line}");
    x
}

#[test]
fn json_lines_have_the_fields_and_positive_numbers() {
    let o = shears(&[
        "bench",
        "kernels",
        "--json",
        "--quick",
        "--only-small",
        "--threads",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("bench: gemm"),
        "progress goes to stderr: {err}"
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 3, "{out}");

    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("first line is JSON");
    assert_eq!(first["kernel"], "limits", "{}", lines[0]);
    positive(&first, "fma_gflops", lines[0]);
    positive(&first, "read_gbps", lines[0]);
    assert_eq!(first["threads"], 2);
    let level = first["level"].as_str().expect("level is a string");
    assert!(["portable", "avx2", "avx512"].contains(&level), "{level}");
    let engine = first["bf16_engine"]
        .as_str()
        .expect("bf16_engine is a string");
    assert!(["off", "avx512bf16", "amx"].contains(&engine), "{engine}");

    let mut kernels = std::collections::BTreeSet::new();
    let mut dtypes = std::collections::BTreeSet::new();
    for line in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let kernel = v["kernel"].as_str().expect("kernel is a string");
        assert!(
            ["gemm", "gemm_bf16", "matmul_nt"].contains(&kernel),
            "{line}"
        );
        kernels.insert(kernel.to_string());
        dtypes.insert(v["dtype"].as_str().expect("dtype is a string").to_string());
        for key in ["m", "k", "n", "threads"] {
            assert!(v[key].as_u64().is_some_and(|x| x > 0), "{key} in {line}");
        }
        assert_eq!(v["threads"], 2, "{line}");
        assert_eq!(v["level"], level, "{line}");
        let seconds = positive(&v, "seconds", line);
        let gflops = positive(&v, "gflops", line);
        positive(&v, "gbps", line);
        positive(&v, "peak_fraction", line);
        let (m, k, n) = (
            v["m"].as_f64().unwrap(),
            v["k"].as_f64().unwrap(),
            v["n"].as_f64().unwrap(),
        );
        let want = 2.0 * m * k * n / seconds / 1e9;
        assert!((gflops - want).abs() <= 1e-6 * want, "{line}");
    }
    assert_eq!(kernels.len(), 3, "{kernels:?}");
    assert!(
        ["f32", "bf16", "f16"].iter().all(|d| dtypes.contains(*d)),
        "{dtypes:?}"
    );
}

#[test]
fn table_lists_limits_then_shapes() {
    let o = shears(&[
        "bench",
        "kernels",
        "--quick",
        "--only-small",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().starts_with("limits (1 thread,"),
        "{out}"
    );
    let header = lines.next().unwrap();
    for title in ["kernel", "dtype", "GFLOP/s", "GB/s", "of peak"] {
        assert!(header.contains(title), "{header}");
    }
    assert!(out.contains("matmul_nt  bf16"), "{out}");
}

#[test]
fn zero_threads_is_an_error() {
    let o = shears(&["bench", "kernels", "--threads", "0", "--only-small"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: --threads"));
}

#[test]
fn help_lists_kernels_and_hides_only_small() {
    let o = shears(&["bench", "--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("kernels"));
    let o = shears(&["bench", "kernels", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in ["--json", "--threads", "--quick", "--level"] {
        assert!(help.contains(flag), "{help}");
    }
    assert!(!help.contains("only-small"), "{help}");
}

#[test]
fn bench_sparse_json_has_the_issue_fields() {
    let o = shears(&["bench", "sparse", "--only-small", "--batch", "1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("\"limits\""), "{}", lines[0]);
    // 64×96: bitmask 50/70/90 %, 2:4 and CSR in f32, the same less CSR in bf16; 37×53 the same
    // less 2:4 (53 columns do not split into groups of 4).
    assert_eq!(lines.len(), 1 + (5 + 4) + (4 + 3), "{out}");
    let mut formats = std::collections::BTreeSet::new();
    for line in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["seconds", "dense_seconds", "speedup", "rows", "cols"] {
            positive(&v, key, line);
        }
        assert_eq!(v["batch"], 1, "{line}");
        let s = v["sparsity"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&s), "{line}");
        assert!(v["dtype"] == "f32" || v["dtype"] == "bf16", "{line}");
        let speedup = v["dense_seconds"].as_f64().unwrap() / v["seconds"].as_f64().unwrap();
        assert!(
            (speedup - v["speedup"].as_f64().unwrap()).abs() < 1e-9 * speedup,
            "{line}"
        );
        formats.insert(v["format"].as_str().unwrap().to_string());
    }
    assert_eq!(
        formats.into_iter().collect::<Vec<_>>(),
        ["bitmask", "csr", "nm"]
    );
}

/// The fetched SmolLM2, or `None` (the test skips) when `shears fetch` has not run.
fn smollm2() -> Option<String> {
    let m = common::default_model();
    if m.exists() {
        Some(m.to_str().unwrap().to_string())
    } else {
        eprintln!("skipping: the default model is missing (run `shears fetch`)");
        None
    }
}

#[test]
fn bench_model_json_reports_the_kv_cache_and_the_time_matched_pass() {
    let Some(m) = smollm2() else { return };
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "--model",
            &m,
            "--prefill",
            "16",
            "--decode",
            "4",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = shears(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("one JSON object")
    };
    let f32 = run(&[]);
    assert_eq!(f32["kv_dtype"], "f32", "{f32}");
    for key in [
        "decode_tokens_per_s",
        "matched_decode_tokens_per_s",
        "matched_read_gb_per_s",
        "decode_fraction_of_matched_bound",
        "kv_cache_bytes",
    ] {
        positive(&f32, key, &f32.to_string());
    }
    // bf16 weights get a bf16 cache; an explicit --kv-dtype wins; --no-limits skips the
    // second pass.
    let bf16 = run(&["--dtype", "bf16", "--no-limits"]);
    assert_eq!(bf16["kv_dtype"], "bf16", "{bf16}");
    assert!(bf16["matched_decode_tokens_per_s"].is_null(), "{bf16}");
    let f16 = run(&["--kv-dtype", "f16", "--no-limits"]);
    assert_eq!(
        (&f16["dtype"], &f16["kv_dtype"]),
        (&"f32".into(), &"f16".into())
    );
    assert_eq!(
        2 * f16["kv_cache_bytes"].as_u64().unwrap(),
        f32["kv_cache_bytes"].as_u64().unwrap()
    );
}
