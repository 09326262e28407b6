//! A plugin's manifest: who made it, which version, which world it implements, which host
//! capabilities it imports and the JSON Schema of its config, embedded in the component as one
//! top-level custom section, [`SECTION`], holding canonical JSON.
//!
//! It is read statically: from the component's bytes, without compiling or running guest
//! code. A manifest only counts if it is the one [`SECTION`] at the component's top level (a
//! section inside a nested component or module is someone else's), its bytes are the
//! canonical form of what they say (so one manifest has one encoding, and a signature over the
//! component covers exactly one reading of it), its world is one this host implements and the
//! one the component's imports name (`toolgate:policy/*@0.1.0` or `@0.2.0`, see
//! [`capability::World`]), and the capabilities it declares are exactly the component's real
//! `toolgate:policy/*` imports.
//!
//! `toolgate plugin build` writes it from the crate's `Cargo.toml` ([`Manifest::from_cargo_toml`]);
//! `toolgate plugin pack` embeds one into a component built elsewhere ([`embed`]). Both also
//! write the standard metadata fields generic wasm tools show (`wasm-tools metadata show`): the
//! component's name, `processed-by`, and the `authors`, `description`, `licenses`, `source`,
//! `revision` and `version` sections, in the same encoding as `wasm-metadata`'s `oci` feature
//! (written here directly, since that feature would pull an SPDX parser and a compressor in).
//!
//! ## The crate's keys
//! `[package]` gives `name`, `version`, `description`, `authors`, `license` and `repository`
//! (the manifest's `source`), each also as `field.workspace = true`. Under
//! `[package.metadata.toolgate]`:
//! - `capabilities = ["counters", "log"]`: the host interfaces the plugin imports. When given,
//!   the build refuses a component whose real imports differ; when absent, the build takes
//!   them from the component and warns with the line to add.
//! - `config-schema = "config.schema.json"` (a file beside `Cargo.toml`) or an inline table
//!   (`config-schema = { type = "object" }`): the JSON Schema of the plugin's config.
//! - `outcomes = ["allow", "rate_limited"]`: the kinds of decision it returns (`allow`, `deny`,
//!   `rate_limited`, `require_approval`); `toolgate test --coverage` wants a case reaching
//!   each. Default: `allow` and `deny`.
//! - `source = "https://..."`: where its source is, if not `[package] repository`.
//! - `revision = "<commit>"`: the source revision it was built from.

mod cargo;

use crate::capability::{self, Capability, World};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The custom section's name.
pub const SECTION: &str = "toolgate.manifest.v1";

/// What a plugin says it is. Its canonical JSON ([`Manifest::to_canonical_json`]) has sorted
/// keys, no insignificant whitespace, no `null` fields and the capabilities in name order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name (the crate's).
    pub name: String,
    /// Its version.
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// Who wrote it.
    pub authors: Vec<String>,
    /// Its licence, an SPDX expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Where its source is (a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source revision it was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The WIT world it implements (one of [`World::ALL`], by its [`World::name`]).
    pub world: String,
    /// The host interfaces it imports.
    #[serde(serialize_with = "names_in_order")]
    pub capabilities: BTreeSet<Capability>,
    /// The JSON Schema of its config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Value>,
    /// The decisions it can return (`allow`, `deny`, `rate_limited`, `require_approval`):
    /// `toolgate test --coverage` wants a case reaching each. Unsaid: `allow` and `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<BTreeSet<Outcome>>,
}

/// A kind of decision a plugin can return.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call may go ahead.
    Allow,
    /// Refused.
    Deny,
    /// Refused for now: a counter is full.
    RateLimited,
    /// Held for a person.
    RequireApproval,
}

impl Outcome {
    /// Its name, as the decision's verdict is named (`rate_limited`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::RateLimited => "rate_limited",
            Outcome::RequireApproval => "require_approval",
        }
    }
}

impl Manifest {
    /// The decisions it says it can return; `allow` and `deny` when it says nothing.
    pub fn outcomes(&self) -> BTreeSet<Outcome> {
        self.outcomes
            .clone()
            .unwrap_or_else(|| [Outcome::Allow, Outcome::Deny].into())
    }
}

/// Why a manifest could not be read, checked, made or embedded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No manifest section at all.
    #[error("the component has no `{SECTION}` section: build it with `toolgate plugin build`, or embed one with `toolgate plugin pack`")]
    Missing,
    /// More than one at the top level.
    #[error("the component has {count} top-level `{SECTION}` sections and must have exactly one: embed it again with `toolgate plugin pack`, which replaces them")]
    Several {
        /// How many.
        count: usize,
    },
    /// Only inside a nested component or module, which does not count.
    #[error("the component's only `{SECTION}` section is inside a nested component or module, which does not count: embed one at the top level with `toolgate plugin pack`")]
    Nested,
    /// Valid JSON, but not its canonical bytes.
    #[error("the `{SECTION}` section is not canonical JSON (sorted keys, no insignificant whitespace, no null fields, capabilities in name order): embed it again with `toolgate plugin pack`")]
    NotCanonical,
    /// Not JSON, duplicate keys, or not a manifest's fields.
    #[error("the `{SECTION}` section is not a valid manifest: {0}")]
    Json(String),
    /// A world this host does not implement.
    #[error("the plugin implements `{found}`, but this host supports only {supported}: rebuild it against the WIT that `toolgate plugin wit` prints")]
    UnsupportedWorld {
        /// The manifest's world.
        found: String,
        /// Every world this host implements, for the message.
        supported: String,
    },
    /// The manifest names another world than the component's imports do.
    #[error("the manifest says the plugin implements `{declared}` but the component imports the interfaces of `{imported}`: embed a manifest naming `{imported}` (`toolgate plugin build` or `plugin pack` write the component's own)")]
    WorldsDiffer {
        /// What the manifest says.
        declared: World,
        /// What the component's imports name.
        imported: World,
    },
    /// A capability its world does not have (`state` before 0.3.0).
    #[error("the plugin implements `{world}`, which has no `{capability}` interface: rebuild it against a world that has one (`toolgate plugin wit` prints the newest)")]
    NotInWorld {
        /// The capability.
        capability: Capability,
        /// The manifest's world.
        world: World,
    },
    /// The component's imports name no world this host implements, or several.
    #[error("the component's imports name no world toolgate implements: {0}")]
    UnknownWorld(String),
    /// The declared capabilities are not the real imports.
    #[error("the manifest declares the capabilities `{}` but the component imports `{}`: declare exactly its imports, `capabilities = {}` under `[package.metadata.toolgate]` in the plugin's Cargo.toml (or `--capability` for each with `toolgate plugin pack`)", names(declared), names(imported), names(imported))]
    CapabilitiesDiffer {
        /// What the manifest says.
        declared: BTreeSet<Capability>,
        /// What the component imports.
        imported: BTreeSet<Capability>,
    },
    /// The bytes are not a component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The crate's metadata could not be turned into a manifest.
    #[error("cannot take the manifest from `{path}`: {reason}")]
    Crate {
        /// The file (Cargo.toml, or the config schema it names).
        path: String,
        /// Why.
        reason: String,
    },
    /// The standard metadata fields could not be written.
    #[error("cannot write the component's standard metadata fields: {0}")]
    Metadata(String),
}

/// The names of `set` as a JSON list, in name order (`["clock","counters","log"]`): as the
/// manifest writes them, and as a `capabilities = ...` line in Cargo.toml reads.
pub fn capability_names(set: &BTreeSet<Capability>) -> String {
    names(set)
}

fn names(set: &BTreeSet<Capability>) -> String {
    let mut names: Vec<&str> = set.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    serde_json::to_string(&names).unwrap_or_default()
}

fn names_in_order<S: serde::Serializer>(
    set: &BTreeSet<Capability>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut names: Vec<&str> = set.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    serde::Serialize::serialize(&names, serializer)
}

impl Manifest {
    /// Its one encoding: keys sorted by their bytes, no whitespace, `None` fields left out.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("a manifest is always JSON");
        let mut out = Vec::new();
        crate::canonical::write(&value, &mut out);
        out
    }

    /// Reads and checks the one top-level manifest of `component` against its real imports.
    pub fn read(component: &[u8]) -> Result<Manifest, ManifestError> {
        let walk = walk(component)?;
        let mut found = walk
            .sections
            .iter()
            .filter(|s| s.custom.as_deref() == Some(SECTION));
        let section = match (found.next(), found.next()) {
            (None, _) if walk.nested_manifests > 0 => return Err(ManifestError::Nested),
            (None, _) => return Err(ManifestError::Missing),
            (Some(_), Some(_)) => {
                return Err(ManifestError::Several {
                    count: 2 + found.count(),
                })
            }
            (Some(section), None) => section,
        };
        let manifest = Manifest::from_canonical_json(&component[section.data.clone()])?;
        let declared = manifest.world()?;
        // A component that imports nothing of toolgate's names no world: nothing contradicts
        // the manifest here, and it fails to link as a policy when it loads.
        let (imports, exports) =
            capability::component_interface(component).map_err(ManifestError::NotAComponent)?;
        if let Some(imported) = capability::world_of_interface(&imports, &exports)
            .map_err(ManifestError::UnknownWorld)?
        {
            if imported != declared {
                return Err(ManifestError::WorldsDiffer { declared, imported });
            }
        }
        if let Some(&capability) = manifest.capabilities.iter().find(|c| !declared.offers(**c)) {
            return Err(ManifestError::NotInWorld {
                capability,
                world: declared,
            });
        }
        let imported = capability::imported(component).map_err(ManifestError::NotAComponent)?;
        if manifest.capabilities != imported {
            return Err(ManifestError::CapabilitiesDiffer {
                declared: manifest.capabilities,
                imported,
            });
        }
        Ok(manifest)
    }

    /// The manifest `bytes` say, if they are its canonical encoding.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest = Manifest::from_json(bytes)?;
        if manifest.to_canonical_json() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// The manifest `bytes` say, in any JSON layout (a file given to `plugin pack`); duplicate
    /// keys and unknown fields are refused.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let value = strict_json(bytes).map_err(ManifestError::Json)?;
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| ManifestError::Json(e.to_string()))?;
        if manifest.name.is_empty() {
            return Err(ManifestError::Json("`name` is empty".into()));
        }
        Ok(manifest)
    }

    /// The world it names, if this host implements it.
    pub fn world(&self) -> Result<World, ManifestError> {
        World::from_name(&self.world).ok_or_else(|| ManifestError::UnsupportedWorld {
            found: self.world.clone(),
            supported: World::all_names(),
        })
    }
}

/// Returns `component` with `manifest` as its one top-level toolgate section (and the standard
/// wasm-metadata fields), without checking it against the imports (tests use this to make bad
/// components).
pub fn embed(component: &[u8], manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    const REPLACED: [&str; 7] = [
        SECTION,
        "authors",
        "description",
        "licenses",
        "source",
        "revision",
        "version",
    ];
    let walk = walk(component)?;
    let mut stripped = wasm_encoder::Component::HEADER.to_vec();
    for section in &walk.sections {
        if section
            .custom
            .as_deref()
            .is_some_and(|n| REPLACED.contains(&n))
        {
            continue;
        }
        wasm_encoder::Section::append_to(
            &wasm_encoder::RawSection {
                id: section.id,
                data: &component[section.contents.clone()],
            },
            &mut stripped,
        );
    }
    let mut add = wasm_metadata::AddMetadata::default();
    add.name = wasm_metadata::AddMetadataField::Set(manifest.name.clone());
    add.processed_by = vec![("toolgate".into(), env!("CARGO_PKG_VERSION").into())];
    let mut out = add
        .to_wasm(&stripped)
        .map_err(|e| ManifestError::Metadata(format!("{e:#}")))?;
    // The `oci` fields, as wasm-metadata writes them: plain UTF-8 payloads. `source` must be
    // a URL (readers parse it as one), so a `source` that is not one stays only in the manifest.
    let source = manifest
        .source
        .as_deref()
        .filter(|s| url::Url::parse(s).is_ok());
    let authors = (!manifest.authors.is_empty()).then(|| manifest.authors.join(", "));
    let description = (!manifest.description.is_empty()).then_some(manifest.description.as_str());
    let fields = [
        ("authors", authors.as_deref()),
        ("description", description),
        ("licenses", manifest.license.as_deref()),
        ("source", source),
        ("revision", manifest.revision.as_deref()),
        ("version", Some(manifest.version.as_str())),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            out = append_custom_section(&out, name, value.as_bytes());
        }
    }
    Ok(append_custom_section(
        &out,
        SECTION,
        &manifest.to_canonical_json(),
    ))
}

/// Low level, for tests: append a raw custom section with any name/payload at the top level.
pub fn append_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = component.to_vec();
    wasm_encoder::Section::append_to(
        &wasm_encoder::CustomSection {
            name: name.into(),
            data: payload.into(),
        },
        &mut out,
    );
    out
}

/// One top-level section of a component.
struct TopSection {
    id: u8,
    /// Its contents (after the id and the size).
    contents: std::ops::Range<usize>,
    /// A custom section's name.
    custom: Option<String>,
    /// A custom section's payload (after the name).
    data: std::ops::Range<usize>,
}

struct Walk {
    sections: Vec<TopSection>,
    /// Manifest sections inside nested components and modules.
    nested_manifests: usize,
}

/// The top-level sections of `component`, read without running anything.
fn walk(component: &[u8]) -> Result<Walk, ManifestError> {
    use wasmparser::{Parser, Payload};
    let bad = |e: wasmparser::BinaryReaderError| ManifestError::NotAComponent(e.to_string());
    let range = |r: std::ops::Range<u64>| r.start as usize..r.end as usize;
    let mut walk = Walk {
        sections: Vec::new(),
        nested_manifests: 0,
    };
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(bad)?;
        match &payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && *encoding != wasmparser::Encoding::Component {
                    return Err(ManifestError::NotAComponent(
                        "it is a core module: make it a component first (`toolgate plugin build` does)"
                            .into(),
                    ));
                }
                depth += 1;
                continue;
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Payload::CustomSection(c) if depth > 1 && c.name() == SECTION => {
                walk.nested_manifests += 1;
            }
            _ => {}
        }
        if depth != 1 {
            continue;
        }
        if let Some((id, contents)) = payload.as_section() {
            let (custom, data) = match &payload {
                Payload::CustomSection(c) => (Some(c.name().to_owned()), range(c.data_range())),
                _ => (None, 0..0),
            };
            walk.sections.push(TopSection {
                id,
                contents: range(contents),
                custom,
                data,
            });
        }
    }
    Ok(walk)
}

/// JSON that refuses duplicate keys (serde_json keeps the last one silently): how a manifest
/// or a config schema given by file is read.
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    strict_json(bytes)
}

fn strict_json(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(value) = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let Strict(item) = map.next_value()?;
            object.insert(key, item);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests;
