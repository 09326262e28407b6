//! A real OCI registry for the store tests: Debian's `docker-registry` (CNCF distribution 2.8),
//! run without Docker on a loopback port it picks itself, storage in a temp folder, no auth.
//! It has no referrers API, so it exercises the referrers tag fallback.

use crate::support::missing_peer;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "docker-registry";

/// A running registry; killed on drop.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers. `None` (after saying so loudly) when
    /// `docker-registry` is not installed and this is not CI.
    pub fn start() -> Option<Registry> {
        if Command::new(BINARY)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            missing_peer("`docker-registry`", "apt-get install docker-registry");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: toolgate-tests\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log says which port port 0 became; the rest of the log is drained so that the
        // registry never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr
                        .split(['"', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let mut registry = Registry {
            child: Some(child),
            addr: String::new(),
            _dir: dir,
        };
        registry.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("docker-registry did not say where it listens within 20 s");
        let deadline = Instant::now() + Duration::from_secs(20);
        while registry.get("/v2/").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "docker-registry at {} did not answer /v2/",
                registry.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// A GET on the registry (HTTP/1.0, so the body ends at close): status and headers+body.
    pub fn request(&self, method: &str, path: &str, accept: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: {accept}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response))
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, "*/*")
    }

    /// The digest the registry serves for `repository:tag` (its `Docker-Content-Digest`).
    pub fn manifest_digest(&self, repository: &str, tag: &str) -> String {
        let (status, response) = self
            .request(
                "HEAD",
                &format!("/v2/{repository}/manifests/{tag}"),
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            )
            .expect("the registry answers");
        assert_eq!(status, 200, "{response}");
        response
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("docker-content-digest:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_string())
            })
            .expect("a Docker-Content-Digest header")
    }

    /// Stops the registry now (as dropping it does).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
