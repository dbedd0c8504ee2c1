//! Graph recording is a per-thread flag, and the forward pass runs on rayon's pool: a worker
//! waiting inside one caller's `no_grad` forward can pick up another caller's recording forward.
//! That forward must still record (it once silently did not, and a fine-tuning test that ran
//! beside others lost some of its gradients).

use shears_autograd::no_grad;
use shears_models::config::LlamaConfig;
use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
use shears_tensor::Tensor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Big enough that the projections' GEMMs and the attention split over the pool's threads.
const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 64,
  "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": false}"#;

fn ids() -> Tensor {
    let v: Vec<u32> = (0..4 * 48).map(|i| (i * 7 % 64) as u32).collect();
    Tensor::from_slice(&v, [4, 48]).unwrap()
}

#[test]
fn a_recording_forward_records_while_another_thread_runs_without_recording() {
    let config = LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap();
    let frozen = Llama::random(&config, 1).unwrap();
    let mut trained = Llama::random(&config, 2).unwrap();
    let params = trained.params(TrainSpec::default()).unwrap();
    trained.set_params(&params).unwrap();
    let ids = ids();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                no_grad(|| frozen.forward_train(&ids, ForwardOptions::default())).unwrap();
            }
        });
        let mut lost = 0;
        for _ in 0..300 {
            let (logits, _) = trained
                .forward_train(&ids, ForwardOptions::default())
                .unwrap();
            if !logits.has_graph() {
                lost += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            lost, 0,
            "{lost} of 300 recording forwards came back without a graph"
        );
    });
}
