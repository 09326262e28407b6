//! A tool's risk class from its MCP annotations, and the record of why.
//!
//! The MCP spec's defaults for an absent hint are `readOnlyHint: false`,
//! `destructiveHint: true`, `idempotentHint: false` and `openWorldHint: true`: a tool that says
//! nothing is assumed to write, destroy and reach outside. The classes follow them, and every
//! hint used is recorded as declared or as a default, so that a default is never shown as
//! though the server had said it.

use crate::policy::RiskClass;
use serde::Serialize;
use serde_json::{Map, Value};

/// The four behaviour hints, in the order they are reported.
pub const HINTS: [(&str, bool); 4] = [
    ("readOnlyHint", false),
    ("destructiveHint", true),
    ("idempotentHint", false),
    ("openWorldHint", true),
];

/// Where a hint's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The server declared it.
    Declared,
    /// The server did not: the spec's default.
    Absent,
    /// The server declared something that is not a boolean: the spec's default.
    NotBoolean,
}

impl Provenance {
    fn label(self) -> &'static str {
        match self {
            Provenance::Declared => "declared",
            Provenance::Absent => "absent: spec default",
            Provenance::NotBoolean => "not a boolean: spec default",
        }
    }
}

/// One hint's value as used, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hint {
    /// `readOnlyHint`, `destructiveHint`, `idempotentHint` or `openWorldHint`.
    pub name: &'static str,
    /// The value used: the declared one, or the spec's default.
    pub value: bool,
    /// Declared, or the default.
    pub provenance: Provenance,
}

/// A tool's class, its open-world flag, and the hints they came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// read, write or destructive.
    pub class: RiskClass,
    /// Whether the tool may reach outside the server (`openWorldHint`).
    pub open_world: bool,
    /// All four hints, as used.
    pub hints: Vec<Hint>,
    /// The hints exactly as declared (without `title`): what `init` records.
    pub declared: Map<String, Value>,
}

/// Reads the hints from a tool's `annotations` (absent or not an object: all defaults).
pub fn classify(tool: &Value) -> Classification {
    let annotations = tool.get("annotations").and_then(Value::as_object);
    let hints: Vec<Hint> = HINTS
        .iter()
        .map(
            |&(name, default)| match annotations.and_then(|a| a.get(name)) {
                None => Hint {
                    name,
                    value: default,
                    provenance: Provenance::Absent,
                },
                Some(Value::Bool(value)) => Hint {
                    name,
                    value: *value,
                    provenance: Provenance::Declared,
                },
                Some(_) => Hint {
                    name,
                    value: default,
                    provenance: Provenance::NotBoolean,
                },
            },
        )
        .collect();
    let (read_only, destructive, open_world) = (hints[0].value, hints[1].value, hints[3].value);
    let class = if read_only {
        RiskClass::Read
    } else if destructive {
        RiskClass::Destructive
    } else {
        RiskClass::Write
    };
    let declared = annotations
        .map(|a| {
            a.iter()
                .filter(|(k, _)| HINTS.iter().any(|(name, _)| name == k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Classification {
        class,
        open_world,
        hints,
        declared,
    }
}

impl Classification {
    /// The hints that decided the class: `readOnlyHint` alone for a read tool, with
    /// `destructiveHint` otherwise (the spec gives it meaning only when not read-only).
    fn deciding(&self) -> &[Hint] {
        if self.class == RiskClass::Read {
            &self.hints[..1]
        } else {
            &self.hints[..2]
        }
    }

    /// Why the class: `readOnlyHint false, destructiveHint false (declared)`, each run of hints
    /// followed by where its values came from.
    pub fn class_why(&self) -> String {
        describe(self.deciding())
    }

    /// Why the class and the flag: [`Self::class_why`], then `; openWorldHint ...`.
    pub fn why(&self) -> String {
        format!("{}; {}", self.class_why(), describe(&self.hints[3..]))
    }
}

/// `a true, b false (declared), c true (absent: spec default)`.
fn describe(hints: &[Hint]) -> String {
    let mut out = String::new();
    for (i, hint) in hints.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("{} {}", hint.name, hint.value));
        let last_of_run = hints
            .get(i + 1)
            .is_none_or(|next| next.provenance != hint.provenance);
        if last_of_run {
            out.push_str(&format!(" ({})", hint.provenance.label()));
        }
    }
    out
}

/// A tool's title: `title`, else `annotations.title`.
pub fn title(tool: &Value) -> Option<&str> {
    tool.get("title")
        .and_then(Value::as_str)
        .or_else(|| tool.pointer("/annotations/title").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[rstest::rstest]
    #[case::declared_read(json!({"readOnlyHint": true}), RiskClass::Read, "readOnlyHint true (declared)")]
    #[case::read_ignores_destructive(json!({"readOnlyHint": true, "destructiveHint": true}), RiskClass::Read, "readOnlyHint true (declared)")]
    #[case::declared_write(json!({"readOnlyHint": false, "destructiveHint": false}), RiskClass::Write, "readOnlyHint false, destructiveHint false (declared)")]
    #[case::write_without_read_only(json!({"destructiveHint": false}), RiskClass::Write, "readOnlyHint false (absent: spec default), destructiveHint false (declared)")]
    #[case::declared_destructive(json!({"readOnlyHint": false, "destructiveHint": true}), RiskClass::Destructive, "readOnlyHint false, destructiveHint true (declared)")]
    #[case::destructive_by_default(json!({"readOnlyHint": false}), RiskClass::Destructive, "readOnlyHint false (declared), destructiveHint true (absent: spec default)")]
    #[case::nothing_declared(json!({}), RiskClass::Destructive, "readOnlyHint false, destructiveHint true (absent: spec default)")]
    #[case::read_only_not_boolean(json!({"readOnlyHint": "yes"}), RiskClass::Destructive, "readOnlyHint false (not a boolean: spec default), destructiveHint true (absent: spec default)")]
    #[case::read_only_false_explicit_title_only(json!({"title": "T"}), RiskClass::Destructive, "readOnlyHint false, destructiveHint true (absent: spec default)")]
    fn classes(#[case] annotations: Value, #[case] class: RiskClass, #[case] why: &str) {
        let c = classify(&json!({"name": "t", "annotations": annotations}));
        assert_eq!((c.class, c.class_why().as_str()), (class, why));
    }

    #[test]
    fn no_annotations_at_all_is_destructive_and_open_world_by_the_spec() {
        let c = classify(&json!({"name": "t"}));
        assert_eq!(c.class, RiskClass::Destructive);
        assert!(c.open_world);
        assert!(c.declared.is_empty());
        assert_eq!(
            c.why(),
            "readOnlyHint false, destructiveHint true (absent: spec default); openWorldHint true (absent: spec default)"
        );
    }

    #[rstest::rstest]
    #[case(json!({"openWorldHint": false}), false, "openWorldHint false (declared)")]
    #[case(json!({"openWorldHint": true}), true, "openWorldHint true (declared)")]
    #[case(json!({}), true, "openWorldHint true (absent: spec default)")]
    fn open_world(#[case] annotations: Value, #[case] flag: bool, #[case] why: &str) {
        let c = classify(&json!({"name": "t", "annotations": annotations}));
        assert_eq!(c.open_world, flag);
        assert!(c.why().ends_with(why), "{}", c.why());
    }

    #[test]
    fn declared_keeps_the_hints_as_written_and_nothing_else() {
        let c = classify(&json!({"name": "t", "annotations":
            {"title": "T", "readOnlyHint": false, "idempotentHint": true, "x-vendor": 1}}));
        assert_eq!(
            Value::Object(c.declared),
            json!({"readOnlyHint": false, "idempotentHint": true})
        );
    }

    #[test]
    fn title_prefers_the_tool_s_own() {
        assert_eq!(
            title(&json!({"title": "A", "annotations": {"title": "B"}})),
            Some("A")
        );
        assert_eq!(title(&json!({"annotations": {"title": "B"}})), Some("B"));
        assert_eq!(title(&json!({})), None);
    }
}
