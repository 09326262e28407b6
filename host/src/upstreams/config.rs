//! `[[upstreams]]`: a set of upstreams as a `serve` config writes it, shared by `serve` and by
//! `toolgate catalog --config`.
//!
//! ```toml
//! namespace_separator = "__"      # optional
//!
//! [[upstreams]]
//! name = "llmgw"                  # tools: llmgw__session_create
//! command = ["llm-cli-gateway"]
//!
//! [[upstreams]]
//! name = "everything"
//! prefix = "ev"                   # tools: ev__echo (resources: everything+test://...)
//! url = "http://127.0.0.1:3001/mcp"
//! headers = { Authorization = "Bearer ..." }
//! ```

use super::{check_name, Target, UpstreamSet, UpstreamSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One `[[upstreams]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// The upstream's name: a letter, then letters, digits and `-` (at most 32).
    pub name: String,
    /// The tool and prompt prefix, if not the name (MCP tool-name characters).
    #[serde(default)]
    pub prefix: Option<String>,
    /// A Streamable HTTP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// A stdio server's command and arguments: one child per MCP session.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra headers sent to an HTTP upstream (its own credentials, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl UpstreamEntry {
    /// The entry, checked: a valid name and exactly one of `url` and `command`.
    pub fn spec(&self) -> Result<UpstreamSpec, String> {
        check_name(&self.name)?;
        let target = match (&self.url, &self.command) {
            (Some(url), None) if url.starts_with("http://") || url.starts_with("https://") => {
                Target::Url {
                    url: url.clone(),
                    headers: self.headers.clone().into_iter().collect(),
                }
            }
            (None, Some(command)) if !command.is_empty() && self.headers.is_empty() => {
                Target::Command(command.clone())
            }
            _ => {
                return Err(format!(
                    "[[upstreams]] `{}` needs exactly one of an http(s) `url` and a non-empty `command` (headers go with a url)",
                    self.name
                ))
            }
        };
        Ok(UpstreamSpec {
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            target,
        })
    }
}

/// The set named by `entries`, joined with `separator` (default `__`), checked.
pub fn set_of(entries: &[UpstreamEntry], separator: Option<&str>) -> Result<UpstreamSet, String> {
    let specs = entries
        .iter()
        .map(UpstreamEntry::spec)
        .collect::<Result<Vec<_>, _>>()?;
    let mut set = UpstreamSet::new(specs);
    if let Some(separator) = separator {
        set.separator = separator.to_owned();
    }
    set.names()?;
    Ok(set)
}

/// The upstreams of a `serve` config file: its `[[upstreams]]`, or its one `[upstream]` as a
/// set of one named `upstream`. Other keys are not looked at here.
pub fn from_config_file(path: &Path) -> anyhow::Result<UpstreamSet> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        upstreams: Vec<UpstreamEntry>,
        #[serde(default)]
        namespace_separator: Option<String>,
        #[serde(default)]
        upstream: Option<toml::Value>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
    let partial: Partial =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
    let mut entries = partial.upstreams;
    if entries.is_empty() {
        let Some(one) = partial.upstream else {
            anyhow::bail!("`{}` names no upstream", path.display());
        };
        let get = |key: &str| one.get(key).cloned();
        entries.push(UpstreamEntry {
            name: "upstream".into(),
            prefix: None,
            url: get("url").and_then(|v| v.as_str().map(str::to_owned)),
            command: get("command").and_then(|v| v.try_into().ok()),
            headers: get("headers")
                .and_then(|v| v.try_into().ok())
                .unwrap_or_default(),
        });
    }
    set_of(&entries, partial.namespace_separator.as_deref()).map_err(anyhow::Error::msg)
}
