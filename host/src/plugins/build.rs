//! `toolgate plugin build`: a plugin crate to a component, the same way for every crate.
//!
//! The crate is built with cargo for `wasm32-wasip1` (release), and the core module is turned
//! into a component in-process with `wit-component` and the WASI preview1 *reactor* adapter
//! (a rule is a library, not a command), the adapter matching this wasmtime exactly. A crate
//! built for `wasm32-wasip2` is already a component and is copied as it is.
//!
//! The last step, on both paths, embeds the plugin's manifest (`crate::manifest`), made from
//! the crate's `Cargo.toml` and the component's real imports, and reads it back: every
//! component this writes carries a manifest a gateway accepts.

use crate::capability::{self, World};
use crate::manifest::{self, Manifest, ManifestError};
use std::path::{Path, PathBuf};
use std::process::Command;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

const MAGIC: &[u8] = b"\0asm";

/// Whether `bytes` are a WebAssembly component.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == MAGIC && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// Whether `bytes` are a core WebAssembly module.
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == MAGIC && bytes[4..8] == [0x01, 0x00, 0x00, 0x00]
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be run, or failed.
    #[error("cargo build failed for `{crate_dir}`{detail}")]
    Cargo {
        /// The crate.
        crate_dir: String,
        /// What cargo said, if anything.
        detail: String,
    },
    /// The Rust target is not installed for the toolchain that would build the crate.
    #[error("the `{target}` target is not installed for the Rust toolchain that builds `{crate_dir}`: run `rustup target add {target}`")]
    TargetMissing {
        /// The target.
        target: String,
        /// The crate.
        crate_dir: String,
    },
    /// cargo built no cdylib.
    #[error("`{0}` produced no .wasm library: is it a `crate-type = [\"cdylib\"]` crate?")]
    NoArtifact(String),
    /// The module could not be made into a component.
    #[error("cannot turn `{path}` into a component: {reason}")]
    Componentize {
        /// The core module.
        path: String,
        /// Why.
        reason: String,
    },
    /// The crate's manifest could not be made, or does not match the component.
    #[error("`{crate_dir}`: {source}")]
    Manifest {
        /// The crate.
        crate_dir: String,
        /// Why.
        source: ManifestError,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// read or write.
        action: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Whether the toolchain that builds `crate_dir` (rustup picks it from the folder) has the
/// standard library for `target`; `None` if rustc cannot be asked, and then cargo's own error
/// speaks. Without this, a missing target shows as rustc's "can't find crate for `core`"
/// after a long build of the dependencies.
fn target_installed(crate_dir: &Path, target: &str) -> Option<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .current_dir(crate_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    Some(
        sysroot
            .join("lib/rustlib")
            .join(target)
            .join("lib")
            .is_dir(),
    )
}

/// Turns a core module built for `wasm32-wasip1` into a component (wit-component's errors
/// are `anyhow` chains; [`build`] turns one into [`BuildError::Componentize`]).
fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| {
            e.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .map(|e| e.validate(true))
        .and_then(|e| e.encode())
}

/// The world a component's imports name (written into its manifest). One that imports
/// nothing of toolgate's names none: it gets the newest, with a warning, and will not load as
/// a policy (the test plugins of a wrong world are built this way on purpose).
pub fn world_of(component: &[u8]) -> Result<(World, Option<String>), ManifestError> {
    match capability::world_of(component).map_err(ManifestError::UnknownWorld)? {
        Some(world) => Ok((world, None)),
        None => Ok((
            World::LATEST,
            Some(format!(
                "the component imports no `{}` interface, so it implements none of toolgate's worlds ({}) and will not load as a plugin; is it built with wit-bindgen against `toolgate plugin wit`?",
                capability::PACKAGE,
                World::all_names()
            )),
        )),
    }
}

/// A built plugin.
#[derive(Debug)]
pub struct Built {
    /// The component.
    pub path: PathBuf,
    /// The manifest embedded in it.
    pub manifest: Manifest,
    /// What the author should fix, though the build went through (no declared capabilities).
    pub warnings: Vec<String>,
}

/// Builds the plugin crate in `crate_dir` for `target` (`wasm32-wasip1` or `wasm32-wasip2`)
/// and writes the component, with its manifest, to `out` (default: next to cargo's artifact,
/// as `<name>.component.wasm`). Returns the component's path.
pub fn build(crate_dir: &Path, target: &str, out: Option<&Path>) -> Result<PathBuf, BuildError> {
    build_plugin(crate_dir, target, out).map(|built| built.path)
}

/// [`build`], also returning the manifest and the warnings about it.
pub fn build_plugin(
    crate_dir: &Path,
    target: &str,
    out: Option<&Path>,
) -> Result<Built, BuildError> {
    let shown = crate_dir.display().to_string();
    if target_installed(crate_dir, target) == Some(false) {
        return Err(BuildError::TargetMissing {
            target: target.to_owned(),
            crate_dir: shown,
        });
    }
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "--target",
            target,
            "--manifest-path",
        ])
        .arg(crate_dir.join("Cargo.toml"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| BuildError::Cargo {
            crate_dir: shown.clone(),
            detail: format!(": {e}"),
        })?;
    if !output.status.success() {
        return Err(BuildError::Cargo {
            crate_dir: shown,
            detail: String::new(),
        });
    }
    // The last cdylib artifact cargo reports is the crate's own.
    let artifact = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| {
            m["filenames"]
                .as_array()?
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
        })
        .next()
        .ok_or_else(|| BuildError::NoArtifact(shown.clone()))?;
    let io = |action, path: &Path| {
        let path = path.display().to_string();
        move |source| BuildError::Io {
            action,
            path,
            source,
        }
    };
    let bytes = std::fs::read(&artifact).map_err(io("read", &artifact))?;
    let component = if is_component(&bytes) {
        bytes
    } else {
        componentize(&bytes).map_err(|e| BuildError::Componentize {
            path: artifact.display().to_string(),
            reason: format!("{e:#}"),
        })?
    };
    let manifested = |source| BuildError::Manifest {
        crate_dir: shown.clone(),
        source,
    };
    let imported = capability::imported(&component)
        .map_err(|e| manifested(ManifestError::NotAComponent(e)))?;
    let (world, unnamed) = world_of(&component).map_err(manifested)?;
    let (manifest, mut warnings) =
        Manifest::from_cargo_toml(crate_dir, world, &imported).map_err(manifested)?;
    warnings.extend(unnamed);
    let component = manifest::embed(&component, &manifest).map_err(manifested)?;
    // Read back as a gateway will: what this writes, a gateway loads.
    let manifest = Manifest::read(&component).map_err(manifested)?;
    let out = match out {
        Some(out) => out.to_path_buf(),
        None => artifact.with_extension("component.wasm"),
    };
    std::fs::write(&out, component).map_err(io("write", &out))?;
    Ok(Built {
        path: out,
        manifest,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_the_toolchain_lacks_is_named_with_the_line_that_adds_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            target_installed(dir.path(), "wasm32-no-such-target"),
            Some(false)
        );
        let err = build(dir.path(), "wasm32-no-such-target", None).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("run `rustup target add wasm32-no-such-target`"),
            "{err}"
        );
        // The host's own target is always there.
        let host = String::from_utf8(Command::new("rustc").args(["-vV"]).output().unwrap().stdout)
            .unwrap();
        let host = host
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap()
            .to_owned();
        assert_eq!(target_installed(dir.path(), &host), Some(true));
    }
}
