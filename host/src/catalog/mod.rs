//! The catalogue: every tool a server lists, with its risk class and why; a starter policy
//! from it; and what changed since a policy was written from it.
//!
//! - `classify.rs`: one tool's annotations → [`RiskClass`], the open-world flag, and which hint
//!   values were declared and which are the MCP spec's defaults.
//! - `mod.rs` (this file): a [`Catalog`] from a saved `tools/list` reply or from the
//!   [`Listing`]s of live upstreams, named as the gateway exposes them; its table and JSON.
//! - `init.rs`: [`starter_policy`], the policy `toolgate init` writes, recording the catalogue.
//! - `drift.rs`: [`drift`], a policy against a catalogue (`toolgate check --against`).
//!
//! The command line around them is the binary's `catalog_cli.rs`.

mod classify;
mod drift;
mod init;

pub use classify::{classify, title, Classification, Hint, Provenance, HINTS};
pub use drift::{drift, Drift, Reclassified};
pub use init::{starter_policy, SESSION_CREATE_MAX, WRITES_MAX};

use crate::policy::{RecordedCatalog, RecordedTool, RiskClass};
use crate::upstreams::{Listing, UpstreamSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Between an upstream's prefix and its tool's name when several upstreams share a gateway.
pub const SEPARATOR: &str = "__";

/// Why a saved tool list could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// JSON, but neither `{"tools": [...]}` nor `{"result": {"tools": [...]}}`.
    #[error("no `tools` array: expected a `tools/list` result (`{{\"tools\": [...]}}`) or a whole reply (`{{\"result\": {{\"tools\": [...]}}}}`)")]
    NoTools,
    /// A tool without a string `name`.
    #[error("tool {0} has no `name`")]
    Unnamed(usize),
    /// Two tools under one name.
    #[error("tool `{0}` is listed twice")]
    Duplicate(String),
}

/// One tool, as the gateway exposes it.
#[derive(Clone, Debug)]
pub struct CatalogTool {
    /// The name policies call it by: the server's name, or `{prefix}__{name}` among several.
    pub name: String,
    /// The upstream that lists it (`None` from a saved list).
    pub upstream: Option<String>,
    /// `title`, else `annotations.title`.
    pub title: Option<String>,
    /// Its class and why.
    pub classification: Classification,
}

/// Every tool of one or more servers, classified.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Where the list came from, for people (`tools file x.json`, `command ...`).
    pub source: String,
    /// Each upstream's `serverInfo`, by upstream name.
    pub servers: BTreeMap<String, Value>,
    /// The tools, in the servers' order.
    pub tools: Vec<CatalogTool>,
}

impl Catalog {
    /// From a saved `tools/list` result or whole JSON-RPC reply.
    pub fn from_tools_json(text: &str, source: String) -> Result<Self, CatalogError> {
        let value: Value = serde_json::from_str(text)?;
        let tools = value
            .get("tools")
            .or_else(|| value.pointer("/result/tools"))
            .and_then(Value::as_array)
            .ok_or(CatalogError::NoTools)?;
        let mut catalog = Catalog {
            source,
            servers: BTreeMap::new(),
            tools: Vec::new(),
        };
        for (i, tool) in tools.iter().enumerate() {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or(CatalogError::Unnamed(i))?;
            catalog.push(name.to_owned(), None, tool)?;
        }
        Ok(catalog)
    }

    /// From live upstreams' listings: with one upstream the tools keep their names, with
    /// several each is `{prefix}__{name}` (the prefix defaults to the upstream's name), as
    /// the gateway exposes them.
    pub fn from_listings(
        listings: &[Listing],
        specs: &[UpstreamSpec],
        source: String,
    ) -> Result<Self, CatalogError> {
        let mut catalog = Catalog {
            source,
            servers: BTreeMap::new(),
            tools: Vec::new(),
        };
        let several = listings.len() > 1;
        for listing in listings {
            let prefix = specs
                .iter()
                .find(|s| s.name == listing.upstream)
                .and_then(|s| s.prefix.clone())
                .unwrap_or_else(|| listing.upstream.clone());
            if let Some(info) = &listing.server_info {
                catalog
                    .servers
                    .insert(listing.upstream.clone(), server_summary(info));
            }
            for (i, tool) in listing.tools.iter().enumerate() {
                let name = tool
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(CatalogError::Unnamed(i))?;
                let exposed = if several {
                    format!("{prefix}{SEPARATOR}{name}")
                } else {
                    name.to_owned()
                };
                catalog.push(exposed, Some(listing.upstream.clone()), tool)?;
            }
        }
        Ok(catalog)
    }

    fn push(
        &mut self,
        name: String,
        upstream: Option<String>,
        tool: &Value,
    ) -> Result<(), CatalogError> {
        if self.tools.iter().any(|t| t.name == name) {
            return Err(CatalogError::Duplicate(name));
        }
        self.tools.push(CatalogTool {
            name,
            upstream,
            title: title(tool).map(str::to_owned),
            classification: classify(tool),
        });
        Ok(())
    }

    /// The tool called `name`, if listed.
    pub fn tool(&self, name: &str) -> Option<&CatalogTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// What a policy records of it (its `catalog` key).
    pub fn record(&self) -> RecordedCatalog {
        RecordedCatalog {
            source: Some(self.source.clone()),
            servers: self.servers.clone(),
            tools: self
                .tools
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        RecordedTool {
                            class: t.classification.class,
                            open_world: t.classification.open_world,
                            annotations: t.classification.declared.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The catalogue for machines: `{"source", "servers", "tools": [{name, upstream, title,
    /// class, open_world, why, hints: [{name, value, provenance}]}]}`.
    pub fn to_json(&self) -> Value {
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                let c = &t.classification;
                json!({
                    "name": t.name,
                    "upstream": t.upstream,
                    "title": t.title,
                    "class": c.class,
                    "open_world": c.open_world,
                    "why": c.why(),
                    "hints": c.hints,
                    "annotations": c.declared,
                })
            })
            .collect();
        json!({"source": self.source, "servers": self.servers, "tools": tools})
    }

    /// The catalogue for people: name, title, class, open-world and why, one tool a line,
    /// then the count of each class.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .tools
            .iter()
            .map(|t| {
                let c = &t.classification;
                [
                    t.name.clone(),
                    t.title.clone().unwrap_or_else(|| "-".into()),
                    c.class.as_str().to_owned(),
                    if c.open_world { "yes" } else { "no" }.to_owned(),
                    c.why(),
                ]
            })
            .collect();
        let header = ["NAME", "TITLE", "CLASS", "OPEN-WORLD", "WHY"].map(str::to_owned);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter().zip(row) {
                out.push_str(&format!("{cell:<w$}  "));
            }
            out.push_str(&row[4]);
            out.push('\n');
        }
        let count = |class| {
            self.tools
                .iter()
                .filter(|t| t.classification.class == class)
                .count()
        };
        out.push_str(&format!(
            "\n{} tools: {} read, {} write, {} destructive; {} open-world\n",
            self.tools.len(),
            count(RiskClass::Read),
            count(RiskClass::Write),
            count(RiskClass::Destructive),
            self.tools
                .iter()
                .filter(|t| t.classification.open_world)
                .count(),
        ));
        out
    }
}

/// `name` and `version` of a `serverInfo` (the rest, icons and all, is not the policy's).
fn server_summary(info: &Value) -> Value {
    let mut summary = serde_json::Map::new();
    for key in ["name", "version"] {
        if let Some(v) = info.get(key) {
            summary.insert(key.into(), v.clone());
        }
    }
    Value::Object(summary)
}

#[cfg(test)]
mod tests;
