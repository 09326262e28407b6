//! Where each value of a policy's text is: byte spans by JSON path, so that a load error found
//! on the parsed document (`tools.session_create.limits[1].max`) underlines that very value,
//! not the first text that looks like it.
//!
//! serde_json keeps no positions in what it parses, so the text is walked once more here. It
//! has already parsed by then (the typed pass and the duplicate-key pass both succeeded), so
//! this scanner only has to follow valid JSON; on anything else it stops and keeps what it
//! found, and an error it cannot place falls back to the start of the file. A crate that
//! keeps spans (e.g. `json-spanned-value`) would mean parsing the document a third way with a
//! second JSON reader whose idea of valid might differ from serde_json's; sixty lines over text
//! serde_json has accepted cannot disagree with it.

use std::collections::HashMap;
use std::ops::Range;

/// The spans of one value: its key (for a member of an object) and the value itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    /// The key with its quotes, for an object member.
    pub(crate) key: Option<Range<usize>>,
    /// The whole value: a scalar, or an object or array from its bracket to its closing one.
    pub(crate) value: Range<usize>,
}

/// Every value of a JSON text by path, written as load errors write places: `tools.a`,
/// `tools.a.limits[0].max`; the document itself is the empty path.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    places: HashMap<String, Place>,
}

impl Spans {
    /// Walks `text` once. Object keys are decoded (`"\u0078"` is `x`), as the paths that
    /// errors carry come from decoded documents.
    pub(crate) fn of(text: &str) -> Self {
        let mut scanner = Scanner {
            text,
            at: 0,
            places: HashMap::new(),
        };
        // On text that is not JSON the walk stops early: the places found so far still hold.
        let _ = scanner.value(String::new(), None);
        Self {
            places: scanner.places,
        }
    }

    /// The value at `path`, if the text has one there.
    pub(crate) fn get(&self, path: &str) -> Option<&Place> {
        self.places.get(path)
    }

    /// The bytes to underline for an error at `path`: the value when it fits on one line
    /// (`0`, `"fortnight"`, `{"typo": true}`), else its key (a rule's name rather than all of
    /// its lines), else the value's first byte; `None` when the text has no such path.
    pub(crate) fn underline(&self, text: &str, path: &str) -> Option<Range<usize>> {
        let place = self.get(path)?;
        let value = place.value.clone();
        if !text.get(value.clone())?.contains('\n') {
            return Some(value);
        }
        Some(place.key.clone().unwrap_or(value.start..value.start + 1))
    }
}

struct Scanner<'t> {
    text: &'t str,
    at: usize,
    places: HashMap<String, Place>,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after optional whitespace.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string from its opening quote, returning its span with the quotes.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'"' => break,
                // An escape is two bytes at least (`\"`), and the rest of `\uXXXX` is plain.
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        Some(start..self.at)
    }

    /// One value at `path`, recording it and everything inside it.
    fn value(&mut self, path: String, key: Option<Range<usize>>) -> Option<()> {
        self.skip_whitespace();
        let start = self.at;
        match self.peek()? {
            b'{' => {
                self.at += 1;
                self.skip_whitespace();
                if self.peek()? == b'}' {
                    self.at += 1;
                } else {
                    loop {
                        self.skip_whitespace();
                        let key = self.string()?;
                        let name: String =
                            serde_json::from_str(self.text.get(key.clone())?).ok()?;
                        self.expect(b':')?;
                        let child = if path.is_empty() {
                            name
                        } else {
                            format!("{path}.{name}")
                        };
                        self.value(child, Some(key))?;
                        self.skip_whitespace();
                        match self.peek()? {
                            b',' => self.at += 1,
                            b'}' => {
                                self.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'[' => {
                self.at += 1;
                self.skip_whitespace();
                if self.peek()? == b']' {
                    self.at += 1;
                } else {
                    for index in 0.. {
                        self.value(format!("{path}[{index}]"), None)?;
                        self.skip_whitespace();
                        match self.peek()? {
                            b',' => self.at += 1,
                            b']' => {
                                self.at += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'"' => {
                self.string()?;
            }
            // A number, `true`, `false` or `null`: up to the next delimiter.
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
            }
        }
        let value = start..self.at;
        self.places.insert(path, Place { key, value });
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'t>(text: &'t str, spans: &Spans, path: &str) -> &'t str {
        &text[spans
            .get(path)
            .unwrap_or_else(|| panic!("{path}"))
            .value
            .clone()]
    }

    #[test]
    fn every_value_and_key_has_its_span_by_path() {
        let text = r#"{"version": "1", "tools": {"a": {"limits": [{"max": 1}, {"max": 0}]},
            "b.c": {"require": [{"path": "args.x", "op": "exists"}]}}, "n": [true, null, -1.5e3]}"#;
        let spans = Spans::of(text);
        assert_eq!(at(text, &spans, ""), text);
        assert_eq!(at(text, &spans, "version"), "\"1\"");
        assert_eq!(at(text, &spans, "tools.a.limits[0].max"), "1");
        assert_eq!(at(text, &spans, "tools.a.limits[1].max"), "0");
        assert_eq!(at(text, &spans, "tools.a.limits[1]"), "{\"max\": 0}");
        assert_eq!(at(text, &spans, "tools.b.c.require[0].op"), "\"exists\"");
        assert_eq!(at(text, &spans, "n[1]"), "null");
        assert_eq!(at(text, &spans, "n[2]"), "-1.5e3");
        let key = spans.get("tools.a").unwrap().key.clone().unwrap();
        assert_eq!(&text[key], "\"a\"");
        assert!(spans.get("tools.a.limits[2]").is_none());
    }

    #[test]
    fn keys_are_decoded_and_escapes_do_not_end_strings() {
        let text = r#"{"\u0078": "a \"quoted\" \\ value", "y": {}, "z": []}"#;
        let spans = Spans::of(text);
        assert_eq!(at(text, &spans, "x"), r#""a \"quoted\" \\ value""#);
        assert_eq!(at(text, &spans, "y"), "{}");
        assert_eq!(at(text, &spans, "z"), "[]");
    }

    #[test]
    fn a_value_over_several_lines_is_underlined_at_its_key() {
        let text = "{\"tools\": {\"a\": {\n  \"action\": \"deny\"}}}";
        let spans = Spans::of(text);
        assert_eq!(&text[spans.underline(text, "tools.a").unwrap()], "\"a\"");
        assert_eq!(
            &text[spans.underline(text, "tools.a.action").unwrap()],
            "\"deny\""
        );
        assert_eq!(spans.underline(text, "tools.b"), None);
    }

    /// Never a panic, whatever the text (it is only ever given JSON, but a scanner that can
    /// slice inside a character should not be trusted with that).
    #[test]
    fn text_that_is_not_json_does_not_panic() {
        for text in [
            "\"\\é",
            "{\"é",
            "[1,",
            "{\"a\" 1}",
            "é",
            "",
            "{\"a\":\"\\",
            "]",
        ] {
            let spans = Spans::of(text);
            let _ = spans.underline(text, "");
            let _ = spans.underline(text, "a");
        }
    }

    #[test]
    fn text_that_is_not_json_keeps_what_was_found() {
        let text = r#"{"a": 1, "b": "#;
        let spans = Spans::of(text);
        assert_eq!(at(text, &spans, "a"), "1");
        assert!(spans.get("b").is_none());
    }
}
