//! Members out of the two archive kinds PyPI serves: wheels (zip) and sdists (tar.gz). Each
//! member wanted is copied, hashed as it goes, into an [`AtomicFile`] beside its destination;
//! the caller commits it once its size and digest are checked.

use super::{copy_hashing, dest_path, fetch_err, io_err, Asset, CopyError};
use crate::tensor::io::AtomicFile;
use crate::tensor::Result;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// A verified-later extraction: the uncommitted file, its size and sha256.
pub(super) type Extracted = Option<(AtomicFile, u64, String)>;

/// Each asset's member of the zip file `archive` (downloaded from `url`), in `assets` order.
pub(super) fn extract_zip(
    archive: &Path,
    dir: &Path,
    url: &str,
    assets: &[&Asset],
) -> Result<Vec<Extracted>> {
    let file = File::open(archive).map_err(|e| io_err(archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(url, format!("not a valid zip archive: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(assets.len());
    for a in assets {
        let Some(name) = names.iter().find(|n| member_matches(a.member, n)) else {
            out.push(None);
            continue;
        };
        let mut entry = zip
            .by_name(name)
            .map_err(|e| fetch_err(url, format!("member {name}: {e}")))?;
        if !entry.is_file() {
            out.push(None);
            continue;
        }
        out.push(Some(extract_one(&mut entry, dir, a, url, name)?));
    }
    Ok(out)
}

/// Each asset's member of the .tar.gz file `archive` (downloaded from `url`), in `assets` order;
/// one pass over the archive.
pub(super) fn extract_tar_gz(
    archive: &Path,
    dir: &Path,
    url: &str,
    assets: &[&Asset],
) -> Result<Vec<Extracted>> {
    let file = File::open(archive).map_err(|e| io_err(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut out: Vec<Extracted> = assets.iter().map(|_| None).collect();
    let bad = |e: std::io::Error| fetch_err(url, format!("not a valid .tar.gz archive: {e}"));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        // One pass over the archive: each asset takes the first member that matches it.
        for (k, a) in assets.iter().enumerate() {
            if out[k].is_none() && member_matches(a.member, &name) {
                out[k] = Some(extract_one(&mut entry, dir, a, url, &name)?);
                break;
            }
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(out)
}

/// Copies one member (at most one byte past the pinned size) next to its destination.
fn extract_one(
    reader: &mut impl Read,
    dir: &Path,
    a: &Asset,
    url: &str,
    name: &str,
) -> Result<(AtomicFile, u64, String)> {
    let dest = dest_path(dir, a.dest);
    let parent = dest.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let mut file = AtomicFile::create(&dest)?;
    let (bytes, sha256) =
        copy_hashing(&mut reader.take(a.size + 1), &mut file, None).map_err(|e| match e {
            CopyError::Read(e) => fetch_err(url, format!("member {name}: {e}")),
            CopyError::Write(e) => io_err(file.temp_path(), e),
        })?;
    Ok((file, bytes, sha256))
}

/// `pattern` matches `name` segment by segment; `*` matches any run of characters within one
/// segment. A leading `./` of `name` (as some tar files write) is ignored.
fn member_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_prefix("./").unwrap_or(name);
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| wildcard(p.as_bytes(), n.as_bytes()))
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    // Greedy match with backtracking to the last `*` (linear for one-star patterns).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == s[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_globs_stay_within_one_segment() {
        assert!(member_matches(
            "*/tests/testdata/alice29.txt",
            "brotli-1.2.1/tests/testdata/alice29.txt"
        ));
        assert!(member_matches(
            "*/tests/testdata/alice29.txt",
            "./brotli-1.2.1/tests/testdata/alice29.txt"
        ));
        assert!(!member_matches(
            "*/tests/testdata/alice29.txt",
            "a/b/tests/testdata/alice29.txt"
        ));
        assert!(!member_matches(
            "*/tests/testdata/alice29.txt",
            "b/tests/testdata/alice29.txt.orig"
        ));
        assert!(member_matches("a/*.gguf", "a/x.Q4_1.gguf"));
        assert!(!member_matches("a/*.gguf", "a/x.gguf.part"));
        assert!(member_matches("x*y*z", "xaaybbz"));
        assert!(!member_matches("x*y*z", "xaaybb"));
        assert!(member_matches("exact", "exact"));
        assert!(!member_matches("exact", "exacto"));
    }
}
