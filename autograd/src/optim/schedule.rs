//! Learning-rate schedules.

/// A learning-rate schedule: the multiplier of the base rate at each step (steps count from 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base rate at every step.
    Constant,
    /// Linear warm-up from 0 to the base rate over `warmup` steps, then linear decay to 0 at
    /// `total` (HF `get_linear_schedule_with_warmup`).
    WarmupLinear {
        /// Steps of warm-up.
        warmup: u64,
        /// Step at which the rate reaches 0.
        total: u64,
    },
    /// Linear warm-up over `warmup` steps, then half-cosine decay to `min_ratio × base` at
    /// `total`, constant after.
    WarmupCosine {
        /// Steps of warm-up.
        warmup: u64,
        /// Step at which the rate reaches its minimum.
        total: u64,
        /// Final rate as a fraction of the base rate.
        min_ratio: f64,
    },
}

impl LrSchedule {
    /// The learning rate at `step` for base rate `base_lr`.
    pub fn lr_at(&self, step: u64, base_lr: f64) -> f64 {
        let (warmup, total) = match *self {
            LrSchedule::Constant => return base_lr,
            LrSchedule::WarmupLinear { warmup, total }
            | LrSchedule::WarmupCosine { warmup, total, .. } => (warmup, total),
        };
        if step < warmup {
            return base_lr * step as f64 / warmup as f64;
        }
        // Fraction of the decay phase done; a schedule with no decay phase is at its end.
        let progress = if total > warmup {
            ((step - warmup) as f64 / (total - warmup) as f64).min(1.0)
        } else {
            1.0
        };
        match *self {
            LrSchedule::WarmupCosine { min_ratio, .. } => {
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                base_lr * (min_ratio + (1.0 - min_ratio) * cos)
            }
            _ => base_lr * (1.0 - progress),
        }
    }
}
