//! Atomic file writes, the one implementation the workspace uses (checkpoints, configs,
//! tokenizers, fetched files): the data goes to a hidden temporary file in the destination's
//! directory, which is synced and renamed over the destination (and the directory synced so the
//! rename survives a crash). A reader, or a crash, sees the old file or the new one, never half of
//! one; renaming rather than truncating also keeps alive any memory map of the file replaced.
//!
//! ```
//! use shears_tensor::io::write_atomic;
//! use std::io::Write;
//! let path = std::env::temp_dir().join(format!("shears-atomic-doc-{}.json", std::process::id()));
//! write_atomic(&path, |w| w.write_all(b"{}\n"))?;
//! assert_eq!(std::fs::read(&path)?, b"{}\n");
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes the file at `path` atomically: `write` fills a temporary file beside it through a
/// buffered writer, which [`AtomicFile::commit`] then renames over `path`. On any error the
/// temporary file is removed and `path` is left as it was.
///
/// Errors: [`Error::Io`] naming `path`; [`Error::InvalidArgument`] when `path` names no file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    write(&mut file.writer).map_err(|e| io_err(path, e))?;
    file.commit()
}

/// A file being written atomically, for writers that must check what they wrote before it may
/// replace the destination (a downloaded file's digest, say); [`write_atomic`] is the short form.
/// Write through [`std::io::Write`], then [`commit`](AtomicFile::commit). Dropped uncommitted,
/// the temporary file is removed, so an `AtomicFile` never committed is also a scratch file that
/// cleans up after itself.
///
/// The temporary file is `.{name}.{pid}-{n}.part` in the destination's directory.
///
/// ```
/// use shears_tensor::io::AtomicFile;
/// use std::io::Write;
/// let path = std::env::temp_dir().join(format!("shears-atomic-file-{}.txt", std::process::id()));
/// let mut f = AtomicFile::create(&path)?;
/// f.write_all(b"checked before it lands")?;
/// assert!(!path.exists()); // nothing under the final name until the commit
/// f.commit()?;
/// assert_eq!(std::fs::read(&path)?, b"checked before it lands");
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: BufWriter<File>,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file for `path` (whose directory must exist).
    ///
    /// Errors: [`Error::Io`] naming `path`; [`Error::InvalidArgument`] when `path` names no file.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = path.as_ref();
        let Some(name) = path.file_name() else {
            return Err(Error::invalid(
                "save",
                format!("{} does not name a file", path.display()),
            ));
        };
        let dir = parent_dir(path);
        loop {
            let tmp = dir.join(format!(
                ".{}.{}-{}.part",
                name.to_string_lossy(),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(AtomicFile {
                        path: path.to_path_buf(),
                        tmp,
                        writer: BufWriter::new(file),
                        committed: false,
                    })
                }
                // Left by a crashed process that had this pid (containers reuse small pids).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(path, e)),
            }
        }
    }

    /// The temporary file, to read back what was written (after a [`flush`](Write::flush)).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes and syncs the temporary file and renames it over the destination.
    ///
    /// Errors: [`Error::Io`] naming the destination; the temporary file is removed then.
    pub fn commit(mut self) -> Result<()> {
        let result = (|| {
            self.writer.flush()?;
            self.writer.get_ref().sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|e| io_err(&self.path, e))?;
        self.committed = true;
        // Best effort: some platforms and file systems cannot open or sync a directory.
        if let Ok(d) = File::open(parent_dir(&self.path)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shears-io-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn failed_write_leaves_no_temp_file() {
        let dir = scratch_dir("unit");
        let path = dir.join("x.bin");
        let err = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("x.bin"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_the_old_file_only_on_commit() {
        let dir = scratch_dir("commit");
        let path = dir.join("x.txt");
        std::fs::write(&path, b"old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read(f.temp_path()).unwrap(), b"new");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write_atomic(Path::new("/"), |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
}
