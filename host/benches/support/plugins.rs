//! Reference plugins for the benches: built as `toolgate plugin build` builds them, and made
//! into distinct components (distinct digests) of the same plugin. Not every bench uses
//! every function here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Builds the reference plugin `name` (a crate in `guest-policies/`) and returns its path.
pub fn component(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["plugin", "build"])
        .arg(root.join("guest-policies").join(name))
        .output()
        .unwrap();
    assert!(out.status.success(), "plugin build {name} failed");
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(path.lines().last().unwrap())
}

/// The bytes of the reference plugin `name`.
pub fn build(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

/// `bytes` with a custom section appended: a new digest, the same plugin.
pub fn variant(bytes: &[u8], n: u64) -> Vec<u8> {
    let name = b"toolgate-bench";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}
