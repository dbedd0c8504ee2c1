//! A character-level MLP language model (Bengio et al. 2003 style) trained on real text, showing
//! the loss fall.
//!
//! The previous 8 bytes are looked up in a `[256, 16]` embedding table, concatenated to
//! `[B, 128]`, passed through `Linear 128→256 + bias → tanh → Linear 256→256 + bias`, and scored
//! with cross-entropy against the next byte. AdamW (warm-up + cosine schedule), gradient
//! clipping at global norm 1.0, batches of 64 random windows from a seeded [`Rng`]; the last 10%
//! of the text is held out. Exits non-zero unless the training loss falls clearly (final
//! < 0.8 × initial), so it doubles as an end-to-end check.
//!
//! Run it (the first command downloads the Canterbury corpus `alice29.txt` into `data/`):
//!
//! ```text
//! bash scripts/fetch-text
//! cargo run --release -p shears-autograd --example char_mlp
//! ```
//!
//! An optional argument names another text file to train on instead of `data/alice29.txt`.

use shears_autograd::optim::{clip_grad_norm, AdamW, LrSchedule, Optimizer, Param};
use shears_autograd::{nn, no_grad, Var};
use shears_tensor::{DType, Result, Rng, Tensor};
use std::process::ExitCode;
use std::time::Instant;

const CONTEXT: usize = 8;
const EMBED: usize = 16;
const HIDDEN: usize = 256;
const VOCAB: usize = 256;
const BATCH: usize = 64;
const STEPS: u64 = 300;
const WARMUP: u64 = 20;
const BASE_LR: f64 = 3e-3;
const LOG_EVERY: u64 = 25;
const SEED: u64 = 0x5eed;
/// At most this many held-out positions are scored (evenly spaced), to keep evaluation quick.
const EVAL_POSITIONS: usize = 4096;

/// Embedding table, hidden layer, output layer (in this order).
struct Model {
    params: Vec<Param>,
}

impl Model {
    fn new(rng: &mut Rng) -> Result<Model> {
        let fan_in = (CONTEXT * EMBED) as f64;
        let params = vec![
            Param::new(
                "emb",
                Tensor::randn_with([VOCAB, EMBED], 0.0, 1.0, DType::F32, rng)?,
            )?,
            Param::new(
                "w1",
                Tensor::randn_with(
                    [CONTEXT * EMBED, HIDDEN],
                    0.0,
                    1.0 / fan_in.sqrt(),
                    DType::F32,
                    rng,
                )?,
            )?,
            Param::new("b1", Tensor::zeros([HIDDEN], DType::F32)?)?,
            // Small output weights: the initial prediction is close to uniform, loss ≈ ln 256.
            Param::new(
                "w2",
                Tensor::randn_with([HIDDEN, VOCAB], 0.0, 0.01, DType::F32, rng)?,
            )?,
            Param::new("b2", Tensor::zeros([VOCAB], DType::F32)?)?,
        ];
        Ok(Model { params })
    }

    /// Logits `[B, 256]` for context ids `[B, CONTEXT]` (i64).
    fn forward(&self, ctx: &Tensor) -> Result<Var> {
        let [emb, w1, b1, w2, b2] = [0, 1, 2, 3, 4].map(|i| self.params[i].var());
        let b = ctx.dims()[0];
        let x = emb.embedding(ctx)?.reshape([b, CONTEXT * EMBED])?;
        let h = x.matmul(w1)?.add(b1)?.tanh()?;
        h.matmul(w2)?.add(b2)
    }

    /// Mean cross-entropy of predicting `text[p]` from `text[p - CONTEXT..p]` over `positions`.
    fn loss(&self, text: &[u8], positions: &[usize]) -> Result<Var> {
        let (ctx, tgt) = batch(text, positions)?;
        nn::cross_entropy(&self.forward(&ctx)?, &tgt, None)
    }
}

/// Context ids `[N, CONTEXT]` and target ids `[N]` (i64) for the given target positions.
fn batch(text: &[u8], positions: &[usize]) -> Result<(Tensor, Tensor)> {
    let mut ctx = Vec::with_capacity(positions.len() * CONTEXT);
    let mut tgt = Vec::with_capacity(positions.len());
    for &p in positions {
        ctx.extend(text[p - CONTEXT..p].iter().map(|&c| i64::from(c)));
        tgt.push(i64::from(text[p]));
    }
    let n = positions.len();
    Ok((
        Tensor::from_vec(ctx, [n, CONTEXT])?,
        Tensor::from_vec(tgt, [n])?,
    ))
}

/// Held-out loss over up to [`EVAL_POSITIONS`] evenly spaced targets of `text`, without a graph.
fn eval_loss(model: &Model, text: &[u8]) -> Result<f64> {
    let n = text.len() - CONTEXT;
    let stride = n.div_ceil(EVAL_POSITIONS).max(1);
    let positions: Vec<usize> = (CONTEXT..text.len()).step_by(stride).collect();
    let loss = no_grad(|| model.loss(text, &positions))?;
    Ok(f64::from(loss.tensor().to_scalar::<f32>()?))
}

fn run(text: &[u8]) -> Result<bool> {
    let split = text.len() * 9 / 10;
    let (train, held_out) = (&text[..split], &text[split..]);
    println!(
        "text: {} bytes ({} train, {} held out); context {CONTEXT}, batch {BATCH}, {STEPS} steps",
        text.len(),
        train.len(),
        held_out.len()
    );

    let mut rng = Rng::new(SEED);
    let mut model = Model::new(&mut rng)?;
    let n_params: usize = model.params.iter().map(|p| p.tensor().elem_count()).sum();
    println!("parameters: {n_params}");

    let held_before = eval_loss(&model, held_out)?;
    println!("held-out loss before training: {held_before:.4}");

    let mut opt = AdamW::new(BASE_LR);
    let schedule = LrSchedule::WarmupCosine {
        warmup: WARMUP,
        total: STEPS,
        min_ratio: 0.1,
    };
    let mut initial = f64::NAN;
    let mut window = Vec::new(); // the training losses since the last report
    let mut last_window_mean = f64::NAN;
    let start = Instant::now();
    for step in 0..STEPS {
        let positions: Vec<usize> = (0..BATCH)
            .map(|_| CONTEXT + rng.below((train.len() - CONTEXT) as u64) as usize)
            .collect();
        let loss = model.loss(train, &positions)?;
        let value = f64::from(loss.tensor().to_scalar::<f32>()?);
        if step == 0 {
            initial = value;
        }
        window.push(value);
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, &model.params, 1.0)?;
        let lr = schedule.lr_at(step, BASE_LR);
        opt.set_lr(lr);
        opt.step(&mut model.params, &grads)?;
        if (step + 1) % LOG_EVERY == 0 || step == 0 {
            last_window_mean = window.iter().sum::<f64>() / window.len() as f64;
            println!(
                "step {:>4}  loss {value:.4}  (mean of last {:>2}: {last_window_mean:.4})  grad norm {norm:.3}  lr {lr:.2e}",
                step + 1,
                window.len()
            );
            window.clear();
        }
    }
    let train_secs = start.elapsed().as_secs_f64();

    let held_after = eval_loss(&model, held_out)?;
    println!("trained {STEPS} steps in {train_secs:.2} s");
    println!("training loss: initial {initial:.4} -> final (mean of last {LOG_EVERY} steps) {last_window_mean:.4}");
    println!("held-out loss: before {held_before:.4} -> after {held_after:.4}");
    let ok = last_window_mean < 0.8 * initial;
    if ok {
        println!("ok: final training loss is below 0.8 x initial");
    } else {
        eprintln!(
            "error: final training loss {last_window_mean:.4} is not below 0.8 x initial ({:.4})",
            0.8 * initial
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data/alice29.txt".to_string());
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {path}: {e}");
            eprintln!("run scripts/fetch-text first");
            return ExitCode::FAILURE;
        }
    };
    if text.len() < 20 * (CONTEXT + 1) {
        eprintln!(
            "error: {path} is too short ({} bytes) to train on",
            text.len()
        );
        return ExitCode::FAILURE;
    }
    match run(&text) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
