//! Merging the replies of several upstreams into the one reply the client gets: `initialize`
//! and the listings.

use super::names::{Cursor, Names};
use crate::jsonrpc::Envelope;
use serde_json::{json, Map, Value};

/// One upstream's reply to a merged request.
#[derive(Debug)]
pub enum Answer {
    /// Its `result`.
    Result(Value),
    /// Why there is none: its error's message, or what happened to it.
    Error(String),
}

impl Answer {
    /// The answer a reply carries.
    pub fn of(envelope: &Envelope) -> Self {
        if let Some(result) = envelope.result {
            return match serde_json::from_str(result.get()) {
                Ok(value) => Answer::Result(value),
                Err(e) => Answer::Error(format!("unreadable result: {e}")),
            };
        }
        let message = envelope
            .error
            .and_then(|e| serde_json::from_str::<Value>(e.get()).ok())
            .map(|e| match e.get("message").and_then(Value::as_str) {
                Some(m) => m.to_owned(),
                None => e.to_string(),
            })
            .unwrap_or_else(|| "no result".into());
        Answer::Error(message)
    }
}

/// The `initialize` result for the whole set: the protocol version every upstream speaks
/// (the oldest they answered with), the union of their capabilities, and their instructions
/// under their names. `Err` when no upstream initialized.
pub fn initialize_result(names: &Names, answers: &[(usize, Answer)]) -> Result<Value, String> {
    let mut ready: Vec<(usize, &Value)> = answers
        .iter()
        .filter_map(|(i, a)| match a {
            Answer::Result(r) => Some((*i, r)),
            Answer::Error(_) => None,
        })
        .collect();
    ready.sort_by_key(|(i, _)| *i);
    if ready.is_empty() {
        let why: Vec<String> = answers
            .iter()
            .map(|(i, a)| match a {
                Answer::Error(e) => format!("`{}`: {e}", names.name(*i)),
                Answer::Result(_) => String::new(),
            })
            .collect();
        return Err(format!(
            "no upstream server could be initialized: {}",
            why.join("; ")
        ));
    }
    let version = ready
        .iter()
        .filter_map(|(_, r)| r.get("protocolVersion").and_then(Value::as_str))
        .min()
        .unwrap_or("2025-11-25")
        .to_owned();
    let mut capabilities = Map::new();
    let mut instructions = Vec::new();
    let mut servers = Map::new();
    for (i, result) in &ready {
        if let Some(caps) = result.get("capabilities").and_then(Value::as_object) {
            merge_capabilities(&mut capabilities, caps);
        }
        if let Some(text) = result.get("instructions").and_then(Value::as_str) {
            instructions.push(format!("## {}\n{text}", names.name(*i)));
        }
        servers.insert(
            names.name(*i).to_owned(),
            result.get("serverInfo").cloned().unwrap_or(Value::Null),
        );
    }
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {
            "name": "toolgate",
            "title": format!("toolgate: {}", ready.iter().map(|(i, _)| names.name(*i)).collect::<Vec<_>>().join(", ")),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "_meta": {"toolgate": {"upstreams": servers}},
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n\n"));
    }
    Ok(result)
}

/// Joins one upstream's capabilities into the set's: a capability any upstream has, the set
/// has; a flag (`listChanged`, `subscribe`) any upstream sets, the set sets.
///
/// Only what the router can route is passed on: `tasks` (whose `tasks/get` names no server)
/// and capabilities it does not know are left out.
fn merge_capabilities(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    const ROUTED: [&str; 5] = ["tools", "resources", "prompts", "logging", "completions"];
    for (name, value) in from.iter().filter(|(n, _)| ROUTED.contains(&n.as_str())) {
        match (into.get_mut(name), value) {
            (Some(Value::Object(have)), Value::Object(add)) => {
                for (flag, set) in add {
                    let on = have.get(flag).and_then(Value::as_bool).unwrap_or(false)
                        || set.as_bool().unwrap_or(false);
                    if set.is_boolean() {
                        have.insert(flag.clone(), Value::Bool(on));
                    } else {
                        have.entry(flag.clone()).or_insert_with(|| set.clone());
                    }
                }
            }
            (None, value) => {
                into.insert(name.clone(), value.clone());
            }
            _ => {}
        }
    }
}

/// One page of a listing across upstreams: each answer's items under the upstream's names,
/// and a cursor naming the upstreams with pages left.
pub fn list_page(names: &Names, items: &str, answers: &[(usize, Answer)]) -> Value {
    let mut answers: Vec<&(usize, Answer)> = answers.iter().collect();
    answers.sort_by_key(|(i, _)| *i);
    let mut all = Vec::new();
    let mut cursor = Cursor::default();
    for (upstream, answer) in answers {
        let result = match answer {
            Answer::Result(r) => r,
            Answer::Error(why) => {
                tracing::warn!(
                    upstream = names.name(*upstream),
                    why,
                    "listing left out an upstream"
                );
                continue;
            }
        };
        for item in result
            .get(items)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut item = item.clone();
            let (field, uri) = match items {
                "resources" => ("uri", true),
                "resourceTemplates" => ("uriTemplate", true),
                _ => ("name", false),
            };
            let Some(own) = item.get(field).and_then(Value::as_str) else {
                continue;
            };
            let renamed = if uri {
                names.uri(*upstream, own)
            } else {
                names.tool(*upstream, own)
            };
            item[field] = Value::String(renamed);
            if items == "tools" {
                // The session core names the server in the call record, logs and refusals.
                if !item.get("_meta").is_some_and(Value::is_object) {
                    item["_meta"] = json!({});
                }
                let meta = &mut item["_meta"];
                if !meta.get("toolgate").is_some_and(Value::is_object) {
                    meta["toolgate"] = json!({});
                }
                meta["toolgate"]["upstream"] = Value::from(names.name(*upstream));
            }
            all.push(item);
        }
        if let Some(next) = result.get("nextCursor").and_then(Value::as_str) {
            cursor
                .pages
                .push((names.name(*upstream).to_owned(), Some(next.to_owned())));
        }
    }
    let mut page = json!({ items: all });
    if !cursor.pages.is_empty() {
        page["nextCursor"] = Value::String(cursor.encode());
    }
    page
}
