//! What every verb shares: its result type and exit code, `--threads`, progress bars, JSON lines
//! and the few number formats more than one verb prints.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a verb returns; an error is printed as `error: {e}` and exits with status 1.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The process's exit code for a verb's result, printing the error on stderr.
pub fn exit_code(result: CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `shears inspect x | head` closing the pipe early is not a failure.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `--threads`, for every verb that takes it.
#[derive(Args, Debug, Clone, Copy)]
pub struct ThreadsArg {
    /// Threads to run on [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// The value given, checked: `None` when the flag is absent, an error for 0.
    fn checked(self) -> CliResult<Option<usize>> {
        match self.threads {
            Some(0) => Err("--threads must be at least 1".into()),
            t => Ok(t),
        }
    }

    /// The thread count: the value given, or every core of the machine.
    pub fn count(self) -> CliResult<usize> {
        Ok(self
            .checked()?
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Sizes rayon's global pool, which the model code runs on, when the flag is given (the
    /// default pool has a thread per core). Call it before anything runs on the pool.
    pub fn set_global(self) -> CliResult {
        if let Some(n) = self.checked()? {
            // Fails only when the pool was already built, which cannot happen this early.
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .ok();
        }
        Ok(())
    }
}

/// A pool of `threads` threads of its own, for benchmarks that time kernels on a set count.
pub fn thread_pool(threads: usize) -> CliResult<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

/// A progress bar on stderr counting `len` `unit`s, with the bar's message at the end; hidden
/// unless `show` and stderr is a terminal (so `--json` runs and pipes stay clean).
pub fn progress_bar(len: u64, show: bool, unit: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}] {{msg}}"
        ))
        .expect("a valid template"),
    );
    bar
}

/// One JSON object on one line with the keys in the order given (serde_json's maps would sort
/// them): the form of every `--json` line.
pub fn json_line(fields: &[(&str, serde_json::Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// 1536 → "1.50 KiB".
pub fn human_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// The process's peak resident set size (Linux `VmHWM`), if it can be read.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Writes a directory through `write` into a temporary sibling, then renames it into place (an
/// existing `out` is replaced only once the new one is complete, by one atomic exchange on
/// Linux), so an interrupted run leaves the old output or the new one, never half of one.
pub fn save_atomically(out: &Path, write: impl FnOnce(&Path) -> CliResult) -> CliResult {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = out
        .file_name()
        .ok_or_else(|| format!("--out {} has no directory name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        // One atomic exchange where the system has it: the final name never goes missing.
        if exchange(&tmp, out) {
            std::fs::remove_dir_all(&tmp)?;
            return Ok(());
        }
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old)?;
        std::fs::rename(&tmp, out)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, out)?;
    }
    Ok(())
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); `false` when the system or
/// the file system cannot, so the caller falls back to two renames.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (Ok(ca), Ok(cb)) = (
        CString::new(a.as_os_str().as_bytes()),
        CString::new(b.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    // SAFETY: two valid NUL-terminated paths; the call reads them and touches nothing else.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    rc == 0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_the_key_order() {
        let line = json_line(&[
            ("name", "w".into()),
            ("shape", vec![2usize, 3].into()),
            ("bytes", 24.into()),
            ("none", None::<f64>.into()),
        ]);
        assert_eq!(line, r#"{"name":"w","shape":[2,3],"bytes":24,"none":null}"#);
    }

    #[test]
    fn threads_zero_is_refused_everywhere() {
        let zero = ThreadsArg { threads: Some(0) };
        assert!(zero.count().is_err());
        assert!(zero.set_global().is_err());
        assert_eq!(ThreadsArg { threads: Some(3) }.count().unwrap(), 3);
        assert!(ThreadsArg { threads: None }.count().unwrap() >= 1);
    }

    #[test]
    fn byte_counts_read_as_people_quote_them() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
