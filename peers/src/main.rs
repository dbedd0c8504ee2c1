//! `peers`: shears' CPU kernels next to the `gemm` and `matrixmultiply` crates, at the shapes of
//! `shears bench kernels`, in one run on one machine.
//!
//! ```text
//! cargo run --release                        # Markdown table of GFLOP/s per shape
//! cargo run --release -- --json --threads 1  # one JSON object per (shape, implementation)
//! cargo run --release -- --quick             # fewer repetitions
//! ```
//!
//! Shapes: GEMM C = A·B with B as [K, N] for 512³ … 4096³, and y = x·Wᵀ with W as [N, K] (how
//! checkpoints store linear layers) for M ∈ {1, 16, 128}, K = 4096, N ∈ {4096, 11008}. The peers
//! get Wᵀ as a strided view of the same f32 buffer (they take arbitrary strides); shears also runs
//! with bf16 weights. Weights are rounded through bf16 first, so every implementation multiplies
//! the same numbers and the results must agree to f32 rounding (a warning says when not). At
//! M = 1 every implementation cycles through copies of W, so it reads them from memory, not from
//! the last-level cache, as decoding a model does.
//!
//! Each implementation runs twice to warm up, then enough times to fill about half a second (a
//! tenth with `--quick`); the median repetition is reported.

use gemm::Parallelism;
use half::bf16;
use shears_kernels::gemm::MatRef;
use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;

struct Opts {
    json: bool,
    quick: bool,
    small: bool,
    threads: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        json: false,
        quick: false,
        small: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "--quick" => opts.quick = true,
            "--only-small" => opts.small = true,
            "--threads" => {
                let v = args.next().ok_or("--threads needs a value")?;
                opts.threads = v
                    .parse()
                    .ok()
                    .filter(|&t| t > 0)
                    .ok_or(format!("--threads: not a positive integer: {v}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: peers [--json] [--quick] [--threads N] [--only-small]\n\
                     Times shears, gemm and matrixmultiply at the shapes of `shears bench kernels`."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(opts)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// C[M, N] = A[M, K] · B[K, N].
    Gemm,
    /// y[M, N] = x[M, K] · W[N, K]ᵀ.
    MatmulNt,
}

struct Shape {
    kind: Kind,
    m: usize,
    k: usize,
    n: usize,
}

impl Shape {
    fn label(&self) -> String {
        match self.kind {
            Kind::Gemm if self.m == self.k && self.k == self.n => format!("gemm {}³", self.m),
            Kind::Gemm => format!("gemm {}×{}×{}", self.m, self.k, self.n),
            Kind::MatmulNt => format!("x·Wᵀ {}×{}×{}", self.m, self.k, self.n),
        }
    }
    fn kernel(&self) -> &'static str {
        match self.kind {
            Kind::Gemm => "gemm",
            Kind::MatmulNt => "matmul_nt",
        }
    }
}

fn shapes(small: bool) -> Vec<Shape> {
    let (cubes, ms, k, ns): (&[usize], &[usize], usize, &[usize]) = if small {
        (&[64], &[1, 16], 256, &[512])
    } else {
        (
            &[512, 1024, 2048, 4096],
            &[1, 16, 128],
            4096,
            &[4096, 11008],
        )
    };
    let mut out: Vec<Shape> = cubes
        .iter()
        .map(|&s| Shape {
            kind: Kind::Gemm,
            m: s,
            k: s,
            n: s,
        })
        .collect();
    for &m in ms {
        for &n in ns {
            out.push(Shape {
                kind: Kind::MatmulNt,
                m,
                k,
                n,
            });
        }
    }
    out
}

/// One timed implementation at one shape.
struct Timing {
    name: &'static str,
    dtype: &'static str,
    seconds: f64,
    reps: usize,
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // matrixmultiply reads its thread count once, on first use, from this variable.
    match std::env::var("MATMUL_NUM_THREADS") {
        Ok(v) if v != opts.threads.to_string() => eprintln!(
            "peers: warning: MATMUL_NUM_THREADS={v} overrides --threads {} for matrixmultiply",
            opts.threads
        ),
        Ok(_) => {}
        Err(_) => std::env::set_var("MATMUL_NUM_THREADS", opts.threads.to_string()),
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .expect("a thread pool");
    let (target, min_reps) = if opts.quick || opts.small {
        (0.1, 1)
    } else {
        (0.5, 3)
    };
    let level = shears_kernels::cpu::level();
    eprintln!(
        "peers: {} threads, shears at {}; matrixmultiply uses at most 4 threads",
        opts.threads,
        level.name()
    );
    let mut results = Vec::new();
    for shape in shapes(opts.small) {
        eprintln!("peers: {} ...", shape.label());
        let timings = pool.install(|| run_shape(&shape, opts.threads, target, min_reps));
        if opts.json {
            for t in &timings {
                println!("{}", json(&shape, t, opts.threads, level.name()));
            }
        }
        results.push((shape, timings));
    }
    if !opts.json {
        print_table(&results, opts.threads, level.name());
    }
}

fn run_shape(shape: &Shape, threads: usize, target: f64, min_reps: usize) -> Vec<Timing> {
    let (m, k, n) = (shape.m, shape.k, shape.n);
    let a = lcg(m * k, 1);
    // B ([K, N]) for GEMM, W ([N, K]) for x·Wᵀ: same element count, rounded through bf16 so the
    // bf16 run multiplies the same numbers as the f32 ones.
    let b_bf16: Vec<bf16> = lcg(k * n, 2).into_iter().map(bf16::from_f32).collect();
    let b: Vec<f32> = b_bf16.iter().map(|v| v.to_f32()).collect();
    let cold = shape.kind == Kind::MatmulNt && m == 1;
    let (b, b_bf16) = (Copies::new(b, cold), Copies::new(b_bf16, cold));
    // Strides of B as a K × N matrix: row-major [K, N], or the transposed view of W [N, K].
    let (rsb, csb) = match shape.kind {
        Kind::Gemm => (n, 1),
        Kind::MatmulNt => (1, k),
    };
    let mut out = Vec::new();
    let mut reference = vec![0f32; m * n];

    let mut c = vec![0f32; m * n];
    let (seconds, reps) = time(target, min_reps, || {
        match shape.kind {
            Kind::Gemm => shears_kernels::gemm::gemm(
                m,
                n,
                k,
                MatRef::new(&a, k, 1),
                MatRef::new(b.next(), rsb, csb),
                &mut c,
            ),
            Kind::MatmulNt => shears_kernels::gemv::matmul_nt(m, n, k, &a, b.next(), &mut c),
        }
        black_box(&mut c);
    });
    reference.copy_from_slice(&c);
    out.push(Timing {
        name: "shears",
        dtype: "f32",
        seconds,
        reps,
    });

    let (seconds, reps) = time(target, min_reps, || {
        // SAFETY: a is m × k (row stride k), b is k × n at strides (rsb, csb) inside its k·n
        // elements, c is m × n row-major; none alias, and read_dst = false ignores c's contents.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.next().as_ptr(),
                csb as isize,
                rsb as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(threads),
            )
        }
        black_box(&mut c);
    });
    check("gemm", shape, &reference, &c);
    out.push(Timing {
        name: "gemm",
        dtype: "f32",
        seconds,
        reps,
    });

    let (seconds, reps) = time(target, min_reps, || {
        // SAFETY: as for gemm above; beta = 0 overwrites c.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.next().as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
        black_box(&mut c);
    });
    check("matrixmultiply", shape, &reference, &c);
    out.push(Timing {
        name: "matrixmultiply",
        dtype: "f32",
        seconds,
        reps,
    });

    if shape.kind == Kind::MatmulNt {
        let (seconds, reps) = time(target, min_reps, || {
            shears_kernels::gemv::matmul_nt(m, n, k, &a, b_bf16.next(), &mut c);
            black_box(&mut c);
        });
        check("shears bf16", shape, &reference, &c);
        out.push(Timing {
            name: "shears",
            dtype: "bf16",
            seconds,
            reps,
        });
    }
    out
}

/// Decode reads each layer's weights once per token, long after they left the cache; timing one
/// small W over and over would measure the last-level cache instead (a 4096 × 4096 bf16 W is
/// 32 MiB). So M = 1 cycles through copies of W that together span at least this many bytes.
const COLD_BYTES: usize = 256 << 20;

/// Identical copies of a weight, handed out in turn.
struct Copies<T> {
    copies: Vec<Vec<T>>,
    next: Cell<usize>,
}

impl<T: Clone> Copies<T> {
    /// Enough copies of `w` to span [`COLD_BYTES`] when `cold`, else just `w`.
    fn new(w: Vec<T>, cold: bool) -> Self {
        let bytes = (w.len() * std::mem::size_of::<T>()).max(1);
        let count = if cold {
            COLD_BYTES.div_ceil(bytes).clamp(1, 64)
        } else {
            1
        };
        Copies {
            copies: std::iter::repeat_n(w, count).collect(),
            next: Cell::new(0),
        }
    }
    fn next(&self) -> &[T] {
        let i = self.next.get();
        self.next.set(i + 1);
        &self.copies[i % self.copies.len()]
    }
}

/// Warns when `got` differs from `want` by more than 1e-3 of the largest |want|.
fn check(name: &str, shape: &Shape, want: &[f32], got: &[f32]) {
    let scale = want
        .iter()
        .fold(0f32, |s, v| s.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = want
        .iter()
        .zip(got)
        .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
    let rel = diff / scale;
    if rel.is_nan() || rel >= 1e-3 {
        eprintln!(
            "peers: warning: {name} differs from shears f32 at {}: max |diff| {diff:e} is {rel:e} \
             of the largest |value| {scale:e}",
            shape.label()
        );
    }
}

fn time(target: f64, min_reps: usize, mut f: impl FnMut()) -> (f64, usize) {
    // The first run pays for first-touch page faults and one-time set-up; the second sizes the
    // repetitions.
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-9);
    let reps = ((target / once).ceil() as usize).clamp(min_reps.max(1), 1_000_000);
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[reps / 2].max(1e-9), reps)
}

/// Deterministic inputs in [-0.5, 0.5): a 64-bit LCG (Knuth's MMIX constants), top 24 bits.
fn lcg(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn gflops(shape: &Shape, seconds: f64) -> f64 {
    2.0 * (shape.m * shape.k * shape.n) as f64 / seconds / 1e9
}

/// One JSON object, keys in a fixed order (serde_json's maps would sort them).
fn json(shape: &Shape, t: &Timing, threads: usize, level: &str) -> String {
    let bytes = if t.dtype == "bf16" { 2 } else { 4 };
    let gbps = (shape.k * shape.n * bytes) as f64 / t.seconds / 1e9;
    let fields: [(&str, serde_json::Value); 12] = [
        ("kernel", shape.kernel().into()),
        ("impl", t.name.into()),
        ("dtype", t.dtype.into()),
        ("m", shape.m.into()),
        ("k", shape.k.into()),
        ("n", shape.n.into()),
        ("threads", threads.into()),
        ("level", level.into()),
        ("reps", t.reps.into()),
        ("seconds", t.seconds.into()),
        ("gflops", gflops(shape, t.seconds).into()),
        ("gbps", gbps.into()),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn print_table(results: &[(Shape, Vec<Timing>)], threads: usize, level: &str) {
    println!(
        "GFLOP/s, {threads} threads, shears at {level} (median of repetitions; higher is better)\n"
    );
    println!("| shape | ours GFLOP/s | gemm | matrixmultiply | ours bf16 |");
    println!("|---|---:|---:|---:|---:|");
    for (shape, timings) in results {
        let cell = |name: &str, dtype: &str| {
            timings
                .iter()
                .find(|t| t.name == name && t.dtype == dtype)
                .map_or("—".to_string(), |t| {
                    format!("{:.1}", gflops(shape, t.seconds))
                })
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            shape.label(),
            cell("shears", "f32"),
            cell("gemm", "f32"),
            cell("matrixmultiply", "f32"),
            cell("shears", "bf16"),
        );
    }
    println!(
        "\nx·Wᵀ at M = 1 is bound by reading W: weight GB/s = 2 × GFLOP/s in f32, = GFLOP/s in bf16."
    );
}
