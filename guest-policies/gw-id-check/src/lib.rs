//! `gw-id-check`: session-ID hygiene for LLM CLI Gateway.
//!
//! LLM CLI Gateway's `session_create` mints plain UUID v4 records, while its request tools
//! mint `gw-` + UUID v4 *tracking* ids: gateway bookkeeping, never a provider-native session.
//! This plugin refuses:
//! - a `sessionId` starting with `gw-` on resume paths (`codex_request`, `codex_request_async`,
//!   `codex_fork_session`, `grok_request*`, `gemini_request*`): Codex resume needs a real
//!   Codex UUID;
//! - a malformed id on `session_get`, `session_delete`, `session_set_active`: neither a UUID v4
//!   nor `gw-` + UUID v4;
//! - `session_create` with a `cli` outside the advertised enum, or a `description` longer than
//!   `max_description_chars`.
//!
//! Every list is configurable; the defaults are LLM CLI Gateway 2.10.0's. Tool lists take
//! exact names or a trailing `*` for a prefix.

use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "policy" });

/// The plugin's configuration (all keys optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tools on which a `gw-` session id is refused.
    pub resume_tools: Vec<Cow<'static, str>>,
    /// Tools whose `sessionId` must be a UUID v4 or `gw-` + UUID v4.
    pub session_tools: Vec<Cow<'static, str>>,
    /// The `cli` values `session_create` accepts.
    pub providers: Vec<Cow<'static, str>>,
    /// The longest `description` `session_create` accepts, in characters.
    pub max_description_chars: usize,
}

impl Default for Config {
    fn default() -> Self {
        // Borrowed: the defaults cost no allocation per string.
        let strings = |items: &[&'static str]| items.iter().map(|&s| Cow::Borrowed(s)).collect();
        Self {
            resume_tools: strings(&[
                "codex_request",
                "codex_request_async",
                "codex_fork_session",
                "grok_request*",
                "gemini_request*",
            ]),
            session_tools: strings(&["session_get", "session_delete", "session_set_active"]),
            providers: strings(&["claude", "codex", "gemini", "grok", "mistral", "grok-api"]),
            max_description_chars: 200,
        }
    }
}

fn parse_config(text: &str) -> Result<Config, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| format!("invalid gw-id-check config: {e}"))
}

thread_local! {
    /// The last config text this instance parsed, and what it gave: a pooled instance is
    /// called again and again with the same config, which then costs a string compare
    /// instead of a parse (half the plugin's instructions per call with the defaults).
    static LAST_CONFIG: RefCell<Option<(String, Rc<Config>)>> = const { RefCell::new(None) };
}

/// [`parse_config`], remembered for the next call with the same text.
fn config_for(text: &str) -> Result<Rc<Config>, String> {
    LAST_CONFIG.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, config)) = last.as_ref() {
            if seen == text {
                return Ok(config.clone());
            }
        }
        let config = Rc::new(parse_config(text)?);
        *last = Some((text.to_owned(), config.clone()));
        Ok(config)
    })
}

fn listed(tools: &[Cow<'static, str>], tool: &str) -> bool {
    tools.iter().any(|t| match t.strip_suffix('*') {
        Some(prefix) => tool.starts_with(prefix),
        None => t == tool,
    })
}

/// A lowercase or uppercase UUID whose version digit is 4 and variant is RFC 4122.
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// The arguments the rules read, as `Value::get` on the parsed arguments would give them
/// (the last of duplicate keys; nothing when the arguments are not an object), read
/// without building the rest: the other members are skipped, not allocated.
#[derive(Default)]
pub struct Args {
    /// `sessionId`
    pub session_id: Option<Value>,
    /// `cli`
    pub cli: Option<Value>,
    /// `description`
    pub description: Option<Value>,
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Args, A::Error> {
                let mut args = Args::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "sessionId" => &mut args.session_id,
                        "cli" => &mut args.cli,
                        "description" => &mut args.description,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(args)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Args::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Args, E> {
                Ok(Args::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Args, E> {
                Ok(Args::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Args, E> {
                Ok(Args::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Args, E> {
                Ok(Args::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Args, E> {
                Ok(Args::default())
            }
            fn visit_unit<E>(self) -> Result<Args, E> {
                Ok(Args::default())
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The decision for one call, as plain data (testable without a host).
pub fn check(config: &Config, tool: &str, args: &Args) -> Result<(), String> {
    let session_id = args.session_id.as_ref();
    if listed(&config.resume_tools, tool) {
        if let Some(id) = session_id
            .and_then(Value::as_str)
            .filter(|id| id.starts_with("gw-"))
        {
            return Err(format!(
                "sessionId `{id}` is an LLM CLI Gateway tracking id, not a provider session: Codex resume needs a real Codex UUID"
            ));
        }
    }
    if listed(&config.session_tools, tool) {
        match session_id {
            Some(Value::String(id))
                if is_uuid_v4(id) || id.strip_prefix("gw-").is_some_and(is_uuid_v4) => {}
            Some(other) => {
                return Err(format!(
                    "malformed sessionId {other}: expected a UUID v4 or `gw-` + UUID v4"
                ))
            }
            None => return Err("sessionId is required".to_string()),
        }
    }
    if tool == "session_create" {
        match args.cli.as_ref().and_then(Value::as_str) {
            Some(cli) if config.providers.iter().any(|p| p == cli) => {}
            Some(cli) => {
                return Err(format!(
                    "cli `{cli}` is not one of {}",
                    config.providers.join(", ")
                ))
            }
            None => return Err("cli is required".to_string()),
        }
        if let Some(description) = args.description.as_ref().and_then(Value::as_str) {
            let chars = description.chars().count();
            if chars > config.max_description_chars {
                return Err(format!(
                    "description has {chars} characters; at most {} are allowed",
                    config.max_description_chars
                ));
            }
        }
    }
    Ok(())
}

struct GwIdCheck;

impl Guest for GwIdCheck {
    fn evaluate(call: ToolCall, config: String) -> Decision {
        let config = match config_for(&config) {
            Ok(config) => config,
            Err(e) => return Decision::Deny(e),
        };
        let args: Args = match serde_json::from_str(&call.arguments) {
            Ok(args) => args,
            Err(e) => return Decision::Deny(format!("arguments are not JSON: {e}")),
        };
        match check(&config, &call.tool, &args) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse_config(&config).map(|_| ())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "gw-id-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Session-ID hygiene for LLM CLI Gateway: gw- tracking ids are not provider sessions"
                    .into(),
        }
    }
}

export!(GwIdCheck);
