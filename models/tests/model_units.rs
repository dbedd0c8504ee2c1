//! Model-level checks that need no checkpoint: configuration errors, cache consistency, sampling
//! statistics, loader errors.

use shears_models::config::LlamaConfig;
use shears_models::generate::{Sampler, SamplingParams};
use shears_models::llama::{KvCache, Llama};
use shears_models::load::{load_model, save_hf, LoadOptions};
use shears_tensor::{io, Error};
use std::path::Path;

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": false, "eos_token_id": [3, 5]}"#;

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap()
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
    let mut c1 = KvCache::new(&model.config, ids.len());
    let full = model
        .forward(&ids, &mut c1)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    // Prefill 5, then 6 single steps (the decode path), then compare every row.
    let mut c2 = KvCache::new(&model.config, ids.len());
    let mut rows = model
        .forward(&ids[..5], &mut c2)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for &id in &ids[5..] {
        rows.extend(
            model
                .forward(&[id], &mut c2)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(rows.len(), ids.len() * v);
    for (i, (a, b)) in full.iter().zip(&rows).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "[{i}] {a} vs {b}");
    }
    // A later position sees earlier tokens: changing token 0 changes the last row.
    let mut other = ids;
    other[0] = 50;
    let mut c3 = KvCache::new(&model.config, ids.len());
    let changed = model
        .forward(&other, &mut c3)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_ne!(
        &changed[(ids.len() - 1) * v..],
        &full[(ids.len() - 1) * v..]
    );
    // The causal mask: changing the last token leaves every earlier row unchanged.
    let mut last = ids;
    last[ids.len() - 1] = 40;
    let mut c4 = KvCache::new(&model.config, ids.len());
    let l4 = model
        .forward(&last, &mut c4)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(&l4[..(ids.len() - 1) * v], &full[..(ids.len() - 1) * v]);
    assert!(model.forward(&[1], &mut c1).is_err(), "the cache is full");
    assert!(
        model
            .forward(&[64], &mut KvCache::new(&model.config, 4))
            .is_err(),
        "id ≥ vocab"
    );
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
