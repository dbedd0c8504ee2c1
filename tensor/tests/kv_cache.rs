//! The KV cache and `attend_cached`: a prefill, decode steps of 1 and 3 rows, then prefills of 5
//! and 3 again equal one `causal_attention` over the whole sequence, per layer, for three layers
//! of different KV heads and widths (f32 storage within 1e-5; bf16/f16 storage equal to attention
//! over the rounded keys and values, and within the half dtype's rounding of the unrounded ones);
//! a long sequence that takes the split (flash-decoding) path; stale entries after `clear()` do
//! not leak; `bytes()`; and `advance()` / `attend_cached` / `KvCache::new` misuse as `Err`.

use shears_tensor::kv::KvCache;
use shears_tensor::test_util::assert_close;
use shears_tensor::{DType, Tensor};

/// The tolerance of cached attention against attention over the stored keys and values: f32
/// sums in another order (1e-5), or, for a bf16 cache on a CPU with a bf16 matrix engine, queries
/// and probabilities rounded to bf16 as well: 2⁻⁹ of each of the 64 products of a score, whose
/// terms here (unit-normal q and k, scale 1/8) sum to a few units, moves the scores by ~1e-2 and
/// the outputs by as much (the test's scores are larger than a trained model's).
fn engine_tol(dtype: DType) -> f64 {
    use shears_kernels::gemm::bf16::{engine, Engine};
    if dtype == DType::BF16 && engine() != Engine::Off {
        3e-2
    } else {
        1e-5
    }
}

/// One layer's whole sequence: q `(1, len, heads, hd)`, k and v `(1, len, kv_heads, hd)`.
struct Layer {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Layer {
    fn new(heads: usize, kvh: usize, hd: usize, len: usize, seed: u64) -> Layer {
        let r = |h: usize, s: u64| Tensor::randn([1, len, h, hd], 0.0, 1.0, DType::F32, s).unwrap();
        Layer {
            q: r(heads, seed),
            k: r(kvh, seed ^ 1),
            v: r(kvh, seed ^ 2),
        }
    }
    fn scale(&self) -> f64 {
        1.0 / (self.q.dims()[3] as f64).sqrt()
    }
    /// `causal_attention` over the whole sequence with k and v rounded through `dtype`.
    fn direct(&self, dtype: DType) -> Tensor {
        let round = |x: &Tensor| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        Tensor::causal_attention(&self.q, &round(&self.k), &round(&self.v), self.scale()).unwrap()
    }
}

/// Runs `steps` new positions at a time through `cache` (every layer, then `advance`) and returns
/// each layer's outputs joined along the sequence.
fn run(cache: &mut KvCache, layers: &[Layer], steps: &[usize]) -> Vec<Tensor> {
    let start = cache.len();
    let mut outs: Vec<Vec<Tensor>> = layers.iter().map(|_| Vec::new()).collect();
    let mut pos = 0;
    for &t in steps {
        for (i, l) in layers.iter().enumerate() {
            let at = |x: &Tensor| x.narrow(1, pos, t).unwrap();
            let o = at(&l.q)
                .attend_cached(&at(&l.k), &at(&l.v), cache, i, l.scale())
                .unwrap();
            assert_eq!(o.dims(), at(&l.q).dims());
            outs[i].push(o);
        }
        cache.advance(t).unwrap();
        pos += t;
    }
    assert_eq!(cache.len(), start + pos);
    outs.iter()
        .map(|o| Tensor::cat(&o.iter().collect::<Vec<_>>(), 1).unwrap())
        .collect()
}

/// `(heads, kv_heads, head_dim)` of the three layers: 2 and 3 query heads per KV head, and a head
/// width that is no multiple of a SIMD width.
const LAYERS: [(usize, usize, usize); 3] = [(4, 2, 8), (3, 1, 16), (2, 2, 17)];

/// 5 + 1 + 3 + 5 + 3 = 17 positions: the decode path (≤ 4 rows) and the GEMM path (5 rows), the
/// last step crossing a 16-key block and filling the cache.
const STEPS: [usize; 5] = [5, 1, 3, 5, 3];
const CAP: usize = 17;

fn layers(seed: u64) -> Vec<Layer> {
    LAYERS
        .iter()
        .enumerate()
        .map(|(i, &(h, kvh, hd))| Layer::new(h, kvh, hd, CAP, seed + 10 * i as u64))
        .collect()
}

fn cache(cap: usize, dtype: DType) -> KvCache {
    let shapes: Vec<(usize, usize)> = LAYERS.iter().map(|&(_, kvh, hd)| (kvh, hd)).collect();
    KvCache::new(cap, dtype, &shapes).unwrap()
}

/// Steps through the cache equal one pass of causal attention over the whole sequence.
#[test]
fn steps_equal_attention_over_the_whole_sequence() {
    let ls = layers(1);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut c = cache(CAP, dtype);
        assert_eq!((c.dtype(), c.capacity(), c.num_layers()), (dtype, CAP, 3));
        assert_eq!(c.layer_shape(1), Some((1, 16)));
        assert_eq!(c.layer_shape(3), None);
        let outs = run(&mut c, &ls, &STEPS);
        for (l, got) in ls.iter().zip(&outs) {
            let got = got.to_vec_f64();
            // Against attention over the values the cache stores: only the order of the f32
            // sums differs, except that prefills over a bf16 cache run on the bf16 matrix engine
            // where the CPU has one, which rounds queries and probabilities to bf16 too.
            let tol = engine_tol(dtype);
            assert_close(&got, &l.direct(dtype).to_vec_f64(), tol, tol);
            // Against the unrounded keys and values: within the storage dtype's rounding.
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            assert_close(&got, &l.direct(DType::F32).to_vec_f64(), tol, tol);
        }
        // The cache is full.
        let l = &ls[0];
        let one = |x: &Tensor| x.narrow(1, 0, 1).unwrap();
        assert!(one(&l.q)
            .attend_cached(&one(&l.k), &one(&l.v), &mut c, 0, 1.0)
            .is_err());
    }
}

/// 260 prefilled positions, then decode steps: the cached positions are split across the threads
/// (parts of at least 128) and merged. Then prefills longer than one causal block (64 rows) over
/// a filled cache, and the same from an empty one in other steps.
#[test]
fn long_sequences_take_the_split_decode_path() {
    let l = [Layer::new(4, 2, 64, 400, 5)];
    for dtype in [DType::F32, DType::BF16] {
        let mut c = KvCache::new(400, dtype, &[(2, 64)]).unwrap();
        let got = run(&mut c, &l, &[260, 1, 4, 1, 100, 34]);
        let tol = engine_tol(dtype);
        assert_close(
            &got[0].to_vec_f64(),
            &l[0].direct(dtype).to_vec_f64(),
            tol,
            tol,
        );
        let mut c = KvCache::new(400, dtype, &[(2, 64)]).unwrap();
        let got = run(&mut c, &l, &[63, 65, 129, 143]);
        assert_close(
            &got[0].to_vec_f64(),
            &l[0].direct(dtype).to_vec_f64(),
            tol,
            tol,
        );
    }
}

/// After `clear()`, a cache that held other (even NaN) keys and values gives exactly what a fresh
/// cache gives: attention never reads positions past the current one, even inside a key block.
#[test]
fn clear_forgets_everything() {
    let fresh = {
        let mut c = cache(CAP, DType::BF16);
        run(&mut c, &layers(2), &[5, 1, 3])
    };
    let mut c = cache(CAP, DType::BF16);
    let nan = |x: &Tensor| x.affine(0.0, f64::NAN).unwrap();
    let poisoned: Vec<Layer> = layers(3)
        .into_iter()
        .map(|l| Layer {
            q: l.q,
            k: nan(&l.k),
            v: nan(&l.v),
        })
        .collect();
    run(&mut c, &poisoned, &[16]);
    c.clear();
    assert!(c.is_empty());
    let again = run(&mut c, &layers(2), &[5, 1, 3]);
    for (a, b) in again.iter().zip(&fresh) {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    }
}

/// `bytes()` counts keys in whole blocks of 16 positions and values per position.
#[test]
fn bytes_counts_the_storage() {
    // Per layer kv_heads·head_dim·(⌈17/16⌉·16 + 17) = kv_heads·head_dim·49 elements.
    let elems: usize = LAYERS.iter().map(|&(_, kvh, hd)| kvh * hd * 49).sum();
    assert_eq!(cache(CAP, DType::F32).bytes(), 4 * elems);
    assert_eq!(cache(CAP, DType::BF16).bytes(), 2 * elems);
    assert_eq!(cache(CAP, DType::F16).bytes(), 2 * elems);
    assert_eq!(KvCache::new(0, DType::F32, &[]).unwrap().bytes(), 0);
}

#[test]
fn advance_checks_the_capacity() {
    let mut c = cache(CAP, DType::F32);
    assert!(c.advance(CAP + 1).is_err());
    assert_eq!(c.len(), 0);
    c.advance(10).unwrap();
    assert!(c.advance(8).is_err());
    assert!(c.advance(usize::MAX).is_err());
    assert_eq!(c.len(), 10);
    c.advance(7).unwrap();
    assert_eq!(c.len(), CAP);
    assert!(c.advance(1).is_err());
    c.advance(0).unwrap();
    c.clear();
    assert_eq!((c.len(), c.capacity()), (0, CAP));
}

#[test]
fn attend_cached_misuse_returns_errors() {
    let mut c = cache(CAP, DType::F32);
    let t = |shape: [usize; 4], dtype: DType| Tensor::zeros(shape, dtype).unwrap();
    let f = DType::F32;
    let mut attend = |q: [usize; 4], kv: [usize; 4], dt: [DType; 2], layer: usize| {
        t(q, dt[0]).attend_cached(&t(kv, dt[1]), &t(kv, dt[1]), &mut c, layer, 1.0)
    };
    assert!(attend([1, 2, 4, 8], [1, 2, 2, 8], [f, f], 0).is_ok());
    assert!(attend([1, 2, 4, 8], [1, 2, 2, 8], [f, f], 3).is_err()); // no layer 3
    assert!(attend([1, 2, 4, 8], [1, 2, 2, 8], [f, f], 1).is_err()); // layer 1 is (1, 16)
    assert!(attend([2, 2, 4, 8], [2, 2, 2, 8], [f, f], 0).is_err()); // batch 2
    assert!(attend([1, 2, 3, 8], [1, 2, 2, 8], [f, f], 0).is_err()); // 2 ∤ 3
    assert!(attend([1, 2, 0, 8], [1, 2, 2, 8], [f, f], 0).is_err()); // no query heads
    assert!(attend([1, 5, 0, 8], [1, 5, 2, 8], [f, f], 0).is_err());
    assert!(attend([1, 2, 4, 8], [1, 3, 2, 8], [f, f], 0).is_err()); // seq
    assert!(attend([1, 2, 4, 8], [1, 2, 2, 8], [DType::F64, f], 0).is_err());
    assert!(attend([1, 2, 4, 8], [1, 2, 2, 8], [f, DType::BF16], 0).is_err());
    assert!(attend([1, 18, 4, 8], [1, 18, 2, 8], [f, f], 0).is_err()); // over capacity
    let empty = attend([1, 0, 4, 8], [1, 0, 2, 8], [f, f], 0).unwrap();
    assert_eq!(empty.dims(), &[1, 0, 4, 8]);
    // A mismatched v.
    let (q, k) = (t([1, 1, 4, 8], f), t([1, 1, 2, 8], f));
    assert!(q
        .attend_cached(&k, &t([1, 1, 1, 8], f), &mut c, 0, 1.0)
        .is_err());
    // Storage dtypes and layer shapes.
    assert!(KvCache::new(4, DType::F64, &[(1, 8)]).is_err());
    assert!(KvCache::new(4, DType::I64, &[(1, 8)]).is_err());
    assert!(KvCache::new(4, DType::F32, &[(0, 8)]).is_err());
    assert!(KvCache::new(4, DType::F32, &[(2, 0)]).is_err());
    // A zero-capacity cache has no room for one position.
    let mut z = KvCache::new(0, DType::F32, &[(2, 8)]).unwrap();
    assert!(t([1, 1, 4, 8], f)
        .attend_cached(&k, &k, &mut z, 0, 1.0)
        .is_err());
}
