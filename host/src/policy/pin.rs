//! Pinning a rebuilt plugin: `toolgate plugin build --pin POLICY` writes the component's new
//! sha256 into every plugin entry of the policy whose `path` is that component.
//!
//! The text is edited in place, at the spans of the values ([`Spans`]): the rest of the file
//! (its layout, key order and other entries) stays byte for byte as the author wrote it.

use super::spans::Spans;
use std::path::{Path, PathBuf};

/// Why a policy could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The policy is not JSON with a `plugins` object of entries with a `path`.
    #[error("`{file}` is not a policy whose plugins can be read: {reason}")]
    Unreadable {
        /// The policy file.
        file: String,
        /// Why.
        reason: String,
    },
    /// No plugin entry names the component.
    #[error("no plugin entry of `{file}` has `path` `{component}`")]
    NotUsed {
        /// The policy file.
        file: String,
        /// The component.
        component: String,
    },
}

/// `text` (the policy at `file`, whose plugin paths are relative to `base`) with `sha256` set
/// to `digest` in every plugin entry whose `path` is `component`, and the names of those
/// entries. An entry without `sha256` gets one right after its `path`.
pub fn pin_plugin(
    text: &str,
    file: &str,
    base: &Path,
    component: &Path,
    digest: &str,
) -> Result<(String, Vec<String>), PinError> {
    let unreadable = |reason: String| PinError::Unreadable {
        file: file.to_owned(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
    let target = canonical(component);
    let spans = Spans::of(text);
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut pinned = Vec::new();
    let plugins = doc.get("plugins").and_then(|p| p.as_object());
    for (name, spec) in plugins.into_iter().flatten() {
        let Some(path) = spec.get("path").and_then(|p| p.as_str()) else {
            continue;
        };
        if canonical(&base.join(path)) != target {
            continue;
        }
        let quoted = format!("\"{digest}\"");
        let at = |member: &str| spans.get(&format!("plugins.{name}.{member}"));
        match (at("sha256"), at("path")) {
            (Some(sha), _) => edits.push((sha.value.clone(), quoted)),
            (None, Some(path)) => {
                let end = path.value.end;
                edits.push((end..end, format!(", \"sha256\": {quoted}")));
            }
            (None, None) => {
                return Err(unreadable(format!(
                    "cannot find plugin `{name}` in the text"
                )))
            }
        }
        pinned.push(name.clone());
    }
    if pinned.is_empty() {
        return Err(PinError::NotUsed {
            file: file.to_owned(),
            component: component.display().to_string(),
        });
    }
    // From the end, so that each edit's span is still where the scan found it.
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = text.to_owned();
    for (range, replacement) in edits {
        out.replace_range(range, &replacement);
    }
    Ok((out, pinned))
}

/// The path with links and `..` resolved when it exists, else as given.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_replaced_or_added_and_nothing_else_moves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        let component = dir.path().join("p/rate.wasm");
        std::fs::write(&component, b"x").unwrap();
        let text = r#"{
  "version": "1",
  "plugins": {
    "a": {"path": "p/rate.wasm", "sha256": "00",   "isolation": "pooled"},
    "b": {"path": "./p/../p/rate.wasm"},
    "c": {"path": "p/other.wasm", "sha256": "11"}
  }
}"#;
        let (out, pinned) =
            pin_plugin(text, "policy.json", dir.path(), &component, "ab12").unwrap();
        assert_eq!(pinned, ["a", "b"]);
        assert_eq!(
            out,
            r#"{
  "version": "1",
  "plugins": {
    "a": {"path": "p/rate.wasm", "sha256": "ab12",   "isolation": "pooled"},
    "b": {"path": "./p/../p/rate.wasm", "sha256": "ab12"},
    "c": {"path": "p/other.wasm", "sha256": "11"}
  }
}"#
        );
    }

    #[test]
    fn a_policy_that_does_not_use_the_component_is_an_error() {
        let text = r#"{"version": "1", "plugins": {"c": {"path": "other.wasm"}}}"#;
        let err =
            pin_plugin(text, "p.json", Path::new("."), Path::new("rate.wasm"), "ab").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no plugin entry of `p.json` has `path` `rate.wasm`"
        );
        let err =
            pin_plugin("{", "p.json", Path::new("."), Path::new("rate.wasm"), "ab").unwrap_err();
        assert!(matches!(err, PinError::Unreadable { .. }), "{err}");
    }
}
