//! Just enough JSON-RPC 2.0 to route messages, and the rules that make the gateway read a
//! message the way every upstream will.
//!
//! The gateway reads the `id`, `method`, `params`, `result` and `error` of each line and
//! forwards the original bytes, with one change: request ids are the gateway's own on the
//! upstream side (see [`crate::session`]), spliced into the line in place of the client's.
//!
//! **One reading of a message.** Upstream stacks disagree about JSON objects: Go's
//! `encoding/json` matches struct keys case-insensitively (folding `ſ` to `s` and the Kelvin
//! sign to `k`) and takes the last match; Python and JavaScript take the last duplicate; serde
//! refuses duplicates of the fields it knows and takes the last of the rest. Rather than pick
//! one reading and re-serialize, the gateway refuses any client message that has, in any
//! object at any depth, two keys that are equal after Unicode case folding ([`check_keys`]):
//! then every stack reads the same method, tool name and arguments as the policy did, and the
//! bytes forwarded are the bytes the client signed off on. Legitimate clients never send such
//! objects. Escapes are decoded before keys are compared (`"\u004dethod"` is `Method`).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// JSON-RPC's "parse error": the line is not JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "invalid request": JSON, but not a JSON-RPC message the gateway accepts.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's "method not found".
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC's "invalid params".
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's "internal error": the gateway could not do its part (e.g. read a tool list).
pub(crate) const INTERNAL_ERROR: i64 = -32603;
/// The upstream server went away or did not answer in time (implementation-defined server error).
pub(crate) const UPSTREAM_GONE: i64 = -32000;

/// The error codes with which a server says it did not execute a request: the request was
/// not JSON, not a request, named no method it has, or had parameters it refused before
/// running anything. Only these give a call's counter units back; any other reply, error or
/// not, may follow a tool that ran.
pub fn not_executed(code: i64) -> bool {
    matches!(
        code,
        PARSE_ERROR | INVALID_REQUEST | METHOD_NOT_FOUND | INVALID_PARAMS
    )
}

/// The routing fields of one message.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    /// The `id` member as written, `null` included (`Some("null")`); `None` when absent.
    pub id: Option<&'a RawValue>,
    /// The method of a request or notification.
    pub method: Option<Cow<'a, str>>,
    /// Present on error replies.
    pub error: Option<&'a RawValue>,
    /// Present on successful replies.
    pub result: Option<&'a RawValue>,
    /// The request's parameters, unparsed: only `tools/call` and `tools/list` look inside.
    pub params: Option<&'a RawValue>,
    /// A top-level key that is not one of the members above but equals one of them under
    /// case folding (`Method`, `ID`, `ſesult`): serde skips it, Go's `encoding/json` reads it
    /// as the member. A message with one is refused, or dropped from the upstream.
    pub shadow: Option<String>,
    /// Whether the whole line is UTF-8 (and was read as text). A line that is not was read
    /// as bytes, and serde skips the strings it does not read without checking them.
    pub utf8: bool,
}

/// The members [`Envelope`] reads (and `jsonrpc`, which it checks for duplicates only).
const MEMBERS: [&str; 6] = ["jsonrpc", "id", "method", "error", "result", "params"];

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC message (an object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut e = Envelope::default();
                let mut jsonrpc = false;
                fn once<T, E: de::Error>(slot: &Option<T>, name: &str) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::custom(format_args!("duplicate field `{name}`"))),
                        None => Ok(()),
                    }
                }
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match key.as_ref() {
                        "id" => {
                            once(&e.id, "id")?;
                            e.id = Some(map.next_value()?);
                        }
                        "method" => {
                            once(&e.method, "method")?;
                            e.method = Some(map.next_value::<Text<'de>>()?.0);
                        }
                        "error" => {
                            once(&e.error, "error")?;
                            e.error = Some(map.next_value()?);
                        }
                        "result" => {
                            once(&e.result, "result")?;
                            e.result = Some(map.next_value()?);
                        }
                        "params" => {
                            once(&e.params, "params")?;
                            e.params = Some(map.next_value()?);
                        }
                        "jsonrpc" => {
                            if std::mem::replace(&mut jsonrpc, true) {
                                return Err(de::Error::custom("duplicate field `jsonrpc`"));
                            }
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        other => {
                            if e.shadow.is_none() && MEMBERS.contains(&fold_key(other).as_ref()) {
                                e.shadow = Some(other.to_owned());
                            }
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string or an object key, borrowed from the line when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The params of a `tools/call`: the tool's name, the arguments as the client wrote them, and
/// the first key that differs only in case from `name`, `arguments` or `_meta` (`Name` beside
/// or instead of `name`), which the gateway would not read and a case-insensitive server
/// would. One reading finds all three: the params are not read a second time for the keys.
#[derive(Debug)]
pub struct CallParams<'a> {
    /// The tool's name (borrowed from the line when it has no escapes).
    pub name: Cow<'a, str>,
    /// Borrowed as the client wrote it: a plugin is handed this text, not a copy written
    /// from the parsed value.
    pub arguments: Option<&'a RawValue>,
    /// A key some server would read as `name`, `arguments` or `_meta`.
    pub shadow: Option<String>,
}

impl<'de> Deserialize<'de> for CallParams<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const PARAMS: [&str; 3] = ["name", "arguments", "_meta"];
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CallParams<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("struct CallParams")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut name, mut arguments, mut shadow) = (None, None, None);
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "name" if name.is_some() => return Err(de::Error::duplicate_field("name")),
                        "name" => name = Some(map.next_value::<Text<'de>>()?.0),
                        "arguments" if arguments.is_some() => {
                            return Err(de::Error::duplicate_field("arguments"))
                        }
                        "arguments" => arguments = Some(map.next_value::<Option<&'de RawValue>>()?),
                        other => {
                            if shadow.is_none()
                                && !PARAMS.contains(&other)
                                && PARAMS.contains(&fold_key(other).as_ref())
                            {
                                shadow = Some(other.to_owned());
                            }
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(CallParams {
                    name: name.ok_or_else(|| de::Error::missing_field("name"))?,
                    arguments: arguments.flatten(),
                    shadow,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Names as the gateway reads them, by how a case-insensitive reader would see them: to
/// find a key that such a reader takes for one of the names while the gateway does not.
#[derive(Debug, Default)]
pub(crate) struct Spellings(std::collections::HashMap<String, Vec<String>>);

impl Spellings {
    /// The spellings of `names`.
    pub(crate) fn of<'n>(names: impl IntoIterator<Item = &'n str>) -> Self {
        let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
        for name in names {
            let spellings = map.entry(fold_key(name).into_owned()).or_default();
            if !spellings.iter().any(|s| s == name) {
                spellings.push(name.to_owned());
            }
        }
        Self(map)
    }

    /// No names at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` folds to one of the names without being spelled as one.
    pub fn shadows(&self, key: &str) -> bool {
        self.0
            .get(fold_key(key).as_ref())
            .is_some_and(|spellings| !spellings.iter().any(|s| s == key))
    }
}

/// Why a line could not be routed, as a JSON-RPC error code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Fault {
    /// The JSON-RPC error code.
    pub code: i64,
    /// What was wrong.
    pub message: String,
}

fn classify(e: &serde_json::Error) -> i64 {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => PARSE_ERROR,
        Category::Data => INVALID_REQUEST,
    }
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
        // Read as text when it is UTF-8 (almost always): serde then checks no string's
        // encoding again, nor the raw params'. Otherwise as bytes, for serde's own error.
        match std::str::from_utf8(line) {
            Ok(text) => serde_json::from_str(text).map(|e| Envelope { utf8: true, ..e }),
            Err(_) => serde_json::from_slice(line),
        }
        .map_err(|e| {
            let code = classify(&e);
            let kind = if code == PARSE_ERROR {
                "parse error"
            } else {
                "invalid request"
            };
            Fault {
                code,
                message: format!("{kind}: {e}"),
            }
        })
    }

    /// The canonical key of the id, if there is one: its text re-encoded, so that spellings
    /// of one id (whitespace, escapes) have one key.
    pub fn id_key(&self) -> Option<String> {
        self.id.map(|raw| id_key(raw.get()))
    }

    /// The numeric `error.code` of an error reply.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(Deserialize)]
        struct Code {
            code: i64,
        }
        self.error
            .and_then(|raw| serde_json::from_str::<Code>(raw.get()).ok())
            .map(|c| c.code)
    }
}

/// What kind of value a request id is. MCP requires a string or an integer, and not null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    /// A JSON string.
    String,
    /// A JSON number written as an integer: `-?[0-9]+`, no fraction, no exponent.
    Integer,
    /// `null`, a fraction or exponent (`1.0`, `1e0`), a boolean, an object or an array.
    Invalid,
}

/// Classifies a raw id as written.
pub(crate) fn id_kind(raw: &RawValue) -> IdKind {
    let text = raw.get().as_bytes();
    match text.first() {
        Some(b'"') => IdKind::String,
        Some(b'-' | b'0'..=b'9') => {
            let digits = text.strip_prefix(b"-").unwrap_or(text);
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                IdKind::Integer
            } else {
                IdKind::Invalid
            }
        }
        _ => IdKind::Invalid,
    }
}

/// Reads an id the gateway itself gave (an unsigned integer), however the peer spelled the
/// number back: a JavaScript peer may answer `7` for `7.0` and a Python one `7.0` for `7`.
pub(crate) fn gateway_id(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let n: f64 = serde_json::from_str(text).ok()?;
    // Below 2^53 every integer is exact as f64; the gateway's ids never get near it.
    (n.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&n)).then_some(n as u64)
}

/// Canonical text of a raw id (re-encoded, so whitespace and escapes do not matter).
pub(crate) fn id_key(raw: &str) -> String {
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

/// `line` with the bytes of `value` (a slice of `line`, as a borrowed [`RawValue`] is)
/// replaced by `with`. `None` if `value` does not lie within `line`.
pub(crate) fn splice(line: &[u8], value: &RawValue, with: &[u8]) -> Option<Vec<u8>> {
    let range = line.as_ptr_range();
    let start = value.get().as_ptr();
    if !range.contains(&start) {
        return None;
    }
    let offset = start as usize - line.as_ptr() as usize;
    let end = offset + value.get().len();
    let mut out = Vec::with_capacity(line.len() + with.len());
    out.extend_from_slice(&line[..offset]);
    out.extend_from_slice(with);
    out.extend_from_slice(line.get(end..)?);
    Some(out)
}

/// A reply line carrying `result`.
pub(crate) fn result_line(id: &RawValue, result: &Value) -> Vec<u8> {
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
pub(crate) fn error_line(id: Option<&RawValue>, code: i64, message: &str) -> Vec<u8> {
    let id = id.map_or("null", |raw| raw.get());
    let error = json!({"code": code, "message": message});
    let mut line = format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes();
    line.push(b'\n');
    line
}

/// Refuses a message with two keys in one object that some upstream stack would read as
/// one: equal, or equal after Unicode case folding, at any depth. Also refuses what serde
/// cannot decode (lone surrogates, nesting deeper than 128), since other stacks decode it
/// differently.
pub fn check_keys(line: &[u8]) -> Result<(), Fault> {
    // As text when it is UTF-8, as `Envelope::parse` reads it (see there).
    match std::str::from_utf8(line) {
        Ok(text) => {
            let mut de = serde_json::Deserializer::from_str(text);
            Checked.deserialize(&mut de).and_then(|()| de.end())
        }
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(line);
            Checked.deserialize(&mut de).and_then(|()| de.end())
        }
    }
    .map_err(|e| Fault {
        code: classify(&e).max(INVALID_REQUEST),
        message: format!("invalid request: {e}"),
    })
}

/// The key under which Go's `encoding/json` (and any case-insensitive reader) would match
/// `key`. Folding through upper then lower case maps `ſ` to `s` and the Kelvin sign to `k`,
/// as Go does; it folds a little more than Unicode's simple folding (`ß` meets `ss`), which
/// only ever refuses more.
pub fn fold_key(key: &str) -> Cow<'_, str> {
    if key.is_ascii() {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(key.to_ascii_lowercase())
        } else {
            Cow::Borrowed(key)
        }
    } else {
        Cow::Owned(
            key.chars()
                .flat_map(char::to_uppercase)
                .flat_map(char::to_lowercase)
                .collect(),
        )
    }
}

/// Visits a whole JSON value, checking every object's keys.
struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Objects with more keys than this are checked through a hash set rather than a scan.
const SCAN_KEYS: usize = 16;

impl<'de> Visitor<'de> for Checked {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // On the stack: every message has a few objects, and each one's keys were a heap
        // allocation of their own.
        let mut few: smallvec::SmallVec<[Cow<'de, str>; SCAN_KEYS]> = smallvec::SmallVec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let folded = match fold_key(&key) {
                Cow::Borrowed(_) => key.clone(),
                Cow::Owned(folded) => Cow::Owned(folded),
            };
            let repeated = if many.is_empty() && few.len() < SCAN_KEYS {
                let repeated = few.contains(&folded);
                few.push(folded);
                repeated
            } else {
                if many.is_empty() {
                    many.extend(few.drain(..));
                }
                !many.insert(folded)
            };
            if repeated {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{key}`: an object may not name a key twice, nor two keys that differ only in case"
                )));
            }
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "jsonrpc_tests.rs"]
mod tests;
