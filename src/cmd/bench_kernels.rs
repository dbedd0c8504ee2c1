//! `shears bench kernels`: kernel speeds next to this machine's limits.
//!
//! ```text
//! shears bench kernels                      # limits probe, then a table of GEMM and x·Wᵀ shapes
//! shears bench kernels --json               # one JSON object per line: "limits" first, then shapes
//! shears bench kernels --quick --threads 1  # fewer repetitions, one thread
//! shears bench kernels --level avx2         # run the kernels (and the FMA probe) at a lower level
//! ```
//!
//! Each shape runs twice to warm up, then enough times to fill about half a second (a tenth with
//! `--quick`); the median repetition is reported. GEMM and batched x·Wᵀ (M ≥ 16) are quoted as a
//! fraction of the FMA peak, decode (M = 1) as a fraction of the read bandwidth, since that is
//! what bounds each; decode cycles through copies of W so that it reads them from memory, not
//! from the last-level cache. Progress goes to stderr, so stdout stays clean for `--json`.

use super::common::{json_line, thread_pool, CliResult, ThreadsArg};
use clap::{Args, ValueEnum};
use half::{bf16, f16};
use shears::kernels::cpu::{self, Level};
use shears::kernels::gemm::{self, MatRef};
use shears::kernels::gemv::{self, WeightElem};
use shears::kernels::limits::{self, Limits};
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

#[derive(Args)]
pub struct KernelsArgs {
    /// Print one JSON object per line: a "limits" object, then one per shape.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Fewer repetitions: about 0.1 s per shape instead of 0.5 s.
    #[arg(long)]
    quick: bool,
    /// SIMD level to run the kernels at [default: the best this CPU has].
    #[arg(long, value_enum)]
    level: Option<LevelArg>,
    /// Tiny shapes and a small bandwidth probe, so tests finish in seconds.
    #[arg(long, hide = true)]
    only_small: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LevelArg {
    Portable,
    Avx2,
    Avx512,
}

impl From<LevelArg> for Level {
    fn from(l: LevelArg) -> Level {
        match l {
            LevelArg::Portable => Level::Portable,
            LevelArg::Avx2 => Level::Avx2,
            LevelArg::Avx512 => Level::Avx512,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    /// `gemm::gemm`, f32, B as [K, N].
    Gemm,
    /// `gemv::matmul_nt`, weights [N, K].
    MatmulNt,
    /// `gemm::bf16::matmul_nt_bf16`: x f32 (rounded to bf16), weights bf16 [N, K], on the bf16
    /// matrix engine (`SHEARS_BF16_ENGINE` picks it).
    GemmBf16,
}

#[derive(Clone, Copy, PartialEq)]
enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
    fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

struct Case {
    kernel: Kernel,
    dtype: DType,
    m: usize,
    k: usize,
    n: usize,
}

impl Case {
    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::Gemm => "gemm",
            Kernel::MatmulNt => "matmul_nt",
            Kernel::GemmBf16 => "gemm_bf16",
        }
    }
    /// Decode-like shapes are bound by reading the weights, the rest by FMA throughput.
    fn bandwidth_bound(&self) -> bool {
        self.kernel == Kernel::MatmulNt && self.m == 1
    }
}

/// GEMM cubes, then x[M, K]·W[N, K]ᵀ at LLaMA-7B projection sizes (K = 4096, N = hidden or MLP
/// width) for decode (M = 1) and small and large batches.
fn cases(small: bool) -> Vec<Case> {
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
    let mut out: Vec<Case> = cubes
        .iter()
        .flat_map(|&s| {
            [(Kernel::Gemm, DType::F32), (Kernel::GemmBf16, DType::BF16)].map(|(kernel, dtype)| {
                Case {
                    kernel,
                    dtype,
                    m: s,
                    k: s,
                    n: s,
                }
            })
        })
        .collect();
    for &m in ms {
        for &n in ns {
            let dtypes: &[DType] = if m == 1 {
                &[DType::F32, DType::BF16, DType::F16]
            } else {
                &[DType::F32, DType::BF16]
            };
            for &dtype in dtypes {
                out.push(Case {
                    kernel: Kernel::MatmulNt,
                    dtype,
                    m,
                    k,
                    n,
                });
            }
        }
    }
    out
}

struct Row {
    seconds: f64,
    reps: usize,
    gflops: f64,
    gbps: f64,
    peak_fraction: f64,
}

pub fn run(args: &KernelsArgs) -> CliResult {
    let threads = args.threads.count()?;
    if let Some(l) = args.level {
        let level = Level::from(l);
        if !cpu::force(Some(level)) {
            let have: Vec<&str> = cpu::available().iter().map(|l| l.name()).collect();
            return Err(format!(
                "this CPU cannot run {} (it has: {})",
                level.name(),
                have.join(", ")
            )
            .into());
        }
    }
    let read_bytes = if args.only_small {
        16 << 20
    } else {
        limits::default_read_bytes()
    };
    eprintln!(
        "bench: probing limits ({threads} threads: f32 FMA peak, reading {} MiB) ...",
        read_bytes >> 20
    );
    let lim = limits::measure_with(threads, read_bytes);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            json_line(&[
                ("kernel", "limits".into()),
                ("fma_gflops", lim.fma_gflops.into()),
                ("read_gbps", lim.read_gbps.into()),
                ("threads", lim.threads.into()),
                ("level", lim.level.name().into()),
                ("cpu", cpu::model_name().into()),
                ("prefetch", cpu::prefetch().name().into()),
                ("bf16_engine", gemm::bf16::engine().name().into()),
            ])
        )?;
    } else {
        writeln!(
            out,
            "limits ({} thread{}, {}, prefetch {}, bf16 engine {}, {}): f32 FMA peak {:.1} \
             GFLOP/s, read bandwidth {:.1} GB/s",
            lim.threads,
            if lim.threads == 1 { "" } else { "s" },
            lim.level.name(),
            cpu::prefetch().name(),
            gemm::bf16::engine().name(),
            cpu::model_name(),
            lim.fma_gflops,
            lim.read_gbps
        )?;
    }
    out.flush()?;

    let (target, min_reps) = if args.quick || args.only_small {
        (0.1, 1)
    } else {
        (0.5, 3)
    };
    let pool = thread_pool(threads)?;
    let mut table = Vec::new();
    for case in cases(args.only_small) {
        eprintln!(
            "bench: {} {} {}x{}x{} ...",
            case.name(),
            case.dtype.name(),
            case.m,
            case.k,
            case.n
        );
        let (seconds, reps) = pool.install(|| time_case(&case, target, min_reps));
        let row = rate(&case, seconds, reps, &lim);
        if args.json {
            writeln!(
                out,
                "{}",
                json_line(&[
                    ("kernel", case.name().into()),
                    ("dtype", case.dtype.name().into()),
                    ("m", case.m.into()),
                    ("k", case.k.into()),
                    ("n", case.n.into()),
                    ("threads", threads.into()),
                    ("level", cpu::level().name().into()),
                    ("reps", row.reps.into()),
                    ("seconds", row.seconds.into()),
                    ("gflops", row.gflops.into()),
                    ("gbps", row.gbps.into()),
                    ("peak_fraction", row.peak_fraction.into()),
                    (
                        "bound",
                        if case.bandwidth_bound() {
                            "read"
                        } else {
                            "fma"
                        }
                        .into()
                    ),
                ])
            )?;
            out.flush()?;
        }
        table.push((case, row));
    }
    if !args.json {
        write_table(&mut out, &table)?;
    }
    out.flush()?;
    Ok(())
}

fn rate(case: &Case, seconds: f64, reps: usize, lim: &Limits) -> Row {
    let flops = 2.0 * (case.m * case.k * case.n) as f64;
    // The weight (GEMM: B) read once; for GEMM this is only a floor on the traffic.
    let weight_bytes = (case.k * case.n * case.dtype.bytes()) as f64;
    let gflops = flops / seconds / 1e9;
    let gbps = weight_bytes / seconds / 1e9;
    let peak_fraction = if case.bandwidth_bound() {
        gbps / lim.read_gbps
    } else {
        gflops / lim.fma_gflops
    };
    Row {
        seconds,
        reps,
        gflops,
        gbps,
        peak_fraction,
    }
}

/// Runs the case twice to warm up, then `max(min_reps, target / second)` times; returns the
/// median seconds and the repetitions.
fn time_case(case: &Case, target: f64, min_reps: usize) -> (f64, usize) {
    let (m, k, n) = (case.m, case.k, case.n);
    let x = lcg(m * k, 1);
    match (case.kernel, case.dtype) {
        (Kernel::Gemm, _) => {
            let b = lcg(k * n, 2);
            let mut c = vec![0f32; m * n];
            time(target, min_reps, || {
                gemm::gemm(
                    m,
                    n,
                    k,
                    MatRef::new(&x, k, 1),
                    MatRef::new(&b, n, 1),
                    &mut c,
                );
                black_box(&mut c);
            })
        }
        (Kernel::GemmBf16, _) => {
            let w: Vec<bf16> = Lcg::new(2).take(n * k).map(bf16::from_f32).collect();
            let mut c = vec![0f32; m * n];
            time(target, min_reps, || {
                gemm::bf16::matmul_nt_bf16(m, n, k, &x, &w, &mut c);
                black_box(&mut c);
            })
        }
        (Kernel::MatmulNt, DType::F32) => time_nt(m, k, n, &x, |v| v, target, min_reps),
        (Kernel::MatmulNt, DType::BF16) => time_nt(m, k, n, &x, bf16::from_f32, target, min_reps),
        (Kernel::MatmulNt, DType::F16) => time_nt(m, k, n, &x, f16::from_f32, target, min_reps),
    }
}

/// Decode reads each layer's weights once per token, long after they left the cache; timing one
/// small W over and over would measure the last-level cache instead (a 4096 × 4096 bf16 W is
/// 32 MiB). So M = 1 cycles through copies of W that together span at least this many bytes.
const COLD_BYTES: usize = 256 << 20;

fn time_nt<W: WeightElem>(
    m: usize,
    k: usize,
    n: usize,
    x: &[f32],
    conv: fn(f32) -> W,
    target: f64,
    min_reps: usize,
) -> (f64, usize) {
    let w: Vec<W> = Lcg::new(2).take(n * k).map(conv).collect();
    let copies = if m == 1 {
        COLD_BYTES
            .div_ceil((n * k * std::mem::size_of::<W>()).max(1))
            .clamp(1, 64)
    } else {
        1
    };
    let ws: Vec<Vec<W>> = std::iter::repeat_n(w, copies).collect();
    let mut y = vec![0f32; m * n];
    let mut next = 0;
    time(target, min_reps, || {
        gemv::matmul_nt(m, n, k, x, &ws[next % copies], &mut y);
        next += 1;
        black_box(&mut y);
    })
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
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
}

impl Iterator for Lcg {
    type Item = f32;
    fn next(&mut self) -> Option<f32> {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Some((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
    }
}

fn lcg(len: usize, seed: u64) -> Vec<f32> {
    Lcg::new(seed).take(len).collect()
}

fn write_table(out: &mut impl Write, rows: &[(Case, Row)]) -> std::io::Result<()> {
    let titles = [
        "kernel", "dtype", "m", "k", "n", "time", "GFLOP/s", "GB/s", "of peak",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|(c, r)| {
            [
                c.name().to_string(),
                c.dtype.name().to_string(),
                c.m.to_string(),
                c.k.to_string(),
                c.n.to_string(),
                human_seconds(r.seconds),
                format!("{:.1}", r.gflops),
                format!("{:.1}", r.gbps),
                format!(
                    "{:.1}% {}",
                    100.0 * r.peak_fraction,
                    if c.bandwidth_bound() { "read" } else { "fma" }
                ),
            ]
        })
        .collect();
    let mut width = titles.map(str::len);
    for row in &cells {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (cell, w)) in row.iter().zip(width).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Names left-aligned, numbers right-aligned.
            if i < 2 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &titles)?;
    for row in &cells {
        let row: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &row)?;
    }
    Ok(())
}

/// 0.000_123_4 → "123.4 µs".
fn human_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}
