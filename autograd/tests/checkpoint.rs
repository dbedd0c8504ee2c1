//! Activation checkpointing (`Var::checkpoint`): a checkpointed function gives the same loss and
//! the same gradients, for its inputs and for the parameters it captures, as the function
//! recorded directly (f64, within 1e-12), whether it covers two layers, one layer each (chained),
//! or nests a checkpoint inside; constant inputs get no gradient; under `no_grad` it only
//! computes. The function runs once in the forward pass and once per backward pass (its
//! intermediate values are recomputed, not kept).

use shears_autograd::{no_grad, Grads, Var};
use shears_tensor::test_util::assert_close;
use shears_tensor::{DType, Error, Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn normal(shape: &[usize], std: f64, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, std, DType::F64, seed).unwrap()
}

/// A pre-norm SwiGLU block with its parameters captured: `x + down(silu(gate(h)) ⊙ up(h))`,
/// `h = rms_norm(x)`.
#[derive(Clone)]
struct Block {
    norm: Var,
    gate: Var,
    up: Var,
    down: Var,
}

impl Block {
    fn new(d: usize, f: usize, seed: u64) -> Block {
        Block {
            norm: Var::param(normal(&[d], 1.0, seed).affine(0.1, 1.0).unwrap()),
            gate: Var::param(normal(&[f, d], 0.3, seed + 1)),
            up: Var::param(normal(&[f, d], 0.3, seed + 2)),
            down: Var::param(normal(&[d, f], 0.3, seed + 3)),
        }
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = x.rms_norm(&self.norm, 1e-5)?;
        let a = h.matmul_nt(&self.gate)?.silu_mul(&h.matmul_nt(&self.up)?)?;
        a.matmul_nt(&self.down)?.add(x)
    }
    fn params(&self) -> Vec<&Var> {
        vec![&self.norm, &self.gate, &self.up, &self.down]
    }
}

struct Setup {
    x: Var,
    b1: Block,
    b2: Block,
    r: Tensor,
}

fn setup() -> Setup {
    Setup {
        x: Var::param(normal(&[2, 3, 8], 1.0, 1)),
        b1: Block::new(8, 12, 10),
        b2: Block::new(8, 12, 20),
        r: normal(&[2, 3, 8], 1.0, 2),
    }
}

impl Setup {
    fn loss(&self, y: &Var) -> Var {
        y.mul(&Var::constant(self.r.clone()))
            .unwrap()
            .sum_all()
            .unwrap()
    }
    /// The loss and gradients of the two blocks recorded directly.
    fn direct(&self) -> (f64, Grads) {
        let y = self.b2.forward(&self.b1.forward(&self.x).unwrap()).unwrap();
        let l = self.loss(&y);
        (l.tensor().to_scalar().unwrap(), l.backward().unwrap())
    }
    fn vars(&self) -> Vec<&Var> {
        let mut v = vec![&self.x];
        v.extend(self.b1.params());
        v.extend(self.b2.params());
        v
    }
    /// `y`'s loss equals the direct one and its gradients match for every variable.
    fn check(&self, y: &Var) {
        let (want, g_want) = self.direct();
        let l = self.loss(y);
        let got: f64 = l.tensor().to_scalar().unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        let g = l.backward().unwrap();
        for (i, v) in self.vars().into_iter().enumerate() {
            match (g.get(v), g_want.get(v)) {
                (Some(a), Some(b)) => assert_close(&a.to_vec_f64(), &b.to_vec_f64(), 1e-12, 1e-12),
                (a, b) => panic!(
                    "variable {i}: gradient {:?} vs {:?}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
    }
}

#[test]
fn two_layers_in_one_checkpoint() {
    let s = setup();
    let (b1, b2) = (s.b1.clone(), s.b2.clone());
    let y = Var::checkpoint(&[&s.x], move |xs| b2.forward(&b1.forward(&xs[0])?)).unwrap();
    assert!(y.requires_grad());
    s.check(&y);
}

#[test]
fn chained_and_nested_checkpoints() {
    let s = setup();
    let (b1, b2) = (s.b1.clone(), s.b2.clone());
    let h = Var::checkpoint(&[&s.x], move |xs| b1.forward(&xs[0])).unwrap();
    let y = Var::checkpoint(&[&h], move |xs| b2.forward(&xs[0])).unwrap();
    s.check(&y);

    let (b1, b2) = (s.b1.clone(), s.b2.clone());
    let y = Var::checkpoint(&[&s.x], move |xs| {
        let b1 = b1.clone();
        let h = Var::checkpoint(&[&xs[0]], move |ys| b1.forward(&ys[0]))?;
        b2.forward(&h)
    })
    .unwrap();
    s.check(&y);
}

/// A constant input gets no gradient; the captured parameters get theirs.
#[test]
fn constant_inputs() {
    let s = setup();
    let x = Var::constant(s.x.tensor().clone());
    let b1 = s.b1.clone();
    let y = Var::checkpoint(&[&x], move |xs| b1.forward(&xs[0])).unwrap();
    let g = s.loss(&y).backward().unwrap();
    let g_want = s.loss(&s.b1.forward(&x).unwrap()).backward().unwrap();
    assert_eq!(g.len(), 4);
    for p in s.b1.params() {
        let (a, b) = (g.get(p).unwrap(), g_want.get(p).unwrap());
        assert_close(&a.to_vec_f64(), &b.to_vec_f64(), 1e-12, 1e-12);
    }
    // Nothing to differentiate at all: no graph.
    let c = Var::constant(normal(&[2, 8], 1.0, 3));
    let y = Var::checkpoint(&[&x], move |xs| xs[0].matmul_nt(&c)).unwrap();
    assert!(!y.requires_grad());
}

/// Counts the calls of a checkpointed one-layer function.
fn counted(
    b: &Block,
) -> (
    Arc<AtomicUsize>,
    impl Fn(&[Var]) -> Result<Var> + Send + Sync,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, b) = (calls.clone(), b.clone());
    let f = move |xs: &[Var]| {
        c.fetch_add(1, Ordering::SeqCst);
        b.forward(&xs[0])
    };
    (calls, f)
}

#[test]
fn under_no_grad_it_only_computes() {
    let s = setup();
    let (calls, f) = counted(&s.b1);
    let y = no_grad(|| Var::checkpoint(&[&s.x], f)).unwrap();
    assert!(!y.requires_grad());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let want = s.b1.forward(&s.x).unwrap();
    assert_eq!(y.tensor().to_vec_f64(), want.tensor().to_vec_f64());
}

/// The forward pass runs `f` once; each backward pass runs it once more (the intermediates are
/// recomputed) and gives the same gradients; a backward pass inside `no_grad` still records the
/// recomputation it differentiates.
#[test]
fn recomputes_once_per_backward() {
    let s = setup();
    let (calls, f) = counted(&s.b1);
    let y = Var::checkpoint(&[&s.x], f).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let l = s.loss(&y);
    let g1 = l.backward().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let g2 = no_grad(|| l.backward()).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    for v in [&s.x, &s.b1.gate, &s.b1.norm] {
        assert_eq!(
            g1.get(v).unwrap().to_vec_f64(),
            g2.get(v).unwrap().to_vec_f64()
        );
    }
    assert!(shears_autograd::is_grad_enabled());
}

/// Inputs used twice, an input also captured, a captured value that is itself computed from a
/// parameter, and an input `f` ignores: the same gradients as recorded directly.
#[test]
fn inputs_and_captures_of_every_kind() {
    let x = Var::param(normal(&[3, 4], 1.0, 1));
    let z = Var::param(normal(&[3, 4], 1.0, 2));
    let w = Var::param(normal(&[5, 4], 1.0, 3));
    let w2 = w.mul_scalar(2.0).unwrap(); // not a leaf: its gradient must reach w
    let r = Var::constant(normal(&[3, 5], 1.0, 4));
    let f = {
        let (x, w2) = (x.clone(), w2.clone());
        move |xs: &[Var]| xs[0].mul(&xs[1])?.add(&x)?.matmul_nt(&w2)
    };
    let direct = f(&[x.clone(), x.clone(), z.clone()]).unwrap();
    let g_want = direct
        .mul(&r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let y = Var::checkpoint(&[&x, &x, &z], f).unwrap();
    assert_eq!(y.tensor().to_vec_f64(), direct.tensor().to_vec_f64());
    let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let (a, b) = (g.get(v).unwrap(), g_want.get(v).unwrap());
        assert_close(&a.to_vec_f64(), &b.to_vec_f64(), 1e-12, 1e-12);
    }
    assert!(g.get(&z).is_none() && g_want.get(&z).is_none());
}

#[test]
fn errors_pass_through() {
    let x = Var::param(normal(&[2], 1.0, 1));
    let fail = |_: &[Var]| -> Result<Var> { Err(Error::invalid("f", "fails")) };
    assert!(Var::checkpoint(&[&x], fail).is_err());
    assert!(no_grad(|| Var::checkpoint(&[&x], fail)).is_err());
}
