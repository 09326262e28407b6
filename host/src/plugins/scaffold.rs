//! `toolgate plugin new NAME`: a plugin crate that builds as it is, anywhere. It carries its
//! own copy of the WIT (so it needs nothing of this repository), an empty `[workspace]` (so a
//! workspace above it is not inherited), one example rule, a policy that uses it and a case
//! file for `toolgate test`.

use crate::capability::World;
use std::path::{Path, PathBuf};

/// Why a plugin crate was not created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a crate's.
    #[error("`{0}` is not a plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter")]
    BadName(String),
    /// Something is already there.
    #[error("`{0}` already exists; choose another name or folder")]
    Exists(String),
    /// Writing a file failed.
    #[error("cannot write `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
description = "A toolgate plugin"
edition = "2021"
version = "0.1.0"

# The plugin's manifest, which `toolgate plugin build` embeds in the component.
# `capabilities`: the host interfaces the plugin imports ("clock", "counters", "log", "state"); the
# build refuses a component whose real imports differ, so add one here when you use it.
# Optional: `config-schema = "config.schema.json"` (or an inline table), the JSON Schema of
# the plugin's config; `source = "https://..."` (else `repository`); `revision = "<commit>"`.
[package.metadata.toolgate]
capabilities = []

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = "0.63"

# Its own workspace: a workspace folder above it is not inherited.
[workspace]

# Small and fast guests. `strip = "debuginfo"`, not `true`: trap backtraces keep the names.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"
"#;

const LIB_RS: &str = r#"//! `{name}`: a toolgate plugin. The example rule refuses every tool whose name ends with
//! `_delete`; replace it with yours.

// The contract, as `toolgate plugin wit` prints it.
wit_bindgen::generate!({ path: "wit", world: "policy" });

struct Plugin;

impl Guest for Plugin {
    fn evaluate(call: ToolCall, _config: String) -> Decision {
        if call.tool.ends_with("_delete") {
            return Decision::Deny(format!("{} is off limits", call.tool));
        }
        Decision::Allow
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "{name}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Refuses *_delete tools (the scaffold's example rule)".into(),
        }
    }
}

export!(Plugin);
"#;

const POLICY: &str = r#"{
  "version": "1",
  "description": "Every call passes {name}.",
  "default": "allow",
  "plugins": {
    "{name}": {"path": "target/wasm32-wasip1/release/{lib}.component.wasm"}
  },
  "all_tools": {"use": [{"plugin": "{name}"}]}
}
"#;

const CASES: &str = r#"{
  "policy": "policy.json",
  "description": "{name}'s example rule, each way.",
  "steps": [
    {"name": "a delete is refused", "call": {"tool": "files_delete"}, "expect": {"decision": "deny", "reason_contains": "off limits"}},
    {"name": "anything else passes", "call": {"tool": "files_read"}, "expect": "allow"}
  ]
}
"#;

const README: &str = r#"# {name}

A toolgate plugin: a Rust crate compiled to `wasm32-wasip1` and turned into a component.

```sh
rustup target add wasm32-wasip1                       # once
toolgate plugin build .                               # prints the component's path
toolgate test .                                       # runs {name}.cases.json
toolgate run --policy policy.json -- <your MCP server command>
```

- `src/lib.rs` holds the rule; `wit/policy.wit` is the contract (`toolgate plugin wit`).
- After a rebuild, `toolgate plugin build . --pin policy.json` pins the new sha256.
- The build embeds a manifest from `Cargo.toml` (`[package]` and `[package.metadata.toolgate]`):
  when the rule starts using a host import (`counters`, `clock`, `log`), add it to
  `capabilities` there, or the build says what to write.
- The first build compiles wit-bindgen and takes a minute or two; later ones take seconds.
"#;

/// Creates the plugin crate `name` in `parent`; returns its folder.
pub fn new_plugin(parent: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{lib}", &name.replace('-', "_"))
    };
    let cases = format!("{name}.cases.json");
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("wit/policy.wit", World::LATEST.wit().to_owned()),
        ("policy.json", fill(POLICY)),
        (cases.as_str(), fill(CASES)),
        ("README.md", fill(README)),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        let io = |source| ScaffoldError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_crates_and_existing_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Caps", "9lives", "a b", "../up"] {
            assert!(
                matches!(new_plugin(dir.path(), bad), Err(ScaffoldError::BadName(_))),
                "{bad}"
            );
        }
        let made = new_plugin(dir.path(), "no-deletes").unwrap();
        assert!(made.join("wit/policy.wit").is_file());
        // The manifest comes from Cargo.toml, capabilities declared (none, as the rule uses none).
        let (manifest, warnings) = crate::manifest::Manifest::from_cargo_toml(
            &made,
            crate::capability::World::LATEST,
            &Default::default(),
        )
        .unwrap();
        assert_eq!((manifest.name.as_str(), warnings.len()), ("no-deletes", 0));
        let policy = std::fs::read_to_string(made.join("policy.json")).unwrap();
        assert!(
            policy.contains("release/no_deletes.component.wasm"),
            "{policy}"
        );
        assert!(matches!(
            new_plugin(dir.path(), "no-deletes"),
            Err(ScaffoldError::Exists(_))
        ));
    }
}
