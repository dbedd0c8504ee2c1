//! Tests of the parent module against its reference twins.
use super::*;
use proptest::prelude::*;

fn fill(n: usize, seed: u64) -> Vec<f32> {
    crate::testing::lcg_values(n, seed, 1.0)
}

fn check<W: WeightElem>(
    level: Level,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    w: &[W],
    seed: u64,
) -> Result<(), TestCaseError> {
    let x = fill(m * k, seed);
    let mut y = vec![f32::NAN; m * n];
    let mut r = vec![0f32; m * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| matmul_nt_with(level, m, n, k, &x, w, &mut y));
    let engine = W::KIND == WeightKind::BF16
        && m > SMALL_M
        && gemm::bf16::engine() != gemm::bf16::Engine::Off;
    if engine {
        // Above SMALL_M bf16 weights go to the bf16 engine, which rounds x to bf16 too.
        // SAFETY: W is bf16.
        let wb = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<bf16>(), w.len()) };
        gemm::bf16::matmul_nt_bf16_ref(m, n, k, &x, wb, &mut r);
    } else {
        matmul_nt_ref(m, n, k, &x, w, &mut r);
    }
    for (i, (a, b)) in y.iter().zip(&r).enumerate() {
        prop_assert!(
            (a - b).abs() <= 1e-5 * (k as f32 + 1.0),
            "{level:?} {:?} t{threads} m{m} n{n} k{k} [{i}] {a} vs {b}",
            W::KIND
        );
    }
    Ok(())
}

fn dims() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(7),
        Just(8),
        Just(9),
        Just(15),
        Just(16),
        Just(17),
        Just(31),
        Just(33),
        1usize..70
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn matmul_nt_matches_ref(m in prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(5), Just(16), Just(17), 0usize..20], n in dims(), k in dims(), seed: u64, two: bool) {
        let w = fill(n * k, !seed);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        for level in cpu::available() {
            let t = if two { 2 } else { 1 };
            check(level, t, m, n, k, &w, seed)?;
            check(level, t, m, n, k, &wb, seed)?;
            check(level, t, m, n, k, &wh, seed)?;
        }
    }
}

#[test]
fn large_gemv_every_level() {
    let (n, k) = (1000, 4099);
    let w = fill(n * k, 3);
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    for level in cpu::available() {
        for m in [1, 16, 40] {
            check(level, 2, m, n, k, &w, 5).unwrap();
            check(level, 2, m, n, k, &wb, 5).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// The fused multi-matrix product equals one reference product per matrix, on 1 and 2
    /// threads, for row counts that do and do not fill a task, and for large m (the GEMM path).
    #[test]
    fn matmul_nt_many_matches_ref(
        m in prop_oneof![Just(0usize), Just(1), Just(2), Just(16), Just(17), 1usize..20],
        ns in proptest::collection::vec(prop_oneof![Just(0usize), Just(1), Just(8), Just(17), Just(300), 1usize..64], 1..4),
        k in prop_oneof![Just(1usize), Just(15), Just(16), Just(17), Just(97), Just(256), 1usize..40],
        seed: u64,
        two: bool,
    ) {
        let x = fill(m * k, seed);
        let ws: Vec<Vec<bf16>> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| fill(n * k, seed ^ (i as u64 + 1)).iter().map(|&v| bf16::from_f32(v)).collect())
            .collect();
        let mut ys: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(if two { 2 } else { 1 }).build().unwrap();
        pool.install(|| {
            let wrefs: Vec<&[bf16]> = ws.iter().map(|w| w.as_slice()).collect();
            let mut yrefs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
            matmul_nt_many(m, k, &x, &wrefs, &ns, &mut yrefs);
        });
        for (i, &n) in ns.iter().enumerate() {
            let mut r = vec![0f32; m * n];
            if m > SMALL_M && gemm::bf16::engine() != gemm::bf16::Engine::Off {
                // The bf16 engine rounds x to bf16 too.
                gemm::bf16::matmul_nt_bf16_ref(m, n, k, &x, &ws[i], &mut r);
            } else {
                matmul_nt_ref(m, n, k, &x, &ws[i], &mut r);
            }
            for (j, (a, b)) in ys[i].iter().zip(&r).enumerate() {
                prop_assert!((a - b).abs() <= 1e-5 * (k as f32 + 1.0), "matrix {i} m{m} n{n} k{k} [{j}] {a} vs {b}");
            }
        }
    }
}

/// The prefetch policy is a speed choice only: every policy gives the reference's products, for
/// GEMV rows shorter and longer than the prefetch distance.
#[test]
fn every_prefetch_policy_matches_ref() {
    let before = cpu::prefetch();
    for p in [cpu::Prefetch::Off, cpu::Prefetch::Nta, cpu::Prefetch::T0] {
        cpu::force_prefetch(Some(p));
        assert_eq!(cpu::prefetch(), p);
        for (n, k) in [(37, 5), (19, 1031), (8, 4099)] {
            let w = fill(n * k, 3);
            let x = fill(k, 4);
            let (mut y, mut r) = (vec![f32::NAN; n], vec![0f32; n]);
            matmul_nt(1, n, k, &x, &w, &mut y);
            matmul_nt_ref(1, n, k, &x, &w, &mut r);
            for (a, b) in y.iter().zip(&r) {
                assert!(
                    (a - b).abs() <= 1e-5 * k as f32,
                    "{p:?} n{n} k{k}: {a} vs {b}"
                );
            }
        }
    }
    cpu::force_prefetch(Some(before));
}

#[test]
fn vendor_and_model_name_are_printable() {
    let (v, name) = (cpu::vendor(), cpu::model_name());
    assert!(v.chars().all(|c| c.is_ascii_graphic()), "{v:?}");
    assert!(!name.contains('\0'), "{name:?}");
}
