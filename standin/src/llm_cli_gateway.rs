//! A stand-in for the MCP server "LLM CLI Gateway" 2.10.0, faithful where toolgate's rules look.
//!
//! - `tools/list` replays the real server's catalogue (`fixtures/llm-cli-gateway-2.10.0.tools.json`),
//!   or another saved `tools/list` reply named by `STANDIN_CATALOGUE` (or the binary's
//!   `--catalogue FILE`): `fixtures/llm-cli-gateway-3.1.0-rc.8.tools.json` has the 3.1.0-rc.8
//!   server's 64 tools. Only the listing changes; the simulated tools stay those of 2.10.0.
//! - `session_create {cli, description?, setAsActive? = true}` returns one text item holding
//!   `{"success": true, "session": {id, cli, description, createdAt, isActive}}`, `id` a UUID v4.
//! - Request tools (`claude_request`, `codex_request_async`, ...) mint a `gw-<uuid v4>` tracking id
//!   when called without `sessionId`; `codex_request*` refuses a `gw-` id ("reserved prefix gw-").
//! - Unknown tools and invalid arguments come back as results with `isError: true` and text
//!   `MCP error -32602: ...`, never as JSON-RPC errors. Unknown argument keys are dropped.
//! - Other catalogue tools answer with a short text result: they are listed, not simulated.

use crate::{error_reply, initialize_result, reply, serve_lines, text_result};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The catalogue as LLM CLI Gateway 2.10.0 returned it from `tools/list`.
pub const CATALOGUE_JSON: &str = include_str!("../fixtures/llm-cli-gateway-2.10.0.tools.json");

/// Providers accepted by `session_create`'s `cli` enum.
pub const PROVIDERS: &[&str] = &["claude", "codex", "gemini", "grok", "mistral", "grok-api"];

fn catalogue() -> &'static Value {
    static CATALOGUE: OnceLock<Value> = OnceLock::new();
    CATALOGUE.get_or_init(|| serde_json::from_str(CATALOGUE_JSON).expect("fixture is valid JSON"))
}

/// One session record, as `session_create` returns it.
#[derive(Clone, Debug)]
struct Session {
    id: String,
    cli: String,
    description: Option<String>,
    created_at: String,
}

impl Session {
    fn to_json(&self, active: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "cli": self.cli,
            "description": self.description,
            "createdAt": self.created_at,
            "isActive": active == Some(self.id.as_str()),
        })
    }
}

/// The server's state: its session records and the active session id.
#[derive(Default)]
pub struct Gateway {
    sessions: Vec<Session>,
    active: Option<String>,
    /// A catalogue in place of the compiled-in one, with the version `initialize` reports.
    catalogue: Option<(Value, String)>,
}

/// The environment variable naming a `tools/list` file to serve instead of 2.10.0's.
pub const CATALOGUE_ENV: &str = "STANDIN_CATALOGUE";

/// Reads a saved `tools/list` result (`{"tools": [...]}`) or whole reply
/// (`{"result": {"tools": [...]}}`). The version `initialize` reports is taken from a file
/// named `llm-cli-gateway-<version>.tools.json`, else `custom`.
pub fn read_catalogue(path: &std::path::Path) -> std::io::Result<(Value, String)> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let text = std::fs::read_to_string(path)?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let tools = doc
        .get("tools")
        .or_else(|| doc.pointer("/result/tools"))
        .filter(|t| t.is_array())
        .ok_or_else(|| bad(format!("{}: no `tools` array", path.display())))?;
    let version = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("llm-cli-gateway-"))
        .and_then(|n| n.strip_suffix(".tools.json"))
        .unwrap_or("custom");
    Ok((json!({"tools": tools}), version.to_owned()))
}

fn invalid(message: impl std::fmt::Display) -> Value {
    text_result(format!("MCP error -32602: {message}"), true)
}

fn ok_json(value: Value) -> Value {
    text_result(value.to_string(), false)
}

fn now_iso8601() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (since.as_secs() as i64, since.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), for a timestamp without a date crate.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Gateway {
    /// A server that lists `tools` (a `tools/list` result) and reports `version`.
    pub fn with_catalogue(tools: Value, version: String) -> Self {
        Gateway {
            catalogue: Some((tools, version)),
            ..Gateway::default()
        }
    }

    /// Answers one `tools/call` by tool name and arguments.
    pub fn call_tool(&mut self, name: &str, args: &Value) -> Value {
        let str_arg = |key: &str| args.get(key).and_then(Value::as_str);
        if !catalogue()["tools"]
            .as_array()
            .is_some_and(|tools| tools.iter().any(|t| t["name"] == name))
        {
            return invalid(format_args!("Tool {name} not found"));
        }
        match name {
            "session_create" => {
                let Some(cli) = str_arg("cli") else {
                    return invalid("Invalid arguments for tool session_create: cli is required");
                };
                if !PROVIDERS.contains(&cli) {
                    return invalid(format_args!(
                        "Invalid arguments for tool session_create: invalid enum value '{cli}' for cli"
                    ));
                }
                let session = Session {
                    id: uuid::Uuid::new_v4().to_string(),
                    cli: cli.to_owned(),
                    description: str_arg("description").map(str::to_owned),
                    created_at: now_iso8601(),
                };
                if args
                    .get("setAsActive")
                    .and_then(Value::as_bool)
                    .unwrap_or(true)
                {
                    self.active = Some(session.id.clone());
                }
                let record = session.to_json(self.active.as_deref());
                self.sessions.push(session);
                ok_json(json!({"success": true, "session": record}))
            }
            "session_list" => {
                let active = self.active.as_deref();
                let list: Vec<Value> = self.sessions.iter().map(|s| s.to_json(active)).collect();
                ok_json(json!({"success": true, "sessions": list, "activeSessionId": active}))
            }
            "session_get" | "session_delete" | "session_set_active" => {
                let Some(id) = str_arg("sessionId") else {
                    return invalid(format_args!(
                        "Invalid arguments for tool {name}: sessionId is required"
                    ));
                };
                let Some(index) = self.sessions.iter().position(|s| s.id == id) else {
                    return text_result(format!("Session {id} not found"), true);
                };
                match name {
                    "session_get" => {
                        let record = self.sessions[index].to_json(self.active.as_deref());
                        ok_json(json!({"success": true, "session": record}))
                    }
                    "session_delete" => {
                        self.sessions.remove(index);
                        if self.active.as_deref() == Some(id) {
                            self.active = None;
                        }
                        ok_json(json!({"success": true, "deleted": id}))
                    }
                    _ => {
                        self.active = Some(id.to_owned());
                        ok_json(json!({"success": true, "activeSessionId": id}))
                    }
                }
            }
            "session_clear_all" => {
                let cleared = self.sessions.len();
                self.sessions.clear();
                self.active = None;
                ok_json(json!({"success": true, "cleared": cleared}))
            }
            _ if name.ends_with("_request")
                || name.ends_with("_request_async")
                || name == "codex_fork_session" =>
            {
                let provider = name.split('_').next().unwrap_or_default();
                let session_id = match str_arg("sessionId") {
                    Some(id) if provider == "codex" && id.starts_with("gw-") => {
                        return text_result(
                            format!("Error: sessionId {id} uses reserved prefix gw-; Codex resume needs a real Codex session UUID"),
                            true,
                        );
                    }
                    Some(id) => id.to_owned(),
                    None => format!("gw-{}", uuid::Uuid::new_v4()),
                };
                ok_json(json!({
                    "success": true,
                    "provider": provider,
                    "sessionId": session_id,
                    "response": format!("(stand-in) {provider} would answer here"),
                }))
            }
            _ => text_result(
                format!("(stand-in) {name} is listed but not simulated"),
                false,
            ),
        }
    }

    /// Handles one JSON-RPC message and returns the replies.
    pub fn handle(&mut self, message: &Value) -> Vec<Value> {
        let (Some(id), Some(method)) = (
            message.get("id"),
            message.get("method").and_then(Value::as_str),
        ) else {
            return vec![]; // notifications and replies need no answer
        };
        let result = match method {
            "initialize" => {
                let version = self
                    .catalogue
                    .as_ref()
                    .map_or("2.10.0", |(_, v)| v.as_str());
                initialize_result(message, "llm-cli-gateway", version)
            }
            "ping" => json!({}),
            "tools/list" => match &self.catalogue {
                Some((tools, _)) => tools.clone(),
                None => catalogue().clone(),
            },
            "tools/call" => {
                let name = message
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let args = message
                    .pointer("/params/arguments")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                self.call_tool(name, &args)
            }
            _ => {
                return vec![error_reply(
                    id,
                    -32601,
                    &format!("Method not found: {method}"),
                )]
            }
        };
        vec![reply(id, result)]
    }
}

/// Serves the stand-in on a reader/writer pair until the reader closes, listing the
/// catalogue `STANDIN_CATALOGUE` names if it is set.
pub fn serve(input: impl BufRead, output: impl Write) -> std::io::Result<()> {
    let gateway = match std::env::var_os(CATALOGUE_ENV) {
        Some(path) => {
            let (tools, version) = read_catalogue(std::path::Path::new(&path))?;
            Gateway::with_catalogue(tools, version)
        }
        None => Gateway::default(),
    };
    serve_gateway(input, output, gateway)
}

/// Serves `gateway` on a reader/writer pair until the reader closes.
pub fn serve_gateway(
    input: impl BufRead,
    output: impl Write,
    mut gateway: Gateway,
) -> std::io::Result<()> {
    serve_lines(input, output, |message| gateway.handle(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_create_mints_uuid_v4_and_requests_mint_gw_ids() {
        let mut gw = Gateway::default();
        let created = gw.call_tool("session_create", &json!({"cli": "codex"}));
        let body: Value =
            serde_json::from_str(created["content"][0]["text"].as_str().unwrap()).unwrap();
        let id = body["session"]["id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_eq!(body["session"]["isActive"], true);

        let req = gw.call_tool("claude_request", &json!({"prompt": "hi"}));
        let body: Value =
            serde_json::from_str(req["content"][0]["text"].as_str().unwrap()).unwrap();
        assert!(body["sessionId"].as_str().unwrap().starts_with("gw-"));

        let bad = gw.call_tool(
            "codex_request",
            &json!({"prompt": "hi", "sessionId": "gw-1"}),
        );
        assert_eq!(bad["isError"], true);
        assert!(bad["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("reserved prefix gw-"));
        assert_eq!(gw.call_tool("nope", &json!({}))["isError"], true);
        assert_eq!(
            gw.call_tool("session_create", &json!({"cli": "vim"}))["isError"],
            true
        );
    }

    #[test]
    fn another_catalogue_is_listed_with_its_version() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/llm-cli-gateway-3.1.0-rc.8.tools.json");
        let (tools, version) = read_catalogue(&path).unwrap();
        let mut gw = Gateway::with_catalogue(tools, version);
        let init = gw.handle(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"}));
        assert_eq!(init[0]["result"]["serverInfo"]["version"], "3.1.0-rc.8");
        let listed = gw.handle(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
        assert_eq!(listed[0]["result"]["tools"].as_array().unwrap().len(), 64);
        let default =
            Gateway::default().handle(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
        assert_eq!(default[0]["result"]["tools"].as_array().unwrap().len(), 46);
    }

    #[test]
    fn timestamp_is_iso8601() {
        let ts = now_iso8601();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T');
    }
}
