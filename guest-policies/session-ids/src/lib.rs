//! `session-ids`: remembers the session record ids LLM CLI Gateway's `session_create`
//! returned, and refuses them where Codex needs a session id of its own (issue 23).
//!
//! `session_create` mints a plain UUID v4 *record* id: the gateway's bookkeeping. An agent
//! that passes it as `sessionId` to `codex_request` to "resume" gets it accepted (the server
//! takes any UUID) and handed to the Codex CLI, which knows no such session. Only a rule that
//! remembers which ids `session_create` returned can tell the two apart:
//! - `after-call`, on the tools in `record_tools`, reads the result's text content items (and
//!   `structuredContent`) as JSON and records `session.id` (or a top-level `id`/`sessionId`)
//!   in the plugin's `state`, for `ttl_s`. It never changes the result: it always passes.
//! - `evaluate`, on the tools in `resume_tools`, refuses a `sessionId` that was recorded for
//!   the calling grant, and a `sessionId` that the arguments spell more than once or in
//!   another case (servers disagree about which copy they read).
//!
//! Tool lists take exact names or a trailing `*` for a prefix.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

wit_bindgen::generate!({ path: "../../wit/v0.3.0", world: "policy-with-results" });

use toolgate::policy::log::{self, Level};
use toolgate::policy::state;

/// LLM CLI Gateway's session lifetime, and the default time to live: 30 days.
pub const DEFAULT_TTL_S: u64 = 30 * 86_400;
/// The longest `ttl_s` a config may ask for: 365 days (the policy's `max_ttl_s` may be lower,
/// and then recording fails, with a warning in the gateway's log).
pub const MAX_TTL_S: u64 = 365 * 86_400;
/// The longest id recorded or looked up, in bytes: ids are UUIDs, and state keys are bounded.
pub const MAX_ID_BYTES: usize = 128;
/// The argument that names the session to resume.
pub const ARGUMENT: &str = "sessionId";

/// The plugin's configuration (all keys optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tools whose results name session record ids to remember.
    pub record_tools: Vec<String>,
    /// Tools on which a remembered id is refused as `sessionId`.
    pub resume_tools: Vec<String>,
    /// How long an id is remembered, in seconds.
    pub ttl_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        Self {
            record_tools: strings(&["session_create"]),
            resume_tools: strings(&["codex_request", "codex_request_async", "codex_fork_session"]),
            ttl_s: DEFAULT_TTL_S,
        }
    }
}

/// Reads and checks a config: unknown keys, bad values and malformed tool names are errors.
pub fn parse_config(text: &str) -> Result<Config, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config =
        serde_json::from_str(text).map_err(|e| format!("invalid session-ids config: {e}"))?;
    if !(1..=MAX_TTL_S).contains(&config.ttl_s) {
        return Err(format!(
            "invalid session-ids config: ttl_s must be from 1 to {MAX_TTL_S} seconds, not {}",
            config.ttl_s
        ));
    }
    for (key, tools) in [
        ("record_tools", &config.record_tools),
        ("resume_tools", &config.resume_tools),
    ] {
        if let Some(bad) = tools
            .iter()
            .find(|t| t.is_empty() || t.trim_end_matches('*').contains('*') || *t == "*")
        {
            return Err(format!(
                "invalid session-ids config: {key} has `{bad}`: give a tool name, or a prefix and a trailing `*`"
            ));
        }
    }
    Ok(config)
}

fn listed(tools: &[String], tool: &str) -> bool {
    tools.iter().any(|t| match t.strip_suffix('*') {
        Some(prefix) => tool.starts_with(prefix),
        None => t == tool,
    })
}

/// An id as it is recorded and looked up: trimmed, lowercased (UUIDs are case-insensitive),
/// 1 to [`MAX_ID_BYTES`] bytes of letters, digits, `-`, `_`, `.` and `:`. Anything else is
/// not an id this plugin records (and so never one it refuses).
pub fn normalize(id: &str) -> Option<String> {
    let id = id.trim();
    (!id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    .then(|| id.to_ascii_lowercase())
}

/// The state key of a recorded id.
pub fn key(id: &str) -> String {
    format!("record-id:{id}")
}

/// The session record ids a result names, normalized and without repeats. Strict about
/// shape: the result is an object that is not an error; each text content item (and
/// `structuredContent`) whose JSON is an object not saying `"success": false` contributes
/// its `session.id` (when `session` is an object), its `id` and its `sessionId`, each only
/// when it is a string that [`normalize`] accepts. What does not parse is ignored.
pub fn recorded_ids(result: &str) -> Vec<String> {
    let Ok(Value::Object(result)) = serde_json::from_str::<Value>(result) else {
        return Vec::new();
    };
    if result.get("isError") == Some(&Value::Bool(true)) {
        return Vec::new();
    }
    let mut bodies: Vec<Value> = result
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|item| item.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .collect();
    if let Some(structured) = result.get("structuredContent") {
        bodies.push(structured.clone());
    }
    let mut ids: Vec<String> = Vec::new();
    for body in &bodies {
        let Some(body) = body.as_object() else {
            continue;
        };
        if body.get("success") == Some(&Value::Bool(false)) {
            continue;
        }
        let candidates = [
            body.get("session")
                .and_then(Value::as_object)
                .and_then(|s| s.get("id")),
            body.get("id"),
            body.get(ARGUMENT),
        ];
        for id in candidates.into_iter().flatten() {
            if let Some(id) = id.as_str().and_then(normalize) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// A key as Go's `encoding/json` compares it to a field name: Unicode case folding (`ſ` is
/// `s`, the Kelvin sign is `k`), as the gateway's own duplicate-key check folds.
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The top-level members of a JSON object in order, duplicates kept (serde_json's own map
/// keeps only the last copy of a key, as Python and JavaScript do; Go takes the last
/// case-insensitive match). Escapes in keys are decoded (`"session\u0049d"` is `sessionId`).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Members, E> {
                Err(E::custom("null, not an object"))
            }
        }
        d.deserialize_map(V)
    }
}

/// The `sessionId` a server would read from `arguments` (JSON text), when it is a string;
/// `Ok(None)` when there is none (or it is not a string). An error, the reason to refuse,
/// when the arguments are not an object, or when `sessionId` is not spelled exactly once:
/// a duplicate, or a key equal to it after case folding (`sessionid`, `SessionId`,
/// `ſessionId`), which a Go server would read as `sessionId` and others would not.
pub fn session_id_argument(arguments: &str) -> Result<Option<String>, String> {
    let Members(members) = serde_json::from_str(arguments)
        .map_err(|e| format!("the arguments are not a JSON object: {e}"))?;
    let wanted = fold(ARGUMENT);
    let spellings: Vec<&(String, Value)> =
        members.iter().filter(|(k, _)| fold(k) == wanted).collect();
    match spellings.as_slice() {
        [] => Ok(None),
        [(k, v)] if k == ARGUMENT => Ok(v.as_str().map(str::to_owned)),
        several => {
            let mut keys: Vec<String> = several
                .iter()
                .take(3)
                .map(|(k, _)| format!("`{k}`"))
                .collect();
            if several.len() > 3 {
                keys.push("...".into());
            }
            Err(format!(
                "the arguments name the session {} times ({}): servers read such arguments differently (Go matches keys case-insensitively, Python and Node take the last copy, others the exact `sessionId`), so nobody can say which session would be resumed; send `sessionId` exactly once, spelled exactly so",
                several.len(),
                keys.join(", ")
            ))
        }
    }
}

/// The refusal for a recorded id that `tool` returned.
pub fn refusal(id: &str, tool: &str) -> String {
    format!(
        "sessionId `{id}` is a session record id that {tool} returned (LLM CLI Gateway bookkeeping), not a Codex session: Codex resume needs a Codex session UUID, from Codex's own output; omit sessionId to start a fresh session"
    )
}

/// The decision for one call, given a lookup of recorded ids (testable without a host).
pub fn check(
    config: &Config,
    tool: &str,
    arguments: &str,
    recorded: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    if !listed(&config.resume_tools, tool) {
        return Ok(());
    }
    let Some(id) = session_id_argument(arguments)? else {
        return Ok(());
    };
    let Some(normalized) = normalize(&id) else {
        return Ok(());
    };
    match recorded(&key(&normalized)) {
        Some(by) => {
            let by = if by.is_empty() || by.len() > 64 {
                "session_create".to_string()
            } else {
                by
            };
            // Quoted trimmed: the id is at most `MAX_ID_BYTES` then, however it was padded.
            Err(refusal(id.trim(), &by))
        }
        None => Ok(()),
    }
}

struct SessionIds;

impl Guest for SessionIds {
    fn evaluate(call: ToolCall, config: String) -> Decision {
        let config = match parse_config(&config) {
            Ok(config) => config,
            Err(e) => return Decision::Deny(e),
        };
        match check(&config, &call.tool, &call.arguments, state::get) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn after_call(call: ToolCall, result: String, config: String) -> ResultVerdict {
        // A config the load accepted always parses; if not, there is nothing to record.
        let Ok(config) = parse_config(&config) else {
            return ResultVerdict::Pass;
        };
        if !listed(&config.record_tools, &call.tool) {
            return ResultVerdict::Pass;
        }
        let ttl_ms = config.ttl_s.saturating_mul(1000);
        for id in recorded_ids(&result) {
            match state::set(&key(&id), &call.tool, ttl_ms) {
                Ok(()) => log::log(
                    Level::Debug,
                    &format!("recorded session record id {id} from {}", call.tool),
                ),
                Err(why) => log::log(
                    Level::Warn,
                    &format!("cannot record session record id {id} from {}: {why}; it will not be refused on resume", call.tool),
                ),
            }
        }
        ResultVerdict::Pass
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse_config(&config).map(|_| ())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "session-ids".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Refuses LLM CLI Gateway session record ids where Codex needs its own session id"
                    .into(),
        }
    }
}

export!(SessionIds);

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40";

    #[test]
    fn session_create_results_name_their_record_id() {
        let text = format!(
            r#"{{"success":true,"session":{{"id":"{}","cli":"codex"}}}}"#,
            ID.to_uppercase()
        );
        let result = serde_json::json!({"content": [{"type": "text", "text": text}]}).to_string();
        assert_eq!(recorded_ids(&result), [ID]);
        let error =
            serde_json::json!({"content": [{"type": "text", "text": text}], "isError": true});
        assert!(recorded_ids(&error.to_string()).is_empty());
        let failed = serde_json::json!({"content": [{"type": "text", "text": format!(r#"{{"success":false,"id":"{ID}"}}"#)}]});
        assert!(recorded_ids(&failed.to_string()).is_empty());
        let odd = serde_json::json!({"content": [
            {"type": "text", "text": "not json"},
            {"type": "text", "text": r#"{"session": "x", "id": 7, "sessionId": "has space"}"#},
            {"type": "image", "data": "", "mimeType": "image/png"}],
            "structuredContent": {"sessionId": "abc"}});
        assert_eq!(recorded_ids(&odd.to_string()), ["abc"]);
        assert!(recorded_ids("[1]").is_empty());
    }

    #[test]
    fn the_session_id_argument_is_read_once_or_refused() {
        assert_eq!(
            session_id_argument(&format!(r#"{{"sessionId":"{ID}"}}"#)),
            Ok(Some(ID.to_owned()))
        );
        assert_eq!(session_id_argument(r#"{"prompt":"p"}"#), Ok(None));
        assert_eq!(session_id_argument(r#"{"sessionId":5}"#), Ok(None));
        assert_eq!(
            session_id_argument(r#"{"session\u0049d":"a"}"#),
            Ok(Some("a".into()))
        );
        for bad in [
            r#"{"sessionId":"a","sessionId":"b"}"#,
            r#"{"sessionid":"a"}"#,
            r#"{"SessionId":"a","sessionId":"b"}"#,
            "{\"\u{17f}essionId\":\"a\"}",
            r#"{"SESSIONID":"a"}"#,
        ] {
            let err = session_id_argument(bad).unwrap_err();
            assert!(err.contains("exactly once"), "{bad}: {err}");
        }
        assert!(session_id_argument("[]").is_err());
        let many = format!("{{{}}}", vec![r#""sessionId":"a""#; 50].join(","));
        let err = session_id_argument(&many).unwrap_err();
        assert!(
            err.contains("50 times (`sessionId`, `sessionId`, `sessionId`, ...)"),
            "{err}"
        );
        assert!(session_id_argument("null").is_err());
    }

    #[test]
    fn recorded_ids_are_refused_on_resume_tools_only() {
        let config = parse_config("").unwrap();
        let recorded = |k: &str| (k == key(ID)).then(|| "session_create".to_string());
        let args = format!(r#"{{"prompt":"p","sessionId":" {} "}}"#, ID.to_uppercase());
        let err = check(&config, "codex_fork_session", &args, recorded).unwrap_err();
        assert!(
            err.contains("session record id that session_create returned"),
            "{err}"
        );
        assert_eq!(check(&config, "claude_request", &args, recorded), Ok(()));
        let fresh = r#"{"sessionId":"7f3e2a10-9c4b-4d2e-8f1a-2b3c4d5e6f70"}"#;
        assert_eq!(check(&config, "codex_request", fresh, recorded), Ok(()));
    }

    #[test]
    fn configs_are_checked() {
        assert!(parse_config(r#"{"ttl_s": 60, "record_tools": ["session_*"]}"#).is_ok());
        for bad in [
            r#"{"ttl": 60}"#,
            r#"{"ttl_s": 0}"#,
            r#"{"ttl_s": -1}"#,
            r#"{"ttl_s": 999999999}"#,
            r#"{"resume_tools": [""]}"#,
            r#"{"resume_tools": ["*"]}"#,
            r#"{"resume_tools": ["co*dex"]}"#,
            r#"{"record_tools": "session_create"}"#,
        ] {
            assert!(parse_config(bad).is_err(), "{bad}");
        }
    }
}
