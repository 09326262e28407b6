//! [`Manifest::from_cargo_toml`]: a plugin crate's `Cargo.toml` (`[package]` and
//! `[package.metadata.toolgate]`, the keys listed in the module above) to its manifest.

use super::*;

impl Manifest {
    /// Crate metadata → manifest (build uses it): `[package]` and `[package.metadata.toolgate]`
    /// of `crate_dir/Cargo.toml` (the module doc lists the keys), for a component of `world`
    /// (the one its imports name) that imports `imported`. Declared capabilities that differ
    /// from `imported` are refused; none declared become `imported`, with a warning that gives
    /// the line to add.
    pub fn from_cargo_toml(
        crate_dir: &Path,
        world: World,
        imported: &BTreeSet<Capability>,
    ) -> Result<(Manifest, Vec<String>), ManifestError> {
        let path = crate_dir.join("Cargo.toml");
        let shown = path.display().to_string();
        let fail = |reason: String| ManifestError::Crate {
            path: shown.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| fail(e.to_string()))?;
        let package = doc
            .get("package")
            .and_then(toml::Value::as_table)
            .ok_or_else(|| fail("it has no `[package]`".into()))?;
        let field = |key: &str| inherited(crate_dir, package, key).map_err(&fail);
        let string = |key: &str| -> Result<Option<String>, ManifestError> {
            match field(key)? {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(fail(format!("`package.{key}` is not a string"))),
            }
        };
        let name = string("name")?.ok_or_else(|| fail("`package.name` is missing".into()))?;
        let authors = match field("authors")? {
            None => Vec::new(),
            Some(toml::Value::Array(list)) => list
                .into_iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| fail("`package.authors` is not a list of strings".into()))?,
            Some(_) => return Err(fail("`package.authors` is not a list of strings".into())),
        };
        let empty = toml::Table::new();
        let ours = match package.get("metadata").and_then(|m| m.get("toolgate")) {
            None => &empty,
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(fail("`package.metadata.toolgate` is not a table".into())),
        };
        let mut warnings = Vec::new();
        let mut manifest = Manifest {
            name,
            version: string("version")?.unwrap_or_else(|| "0.0.0".into()),
            description: string("description")?.unwrap_or_default(),
            authors,
            license: string("license")?,
            source: string("repository")?,
            revision: None,
            world: world.name(),
            capabilities: imported.clone(),
            config_schema: None,
            outcomes: None,
        };
        let mut declared = None;
        for (key, value) in ours {
            let text = || {
                value.as_str().map(str::to_owned).ok_or_else(|| {
                    fail(format!("`package.metadata.toolgate.{key}` is not a string"))
                })
            };
            match key.as_str() {
                "capabilities" => declared = Some(capability_list(value).map_err(&fail)?),
                "config-schema" => {
                    manifest.config_schema = Some(config_schema(crate_dir, value, &shown)?)
                }
                "source" => manifest.source = Some(text()?),
                "outcomes" => {
                    manifest.outcomes = Some(value.clone().try_into().map_err(|e| {
                        fail(format!(
                            "`package.metadata.toolgate.outcomes` must be a list of \
                                     `allow`, `deny`, `rate_limited`, `require_approval`: {e}"
                        ))
                    })?)
                }
                "revision" => manifest.revision = Some(text()?),
                other => {
                    return Err(fail(format!(
                        "unknown key `package.metadata.toolgate.{other}`: the keys are \
                         `capabilities`, `config-schema`, `outcomes`, `source` and `revision`"
                    )))
                }
            }
        }
        match declared {
            Some(declared) if &declared != imported => {
                return Err(ManifestError::CapabilitiesDiffer {
                    declared,
                    imported: imported.clone(),
                })
            }
            Some(_) => {}
            None => warnings.push(format!(
                "`{shown}` declares no capabilities; taking `{}` from the component's imports: \
                 add `capabilities = {}` under `[package.metadata.toolgate]`",
                names(imported),
                names(imported)
            )),
        }
        Ok((manifest, warnings))
    }
}

/// `package.<key>` of a crate, following `key.workspace = true` to the workspace's
/// `[workspace.package]`.
fn inherited(
    crate_dir: &Path,
    package: &toml::Table,
    key: &str,
) -> Result<Option<toml::Value>, String> {
    let Some(value) = package.get(key) else {
        return Ok(None);
    };
    let from_workspace = value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(toml::Value::as_bool)
        == Some(true);
    if !from_workspace {
        return Ok(Some(value.clone()));
    }
    let root = workspace_root(crate_dir, package).ok_or_else(|| {
        format!("`package.{key}` is inherited from a workspace, but no workspace was found")
    })?;
    let text = std::fs::read_to_string(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {e}", root.display()))?;
    doc.get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get(key))
        .cloned()
        .map(Some)
        .ok_or_else(|| format!("`{}` has no `workspace.package.{key}`", root.display()))
}

/// The Cargo.toml of the workspace `crate_dir` belongs to: `package.workspace` if set, else
/// the nearest folder above with a `[workspace]` table.
fn workspace_root(crate_dir: &Path, package: &toml::Table) -> Option<PathBuf> {
    if let Some(dir) = package.get("workspace").and_then(toml::Value::as_str) {
        return Some(crate_dir.join(dir).join("Cargo.toml"));
    }
    let absolute = std::path::absolute(crate_dir).ok()?;
    absolute.ancestors().skip(1).find_map(|dir| {
        let candidate = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&candidate).ok()?;
        let doc: toml::Table = text.parse().ok()?;
        doc.contains_key("workspace").then_some(candidate)
    })
}

fn capability_list(value: &toml::Value) -> Result<BTreeSet<Capability>, String> {
    let bad = || {
        format!(
            "`package.metadata.toolgate.capabilities` must be a list of `clock`, `counters` \
             and `log`, not `{value}`"
        )
    };
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|c| c.as_str().and_then(Capability::from_name).ok_or_else(bad))
        .collect()
}

/// `config-schema`: a file beside Cargo.toml, or an inline table.
fn config_schema(
    crate_dir: &Path,
    value: &toml::Value,
    shown: &str,
) -> Result<Value, ManifestError> {
    let schema = match value {
        toml::Value::String(file) => {
            let path = crate_dir.join(file);
            let fail = |reason: String| ManifestError::Crate {
                path: path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
            strict_json(&bytes).map_err(fail)?
        }
        toml::Value::Table(_) => serde_json::to_value(value).map_err(|e| ManifestError::Crate {
            path: shown.to_owned(),
            reason: e.to_string(),
        })?,
        _ => Value::Null,
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ManifestError::Crate {
            path: shown.to_owned(),
            reason: "`package.metadata.toolgate.config-schema` must name a JSON Schema file or \
                     be an inline table"
                .into(),
        });
    }
    Ok(schema)
}
