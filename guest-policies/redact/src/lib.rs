//! `redact`: replaces secrets in tool results before the client (the agent) sees them.
//!
//! `evaluate` allows every call. `after-call` looks for secrets in the `text` of the result's
//! text content items, the `text` of embedded text resources, and every string value of
//! `structuredContent` (at any depth; keys are left alone), and replaces each with
//! `replacement`. When it replaced anything, the client gets the rewritten result
//! (`replace`), with `_meta.toolgate.redactions` set to the count (merged into an existing
//! `_meta`); otherwise it passes, and the client gets the upstream's bytes unchanged.
//!
//! The built-in patterns (`"defaults": false` turns them off), each a prefix that starts a
//! word (no letter, digit or `_` right before it) and a run of token characters:
//! - Anthropic keys `sk-ant-…` and OpenAI-style keys `sk-…` (`sk-proj-…`, `sk-svcacct-…`):
//!   20 or more of `A-Za-z0-9_-`;
//! - GitHub tokens `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` (20 or more of `A-Za-z0-9`) and
//!   fine-grained `github_pat_` (20 or more of `A-Za-z0-9_`);
//! - AWS access key ids `AKIA…`/`ASIA…`: exactly 16 of `A-Z0-9`;
//! - `Bearer <token>` (any case): the token, 16 or more of `A-Za-z0-9._~+/=-`, is replaced
//!   and the word `Bearer` kept.
//!
//! `patterns` adds more: `{"prefix": "xoxb-", "charset": "A-Za-z0-9-", "min_len": 10}` (also
//! `max_len`, `ignore_case`, `keep_prefix`, `name`). No regexes: the `regex` crate's compiler
//! seeds its hash maps from the system's randomness, an import the sandbox does not grant
//! (the plugin would trap on the first result).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::rc::Rc;

wit_bindgen::generate!({ path: "../../wit/v0.3.0", world: "policy-with-results" });

/// What a secret becomes, unless the config says otherwise.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";
/// The longest prefix or replacement a config may give, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// The most patterns a config may add.
pub const MAX_PATTERNS: usize = 64;

/// The plugin's configuration (all keys optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Whether the built-in patterns apply.
    pub defaults: bool,
    /// More patterns.
    pub patterns: Vec<PatternSpec>,
    /// What each secret is replaced with.
    pub replacement: String,
    /// Whether the strings of `structuredContent` are redacted too.
    pub structured_content: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            defaults: true,
            patterns: Vec::new(),
            replacement: DEFAULT_REPLACEMENT.into(),
            structured_content: true,
        }
    }
}

/// One pattern of the config: a prefix and a run of characters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternSpec {
    /// A label, for messages.
    pub name: Option<String>,
    /// The literal (ASCII) the secret starts with.
    pub prefix: String,
    /// The characters of the secret after its prefix, as ranges and single characters
    /// (`A-Za-z0-9_-`, a `-` first or last is itself). Default `A-Za-z0-9_-`.
    pub charset: Option<String>,
    /// The fewest characters after the prefix (default 16).
    pub min_len: Option<usize>,
    /// The most characters after the prefix: a longer run is not this secret.
    pub max_len: Option<usize>,
    /// Whether the prefix matches in any case.
    pub ignore_case: bool,
    /// Whether the prefix stays and only what follows is replaced.
    pub keep_prefix: bool,
}

/// A prefix and a run of token characters.
#[derive(Debug, Clone)]
pub struct Prefix {
    prefix: Vec<u8>,
    ignore_case: bool,
    charset: [bool; 128],
    min: usize,
    max: usize,
    keep_prefix: bool,
}

impl Prefix {
    fn new(prefix: &str, charset: &str, min: usize, max: usize) -> Self {
        Self {
            prefix: prefix.as_bytes().to_vec(),
            ignore_case: false,
            charset: parse_charset(charset).expect("a built-in charset parses"),
            min,
            max,
            keep_prefix: false,
        }
    }

    fn starts_at(&self, text: &[u8], at: usize) -> bool {
        // Byte by byte, not `==` (a call to `memcmp`): prefixes are short, and this runs at
        // every candidate position.
        let Some(text) = text.get(at..at + self.prefix.len()) else {
            return false;
        };
        let mut i = 0;
        while i < text.len() {
            let (a, b) = (text[i], self.prefix[i]);
            if !(a == b || (self.ignore_case && a.eq_ignore_ascii_case(&b))) {
                return false;
            }
            i += 1;
        }
        true
    }

    fn allows(&self, byte: u8) -> bool {
        byte < 128 && self.charset[usize::from(byte & 127)]
    }

    /// How many bytes from `start` are of the token's charset (or, with `escapes`, `\\`).
    fn run(&self, bytes: &[u8], start: usize, escapes: bool) -> usize {
        let mut end = start;
        while end < bytes.len() && (self.allows(bytes[end]) || (escapes && bytes[end] == b'\\')) {
            end += 1;
        }
        end - start
    }
}

/// A charset like `A-Za-z0-9_-` as a table over ASCII.
fn parse_charset(spec: &str) -> Result<[bool; 128], String> {
    if spec.is_empty() || !spec.is_ascii() {
        return Err(format!("charset `{spec}` must be non-empty ASCII"));
    }
    let mut set = [false; 128];
    let b = spec.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if i + 2 < b.len() && b[i + 1] == b'-' {
            let (lo, hi) = (b[i], b[i + 2]);
            if lo > hi {
                return Err(format!(
                    "charset `{spec}` has the backwards range `{}-{}`",
                    lo as char, hi as char
                ));
            }
            for c in lo..=hi {
                set[c as usize] = true;
            }
            i += 3;
        } else {
            set[b[i] as usize] = true;
            i += 1;
        }
    }
    Ok(set)
}

/// The built-in patterns, most specific first (the first to match at a position wins).
fn defaults() -> Vec<Prefix> {
    const KEY: &str = "A-Za-z0-9_-";
    let mut patterns = vec![
        Prefix::new("sk-ant-", KEY, 20, usize::MAX),
        Prefix::new("sk-", KEY, 20, usize::MAX),
        Prefix::new("github_pat_", "A-Za-z0-9_", 20, usize::MAX),
    ];
    for github in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        patterns.push(Prefix::new(github, "A-Za-z0-9", 20, usize::MAX));
    }
    for aws in ["AKIA", "ASIA"] {
        patterns.push(Prefix::new(aws, "A-Z0-9", 16, 16));
    }
    let mut bearer = Prefix::new("bearer ", "A-Za-z0-9._~+/=-", 16, usize::MAX);
    bearer.ignore_case = true;
    bearer.keep_prefix = true;
    patterns.push(bearer);
    patterns
}

/// A config, compiled.
pub struct Redactor {
    prefixes: Vec<Prefix>,
    /// The prefixes by their first byte (both cases for `ignore_case`), in config order: most
    /// bytes of a text start none, and cost one lookup.
    by_first: Vec<Vec<usize>>,
    /// Whether a prefix starts with the two bytes (in either case for `ignore_case`), or they
    /// are `\\u` (a JSON escape, which could hide a prefix in raw JSON text): the scans' one
    /// lookup per byte.
    pairs: Box<[bool; 1 << 16]>,
    replacement: String,
    structured_content: bool,
}

/// Reads, checks and compiles a config: unknown keys and bad values are errors.
pub fn compile(text: &str) -> Result<Redactor, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config =
        serde_json::from_str(text).map_err(|e| format!("invalid redact config: {e}"))?;
    let bad = |why: String| format!("invalid redact config: {why}");
    if config.replacement.len() > MAX_PATTERN_BYTES {
        return Err(bad(format!(
            "replacement is over {MAX_PATTERN_BYTES} bytes"
        )));
    }
    if config.patterns.len() > MAX_PATTERNS {
        return Err(bad(format!("more than {MAX_PATTERNS} patterns")));
    }
    let mut prefixes = if config.defaults {
        defaults()
    } else {
        Vec::new()
    };
    for (i, p) in config.patterns.iter().enumerate() {
        let label = match &p.name {
            Some(name) => format!("pattern {i} (`{name}`)"),
            None => format!("pattern {i}"),
        };
        if p.prefix.is_empty() || !p.prefix.is_ascii() || p.prefix.len() > MAX_PATTERN_BYTES {
            return Err(bad(format!(
                "{label}: prefix must be 1 to {MAX_PATTERN_BYTES} ASCII bytes"
            )));
        }
        let charset = parse_charset(p.charset.as_deref().unwrap_or("A-Za-z0-9_-"))
            .map_err(|e| bad(format!("{label}: {e}")))?;
        let min = p.min_len.unwrap_or(16);
        let max = p.max_len.unwrap_or(usize::MAX);
        if min == 0 || max < min {
            return Err(bad(format!(
                "{label}: min_len must be at least 1 and max_len at least min_len"
            )));
        }
        prefixes.push(Prefix {
            prefix: p.prefix.as_bytes().to_vec(),
            ignore_case: p.ignore_case,
            charset,
            min,
            max,
            keep_prefix: p.keep_prefix,
        });
    }
    let mut by_first = vec![Vec::new(); 256];
    for (i, p) in prefixes.iter().enumerate() {
        let first = p.prefix[0];
        let mut firsts = vec![first];
        if p.ignore_case {
            firsts = vec![first.to_ascii_lowercase(), first.to_ascii_uppercase()];
            firsts.dedup();
        }
        for b in firsts {
            by_first[b as usize].push(i);
        }
    }
    let mut pairs = Box::new([false; 1 << 16]);
    pairs[pair(b'\\', b'u')] = true;
    for p in &prefixes {
        let cases = |b: u8| {
            if p.ignore_case {
                [b.to_ascii_lowercase(), b.to_ascii_uppercase()]
            } else {
                [b, b]
            }
        };
        for first in cases(p.prefix[0]) {
            match p.prefix.get(1) {
                Some(&second) => {
                    for second in cases(second) {
                        pairs[pair(first, second)] = true;
                    }
                }
                // A one-byte prefix: any byte may follow (it is the token's, or not).
                None => (0..=255).for_each(|second| pairs[pair(first, second)] = true),
            }
        }
    }
    Ok(Redactor {
        prefixes,
        by_first,
        pairs,
        replacement: config.replacement,
        structured_content: config.structured_content,
    })
}

/// The index of two bytes in [`Redactor::pairs`].
fn pair(first: u8, second: u8) -> usize {
    usize::from(first) << 8 | usize::from(second)
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

impl Redactor {
    /// The first position at or after `from` where a prefix (or `\\u`) may start. A prefix
    /// of one byte at the very end starts no secret (no token follows), so pairs suffice.
    fn candidate(&self, bytes: &[u8], from: usize) -> Option<usize> {
        let rest = bytes.get(from..)?;
        let hit = |a: u8, b: u8| self.pairs[pair(a, b)];
        // Four positions a step while none is a hit (a loop's own cost is most of a scan's),
        // then one at a time.
        let mut i = 0;
        while let Some(c) = rest.get(i..i + 5) {
            if hit(c[0], c[1]) || hit(c[1], c[2]) || hit(c[2], c[3]) || hit(c[3], c[4]) {
                break;
            }
            i += 4;
        }
        while let Some(c) = rest.get(i..i + 2) {
            if hit(c[0], c[1]) {
                return Some(from + i);
            }
            i += 1;
        }
        None
    }

    /// Whether `raw`, the JSON text of a result, may hold a secret: a prefix followed by at
    /// least its `min_len` characters of its charset or `\\` (an escape, which decodes to one
    /// character or part of one), anywhere, or a `\\u` escape (which could hide a prefix). A
    /// superset of what redacting the decoded strings finds, run before paying to parse:
    /// about ten instructions a byte.
    pub fn might_match(&self, raw: &str) -> bool {
        let bytes = raw.as_bytes();
        let mut at = 0;
        while let Some(found) = self.candidate(bytes, at) {
            if bytes[found] == b'\\' && bytes.get(found + 1) == Some(&b'u') {
                return true;
            }
            for p in self.by_first[bytes[found] as usize]
                .iter()
                .map(|&i| &self.prefixes[i])
            {
                if p.starts_at(bytes, found) {
                    let start = found + p.prefix.len();
                    if p.run(bytes, start, true) >= p.min {
                        return true;
                    }
                }
            }
            at = found + 1;
        }
        false
    }

    /// `text` with every secret replaced, and how many were; `None` when there were none.
    pub fn redact(&self, text: &str) -> Option<(String, usize)> {
        let mut count = 0;
        let mut out = String::new();
        let bytes = text.as_bytes();
        let (mut copied, mut at) = (0, 0);
        'scan: while let Some(found) = self.candidate(bytes, at) {
            at = found;
            if at == 0 || !is_word(bytes[at - 1]) {
                for p in self.by_first[bytes[at] as usize]
                    .iter()
                    .map(|&i| &self.prefixes[i])
                {
                    if !p.starts_at(bytes, at) {
                        continue;
                    }
                    let start = at + p.prefix.len();
                    let end = start + p.run(bytes, start, false);
                    if (p.min..=p.max).contains(&(end - start)) {
                        // Every prefix and charset is ASCII: both ends are char boundaries.
                        let cut = if p.keep_prefix { start } else { at };
                        out.push_str(&text[copied..cut]);
                        out.push_str(&self.replacement);
                        (copied, at) = (end, end);
                        count += 1;
                        continue 'scan;
                    }
                }
            }
            at += 1;
        }
        if count == 0 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some((out, count))
    }

    /// Redacts one string in place; how many secrets it held.
    fn redact_in_place(&self, value: &mut Value) -> usize {
        match value {
            Value::String(s) => match self.redact(s) {
                Some((redacted, n)) => {
                    *s = redacted;
                    n
                }
                None => 0,
            },
            _ => 0,
        }
    }

    /// Every string value in `value`, at any depth.
    fn redact_all(&self, value: &mut Value) -> usize {
        match value {
            Value::String(_) => self.redact_in_place(value),
            Value::Array(items) => items.iter_mut().map(|v| self.redact_all(v)).sum(),
            Value::Object(members) => members.values_mut().map(|v| self.redact_all(v)).sum(),
            _ => 0,
        }
    }

    /// The result (JSON text of a `CallToolResult`) with its secrets replaced and
    /// `_meta.toolgate.redactions` set, and how many there were; `None` when there were none
    /// (or it is not a JSON object).
    pub fn redact_result(&self, result: &str) -> Option<(String, usize)> {
        // Most results hold no secret: then there is nothing to parse.
        if !self.might_match(result) {
            return None;
        }
        let Ok(Value::Object(mut result)) = serde_json::from_str::<Value>(result) else {
            return None;
        };
        let mut count = 0;
        if let Some(Value::Array(items)) = result.get_mut("content") {
            for item in items.iter_mut() {
                let Some(item) = item.as_object_mut() else {
                    continue;
                };
                let text = match item.get("type").and_then(Value::as_str) {
                    Some("text") => item.get_mut("text"),
                    Some("resource") => item
                        .get_mut("resource")
                        .and_then(Value::as_object_mut)
                        .and_then(|r| r.get_mut("text")),
                    _ => None,
                };
                if let Some(text) = text {
                    count += self.redact_in_place(text);
                }
            }
        }
        if self.structured_content {
            if let Some(structured) = result.get_mut("structuredContent") {
                count += self.redact_all(structured);
            }
        }
        if count == 0 {
            return None;
        }
        note(&mut result, count);
        Some((Value::Object(result).to_string(), count))
    }
}

/// Sets `_meta.toolgate.redactions` (adding to a count an earlier use left there), keeping
/// the rest of `_meta` and of `_meta.toolgate`. A `_meta` or `toolgate` that is not an object
/// is replaced.
fn note(result: &mut Map<String, Value>, count: usize) {
    let object = |v: &mut Value| {
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
    };
    let meta = result.entry("_meta").or_insert(Value::Null);
    object(meta);
    let toolgate = meta
        .as_object_mut()
        .expect("made an object")
        .entry("toolgate")
        .or_insert(Value::Null);
    object(toolgate);
    let toolgate = toolgate.as_object_mut().expect("made an object");
    let before = toolgate
        .get("redactions")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    toolgate.insert("redactions".into(), (before + count as u64).into());
}

thread_local! {
    /// The last config compiled, by its text: compiled once per instance, not per call.
    static COMPILED: RefCell<Option<(String, Rc<Redactor>)>> = const { RefCell::new(None) };
}

fn redactor(config: &str) -> Result<Rc<Redactor>, String> {
    if let Some(hit) = COMPILED.with_borrow(|c| {
        c.as_ref()
            .filter(|(text, _)| text == config)
            .map(|(_, r)| r.clone())
    }) {
        return Ok(hit);
    }
    let compiled = Rc::new(compile(config)?);
    COMPILED.set(Some((config.to_owned(), compiled.clone())));
    Ok(compiled)
}

struct Redact;

impl Guest for Redact {
    fn evaluate(_call: ToolCall, _config: String) -> Decision {
        Decision::Allow
    }

    fn after_call(_call: ToolCall, result: String, config: String) -> ResultVerdict {
        // A config the load accepted always compiles; were it not to, nothing unredacted
        // gets through.
        let redactor = match redactor(&config) {
            Ok(redactor) => redactor,
            Err(e) => return ResultVerdict::Refuse(e),
        };
        match redactor.redact_result(&result) {
            Some((redacted, _)) => ResultVerdict::Replace(redacted),
            None => ResultVerdict::Pass,
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        compile(&config).map(|_| ())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "redact".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Replaces secrets (API keys, tokens) in tool results".into(),
        }
    }
}

export!(Redact);

#[cfg(test)]
mod tests;
