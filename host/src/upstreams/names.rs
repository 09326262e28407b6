//! Namespacing: how one upstream's tools, prompts and resources are told apart from another's,
//! and the cursor that pages through every upstream's listing at once.
//!
//! - Tools and prompts: `{prefix}{separator}{name}` (`llmgw__session_create`). The prefix is
//!   the upstream's name unless its spec sets one; the separator is the set's (`__` by
//!   default). Both are checked to be MCP tool-name characters (`A-Z a-z 0-9 _ - .`), so a
//!   namespaced name is one too.
//! - Resources: `{name}+{uri}` (`everything+test://static/resource/1`): an upstream name is
//!   `[A-Za-z][A-Za-z0-9-]*`, so the result is still a URI, with the scheme `everything+test`.
//!   Resource templates get the same prefix, which leaves their variables alone.
//!
//! A name is split at the first separator after a known prefix, longest prefix first: with
//! prefixes `a` and `a__b` and separator `__`, `a__b__c` is `c` of `a__b`. Config loading
//! refuses two prefixes of which one, plus the separator, starts the other, so no name can be
//! read two ways.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Checks an upstream's name: it becomes a URI scheme's first part and a default prefix.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || name.len() > 32 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "upstream name `{name}` must be 1-32 characters: a letter, then letters, digits and `-`"
        ));
    }
    Ok(())
}

/// Checks a prefix or separator: MCP tool-name characters only, not empty.
pub fn check_tool_chars(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.len() > 64
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{what} `{text}` must be 1-64 MCP tool-name characters (letters, digits, `_`, `-`, `.`)"
        ));
    }
    Ok(())
}

/// How the names of a set of upstreams are made and read back.
#[derive(Clone, Debug)]
pub struct Names {
    separator: String,
    /// Each upstream's tool prefix and name, by upstream index.
    prefixes: Vec<String>,
    names: Vec<String>,
    /// Upstream indexes, longest prefix first.
    by_length: Vec<usize>,
}

impl Names {
    /// The names of upstreams given as `(name, prefix)`; errors name the clash.
    pub fn new(separator: &str, upstreams: &[(String, String)]) -> Result<Self, String> {
        check_tool_chars("separator", separator)?;
        for (i, (name, prefix)) in upstreams.iter().enumerate() {
            check_name(name)?;
            check_tool_chars("prefix", prefix)?;
            for (other, other_prefix) in &upstreams[..i] {
                if other == name {
                    return Err(format!("two upstreams are named `{name}`"));
                }
                let (a, b) = (
                    format!("{prefix}{separator}"),
                    format!("{other_prefix}{separator}"),
                );
                if a.starts_with(&b) || b.starts_with(&a) {
                    return Err(format!(
                        "the tool prefixes of upstreams `{other}` and `{name}` overlap (`{other_prefix}` and `{prefix}` with separator `{separator}`): a tool name could belong to either"
                    ));
                }
            }
        }
        let mut by_length: Vec<usize> = (0..upstreams.len()).collect();
        by_length.sort_by_key(|&i| std::cmp::Reverse(upstreams[i].1.len()));
        Ok(Self {
            separator: separator.to_owned(),
            prefixes: upstreams.iter().map(|(_, p)| p.clone()).collect(),
            names: upstreams.iter().map(|(n, _)| n.clone()).collect(),
            by_length,
        })
    }

    /// The upstream's name.
    pub fn name(&self, upstream: usize) -> &str {
        &self.names[upstream]
    }

    /// The number of upstreams.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// A tool's or prompt's name as the client sees it.
    pub fn tool(&self, upstream: usize, name: &str) -> String {
        format!("{}{}{name}", self.prefixes[upstream], self.separator)
    }

    /// The upstream and its own name for a namespaced tool or prompt name.
    pub fn split_tool<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        self.by_length.iter().find_map(|&i| {
            let rest = name.strip_prefix(self.prefixes[i].as_str())?;
            let own = rest.strip_prefix(self.separator.as_str())?;
            (!own.is_empty()).then_some((i, own))
        })
    }

    /// A resource URI (or URI template) as the client sees it.
    pub fn uri(&self, upstream: usize, uri: &str) -> String {
        format!("{}+{uri}", self.names[upstream])
    }

    /// The upstream and its own URI for a namespaced one.
    pub fn split_uri<'u>(&self, uri: &'u str) -> Option<(usize, &'u str)> {
        let (name, rest) = uri.split_once('+')?;
        let i = self.names.iter().position(|n| n == name)?;
        (!rest.is_empty()).then_some((i, rest))
    }
}

/// Where a listing across several upstreams has got to: each upstream still to page, with
/// its own cursor (`None`: from its first page). Sent to the client as an opaque cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `(upstream name, its cursor)` pairs.
    #[serde(rename = "p")]
    pub pages: Vec<(String, Option<String>)>,
}

const CURSOR_TAG: &str = "tgc1.";

impl Cursor {
    /// The opaque text the client gets as `nextCursor`.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        format!(
            "{CURSOR_TAG}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Reads a cursor the client sent back; `None` if it is not one of ours.
    pub fn decode(text: &str) -> Option<Self> {
        let body = text.strip_prefix(CURSOR_TAG)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, &str)]) -> Result<Names, String> {
        let list: Vec<_> = list
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        Names::new("__", &list)
    }

    #[test]
    fn tools_round_trip_and_unknown_prefixes_are_none() {
        let n = names(&[("llmgw", "llmgw"), ("everything", "ev")]).unwrap();
        assert_eq!(n.tool(0, "session_create"), "llmgw__session_create");
        assert_eq!(
            n.split_tool("llmgw__session_create"),
            Some((0, "session_create"))
        );
        assert_eq!(n.split_tool("ev__echo"), Some((1, "echo")));
        assert_eq!(n.split_tool("ev__a__b"), Some((1, "a__b")));
        assert_eq!(n.split_tool("everything__echo"), None);
        assert_eq!(n.split_tool("llmgw__"), None);
        assert_eq!(n.split_tool("session_create"), None);
    }

    #[test]
    fn overlapping_prefixes_and_bad_names_are_refused() {
        assert!(names(&[("a", "a"), ("b", "a__b")])
            .unwrap_err()
            .contains("overlap"));
        assert!(names(&[("a", "x"), ("a", "y")])
            .unwrap_err()
            .contains("two upstreams"));
        assert!(names(&[("a_b", "ab")])
            .unwrap_err()
            .contains("upstream name"));
        assert!(names(&[("ab", "a b")]).unwrap_err().contains("prefix"));
        assert!(Names::new("/", &[]).unwrap_err().contains("separator"));
        // Prefixes that share a start but not a separator boundary are fine.
        assert!(names(&[("a", "ab"), ("b", "abc")]).is_ok());
    }

    #[test]
    fn uris_round_trip() {
        let n = names(&[("everything", "ev")]).unwrap();
        assert_eq!(
            n.uri(0, "test://static/resource/1"),
            "everything+test://static/resource/1"
        );
        assert_eq!(
            n.split_uri("everything+test://static/resource/{id}"),
            Some((0, "test://static/resource/{id}"))
        );
        assert_eq!(n.split_uri("other+test://x"), None);
        assert_eq!(n.split_uri("test://x"), None);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = Cursor {
            pages: vec![("a".into(), Some("c2".into())), ("b".into(), None)],
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("c2"), None);
        assert_eq!(Cursor::decode("tgc1.!!"), None);
    }
}
