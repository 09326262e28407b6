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

use crate::call::ToolCall;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

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
    /// The object keys this path reads inside `args` (none for other roots).
    pub(crate) fn argument_keys(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .filter(|_| self.root == Root::Args)
            .filter_map(|step| match step {
                Step::Key(key) => Some(key.as_str()),
                Step::Index(_) => None,
            })
    }

    /// Parses a path, explaining what is wrong with a bad one.
    pub(crate) fn parse(text: &str) -> Result<Self, ConditionError> {
        let bad = |problem| ConditionError::Path {
            path: text.to_owned(),
            problem,
        };
        let mut parts: Vec<Step> = Vec::new();
        for segment in text.split('.') {
            let (key, mut rest) = match segment.find('[') {
                Some(i) => (&segment[..i], &segment[i..]),
                None => (segment, ""),
            };
            if key.is_empty() && (parts.is_empty() || rest.is_empty()) {
                return Err(bad(PathProblem::EmptySegment));
            }
            if !key.is_empty() {
                parts.push(Step::Key(key.to_owned()));
            }
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| bad(PathProblem::UnclosedBracket))?;
                let index = rest[1..close]
                    .parse::<usize>()
                    .map_err(|_| bad(PathProblem::NotAnIndex(rest[..=close].to_owned())))?;
                parts.push(Step::Index(index));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(bad(PathProblem::AfterBracket));
                }
            }
        }
        let root = match parts.first() {
            Some(Step::Key(k)) if k == "args" => Root::Args,
            Some(Step::Key(k)) if k == "tool" => Root::Tool,
            Some(Step::Key(k)) if k == "grant" => Root::Grant,
            Some(Step::Key(k)) if k == "session" => Root::Session,
            _ => return Err(bad(PathProblem::UnknownRoot)),
        };
        if root != Root::Args && parts.len() > 1 {
            return Err(bad(PathProblem::FieldsOutsideArgs));
        }
        parts.remove(0);
        Ok(Self {
            text: text.to_owned(),
            root,
            steps: parts,
        })
    }

    /// The value at this path in `call`, or `None` when the path leads nowhere.
    pub(crate) fn resolve<'v>(
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
    /// Equal (numbers compare by exact value: `1` equals `1.0`, and integers beyond 2^53 are
    /// not rounded).
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

/// Why a condition does not load: its path, or its operator with its `value`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionError {
    /// A path that does not parse or starts nowhere.
    #[error("path `{path}`{}{problem}", problem.joiner())]
    Path {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// An operator that compares with a `value` and has none.
    #[error("operator `{0}` needs a `value`")]
    NeedsValue(Op),
    /// `exists` or `not_exists` with a `value`.
    #[error("operator `{0}` takes no `value`")]
    TakesNoValue(Op),
    /// A `value` of a type the operator cannot use: the operator and the type it needs.
    #[error("operator `{0}` needs {1} `value`")]
    ValueType(Op, &'static str),
    /// A `regex` whose `value` does not compile.
    #[error("`{pattern}` is not a valid regex: {error}")]
    Regex {
        /// The regex as written.
        pattern: String,
        /// Why it does not compile.
        error: String,
    },
}

/// What is wrong with a condition's path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathProblem {
    /// `args..x`, `.x`, `args.`.
    #[error("has an empty segment")]
    EmptySegment,
    /// `args.x[0`.
    #[error("has an unclosed `[`")]
    UnclosedBracket,
    /// `args.x[a]`: the bracket as written.
    #[error("`{0}` is not an array index")]
    NotAnIndex(String),
    /// `args.x[0]y`.
    #[error("expected `.` or `[` after `]`")]
    AfterBracket,
    /// A root other than `args`, `tool`, `grant` or `session`.
    #[error("must start with `args`, `tool`, `grant` or `session`")]
    UnknownRoot,
    /// `tool.x`: only `args` has fields.
    #[error("only `args` has fields")]
    FieldsOutsideArgs,
}

impl PathProblem {
    /// What joins the path to the problem: a verb follows a space (path `x` has ...), a
    /// remark a colon (path `x`: only ...).
    fn joiner(&self) -> &'static str {
        match self {
            Self::EmptySegment | Self::UnclosedBracket | Self::UnknownRoot => " ",
            Self::NotAnIndex(_) | Self::AfterBracket | Self::FieldsOutsideArgs => ": ",
        }
    }
}

/// Why a condition could not be evaluated on a call; the call is then denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The value at the path is of a type the operator cannot compare with its `value`.
    #[error("`{path}` is {found}, which operator `{op}` cannot compare with {value}")]
    Mismatch {
        /// The condition's path.
        path: String,
        /// The type found at the path (`a string`).
        found: &'static str,
        /// The operator.
        op: Op,
        /// The type of the condition's `value`.
        value: &'static str,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated condition.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawCondition")]
pub struct Condition {
    /// What the condition reads.
    pub(crate) path: Path,
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
    type Error = ConditionError;

    fn try_from(raw: RawCondition) -> Result<Self, ConditionError> {
        let path = Path::parse(&raw.path)?;
        let op = raw.op;
        let needs_value = !matches!(op, Op::Exists | Op::NotExists);
        let value = match (raw.value, needs_value) {
            (Some(v), true) => v,
            (None, true) => return Err(ConditionError::NeedsValue(op)),
            (Some(_), false) => return Err(ConditionError::TakesNoValue(op)),
            (None, false) => Value::Null,
        };
        let mut regex = None;
        match op {
            Op::In | Op::NotIn if !value.is_array() => {
                return Err(ConditionError::ValueType(op, "an array"))
            }
            Op::Gt | Op::Gte | Op::Lt | Op::Lte if !(value.is_number() || value.is_string()) => {
                return Err(ConditionError::ValueType(op, "a number or string"))
            }
            Op::StartsWith | Op::EndsWith | Op::Regex if !value.is_string() => {
                return Err(ConditionError::ValueType(op, "a string"))
            }
            Op::Regex => {
                let source = value.as_str().unwrap_or_default();
                regex = Some(
                    regex::RegexBuilder::new(source)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| ConditionError::Regex {
                            pattern: source.to_owned(),
                            error: e.to_string(),
                        })?,
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

/// Equality as conditions see it: numbers by value (`1` equals `1.0`), at every depth, so
/// that `[1]` equals `[1.0]` as `1` equals `1.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y).is_eq(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON number as parsed: an integer (any `i64` or `u64`, exactly) or a float.
enum Exact {
    Integer(i128),
    Float(f64),
}

fn exact(n: &serde_json::Number) -> Exact {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Exact::Integer(i.into()),
        (None, Some(u)) => Exact::Integer(u.into()),
        // Only a float is left, and `as_f64` of a float is always `Some` (without the
        // `arbitrary_precision` feature); JSON has no NaN or infinity.
        _ => Exact::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Compares two JSON numbers exactly: integers as integers (through `f64`,
/// `9007199254740993` would equal `9007199254740992`), an integer with a float by the float's
/// exact value, two floats as floats.
fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (exact(a), exact(b)) {
        (Exact::Integer(x), Exact::Integer(y)) => x.cmp(&y),
        (Exact::Integer(x), Exact::Float(y)) => integer_vs_float(x, y),
        (Exact::Float(x), Exact::Integer(y)) => integer_vs_float(y, x).reverse(),
        // Never NaN (JSON has none), so this is total; -0.0 equals 0.0, as in JSON.
        (Exact::Float(x), Exact::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// `int` against `float`, exactly: every `i128` this sees fits in ±2^64, and a float of
/// that size is an integer, so comparing the float's integer part then its fraction is exact.
fn integer_vs_float(int: i128, float: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    const LIMIT: f64 = 1.8446744073709552e19 * 2.0; // 2^65, beyond any i64 or u64
    if float >= LIMIT {
        return Ordering::Less;
    }
    if float <= -LIMIT {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    // Exact: `whole` is an integer-valued float below 2^65 in magnitude.
    match int.cmp(&(whole as i128)) {
        Ordering::Equal if float > whole => Ordering::Less,
        Ordering::Equal if float < whole => Ordering::Greater,
        ordering => ordering,
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
    pub(crate) fn holds(&self, call: &ToolCall<'_>) -> Result<bool, EvalError> {
        let mut scratch = None;
        let Some(actual) = self.path.resolve(call, &mut scratch) else {
            return Ok(matches!(self.op, Op::Ne | Op::NotIn | Op::NotExists));
        };
        let mismatch = || {
            Err(EvalError::Mismatch {
                path: self.path.to_string(),
                found: type_name(actual),
                op: self.op,
                value: type_name(&self.value),
            })
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
                    (Value::Number(a), Value::Number(b)) => Some(compare_numbers(a, b)),
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
#[path = "condition_tests.rs"]
mod tests;
