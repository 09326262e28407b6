//! Stand-in MCP peers for toolgate's demo, tests and benchmarks.
//!
//! - [`llm_cli_gateway`] replays the LLM CLI Gateway 2.10.0 catalogue (or a saved one named by
//!   `STANDIN_CATALOGUE`, such as 3.1.0-rc.8's) and implements its
//!   `session_*` tools and request tools the way that server does (UUID v4 session records,
//!   `gw-` tracking ids, errors as `isError` results).
//! - [`echo`] is the smallest useful MCP server: the fast upstream the latency benchmark needs.
//! - [`echo_http`] is the same over Streamable HTTP: the upstream of the HTTP benchmarks.
//! - [`relay`] copies bytes between stdio and a child: the floor the latency benchmark compares against.
//!
//! The stdio ones speak newline-delimited JSON-RPC on any reader/writer pair, so a test can run them on
//! pipes in-process or as a child process.

pub mod echo;
pub mod echo_http;
pub mod llm_cli_gateway;
pub mod relay;

use serde_json::{json, Value};
use std::io::{BufRead, Write};

/// Runs a line-oriented JSON-RPC server loop until `input` reaches end of file.
///
/// `handle` gets every parsed message and returns the replies to write (zero or more).
/// Lines that are not JSON get a `-32700` parse error, as a real server would send.
pub fn serve_lines(
    input: impl BufRead,
    mut output: impl Write,
    mut handle: impl FnMut(&Value) -> Vec<Value>,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let replies = match serde_json::from_str::<Value>(&line) {
            Ok(message) => handle(&message),
            Err(err) => vec![json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": format!("parse error: {err}")}})],
        };
        for reply in replies {
            serde_json::to_writer(&mut output, &reply)?;
            output.write_all(b"\n")?;
        }
        output.flush()?;
    }
    Ok(())
}

/// The `initialize` result both stand-ins return: the client's protocol version is echoed back,
/// as servers that support it do.
pub fn initialize_result(request: &Value, name: &str, version: &str) -> Value {
    let protocol = request
        .pointer("/params/protocolVersion")
        .cloned()
        .unwrap_or_else(|| json!("2025-11-25"));
    json!({
        "protocolVersion": protocol,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": name, "version": version}
    })
}

/// A JSON-RPC success reply.
pub fn reply(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error reply.
pub fn error_reply(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A tool result with one text item.
pub fn text_result(text: impl Into<String>, is_error: bool) -> Value {
    let mut result = json!({"content": [{"type": "text", "text": text.into()}]});
    if is_error {
        result["isError"] = json!(true);
    }
    result
}
