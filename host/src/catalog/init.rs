//! The starter policy `toolgate init` writes from a catalogue.
//!
//! Fail closed (`default: deny`), then one rule per tool by its class: a read tool is
//! allowed; a write tool is allowed under the per-grant `writes` counter; a destructive tool
//! waits for a person (`require_approval`). `session_create` keeps the seed rule, 30 a minute
//! per grant on its own counter. Reads have no counter, so a burst of writes never locks an
//! agent out of reading. Each rule's `description` says the class and the hints it came from,
//! and the `catalog` key records what was seen, for `toolgate check --against`.

use super::{Catalog, CatalogTool};
use crate::policy::RiskClass;
use serde_json::{json, Map, Value};

/// Calls a grant may make to write tools together, per minute. Generous: the limit is there
/// to stop a runaway loop, not to ration normal work; edit it to the server's real cost.
pub const WRITES_MAX: u64 = 120;

/// The seed rule: `session_create` 30 times a minute per grant.
pub const SESSION_CREATE_MAX: u64 = 30;

/// The policy, as JSON (serialize it with `{:#}`).
pub fn starter_policy(catalog: &Catalog) -> Value {
    let tools: Map<String, Value> = catalog
        .tools
        .iter()
        .map(|t| (t.name.clone(), rule(t)))
        .collect();
    let servers: Vec<String> = catalog
        .servers
        .values()
        .map(|info| {
            format!(
                "{} {}",
                info["name"].as_str().unwrap_or("?"),
                info["version"].as_str().unwrap_or("")
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    let name = if servers.is_empty() {
        "starter policy".to_owned()
    } else {
        format!("starter policy for {}", servers.join(", "))
    };
    json!({
        "version": "1",
        "name": name,
        "description": format!(
            "Written by `toolgate init` from {}: read tools allowed, write tools {WRITES_MAX} a minute per grant together (session_create {SESSION_CREATE_MAX} on its own counter), destructive tools need a person's approval, anything else refused. Edit from here; `toolgate check --against` reports what changed on the server.",
            catalog.source
        ),
        "default": "deny",
        "tools": tools,
        "catalog": catalog.record(),
    })
}

/// One tool's rule by its class.
fn rule(tool: &CatalogTool) -> Value {
    let c = &tool.classification;
    let description = format!("{}: {}", c.class.as_str(), c.why());
    match c.class {
        RiskClass::Read => json!({"description": description}),
        RiskClass::Write if is_session_create(&tool.name) => json!({
            "description": description,
            "limits": [{"counter": "session_create_rate", "window": "minute", "max": SESSION_CREATE_MAX, "scope": "grant"}],
        }),
        RiskClass::Write => json!({
            "description": description,
            "limits": [{"counter": "writes", "window": "minute", "max": WRITES_MAX, "scope": "grant"}],
        }),
        RiskClass::Destructive => json!({
            "description": description,
            "action": "require_approval",
            "reason": format!("{} may destroy or overwrite: a person approves each call", tool.name),
        }),
    }
}

/// `session_create`, or `{prefix}__session_create` behind a gateway of several upstreams.
fn is_session_create(name: &str) -> bool {
    name == "session_create" || name.ends_with(&format!("{}session_create", super::SEPARATOR))
}
