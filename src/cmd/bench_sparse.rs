//! `shears bench sparse`: sparse weight products against the dense kernel, side by side in one
//! run.
//!
//! ```text
//! shears bench sparse                 # table: shapes × batch × format × dtype, speedup over dense
//! shears bench sparse --json          # one JSON object per line
//! shears bench sparse --quick         # fewer repetitions
//! ```
//!
//! For every case the dense `x·Wᵀ` (`gemv::matmul_nt`, same value dtype) and the sparse product
//! run alternately on the same inputs. Each cycles through enough copies of its weight to read
//! 256 MiB per pass, so batch-1 products stream their weights from memory rather than from the
//! last-level cache, as in a real decode. Masks are random with the given density per row (2:4:
//! two random positions of every four).

use super::common::{json_line, thread_pool, CliResult, ThreadsArg};
use clap::Args;
use shears::kernels::limits;
use shears::tensor::sparse::{Bitmask, Csr, NmSparse, SparseTensor};
use shears::tensor::{DType, Rng, Tensor};
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

#[derive(Args)]
pub struct SparseArgs {
    /// Print one JSON object per line (format, sparsity, batch, rows, cols, dtype, seconds,
    /// dense_seconds, speedup, ...), after a "limits" object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: ThreadsArg,
    /// Fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Only these batch sizes [default: 1 8 64].
    #[arg(long, num_args = 1..)]
    batch: Vec<usize>,
    /// Tiny shapes, so tests finish in seconds.
    #[arg(long, hide = true)]
    only_small: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Bitmask(f64),
    Nm(usize, usize),
    Csr(f64),
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Bitmask(_) => "bitmask",
            Format::Nm(..) => "nm",
            Format::Csr(_) => "csr",
        }
    }
    fn sparsity(self) -> f64 {
        match self {
            Format::Bitmask(s) | Format::Csr(s) => s,
            Format::Nm(n, m) => 1.0 - n as f64 / m as f64,
        }
    }
    fn label(self) -> String {
        match self {
            Format::Nm(n, m) => format!("{n}:{m}"),
            other => format!("{:.0}%", other.sparsity() * 100.0),
        }
    }
}

/// A random `[rows, cols]` keep-mask for `format`.
fn mask(format: Format, rows: usize, cols: usize, rng: &mut Rng) -> Vec<bool> {
    match format {
        Format::Bitmask(s) | Format::Csr(s) => {
            (0..rows * cols).map(|_| rng.uniform() >= s).collect()
        }
        Format::Nm(n, m) => {
            let mut out = vec![false; rows * cols];
            for g in out.chunks_mut(m) {
                // Keep n of the m positions: a partial Fisher-Yates shuffle.
                let mut idx: Vec<usize> = (0..g.len()).collect();
                for i in 0..n.min(g.len()) {
                    let j = i + rng.below((g.len() - i) as u64) as usize;
                    idx.swap(i, j);
                    g[idx[i]] = true;
                }
            }
            out
        }
    }
}

fn sparse_of(format: Format, w: &Tensor, mask: &[bool]) -> shears::tensor::Result<SparseTensor> {
    Ok(match format {
        Format::Bitmask(_) => SparseTensor::Bitmask(Bitmask::from_dense_mask(w, mask)?),
        Format::Nm(n, m) => SparseTensor::Nm(NmSparse::from_dense_mask(w, mask, n, m)?),
        Format::Csr(_) => SparseTensor::Csr(Csr::from_dense_mask(w, mask)?),
    })
}

/// A copy of `t` with its own storage (a clone would share it, and the cache would hold it).
fn deep_copy(t: &Tensor) -> shears::tensor::Result<Tensor> {
    match t.dtype() {
        DType::BF16 => Tensor::from_slice(t.as_slice::<half::bf16>()?, t.dims()),
        DType::F16 => Tensor::from_slice(t.as_slice::<half::f16>()?, t.dims()),
        _ => Tensor::from_slice(t.as_slice::<f32>()?, t.dims()),
    }
}

/// Median seconds per call of `f(copy)` over passes through `copies` copies.
fn time(copies: usize, target: f64, mut f: impl FnMut(usize)) -> f64 {
    for c in 0..copies.min(2) {
        f(c);
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed().as_secs_f64() < target && samples.len() < 200) {
        let t = Instant::now();
        for c in 0..copies {
            f(c);
        }
        samples.push(t.elapsed().as_secs_f64() / copies as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub fn run(args: &SparseArgs) -> CliResult {
    let threads = args.threads.count()?;
    let read_bytes = if args.only_small {
        16 << 20
    } else {
        limits::default_read_bytes()
    };
    eprintln!("bench sparse: probing limits ({threads} threads) ...");
    let lim = limits::measure_with(threads, read_bytes);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            // Keys in alphabetical order, as this line has always printed them.
            json_line(&[
                ("fma_gflops", lim.fma_gflops.into()),
                ("kind", "limits".into()),
                ("level", lim.level.name().into()),
                ("read_gbps", lim.read_gbps.into()),
                ("threads", lim.threads.into()),
            ])
        )?;
    } else {
        writeln!(
            out,
            "limits ({} threads, {}): f32 FMA peak {:.1} GFLOP/s, read bandwidth {:.1} GB/s",
            lim.threads,
            lim.level.name(),
            lim.fma_gflops,
            lim.read_gbps
        )?;
        writeln!(
            out,
            "{:>11} {:>6} {:>5} {:>8} {:>4} {:>10} {:>10} {:>8} {:>9}",
            "shape",
            "format",
            "batch",
            "sparsity",
            "dt",
            "sparse µs",
            "dense µs",
            "speedup",
            "GB/s"
        )?;
    }
    let shapes: &[(usize, usize)] = if args.only_small {
        &[(64, 96), (37, 53)]
    } else {
        &[
            (576, 1536),
            (1536, 576),
            (4096, 4096),
            (11008, 4096),
            (4096, 11008),
        ]
    };
    let batches: Vec<usize> = if args.batch.is_empty() {
        vec![1, 8, 64]
    } else {
        args.batch.clone()
    };
    let formats = [
        Format::Bitmask(0.5),
        Format::Bitmask(0.7),
        Format::Bitmask(0.9),
        Format::Nm(2, 4),
        Format::Csr(0.7),
    ];
    let target = if args.quick || args.only_small {
        0.1
    } else {
        0.4
    };
    let pool = thread_pool(threads)?;
    let mut rng = Rng::new(7);
    for &(rows, cols) in shapes {
        let dense_f32 = Tensor::randn([rows, cols], 0.0, 0.02, DType::F32, 1)?;
        for dtype in [DType::F32, DType::BF16] {
            let dense = dense_f32.to_dtype(dtype)?;
            let bytes = rows * cols * dtype.size_in_bytes();
            let copies = if args.only_small {
                2
            } else {
                (256usize << 20).div_ceil(bytes).max(1)
            };
            let dense_copies: Vec<Tensor> = (0..copies)
                .map(|_| deep_copy(&dense))
                .collect::<Result<_, _>>()?;
            for format in formats {
                if matches!(format, Format::Csr(_)) && dtype != DType::F32 {
                    continue;
                }
                if matches!(format, Format::Nm(_, m) if cols % m != 0) {
                    continue;
                }
                let m = mask(format, rows, cols, &mut rng);
                let sparse = sparse_of(format, &dense, &m)?;
                // Built afresh each time: every copy owns its own buffers.
                let sparse_copies: Vec<SparseTensor> = (0..copies)
                    .map(|_| sparse_of(format, &dense, &m))
                    .collect::<Result<_, _>>()?;
                let sbytes = sparse.weight_bytes();
                for &batch in &batches {
                    let x: Vec<f32> = (0..batch * cols)
                        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                        .collect();
                    let mut y = vec![0f32; batch * rows];
                    let (ts, td) = pool.install(|| {
                        let td = time(copies, target, |c| {
                            dense_nt(&dense_copies[c], black_box(&x), batch, &mut y)
                        });
                        let ts = time(copies, target, |c| {
                            sparse_copies[c].matmul_nt_slice(black_box(&x), batch, &mut y)
                        });
                        (ts, td)
                    });
                    let speedup = td / ts;
                    let gbps = sbytes as f64 / ts / 1e9;
                    if args.json {
                        writeln!(
                            out,
                            "{}",
                            // Keys in alphabetical order, as these lines have always printed them.
                            json_line(&[
                                ("batch", batch.into()),
                                ("cols", cols.into()),
                                ("dense_bytes", bytes.into()),
                                ("dense_gbps", (bytes as f64 / td / 1e9).into()),
                                ("dense_seconds", td.into()),
                                ("dtype", dtype.as_str().into()),
                                ("format", format.name().into()),
                                ("pattern", format.label().into()),
                                ("rows", rows.into()),
                                ("seconds", ts.into()),
                                ("sparse_bytes", sbytes.into()),
                                ("sparse_gbps", gbps.into()),
                                ("sparsity", format.sparsity().into()),
                                ("speedup", speedup.into()),
                                ("threads", threads.into()),
                            ])
                        )?;
                    } else {
                        writeln!(
                            out,
                            "{:>11} {:>6} {:>5} {:>8} {:>4} {:>10.1} {:>10.1} {:>7.2}× {:>9.1}",
                            format!("{rows}x{cols}"),
                            format.name(),
                            batch,
                            format.label(),
                            dtype.as_str(),
                            ts * 1e6,
                            td * 1e6,
                            speedup,
                            gbps
                        )?;
                    }
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

/// `y[m, n] = x[m, k] · Wᵀ` with the dense kernel at `w`'s storage dtype (f32 or bf16).
fn dense_nt(w: &Tensor, x: &[f32], m: usize, y: &mut [f32]) {
    use shears::kernels::gemv::matmul_nt;
    let (n, k) = (w.dims()[0], w.dims()[1]);
    match w.dtype() {
        DType::BF16 => matmul_nt(m, n, k, x, w.as_slice::<half::bf16>().unwrap(), y),
        DType::F16 => matmul_nt(m, n, k, x, w.as_slice::<half::f16>().unwrap(), y),
        _ => matmul_nt(m, n, k, x, w.as_slice::<f32>().unwrap(), y),
    }
}
