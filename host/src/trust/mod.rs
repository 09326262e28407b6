//! Trust: minisign signatures over a plugin's bytes, and the operator's trust file that says
//! whose signatures a plugin needs before the gateway runs it.

use std::path::{Path, PathBuf};

/// One detached minisign signature (the text of a `.minisig` file), with where it was found.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The `.minisig` text.
    pub text: String,
    /// Where it came from (a file's path, or the store), for messages.
    pub origin: String,
}

/// The signatures beside a component file: `FILE.minisig` (where the `minisign` CLI writes
/// one) and `FILE.<anything>.minisig` (where `toolgate plugin sign` writes one per key).
/// Unreadable files are skipped: a signature that cannot be read counts as absent.
pub fn signatures_beside(component: &Path) -> Vec<Signature> {
    let (Some(dir), Some(name)) = (component.parent(), component.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().map(|f| f.to_string_lossy()).is_some_and(|f| {
                f.strip_prefix(&*name).is_some_and(|rest| {
                    rest == ".minisig" || (rest.starts_with('.') && rest.ends_with(".minisig"))
                })
            })
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some(Signature {
                text,
                origin: path.display().to_string(),
            })
        })
        .collect()
}
