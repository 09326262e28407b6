//! Just enough JSON-RPC 2.0 to route messages without re-encoding them.
//!
//! The gateway reads the `id`, `method` and whether there is an `error` from each line, and
//! forwards the original bytes. Parsing is strict where a lax parser could be fooled: a
//! duplicated `method` key is an invalid request (the upstream might read the other one), and
//! escapes are decoded before the method is compared (`"tools\/call"` is `tools/call`).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

/// JSON-RPC's "parse error": the line is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "invalid request": JSON, but not a JSON-RPC message the gateway accepts.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// The upstream server went away before answering (implementation-defined server error).
pub const UPSTREAM_GONE: i64 = -32000;

/// The routing fields of one message.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The request id, as written; `None` for notifications (and for `"id": null`).
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    /// The method of a request or notification.
    #[serde(default, borrow)]
    pub method: Option<Cow<'a, str>>,
    /// Present on error replies.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    /// The request's parameters, unparsed: only `tools/call` and `tools/list` look inside.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
}

/// Why a line could not be routed, as a JSON-RPC error code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Fault {
    /// The JSON-RPC error code.
    pub code: i64,
    /// What was wrong.
    pub message: String,
}

impl<'a> Envelope<'a> {
    /// Reads the routing fields of one line.
    pub fn parse(line: &'a [u8]) -> Result<Self, Fault> {
        let first = line.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            // Batches (JSON-RPC arrays) were removed from MCP in 2025-06-18. Refusing them keeps
            // every tools/call visible to policy one message at a time.
            return Err(Fault {
                code: INVALID_REQUEST,
                message: "batch requests are not supported".into(),
            });
        }
        serde_json::from_slice(line).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => Fault {
                    code: PARSE_ERROR,
                    message: format!("parse error: {e}"),
                },
                Category::Data => Fault {
                    code: INVALID_REQUEST,
                    message: format!("invalid request: {e}"),
                },
            }
        })
    }

    /// The id in a canonical form, so that `1` and `1.0`-free spellings of one id match.
    pub fn id_key(&self) -> Option<String> {
        self.id.map(|raw| id_key(raw.get()))
    }
}

/// Canonical text of a raw id (re-encoded, so whitespace and escapes do not matter).
pub fn id_key(raw: &str) -> String {
    // Fast path for the usual ids, small integers and plain strings, already canonical.
    let bytes = raw.as_bytes();
    let plain_int = !bytes.is_empty()
        && bytes.len() < 16
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes == b"0" || bytes[0] != b'0');
    let plain_str = bytes.len() >= 2
        && bytes[0] == b'"'
        && bytes[bytes.len() - 1] == b'"'
        && bytes[1..bytes.len() - 1]
            .iter()
            .all(|&b| b != b'\\' && b != b'"' && (0x20..0x7f).contains(&b));
    if plain_int || plain_str {
        return raw.to_owned();
    }
    serde_json::from_str::<Value>(raw)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| raw.to_owned())
}

/// A reply line carrying `result`.
pub fn result_line(id: &RawValue, result: &Value) -> Vec<u8> {
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id.get(),
        result
    )
    .into_bytes();
    line.push(b'\n');
    line
}

/// A reply line carrying an error; `id` is `None` when the request's id could not be read.
pub fn error_line(id: Option<&RawValue>, code: i64, message: &str) -> Vec<u8> {
    let id = id.map_or("null", |raw| raw.get());
    let error = json!({"code": code, "message": message});
    let mut line = format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_decoded_method_and_rejects_tricks() {
        let e = Envelope::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{}}"#)
            .unwrap();
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(e.id_key().as_deref(), Some("1"));
        let dup = Envelope::parse(br#"{"id":1,"method":"tools/list","method":"tools/call"}"#)
            .unwrap_err();
        assert_eq!(dup.code, INVALID_REQUEST);
        assert_eq!(Envelope::parse(b"{nope").unwrap_err().code, PARSE_ERROR);
        assert_eq!(Envelope::parse(b"[1]").unwrap_err().code, INVALID_REQUEST);
        assert_eq!(Envelope::parse(b"42").unwrap_err().code, INVALID_REQUEST);
        assert_eq!(
            Envelope::parse(br#"{"id":1,"method":7}"#).unwrap_err().code,
            INVALID_REQUEST
        );
    }

    #[test]
    fn id_keys_ignore_spelling() {
        assert_eq!(id_key(r#" "a\u0062" "#), id_key(r#""ab""#));
        assert_eq!(id_key("17"), "17");
        assert_eq!(id_key(r#""abc""#), r#""abc""#);
        assert_eq!(id_key(r#""\/""#), id_key(r#""/""#));
        assert_eq!(id_key("1e2"), "100.0");
        assert_eq!(id_key(" 5 "), "5");
    }
}
