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
    matmul_nt_ref(m, n, k, &x, w, &mut r);
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
