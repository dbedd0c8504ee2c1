//! Crash-safe writes, proven by killing: `shears prune --out` (dense and compressed) and
//! `shears finetune`'s training checkpoint are SIGKILLed at many points of a run over an existing
//! output; afterwards the final name holds either the old output, byte for byte, or a complete
//! new one, never half of one, and an interrupted training checkpoint still resumes (or is
//! refused with a clear error). Skips when `shears fetch` has not run.

mod common;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many kill points each scenario tries, spread over the later part of one run (loading the
/// model takes the first half; the writes come at the end).
const KILLS: usize = 4;

/// The `i`-th of [`KILLS`] kill points of a run that took `took`: from 0.5 to 1.1 of it.
fn kill_point(took: Duration, i: usize) -> Duration {
    took.mul_f64(0.5 + 0.6 * (i as f64 + 0.5) / KILLS as f64)
}

fn shears() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shears"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// sha256 of every file in `dir` by name (`None` when `dir` does not exist).
fn digest(dir: &Path) -> Option<BTreeMap<String, String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut out = BTreeMap::new();
    for e in entries {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.insert(e.file_name().to_string_lossy().into_owned(), hex);
    }
    Some(out)
}

/// Runs `args` to the end and returns how long it took.
fn timed(args: &[&str]) -> Duration {
    let t = Instant::now();
    let status = shears().args(args).status().unwrap();
    assert!(status.success(), "{args:?} failed");
    t.elapsed()
}

/// Starts `args`, SIGKILLs it after `after` (if still running) and waits for it.
fn kill_after(args: &[&str], after: Duration) {
    let mut child = shears().args(args).spawn().unwrap();
    let t = Instant::now();
    while t.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().ok(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// Kills `prune --out DIR` runs that would replace `old` with another output, at spread-out
/// points, and checks the final name after each.
fn prune_over_an_existing_output(format: &str) {
    let model = common::default_model();
    if !model.exists() {
        eprintln!("skipping: the default model is missing (run `shears fetch`)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let (m, d) = (model.to_str().unwrap(), dir.to_str().unwrap());
    let run = |sparsity: &str| {
        vec![
            "prune",
            "--model",
            m,
            "--method",
            "magnitude",
            "--sparsity",
            sparsity,
            "--out",
            d,
            "--format",
            format,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let new_args = run("0.6");
    let new_args: Vec<&str> = new_args.iter().map(String::as_str).collect();
    // The complete new output, for comparison, then the old one in place.
    timed(&new_args);
    let new = digest(&dir).unwrap();
    let old_args = run("0.3");
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let took = timed(&old_args);
    let old = digest(&dir).unwrap();
    assert_ne!(old, new);
    let (mut intact, mut replaced) = (0, 0);
    for i in 0..KILLS {
        let at = kill_point(took, i);
        kill_after(&new_args, at);
        let now = digest(&dir).expect("the output vanished");
        if now == old {
            intact += 1;
        } else {
            assert_eq!(
                now, new,
                "kill at {at:?}: the output is neither the old nor the new one"
            );
            replaced += 1;
            // Put the old one back for the next kill.
            timed(&old_args);
        }
    }
    eprintln!(
        "{format}: {intact} kills left the old output, {replaced} found the new one complete"
    );
}

#[test]
fn a_killed_prune_leaves_the_old_dense_output_or_the_new_one() {
    prune_over_an_existing_output("dense");
}

#[test]
fn a_killed_prune_leaves_the_old_compressed_output_or_the_new_one() {
    prune_over_an_existing_output("compressed");
}

#[test]
fn a_killed_finetune_resumes_from_its_last_checkpoint() {
    let d = common::data_dir();
    let (model, train) = (common::default_model(), d.join("lcet10.txt"));
    if !model.exists() || !train.exists() {
        eprintln!("skipping: the default model or corpus is missing (run `shears fetch`)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let student = tmp.path().join("pruned");
    let (m, s) = (model.to_str().unwrap(), student.to_str().unwrap());
    timed(&[
        "prune",
        "--model",
        m,
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--out",
        s,
    ]);
    let out = tmp.path().join("ft");
    let o = out.to_str().unwrap();
    let args = [
        "finetune",
        "--model",
        s,
        "--data",
        train.to_str().unwrap(),
        "--steps",
        "6",
        "--batch",
        "1",
        "--seqlen",
        "16",
        "--warmup",
        "1",
        "--holdout",
        "1",
        "--no-eval",
        "--eval-every",
        "100",
        "--save-every",
        "1",
        "--no-limits",
        "--out",
        o,
    ];
    let straight = tmp.path().join("straight");
    let mut whole: Vec<&str> = args.to_vec();
    let last = whole.len() - 1;
    whole[last] = straight.to_str().unwrap();
    let took = timed(&whole);
    let reference = digest(&straight).unwrap();
    let state = tmp.path().join("ft.train-state");
    let mut resumed_ok = 0;
    for i in 0..KILLS {
        let at = kill_point(took, i);
        kill_after(&args, at);
        if out.exists() {
            // The run finished before the kill.
            assert_eq!(digest(&out).unwrap(), reference);
        } else if state.join("train_state.safetensors").exists() {
            // Resume to the end: the same model as the straight run.
            let mut resume = args.to_vec();
            resume.push("--resume");
            let status = shears().args(&resume).status().unwrap();
            assert!(status.success(), "kill {i}: --resume failed");
            assert_eq!(
                digest(&out).unwrap(),
                reference,
                "kill {i}: resumed != straight"
            );
            resumed_ok += 1;
        }
        std::fs::remove_dir_all(&out).ok();
        std::fs::remove_dir_all(&state).ok();
    }
    eprintln!("finetune: {resumed_ok} of {KILLS} kills resumed from a checkpoint");
}
