//! Model-level checks that need no checkpoint: configuration errors, cache consistency, sampling
//! statistics, loader errors.

use shears_models::config::LlamaConfig;
use shears_models::generate::{Sampler, SamplingParams};
use shears_models::llama::{KvCache, Llama};
use shears_models::load::{load_model, save_hf, LoadOptions};
use shears_tensor::{io, DType, Error};
use std::path::Path;

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": false, "eos_token_id": [3, 5]}"#;

/// Logits `[ids.len() × vocab]` of `ids` at the cache's next positions.
fn logits(model: &Llama, ids: &[u32], cache: &mut KvCache) -> Vec<f32> {
    model.forward(ids, cache).unwrap().to_vec::<f32>().unwrap()
}

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap()
}

/// [`config`] with a 512-position context: room for caches long enough to split decode
/// attention.
fn long_config() -> LlamaConfig {
    let json = CONFIG.replace(
        r#""max_position_embeddings": 64"#,
        r#""max_position_embeddings": 512"#,
    );
    LlamaConfig::from_json_str(&json, Path::new("c.json")).unwrap()
}

/// Runs `f` in a pool of three threads, so decode attention splits the cached positions (one
/// part per thread, from 256 of them) even where the machine has one core.
fn in_three_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(f)
}

/// Logits of `ids` fed through `cache` as a prefill of `ids[..cuts[0]]`, then one forward pass
/// per stretch between consecutive cuts, and the rest.
fn stepped_logits(model: &Llama, ids: &[u32], cuts: &[usize], cache: &mut KvCache) -> Vec<f32> {
    let mut rows = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&ids.len()]) {
        rows.extend(logits(model, &ids[start..end], cache));
        start = end;
    }
    rows
}

/// Rows `from..` of `rows` (of `v` logits each) equal `full`'s within 1e-4 relative.
fn assert_rows_close(full: &[f32], rows: &[f32], v: usize, from: usize, what: &str) {
    assert_eq!(rows.len(), full.len(), "{what}");
    for (i, (a, b)) in full.iter().zip(rows).enumerate().skip(from * v) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what} [{}] {a} vs {b}",
            i / v
        );
    }
}

#[test]
fn config_errors_name_the_problem() {
    let missing = CONFIG.replace(r#""intermediate_size": 48,"#, "");
    let e = LlamaConfig::from_json_str(&missing, Path::new("c.json")).unwrap_err();
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("intermediate_size"),
        "{e}"
    );
    let falcon = CONFIG.replace(r#""model_type": "llama""#, r#""model_type": "falcon""#);
    let e = LlamaConfig::from_json_str(&falcon, Path::new("c.json")).unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("falcon"),
        "{e}"
    );
    let gqa = CONFIG.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#);
    let e = LlamaConfig::from_json_str(&gqa, Path::new("c.json")).unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
    let scaled = CONFIG.replace('}', r#", "rope_scaling": {"rope_type": "llama3"}}"#);
    assert!(matches!(
        LlamaConfig::from_json_str(&scaled, Path::new("c.json")),
        Err(Error::Unsupported { .. })
    ));
    assert!(LlamaConfig::from_json_str("[1, 2]", Path::new("c.json")).is_err());
    assert_eq!(config().eos_token_ids, vec![3, 5]);
}

#[test]
fn decoding_through_the_cache_equals_one_prefill() {
    let model = Llama::random(&config(), 3).unwrap();
    let ids = [1u32, 7, 9, 4, 33, 2, 60, 8, 12, 5, 6];
    let v = model.config.vocab_size;
    let mut c1 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    let full = logits(&model, &ids, &mut c1);
    // Prefill 5, then 6 single steps (the decode path), then compare every row.
    let mut c2 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    let mut rows = logits(&model, &ids[..5], &mut c2);
    for &id in &ids[5..] {
        rows.extend(logits(&model, &[id], &mut c2));
    }
    assert_eq!(rows.len(), ids.len() * v);
    for (i, (a, b)) in full.iter().zip(&rows).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "[{i}] {a} vs {b}");
    }
    // A later position sees earlier tokens: changing token 0 changes the last row.
    let mut other = ids;
    other[0] = 50;
    let mut c3 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    let changed = logits(&model, &other, &mut c3);
    assert_ne!(
        &changed[(ids.len() - 1) * v..],
        &full[(ids.len() - 1) * v..]
    );
    // The causal mask: changing the last token leaves every earlier row unchanged.
    let mut last = ids;
    last[ids.len() - 1] = 40;
    let mut c4 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    let l4 = logits(&model, &last, &mut c4);
    assert_eq!(&l4[..(ids.len() - 1) * v], &full[..(ids.len() - 1) * v]);
    assert!(model.forward(&[1], &mut c1).is_err(), "the cache is full");
    assert!(
        model
            .forward(
                &[64],
                &mut model.new_cache_with_dtype(4, DType::F32).unwrap()
            )
            .is_err(),
        "id ≥ vocab"
    );
}

/// Decode steps of 1 and 3 tokens over a cache long enough that decode attention splits the
/// cached positions into parts (one per thread, from 256 positions) equal one long prefill.
#[test]
fn split_decode_attention_equals_one_prefill() {
    let mut model = Llama::random(&long_config(), 11).unwrap();
    // Sharp attention (scores of tens, not near 0), so parts have different maxima and a wrong
    // merge shows.
    for l in &mut model.model.layers {
        let q = l
            .self_attn
            .q_proj
            .weight_tensor()
            .affine(40.0, 0.0)
            .unwrap();
        l.self_attn.q_proj = shears_models::layers::Linear::new(q).unwrap();
    }
    let v = model.config.vocab_size;
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 64).collect();
    // Three threads: the split gives ⌊291..300 / 128⌋ = 2 parts here.
    in_three_threads(|| {
        let mut c1 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
        let full = logits(&model, &ids, &mut c1);
        let mut c2 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
        let rows = stepped_logits(&model, &ids, &[290, 291, 294, 295, 298], &mut c2);
        assert_rows_close(&full, &rows, v, 290, "f32");
    });
}

/// A bf16 or f16 KV cache: decoding through it equals one prefill through it (both read the same
/// rounded keys and values, also over the split decode attention), it holds half the bytes, and
/// its logits stay within the rounding of keys and values of the f32 cache's (but differ).
#[test]
fn half_kv_cache_decodes_like_its_prefill_and_stays_near_f32() {
    let mut model = Llama::random(&long_config(), 5).unwrap();
    assert_eq!(model.kv_dtype, DType::F32, "f32 weights get an f32 cache");
    assert_eq!(model.new_cache(4).unwrap().dtype(), DType::F32);
    let v = model.config.vocab_size;
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 29 + 3) % 64).collect();
    in_three_threads(|| {
        let mut c32 = model.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
        let exact = logits(&model, &ids, &mut c32);
        // bf16 keeps 8 significant bits, f16 11: relative rounding 2^-9 and 2^-12 per element;
        // the bounds are about ten times the error seen on this model (3e-4 and 3e-5).
        for (dt, tol) in [(DType::BF16, 3e-3f32), (DType::F16, 4e-4)] {
            model.kv_dtype = dt;
            let mut c1 = model.new_cache(ids.len()).unwrap();
            assert_eq!(c1.dtype(), dt);
            assert_eq!(2 * c1.bytes(), c32.bytes());
            let full = logits(&model, &ids, &mut c1);
            let mut c2 = model.new_cache(ids.len()).unwrap();
            let rows = stepped_logits(&model, &ids, &[290, 291, 294], &mut c2);
            assert_rows_close(&full, &rows, v, 0, &format!("{dt:?}"));
            let worst = full
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(worst > 0.0, "{dt:?}: the cache did not round anything");
            assert!(worst <= tol, "{dt:?}: {worst} from the f32 cache");
        }
    });
    assert!(model.new_cache_with_dtype(4, DType::F64).is_err());
    model.kv_dtype = DType::F64;
    assert!(model.new_cache(4).is_err());
}

#[test]
fn sampling_follows_the_softmax_and_the_filters() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5];
    let p: Vec<f64> = {
        let e: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let n = 20000;
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 9,
    });
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&logits).unwrap() as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let f = c as f64 / n as f64;
        // 5 standard deviations of a binomial proportion.
        let tol = 5.0 * (p[i] * (1.0 - p[i]) / n as f64).sqrt();
        assert!((f - p[i]).abs() < tol, "token {i}: {f} vs {}", p[i]);
    }
    // top-p 0.5: the two most likely (p = 0.37, 0.22) are the smallest prefix reaching 0.5.
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.5,
        seed: 1,
    });
    let picks: Vec<u32> = (0..500).map(|_| s.sample(&logits).unwrap()).collect();
    assert!(picks.iter().all(|&t| t == 1 || t == 4), "{picks:?}");
    assert!(picks.contains(&1) && picks.contains(&4));
    // A tiny temperature is greedy in effect; NaN logits are an error.
    let mut s = Sampler::new(SamplingParams {
        temperature: 1e-4,
        top_k: 0,
        top_p: 1.0,
        seed: 2,
    });
    assert!((0..50).all(|_| s.sample(&logits).unwrap() == 1));
    assert!(s.sample(&[1.0, f32::NAN]).is_err());
    let bad = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.0,
        seed: 0,
    };
    assert!(Sampler::new(bad).sample(&logits).is_err());
}

#[test]
fn loading_a_damaged_checkpoint_is_a_clear_error() {
    let model = Llama::random(&config(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_hf(&model, None, dir.path(), None).unwrap();
    // Round trip first.
    let again = load_model(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(again.weight_bytes(), model.weight_bytes());
    // Drop one tensor: the error names it.
    let mut tensors = io::load(dir.path().join("model.safetensors")).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    let broken = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        broken.path().join("config.json"),
    )
    .unwrap();
    io::save(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        broken.path().join("model.safetensors"),
        None,
    )
    .unwrap();
    let e = load_model(broken.path(), &LoadOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
    // No config: an IO error naming config.json; not a checkpoint at all: a format error.
    std::fs::remove_file(broken.path().join("config.json")).unwrap();
    let e = load_model(broken.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(matches!(
        load_model(&junk, &LoadOptions::default()),
        Err(Error::Format { .. })
    ));
    // A truncated GGUF is an error, not a panic.
    let gguf = dir.path().join("t.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00\x01").unwrap();
    assert!(load_model(&gguf, &LoadOptions::default()).is_err());
}

#[test]
fn layer_stages_compose_to_the_model_forward() {
    // The calibration API (one layer at a time, stage by stage) must reproduce forward_hidden.
    let model = Llama::random(&config(), 5).unwrap();
    let ids = [4u32, 17, 9, 40, 2, 33, 8];
    let (t, d) = (ids.len(), model.config.hidden_size);
    let mut cache = model.new_cache_with_dtype(t, DType::F32).unwrap();
    let want = model.forward_hidden(&ids, &mut cache).unwrap();
    let ids_t = shears_tensor::Tensor::from_slice(&ids, [1, t]).unwrap();
    let mut x = model
        .model
        .embed_tokens
        .forward(&ids_t, DType::F32)
        .unwrap();
    for (i, layer) in model.model.layers.iter().enumerate() {
        if i == 0 {
            // Stage by stage for the first layer, the one-call form for the rest.
            let xn = layer.attention_input(&x).unwrap();
            let ctx = layer.attention_context(&xn, None).unwrap();
            assert_eq!(
                ctx.dims(),
                &[
                    1,
                    t,
                    model.config.num_attention_heads * model.config.head_dim
                ]
            );
            let h = layer.attention_residual(&x, &ctx).unwrap();
            let act = layer.mlp.activation(&layer.mlp_input(&h).unwrap()).unwrap();
            assert_eq!(act.dims(), &[1, t, model.config.intermediate_size]);
            x = layer.mlp_residual(&h, &act).unwrap();
        } else {
            x = layer.forward(&x, None).unwrap();
        }
    }
    let got = model.model.norm.forward(&x).unwrap();
    let (got, want) = (
        got.tensor().to_vec::<f32>().unwrap(),
        want.to_vec::<f32>().unwrap(),
    );
    assert_eq!(got.len(), t * d);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// Zeroes the decoder projections of `model`: unstructured (every weight whose bits of
/// `(row · 31 + col · 17) % 10` fall below 6, i.e. 60 %) or 2:4 (the two smallest |w| of every
/// four), and returns the model.
fn pruned(mut model: Llama, two_four: bool) -> Llama {
    use shears_models::layers::Linear;
    for l in &mut model.model.layers {
        let a = &mut l.self_attn;
        for lin in [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut l.mlp.gate_proj,
            &mut l.mlp.up_proj,
            &mut l.mlp.down_proj,
        ] {
            let [rows, cols] = lin.shape();
            let mut w = lin.weight_tensor().to_vec::<f32>().unwrap();
            for r in 0..rows {
                let row = &mut w[r * cols..(r + 1) * cols];
                if two_four {
                    for g in row.chunks_mut(4) {
                        let mut idx = [0usize, 1, 2, 3];
                        idx.sort_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()));
                        g[idx[0]] = 0.0;
                        g[idx[1]] = 0.0;
                    }
                } else {
                    for (c, v) in row.iter_mut().enumerate() {
                        if (r * 31 + c * 17) % 10 < 6 {
                            *v = 0.0;
                        }
                    }
                }
            }
            *lin = Linear::new(shears_tensor::Tensor::from_vec(w, [rows, cols]).unwrap()).unwrap();
        }
    }
    model
}

#[test]
fn compressed_checkpoints_round_trip_into_sparse_layers() {
    use shears_models::load::{save_compressed, SparseLayout};
    for (two_four, layout, format) in [
        (false, SparseLayout::Bitmask, "sparse-bitmask"),
        (true, SparseLayout::Nm { n: 2, m: 4 }, "sparse-24-bitmask"),
    ] {
        let model = pruned(Llama::random(&config(), 11).unwrap(), two_four);
        let dir = tempfile::tempdir().unwrap();
        save_compressed(&model, None, dir.path(), layout, None).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        let sc = &cfg["quantization_config"]["sparsity_config"];
        assert_eq!(sc["format"], format);
        let gs = sc["global_sparsity"].as_f64().unwrap();
        assert!((gs - if two_four { 0.5 } else { 0.6 }).abs() < 0.02, "{gs}");
        let header = io::load_metadata(dir.path().join("model.safetensors")).unwrap();
        assert!(header
            .tensors
            .iter()
            .any(|t| t.name == "model.layers.0.mlp.down_proj.compressed"));
        assert!(!header
            .tensors
            .iter()
            .any(|t| t.name == "model.layers.0.mlp.down_proj.weight"));
        let again = load_model(dir.path(), &LoadOptions::default()).unwrap();
        let down = &again.model.layers[1].mlp.down_proj;
        assert!(down.sparse().is_some(), "loaded as a sparse Linear");
        assert!(down.weight_bytes() < model.model.layers[1].mlp.down_proj.weight_bytes());
        // Same weights, so the same logits up to summation order.
        let ids = [5u32, 9, 1, 44, 20];
        let (mut c1, mut c2) = (model.new_cache(8).unwrap(), again.new_cache(8).unwrap());
        let a = logits(&model, &ids, &mut c1);
        let b = logits(&again, &ids, &mut c2);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
        // Its named weights expand back to the exact dense tensors with +0.0 zeros.
        for ((n0, t0), (n1, t1)) in model
            .named_weights()
            .iter()
            .zip(again.named_weights().iter())
        {
            assert_eq!(n0, n1);
            let (v0, v1) = (t0.to_vec::<f32>().unwrap(), t1.to_vec::<f32>().unwrap());
            assert!(
                v0.iter()
                    .zip(&v1)
                    .all(|(p, q)| p.to_bits() == q.to_bits() || (*p == 0.0 && q.to_bits() == 0)),
                "{n0}"
            );
        }
    }
}

#[test]
fn compressing_a_dense_model_as_two_four_is_a_clear_error() {
    use shears_models::load::{save_compressed, SparseLayout};
    let model = Llama::random(&config(), 12).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = save_compressed(
        &model,
        None,
        dir.path(),
        SparseLayout::Nm { n: 2, m: 4 },
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not 2:4 sparse"), "{e}");
}

#[test]
fn refresh_shapes_follows_layers_shrunk_one_after_another() {
    use shears_models::layers::Linear;
    use shears_tensor::Tensor;
    let mut model = Llama::random(&config(), 0).unwrap();
    // Narrow the MLP of layer 0, refresh, then of layer 1, refresh again: the second refresh
    // must not hold the shapes the first one recorded against the weights.
    for (i, width) in [(0, 40), (1, 24)] {
        let mlp = &mut model.model.layers[i].mlp;
        let rows = Tensor::arange(0.0, width as f64, 1.0, DType::F32)
            .unwrap()
            .to_dtype(DType::U32)
            .unwrap();
        let keep = |l: &Linear, dim: usize| {
            Linear::new(l.weight_tensor().index_select(&rows, dim).unwrap()).unwrap()
        };
        mlp.gate_proj = keep(&mlp.gate_proj, 0);
        mlp.up_proj = keep(&mlp.up_proj, 0);
        mlp.down_proj = keep(&mlp.down_proj, 1);
        model.refresh_shapes().unwrap();
        assert_eq!(model.config.layer_shape(i).intermediate_size, width);
    }
    assert_eq!(model.config.layer_shape(0).intermediate_size, 40);
    let mut cache = model.new_cache(4).unwrap();
    assert!(logits(&model, &[1, 2, 3], &mut cache)
        .iter()
        .all(|v| v.is_finite()));
}

/// A NaN or infinity in any weight is named, with its position, before a forward pass can spread
/// it; a clean model passes.
#[test]
fn check_finite_names_the_damaged_weight() {
    let mut model = Llama::random(&config(), 3).unwrap();
    model.check_finite().unwrap();
    for (bad, row, col) in [
        (f32::NAN, 0usize, 0usize),
        (f32::INFINITY, 47, 31),
        (f32::NEG_INFINITY, 5, 17),
    ] {
        let mut m = model.clone();
        let w = m.model.layers[1].mlp.up_proj.weight_tensor().into_owned();
        let (rows, cols) = (w.dims()[0], w.dims()[1]);
        assert_eq!((rows, cols), (48, 32));
        let mut v = w.to_vec::<f32>().unwrap();
        v[row * cols + col] = bad;
        m.model.layers[1].mlp.up_proj = shears_models::layers::Linear::new(
            shears_tensor::Tensor::from_vec(v, [rows, cols]).unwrap(),
        )
        .unwrap();
        let msg = m.check_finite().unwrap_err().to_string();
        assert!(msg.contains("model.layers.1.mlp.up_proj.weight"), "{msg}");
        assert!(msg.contains(&format!("[{row}, {col}]")), "{msg}");
        assert!(msg.contains(&format!("{}", bad as f64)), "{msg}");
    }
    // A norm weight (rank 1) is found too, by element.
    let mut v = model.model.norm.weight.tensor().to_vec::<f32>().unwrap();
    v[7] = f32::NAN;
    model.model.norm = shears_models::layers::RmsNorm::new(
        shears_tensor::Tensor::from_vec(v, [32]).unwrap(),
        1e-5,
    )
    .unwrap();
    let msg = model.check_finite().unwrap_err().to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("element 7"),
        "{msg}"
    );
}
