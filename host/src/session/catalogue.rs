//! The upstream's tools, as its `tools/list` replies show them.
//!
//! Every reply that carries `result.tools` is filtered, page by page, so that a tool the
//! policy hides never reaches the client, and a list that cannot be read the way every client
//! would read it becomes an error rather than pass unfiltered. The pages of a listing are
//! gathered into a catalogue: once it is complete, a call to a tool it does not name is
//! "unknown tool", and each listed tool's annotations and `inputSchema` are known. The schema
//! checks a call's arguments before any counter unit is spent ([`SchemaChecks`] turns that off
//! per tool), and its property names, with the keys the policy's conditions read, are the
//! argument keys that a case-insensitive server must not be able to read another way.

use super::{truncated, Session};
use crate::call::ToolAnnotations;
use crate::jsonrpc::{self, Envelope};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

/// Which tools' arguments are checked against their advertised `inputSchema`.
#[derive(Clone, Debug, Default)]
pub struct SchemaChecks {
    /// No tool's arguments are checked (a server whose schemas are known to be wrong).
    pub(crate) off: bool,
    /// These tools' arguments are not checked.
    pub(crate) skip: HashSet<String>,
}

impl SchemaChecks {
    /// From the words of `--skip-schema` / `skip_schema`: tool names, or `*` for all.
    pub fn skipping(tools: impl IntoIterator<Item = String>) -> Self {
        let mut checks = Self::default();
        for tool in tools {
            if tool == "*" {
                checks.off = true;
            } else {
                checks.skip.insert(tool);
            }
        }
        checks
    }

    pub(super) fn applies_to(&self, tool: &str) -> bool {
        !self.off && !self.skip.contains(tool)
    }
}

/// What the gateway knows of one tool from the upstream's listing.
#[derive(Default)]
pub(super) struct ToolInfo {
    pub(super) annotations: Option<ToolAnnotations>,
    /// The upstream server it belongs to, when a set of upstreams listed it
    /// (`_meta.toolgate.upstream`, written by [`crate::upstreams`]).
    pub(super) upstream: Option<Arc<str>>,
    input_schema: Option<Value>,
    /// The property names of `input_schema`, at any depth.
    schema_keys: jsonrpc::Spellings,
    /// Compiled on the first call that needs it; `None` when the schema does not compile.
    validator: OnceLock<Option<jsonschema::Validator>>,
}

impl std::fmt::Debug for ToolInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolInfo")
            .field("annotations", &self.annotations)
            .field("input_schema", &self.input_schema.is_some())
            .finish()
    }
}

/// The upstream's tools, as its `tools/list` replies showed them.
///
/// Once a complete listing has passed, a call to a tool that is not in it is answered
/// "unknown tool" here, the same answer a hidden tool gets: a hidden tool cannot be told apart
/// from one that does not exist. Until then (and after `notifications/tools/list_changed`)
/// such calls go upstream, which answers for itself.
#[derive(Debug, Default)]
pub(super) enum Catalogue {
    #[default]
    Unknown,
    /// Pages seen so far of a listing that has a `nextCursor`.
    Partial(Tools),
    Complete(Tools),
}

pub(super) type Tools = HashMap<String, Arc<ToolInfo>>;

/// Whether a `tools/list` request asks for a later page.
pub(super) fn has_cursor(params: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct ListParams {
        #[serde(default)]
        cursor: Option<Value>,
    }
    params
        .and_then(|p| {
            serde_json::from_str::<Option<ListParams>>(p.get())
                .ok()
                .flatten()
        })
        .and_then(|p| p.cursor)
        .is_some_and(|c| !c.is_null())
}

/// Whether a reply's `result` carries a tool list, read the way any client might read it.
pub(super) enum Listing {
    No,
    /// `result.tools`, exactly once and an array.
    Tools,
    /// A key that some client would read as `tools` but that is not plainly one: refused.
    Ambiguous,
}

/// How a reply's `result` carries a tool list, if it does.
pub(super) fn listing(result: &RawValue) -> Listing {
    let text = result.get().as_bytes();
    if text.first() != Some(&b'{') {
        return Listing::No;
    }
    // Fast path: no `tools` in any case, no `\u` escape and no `ſ` means no key can read as
    // `tools` (other escapes cannot spell a letter).
    // One pass for the three (every reply is looked at: one-shot `memmem` searches cost more
    // than the scan itself on short replies).
    let next_is = |at: usize, byte: u8| text.get(at + 1) == Some(&byte);
    let maybe = memchr::memchr_iter(0xC5, text).any(|at| next_is(at, 0xBF)) // `ſ`
        || memchr::memchr3_iter(b'\\', b't', b'T', text).any(|at| match text[at] {
            b'\\' => next_is(at, b'u'),
            _ => text
                .get(at..at + 5)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"tools")),
        });
    if !maybe {
        return Listing::No;
    }
    let Ok(keys) = serde_json::from_str::<TopKeys>(result.get()) else {
        return Listing::Ambiguous;
    };
    let mut matches = keys
        .0
        .into_iter()
        .filter(|(key, _)| jsonrpc::fold_key(key) == "tools");
    match (matches.next(), matches.next()) {
        (None, _) => Listing::No,
        (Some((key, value)), None) if key == "tools" && value.get().starts_with('[') => {
            Listing::Tools
        }
        _ => Listing::Ambiguous,
    }
}

/// An object's top-level keys and raw values, duplicates kept.
struct TopKeys<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopKeys<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopKeys<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    keys.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(TopKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

impl Session {
    /// A key of the call that the gateway and a case-insensitive server would read as
    /// different members: `Name` beside no `name` in the params, or an argument key that
    /// differs only in case from one the policy's conditions or the tool's `inputSchema` name.
    pub(super) fn ambiguous_call(
        &self,
        params_shadow: Option<&str>,
        args: &Value,
        info: Option<&ToolInfo>,
    ) -> Option<String> {
        if let Some(key) = params_shadow {
            return Some(format!(
                "params key `{}` differs only in case from a tools/call member, which some servers would read it as",
                truncated(key)
            ));
        }
        let policy = self.policy.load();
        let known = [
            Some(policy.argument_keys()),
            info.map(|info| &info.schema_keys),
        ];
        let known: smallvec::SmallVec<[&jsonrpc::Spellings; 2]> = known
            .into_iter()
            .flatten()
            .filter(|k| !k.is_empty())
            .collect();
        if known.is_empty() {
            return None;
        }
        let found = shadowed_key(args, &known)?;
        Some(format!(
            "argument key `{}` differs only in case from one the policy or the tool's inputSchema names, which some servers would read it as",
            truncated(&found)
        ))
    }

    /// A reply carrying a tool list: hidden tools removed, the client's id restored. A list
    /// that cannot be read becomes an error: an unfiltered list never passes.
    pub(super) fn filter_tools_list(
        &self,
        line: &[u8],
        first_page: Option<bool>,
        client_id: &RawValue,
    ) -> Option<Vec<u8>> {
        let mut reply = match serde_json::from_slice::<Value>(line) {
            Ok(reply) => reply,
            Err(e) => return Some(unreadable_list(client_id, &e.to_string())),
        };
        let more_pages = reply
            .pointer("/result/nextCursor")
            .is_some_and(|c| !c.is_null());
        let Some(tools) = reply
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        else {
            return Some(unreadable_list(client_id, "`result.tools` is not a list"));
        };
        if let Some(first_page) = first_page {
            self.record_catalogue(tools, first_page, more_pages);
        }
        let before = tools.len();
        let policy = self.policy.load();
        // A tool is kept only if its name reads the same to every client: exactly one key
        // that folds to `name`, spelled `name`.
        tools.retain(|tool| {
            let plain = tool
                .as_object()
                .is_some_and(|o| o.keys().filter(|k| jsonrpc::fold_key(k) == "name").count() == 1);
            plain
                && tool
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| policy.is_visible(name))
        });
        if tools.len() != before {
            tracing::debug!(hidden = before - tools.len(), "filtered tools/list");
        }
        if let Some(object) = reply.as_object_mut() {
            object.insert("id".into(), Value::Null);
        }
        let encoded = serde_json::to_vec(&reply).ok()?;
        let envelope = Envelope::parse(&encoded).ok()?;
        jsonrpc::splice(&encoded, envelope.id?, client_id.get().as_bytes())
    }

    fn record_catalogue(&self, tools: &[Value], first_page: bool, more_pages: bool) {
        let names = tools.iter().filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?;
            let input_schema = t.get("inputSchema").cloned();
            let mut names = Vec::new();
            if let Some(schema) = &input_schema {
                property_names(schema, &mut names);
            }
            let info = ToolInfo {
                upstream: t
                    .pointer("/_meta/toolgate/upstream")
                    .and_then(Value::as_str)
                    .map(Arc::from),
                annotations: t
                    .get("annotations")
                    .and_then(|a| ToolAnnotations::deserialize(a).ok()),
                schema_keys: jsonrpc::Spellings::of(names),
                input_schema,
                validator: OnceLock::new(),
            };
            Some((name.to_owned(), Arc::new(info)))
        });
        let mut state = self.state();
        let mut seen = match std::mem::take(&mut state.catalogue) {
            _ if first_page => Tools::new(),
            Catalogue::Partial(seen) => seen,
            // A later page without its first: not enough to call anything unknown.
            other => {
                state.catalogue = other;
                return;
            }
        };
        seen.extend(names);
        state.catalogue = if more_pages {
            Catalogue::Partial(seen)
        } else {
            Catalogue::Complete(seen)
        };
    }
}

/// The error the client gets instead of a tool list that cannot be read.
pub(super) fn unreadable_list(client_id: &RawValue, why: &str) -> Vec<u8> {
    tracing::error!(
        why,
        "the upstream's tool list could not be read; not forwarded"
    );
    jsonrpc::error_line(
        Some(client_id),
        jsonrpc::INTERNAL_ERROR,
        &format!(
            "[toolgate] the upstream's tool list could not be read, so it was not forwarded: {why}"
        ),
    )
}

/// Why `args` do not match the tool's advertised `inputSchema`, if they do not.
pub(super) fn schema_problem(tool: &str, info: &ToolInfo, args: &Value) -> Option<String> {
    let schema = info.input_schema.as_ref()?;
    let validator = info.validator.get_or_init(|| match jsonschema::validator_for(schema) {
        Ok(validator) => Some(validator),
        Err(e) => {
            // The server's own schema is broken: the policy still decides; say so once.
            tracing::warn!(tool, error = %e, "the tool's inputSchema does not compile; its arguments are not checked");
            None
        }
    });
    let error = validator.as_ref()?.iter_errors(args).next()?;
    let path = error.instance_path().to_string();
    let at = if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    };
    Some(format!(
        "the arguments do not match the tool's inputSchema{at}: {error}"
    ))
}

/// The names of every `properties` object in a JSON Schema, at any depth.
fn property_names<'s>(schema: &'s Value, out: &mut Vec<&'s str>) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object {
                if key == "properties" {
                    if let Value::Object(properties) = value {
                        out.extend(properties.keys().map(String::as_str));
                    }
                }
                property_names(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
        _ => {}
    }
}

/// A key anywhere in `value` that folds to a name in `known` but is spelled as none of them.
fn shadowed_key(value: &Value, known: &[&jsonrpc::Spellings]) -> Option<String> {
    match value {
        Value::Object(object) => object.iter().find_map(|(key, value)| {
            if known.iter().any(|k| k.shadows(key)) {
                Some(key.clone())
            } else {
                shadowed_key(value, known)
            }
        }),
        Value::Array(items) => items.iter().find_map(|v| shadowed_key(v, known)),
        _ => None,
    }
}
