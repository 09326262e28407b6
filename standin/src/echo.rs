//! A minimal, fast MCP server: `echo {message}` returns the message, `crash` exits mid-call,
//! `fail` answers with a JSON-RPC error.
//!
//! It is the upstream of the stdio latency benchmark (so that the upstream's own cost is small
//! next to the proxy's) and of the tests for an upstream that dies while a call is pending.

use crate::{error_reply, initialize_result, reply, serve_lines, text_result};
use serde_json::{json, Value};
use std::io::{BufRead, Write};

/// Serves until `input` closes. The `crash` tool ends the whole process with exit code 3.
pub fn serve(input: impl BufRead, output: impl Write) -> std::io::Result<()> {
    serve_lines(input, output, |message| {
        let Some(id) = message
            .get("id")
            .filter(|_| message.get("method").is_some())
        else {
            return vec![];
        };
        let method = message["method"].as_str().unwrap_or_default();
        let result = match method {
            "initialize" => initialize_result(message, "mcp-echo", env!("CARGO_PKG_VERSION")),
            "ping" => json!({}),
            "tools/list" => json!({"tools": [
                {"name": "echo", "description": "Returns its message",
                 "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}},
                 "annotations": {"readOnlyHint": true, "idempotentHint": true, "openWorldHint": false}},
                {"name": "crash", "description": "Exits the server without answering",
                 "inputSchema": {"type": "object"},
                 "annotations": {"destructiveHint": true}},
                {"name": "fail", "description": "Answers with a JSON-RPC error (the tool never runs)",
                 "inputSchema": {"type": "object"}}
            ]}),
            "tools/call" => match message.pointer("/params/name").and_then(Value::as_str) {
                Some("echo") => {
                    let text = message
                        .pointer("/params/arguments/message")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    text_result(text, false)
                }
                Some("crash") => std::process::exit(3),
                Some("fail") => {
                    return vec![error_reply(
                        id,
                        -32603,
                        "fail: this tool always fails as a JSON-RPC error",
                    )]
                }
                other => text_result(
                    format!("MCP error -32602: Tool {} not found", other.unwrap_or("")),
                    true,
                ),
            },
            _ => {
                return vec![error_reply(
                    id,
                    -32601,
                    &format!("method not found: {method}"),
                )]
            }
        };
        vec![reply(id, result)]
    })
}
