//! Conditions in `require` and `deny_if`: `{"path": "args.sessionId", "op": "starts_with", "value": "gw-"}`.
//!
//! A path starts at one of four roots, `args` (the call's arguments), `tool`, `grant` or
//! `session`, and goes down with `.key` and `[index]` (`args.items[0].name`; `args.items.0`
//! also works on arrays). Every condition is checked when the policy loads: an unknown root or
//! operator, a missing or mistyped `value`, or a regex that does not compile fails the load.
//!
//! At call time a path that leads nowhere is *missing*: `exists` is false, `not_exists`, `ne`
//! and `not_in` are true, and every other operator is false. A value of the wrong type for its
//! operator (`gt` on a string, `starts_with` on a number) is an evaluation error, and an error
//! denies the call: policy evaluation fails closed.

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// What a condition is evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    /// The tool's name (`params.name`).
    pub tool: &'a str,
    /// The call's arguments (`params.arguments`; `{}` when absent).
    pub args: &'a Value,
    /// The grant (agent identity) making the call.
    pub grant: &'a str,
    /// The MCP session the call arrived on.
    pub session: &'a str,
    /// The upstream's name (`serverInfo.name` from its `initialize` reply; empty if unknown).
    pub server: &'a str,
    /// The tool's MCP annotations from the upstream's `tools/list`, when it listed them.
    pub annotations: Option<ToolAnnotations>,
}

/// A tool's MCP annotations: hints the upstream gives about it (never guarantees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAnnotations {
    /// `readOnlyHint`
    pub read_only_hint: Option<bool>,
    /// `destructiveHint`
    pub destructive_hint: Option<bool>,
    /// `idempotentHint`
    pub idempotent_hint: Option<bool>,
    /// `openWorldHint`
    pub open_world_hint: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
enum Root {
    Args,
    Tool,
    Grant,
    Session,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A parsed path such as `args.items[0].name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    text: String,
    root: Root,
    steps: Vec<Step>,
}

impl Path {
    /// Parses a path, explaining what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts: Vec<Step> = Vec::new();
        for segment in text.split('.') {
            let (key, mut rest) = match segment.find('[') {
                Some(i) => (&segment[..i], &segment[i..]),
                None => (segment, ""),
            };
            if key.is_empty() && (parts.is_empty() || rest.is_empty()) {
                return Err(format!("path `{text}` has an empty segment"));
            }
            if !key.is_empty() {
                parts.push(Step::Key(key.to_owned()));
            }
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("path `{text}` has an unclosed `[`"))?;
                let index = rest[1..close].parse::<usize>().map_err(|_| {
                    format!("path `{text}`: `{}` is not an array index", &rest[..=close])
                })?;
                parts.push(Step::Index(index));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("path `{text}`: expected `.` or `[` after `]`"));
                }
            }
        }
        let root = match parts.first() {
            Some(Step::Key(k)) if k == "args" => Root::Args,
            Some(Step::Key(k)) if k == "tool" => Root::Tool,
            Some(Step::Key(k)) if k == "grant" => Root::Grant,
            Some(Step::Key(k)) if k == "session" => Root::Session,
            _ => {
                return Err(format!(
                    "path `{text}` must start with `args`, `tool`, `grant` or `session`"
                ))
            }
        };
        if root != Root::Args && parts.len() > 1 {
            return Err(format!("path `{text}`: only `args` has fields"));
        }
        parts.remove(0);
        Ok(Self {
            text: text.to_owned(),
            root,
            steps: parts,
        })
    }

    /// The value at this path in `call`, or `None` when the path leads nowhere.
    pub fn resolve<'v>(
        &self,
        call: &ToolCall<'v>,
        scratch: &'v mut Option<Value>,
    ) -> Option<&'v Value> {
        let start: &'v Value = match self.root {
            Root::Args => call.args,
            Root::Tool => scratch.insert(Value::String(call.tool.to_owned())),
            Root::Grant => scratch.insert(Value::String(call.grant.to_owned())),
            Root::Session => scratch.insert(Value::String(call.session.to_owned())),
        };
        self.steps
            .iter()
            .try_fold(start, |value, step| match (step, value) {
                (Step::Key(k), Value::Object(map)) => map.get(k),
                (Step::Key(k), Value::Array(items)) => {
                    k.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                (Step::Index(i), Value::Array(items)) => items.get(*i),
                _ => None,
            })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The comparison a condition makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (numbers compare by value: `1` equals `1.0`).
    Eq,
    /// Not equal; true when the path is missing.
    Ne,
    /// Greater than: two numbers, or two strings by code point.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Equal to one element of the array `value`.
    In,
    /// Equal to no element of the array `value`; true when the path is missing.
    NotIn,
    /// A string containing the string `value`, or an array containing an element equal to `value`.
    Contains,
    /// A string starting with `value`.
    StartsWith,
    /// A string ending with `value`.
    EndsWith,
    /// A string in which the regex `value` finds a match (anchor it with `^...$` for a full match).
    Regex,
    /// The path leads to a value (`null` counts as a value).
    Exists,
    /// The path leads nowhere.
    NotExists,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::Regex => "regex",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
        }
    }
}

/// A validated condition.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawCondition")]
pub struct Condition {
    path: Path,
    op: Op,
    value: Value,
    regex: Option<Regex>,
}

/// A condition as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    path: String,
    op: Op,
    value: Option<Value>,
}

/// The longest regex source a policy may carry, and the compiled size limit: a regex is
/// linear-time here, but a huge one still costs memory on every policy load.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        let path = Path::parse(&raw.path)?;
        let op = raw.op;
        let needs_value = !matches!(op, Op::Exists | Op::NotExists);
        let value = match (raw.value, needs_value) {
            (Some(v), true) => v,
            (None, true) => return Err(format!("operator `{}` needs a `value`", op.name())),
            (Some(_), false) => return Err(format!("operator `{}` takes no `value`", op.name())),
            (None, false) => Value::Null,
        };
        let mut regex = None;
        match op {
            Op::In | Op::NotIn if !value.is_array() => {
                return Err(format!("operator `{}` needs an array `value`", op.name()))
            }
            Op::Gt | Op::Gte | Op::Lt | Op::Lte if !(value.is_number() || value.is_string()) => {
                return Err(format!(
                    "operator `{}` needs a number or string `value`",
                    op.name()
                ))
            }
            Op::StartsWith | Op::EndsWith | Op::Regex if !value.is_string() => {
                return Err(format!("operator `{}` needs a string `value`", op.name()))
            }
            Op::Regex => {
                let source = value.as_str().unwrap_or_default();
                regex = Some(
                    regex::RegexBuilder::new(source)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| format!("`{source}` is not a valid regex: {e}"))?,
                );
            }
            _ => {}
        }
        Ok(Self {
            path,
            op,
            value,
            regex,
        })
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Condition {
    /// Evaluates the condition. `Err` explains a type mismatch, which the caller turns into a deny.
    pub fn holds(&self, call: &ToolCall<'_>) -> Result<bool, String> {
        let mut scratch = None;
        let Some(actual) = self.path.resolve(call, &mut scratch) else {
            return Ok(matches!(self.op, Op::Ne | Op::NotIn | Op::NotExists));
        };
        let mismatch = || {
            Err(format!(
                "`{}` is {}, which operator `{}` cannot compare with {}",
                self.path,
                type_name(actual),
                self.op.name(),
                type_name(&self.value)
            ))
        };
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Ok(match self.op {
            Op::Eq => json_eq(actual, &self.value),
            Op::Ne => !json_eq(actual, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| json_eq(actual, v))),
            Op::NotIn => !self
                .value
                .as_array()
                .is_some_and(|vs| vs.iter().any(|v| json_eq(actual, v))),
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let ordering = match (actual, &self.value) {
                    (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
                    (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                    _ => return mismatch(),
                };
                let Some(ordering) = ordering else {
                    return mismatch();
                };
                match self.op {
                    Op::Gt => ordering.is_gt(),
                    Op::Gte => ordering.is_ge(),
                    Op::Lt => ordering.is_lt(),
                    _ => ordering.is_le(),
                }
            }
            Op::Contains => match (actual, &self.value) {
                (Value::String(a), Value::String(b)) => a.contains(b.as_str()),
                (Value::Array(items), v) => items.iter().any(|item| json_eq(item, v)),
                _ => return mismatch(),
            },
            Op::StartsWith | Op::EndsWith | Op::Regex => {
                let (Some(a), Some(b)) = (text(actual), text(&self.value)) else {
                    return mismatch();
                };
                match self.op {
                    Op::StartsWith => a.starts_with(&b),
                    Op::EndsWith => a.ends_with(&b),
                    _ => self.regex.as_ref().is_some_and(|r| r.is_match(&a)),
                }
            }
            Op::Exists => true,
            Op::NotExists => false,
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Op::Exists | Op::NotExists => write!(f, "`{}` {}", self.path, self.op.name()),
            _ => write!(f, "`{}` {} {}", self.path, self.op.name(), self.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(v: Value) -> Result<Condition, String> {
        serde_json::from_value::<Condition>(v).map_err(|e| e.to_string())
    }

    fn eval(c: Value, args: Value) -> Result<bool, String> {
        let call = ToolCall {
            tool: "codex_request",
            args: &args,
            grant: "g1",
            session: "s1",
            server: "",
            annotations: None,
        };
        cond(c).unwrap().holds(&call)
    }

    #[rstest::rstest]
    #[case(json!({"path": "args.cli", "op": "eq", "value": "codex"}), json!({"cli": "codex"}), true)]
    #[case(json!({"path": "args.n", "op": "eq", "value": 1}), json!({"n": 1.0}), true)]
    #[case(json!({"path": "args.cli", "op": "ne", "value": "codex"}), json!({}), true)]
    #[case(json!({"path": "args.n", "op": "gt", "value": 10}), json!({"n": 11}), true)]
    #[case(json!({"path": "args.n", "op": "gte", "value": 10}), json!({"n": 10}), true)]
    #[case(json!({"path": "args.n", "op": "lt", "value": 10}), json!({"n": 10}), false)]
    #[case(json!({"path": "args.n", "op": "lte", "value": 10}), json!({"n": 10}), true)]
    #[case(json!({"path": "args.cli", "op": "in", "value": ["a", "b"]}), json!({"cli": "b"}), true)]
    #[case(json!({"path": "args.cli", "op": "not_in", "value": ["a", "b"]}), json!({"cli": "c"}), true)]
    #[case(json!({"path": "args.cli", "op": "not_in", "value": ["a"]}), json!({}), true)]
    #[case(json!({"path": "args.p", "op": "contains", "value": "rm -rf"}), json!({"p": "do rm -rf /"}), true)]
    #[case(json!({"path": "args.tags", "op": "contains", "value": "x"}), json!({"tags": ["y", "x"]}), true)]
    #[case(json!({"path": "args.sessionId", "op": "starts_with", "value": "gw-"}), json!({"sessionId": "gw-1"}), true)]
    #[case(json!({"path": "args.f", "op": "ends_with", "value": ".rs"}), json!({"f": "a.rs"}), true)]
    #[case(json!({"path": "args.id", "op": "regex", "value": "^[0-9a-f-]{36}$"}), json!({"id": "gw-x"}), false)]
    #[case(json!({"path": "args.id", "op": "exists"}), json!({"id": null}), true)]
    #[case(json!({"path": "args.id", "op": "not_exists"}), json!({}), true)]
    #[case(json!({"path": "args.items[1].name", "op": "eq", "value": "b"}), json!({"items": [{"name": "a"}, {"name": "b"}]}), true)]
    #[case(json!({"path": "args.items.0", "op": "eq", "value": 5}), json!({"items": [5]}), true)]
    #[case(json!({"path": "tool", "op": "ends_with", "value": "_request"}), json!({}), true)]
    #[case(json!({"path": "grant", "op": "eq", "value": "g1"}), json!({}), true)]
    #[case(json!({"path": "args.missing", "op": "gt", "value": 1}), json!({}), false)]
    fn operators(#[case] c: Value, #[case] args: Value, #[case] expected: bool) {
        assert_eq!(eval(c, args), Ok(expected));
    }

    #[test]
    fn type_mismatch_is_an_error_not_a_pass() {
        let err = eval(
            json!({"path": "args.n", "op": "gt", "value": 1}),
            json!({"n": "2"}),
        )
        .unwrap_err();
        assert!(err.contains("`args.n` is a string"), "{err}");
        assert!(eval(
            json!({"path": "args.s", "op": "starts_with", "value": "gw-"}),
            json!({"s": 5})
        )
        .is_err());
    }

    #[rstest::rstest]
    #[case(json!({"path": "argz.x", "op": "eq", "value": 1}), "must start with")]
    #[case(json!({"path": "args.x", "op": "equals", "value": 1}), "unknown variant")]
    #[case(json!({"path": "args.x", "op": "eq"}), "needs a `value`")]
    #[case(json!({"path": "args.x", "op": "exists", "value": 1}), "takes no `value`")]
    #[case(json!({"path": "args.x", "op": "in", "value": 1}), "array")]
    #[case(json!({"path": "args.x", "op": "regex", "value": "("}), "not a valid regex")]
    #[case(json!({"path": "args.x[", "op": "exists"}), "unclosed")]
    #[case(json!({"path": "tool.x", "op": "exists"}), "only `args` has fields")]
    #[case(json!({"path": "args.x", "op": "eq", "value": 1, "extra": 2}), "unknown field")]
    fn bad_conditions_fail_to_load(#[case] c: Value, #[case] expected: &str) {
        let err = cond(c).unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
}
