//! `shears prune` end to end on the fetched SmolLM2 (skips when `shears fetch` has not run):
//! load → prune → save compressed → reload into sparse layers → eval gives the same perplexity;
//! and bad requests fail cleanly before any work.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the shears binary runs")
}

fn assets() -> Option<(PathBuf, PathBuf)> {
    let (m, t) = (
        common::default_model(),
        common::data_dir().join("alice29.txt"),
    );
    if m.exists() && t.exists() {
        Some((m, t))
    } else {
        eprintln!("skipping: the default model or corpus is missing (run `shears fetch`)");
        None
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn prune_save_compressed_reload_and_eval_agree() {
    let Some((model, text)) = assets() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("pruned");
    let (m, t, d) = (
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    let r = json(&shears(&[
        "prune",
        "--model",
        m,
        "--method",
        "wanda",
        "--nm",
        "2:4",
        "--calib",
        t,
        "--nsamples",
        "4",
        "--seqlen",
        "64",
        "--eval",
        t,
        "--eval-windows",
        "3",
        "--out",
        d,
        "--format",
        "compressed",
        "--json",
    ]));
    assert_eq!(r["method"], "wanda");
    assert_eq!(r["sparsity"], "2:4");
    assert_eq!(r["layers"].as_array().unwrap().len(), 30 * 7);
    // Exactly 2 of every 4 are pruned; a kept weight that was already 0 in the checkpoint counts
    // as a zero too, so the fraction of zeros may be a little above one half.
    let achieved = r["achieved_sparsity"].as_f64().unwrap();
    assert!((0.5..0.52).contains(&achieved), "{achieved}");
    let (before, after) = (
        r["ppl_before"].as_f64().unwrap(),
        r["ppl_after"].as_f64().unwrap(),
    );
    assert!(after > before && after.is_finite(), "{before} → {after}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"]["sparsity_config"]["format"],
        "sparse-24-bitmask"
    );
    // The compressed directory loads into sparse layers and scores the same windows the same.
    let e = json(&shears(&[
        "eval",
        "--model",
        d,
        "--text",
        t,
        "--seqlen",
        "64",
        "--max-windows",
        "3",
        "--json",
    ]));
    let again = e["ppl"].as_f64().unwrap();
    assert!(
        (again - after).abs() <= 1e-4 * after,
        "pruned {after}, reloaded {again}"
    );
    // No temporary directory is left next to the output.
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "pruned")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn n_of_m_other_than_2_4_saves_compressed_and_reloads() {
    let Some((model, text)) = assets() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("pruned");
    let (m, t, d) = (
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    // 1:4 prunes one weight of every four: three are kept.
    let r = json(&shears(&[
        "prune",
        "--model",
        m,
        "--method",
        "magnitude",
        "--nm",
        "1:4",
        "--eval",
        t,
        "--eval-windows",
        "2",
        "--seqlen",
        "64",
        "--no-dense-eval",
        "--out",
        d,
        "--format",
        "compressed",
        "--json",
    ]));
    let achieved = r["achieved_sparsity"].as_f64().unwrap();
    assert!((0.25..0.27).contains(&achieved), "{achieved}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let sc = &cfg["quantization_config"]["sparsity_config"];
    assert_eq!(sc["format"], "shears-nm-bitmask");
    assert_eq!(sc["sparsity_structure"], "3:4");
    let e = json(&shears(&[
        "eval",
        "--model",
        d,
        "--text",
        t,
        "--seqlen",
        "64",
        "--max-windows",
        "2",
        "--json",
    ]));
    let (after, again) = (r["ppl_after"].as_f64().unwrap(), e["ppl"].as_f64().unwrap());
    assert!((again - after).abs() <= 1e-4 * after, "{after} vs {again}");
}

/// Bonsai on SmolLM2 with a few small sub-models: the model shrinks by about the target, the
/// saved directory reloads with its per-layer shapes and scores the same perplexity, and `bench`
/// runs it.
#[test]
fn bonsai_prunes_saves_and_reloads_a_smaller_model() {
    let Some((model, text)) = assets() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("small");
    let (m, t, d) = (
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    let r = json(&shears(&[
        "prune",
        "--model",
        m,
        "--method",
        "bonsai",
        "--sparsity",
        "0.05",
        "--submodels",
        "10",
        "--windows",
        "1",
        "--window-len",
        "32",
        "--calib",
        t,
        "--seqlen",
        "64",
        "--eval",
        t,
        "--eval-windows",
        "2",
        "--out",
        d,
        "--json",
    ]));
    assert_eq!(r["method"], "bonsai");
    let rounds = r["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["submodel_ppl"].as_array().unwrap().len(), 10);
    let (before, after) = (
        r["params_before"].as_u64().unwrap(),
        r["params_after"].as_u64().unwrap(),
    );
    let removed = 1.0 - after as f64 / before as f64;
    assert!((0.03..=0.05).contains(&removed), "{removed}");
    let ppl = r["ppl_after"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > r["ppl_before"].as_f64().unwrap());
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let widths = cfg["intermediate_size_per_layer"].as_array().unwrap();
    assert_eq!(widths.len(), 30);
    assert!(widths.iter().any(|w| w.as_u64().unwrap() < 1536));
    let e = json(&shears(&[
        "eval",
        "--model",
        d,
        "--text",
        t,
        "--seqlen",
        "64",
        "--max-windows",
        "2",
        "--json",
    ]));
    let again = e["ppl"].as_f64().unwrap();
    assert!(
        (again - ppl).abs() <= 1e-4 * ppl,
        "pruned {ppl}, reloaded {again}"
    );
    let b = shears(&[
        "bench",
        "--model",
        d,
        "--prefill",
        "16",
        "--decode",
        "4",
        "--no-limits",
        "--json",
    ]);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
}

#[test]
fn bad_prune_requests_fail_cleanly() {
    for (args, want) in [
        (vec!["prune", "--method", "obs"], "unknown pruning method"),
        (vec!["prune", "--nm", "4:2"], "0 < N < M"),
        (vec!["prune", "--nm", "2-4"], "N:M"),
        (
            vec!["prune", "--sparsity", "0.5", "--nm", "2:4"],
            "cannot be used",
        ),
        (vec!["prune", "--format", "compressed"], "--out"),
        (
            vec!["prune", "--method", "bonsai", "--nm", "2:4"],
            "--sparsity, not --nm",
        ),
        (
            vec![
                "prune",
                "--method",
                "bonsai",
                "--format",
                "compressed",
                "--out",
                "x",
            ],
            "dense",
        ),
    ] {
        let o = shears(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A NaN in one weight of a checkpoint: `eval`, `prune` and `generate` name the tensor and the
/// element and exit 1, instead of printing a NaN perplexity, pruning or generating garbage.
#[test]
fn a_nan_weight_is_named_by_eval_prune_and_generate() {
    let Some((model, text)) = assets() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("dense");
    let (m, t, d) = (
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    // Magnitude at 0 % needs no calibration: a plain HF copy of the model with its tokenizer.
    let o = shears(&[
        "prune",
        "--model",
        m,
        "--method",
        "magnitude",
        "--sparsity",
        "0",
        "--out",
        d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = dir.join("model.safetensors");
    let mut tensors = shears::tensor::io::load(&file).unwrap();
    let name = "model.layers.2.self_attn.v_proj.weight";
    let w = &tensors[name];
    let cols = w.dims()[1];
    let mut v = w
        .to_dtype(shears::tensor::DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    v[3 * cols + 5] = f32::NAN;
    let bad = shears::tensor::Tensor::from_vec(v, w.dims())
        .unwrap()
        .to_dtype(w.dtype())
        .unwrap();
    tensors.insert(name.to_string(), bad);
    shears::tensor::io::save(tensors.iter(), &file, None).unwrap();
    for args in [
        vec!["eval", "--model", d, "--text", t, "--max-windows", "1"],
        vec![
            "prune",
            "--model",
            d,
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
        ],
        vec![
            "generate",
            "--model",
            d,
            "--prompt",
            "Hello",
            "--max-tokens",
            "2",
        ],
    ] {
        let o = shears(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(name) && err.contains("NaN at [3, 5]"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
