//! Why a policy did not load, rendered by miette with the file, line, column, the offending
//! text underlined, and a hint.
//!
//! As in Cedar's parser errors, what is wrong (a [`Problem`], each with its own help) and
//! where it is (a path in the document and a span of the text) are kept apart. A problem found
//! on the compiled document is placed by its path through [`Spans`], never by searching the
//! text; a problem serde_json found keeps the line and column serde_json gave.

use super::spans::Spans;
use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use std::fmt::Display;
use thiserror::Error;

/// Why a policy did not load.
#[derive(Debug, Error, Diagnostic)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy `{path}`: {source}")]
    #[diagnostic(
        code(toolgate::policy::read),
        help("check the path; it is relative to the current directory")
    )]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidPolicy>),
}

/// A policy that was read but is not valid: where, what, and what to do.
#[derive(Debug, Error)]
#[error("invalid policy `{file}`, line {line}, column {column}: {message}")]
pub struct InvalidPolicy {
    /// The file's name as given.
    pub file: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem.
    pub column: usize,
    /// Where in the document, as a path such as `tools.session_create.limits[0].window`.
    pub location: String,
    /// What is wrong, and so what help to give.
    pub kind: Problem,
    /// The kind's text, for readers that print only text.
    pub message: String,
    /// The policy text, for the rendered snippet.
    pub src: NamedSource<String>,
    /// The offending text.
    pub span: SourceSpan,
}

// The label and source come from the location, code and help from the kind (Cedar's
// `ToASTError` splits its `Diagnostic` the same way).
impl Diagnostic for InvalidPolicy {
    fn code<'a>(&'a self) -> Option<Box<dyn Display + 'a>> {
        Some(Box::new("toolgate::policy::invalid"))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn Display + 'a>> {
        self.kind.help()
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.location.clone()),
            self.span,
        ))))
    }
}

const WINDOW_HELP: &str = "a window is seconds (`60`), a unit (`\"second\"`, `\"minute\"`, `\"hour\"`, `\"day\"`) or a length like `\"90s\"` or `\"5m\"`";
const PATH_HELP: &str = "a path starts at `args`, `tool`, `grant` or `session`, like `args.sessionId` or `args.items[0]`";
const OPERATORS_HELP: &str = "operators: eq ne gt gte lt lte in not_in contains starts_with ends_with regex exists not_exists";
const JSON_HELP: &str =
    "the file must be one JSON object; check for a missing comma, quote or bracket near here";

/// What is wrong with a policy that did not load, apart from where it is.
///
/// The first group comes from reading the JSON into the document's shape; which of them a
/// serde error is follows from the place it failed at (a bad `window` is [`Problem::Window`]),
/// not from its text. The rest come from compiling the document.
#[derive(Clone, Debug, PartialEq, Eq, Error, Diagnostic)]
#[non_exhaustive]
pub enum Problem {
    /// Not JSON, or cut short.
    #[error("{0}")]
    #[diagnostic(help("{JSON_HELP}"))]
    Syntax(String),
    /// More text after the one object.
    #[error("trailing characters after the policy object")]
    #[diagnostic(help("the file must be one JSON object; remove what follows its closing `}}`"))]
    TrailingCharacters,
    /// A key named twice in one object (`duplicate key` in a map, `duplicate field` in a
    /// fixed-shape object).
    #[error("{0}")]
    #[diagnostic(help(
        "name each key once per object: JSON readers disagree on which copy counts, so a policy may not rely on either"
    ))]
    DuplicateKey(String),
    /// A key the object does not have.
    #[error("{0}")]
    #[diagnostic(help(
        "keys are case-sensitive and use snake_case (`deny_if`, `all_tools`, `rate_limit`)"
    ))]
    UnknownField(String),
    /// A bad `version`.
    #[error("{0}")]
    #[diagnostic(help("write `\"version\": \"1\"`"))]
    Version(String),
    /// A bad `default`.
    #[error("{0}")]
    #[diagnostic(help("`default` is `allow` or `deny`"))]
    Default(String),
    /// A bad rule `action`.
    #[error("{0}")]
    #[diagnostic(help("an action is `allow`, `deny` or `require_approval`"))]
    Action(String),
    /// A bad limit `window`.
    #[error("{0}")]
    #[diagnostic(help("{WINDOW_HELP}"))]
    Window(String),
    /// A bad limit `scope`.
    #[error("{0}")]
    #[diagnostic(help("a scope is `grant`, `session` or `global`"))]
    Scope(String),
    /// A limit (in `limits` or `rate_limit`) of the wrong shape.
    #[error("{0}")]
    #[diagnostic(help(
        "a limit is `{{\"counter\": \"name\", \"window\": \"minute\", \"max\": 30}}`, and `scope` if not `grant`; {WINDOW_HELP}"
    ))]
    Limit(String),
    /// A condition's `op` that is no operator.
    #[error("{0}")]
    #[diagnostic(help("{OPERATORS_HELP}"))]
    Operator(String),
    /// A condition that does not check: its path, its operator, or its value.
    #[error("{0}")]
    #[diagnostic(help(
        "a condition is `{{\"path\": ..., \"op\": ..., \"value\": ...}}`; {PATH_HELP}; {OPERATORS_HELP}"
    ))]
    Condition(String),
    /// Any other value of the wrong type or shape.
    #[error("{0}")]
    Shape(String),

    /// The policy names plugins and the loader has no runtime to load them into.
    #[error("this policy names plugins, and {why}")]
    #[diagnostic(help(
        "plugins run in the gateway's WebAssembly engine; without it only policies without `plugins` load"
    ))]
    NoPluginRuntime {
        /// Why there is no runtime.
        why: String,
    },
    /// A plugin that did not load, verify, compile or pre-instantiate.
    #[error("cannot load plugin `{name}`: {error}")]
    #[diagnostic(help(
        "`path` is relative to the policy file and names a component built for toolgate's `policy` world (`toolgate plugin build`)"
    ))]
    PluginLoad {
        /// The plugin's name in `plugins`.
        name: String,
        /// What failed.
        error: String,
    },
    /// A plugin entry shares a counter that no limit of the policy names.
    #[error("plugin `{plugin}` is given counter `{counter}`, which no limit of this policy names")]
    #[diagnostic(help(
        "`counters` lists the policy's own counters (a `limits` entry's `counter`, or a `rate_limit`'s) that the plugin may consume; any other name the plugin uses is already a counter of its own"
    ))]
    UnknownSharedCounter {
        /// The plugin's name in `plugins`.
        plugin: String,
        /// The counter named.
        counter: String,
    },
    /// A `use` of a plugin that `plugins` does not declare.
    #[error("no plugin named `{name}` in `plugins`")]
    #[diagnostic(help(
        "declare each plugin a rule uses under `plugins`, like `\"plugins\": {{\"{name}\": {{\"path\": \"{name}.wasm\"}}}}`"
    ))]
    UnknownPlugin {
        /// The name used.
        name: String,
    },
    /// A plugin entry that names no component, or two.
    #[error("{0}")]
    #[diagnostic(help(
        "a plugin is a file, `{{\"path\": \"plugins/x.wasm\", \"sha256\": \"<hex>\"}}`, or a component of the store, `{{\"ref\": \"registry/repo:tag\", \"sha256\": \"<hex>\"}}` (what `toolgate plugin pull` prints)"
    ))]
    PluginSource(String),
    /// The operator's trust file cannot be used: no plugin loads until it is fixed.
    #[error("the trust file cannot be used: {0}")]
    #[diagnostic(help(
        "the trust file is the operator's (`--trust`, `[plugins] trust` or `$TOOLGATE_TRUST`); `toolgate plugin verify --trust FILE` checks it on its own"
    ))]
    Trust(String),
    /// A rule's `approval` object cannot work as written.
    #[error("{0}")]
    #[diagnostic(help(
        "`approval` is `{{\"hold\": \"45s\", \"timeout\": \"10m\", \"reuse\": \"once\" | \"session\" | \"1h\", \"bind\": \"args\" | \"tool\", \"via\": \"client\" | \"operator\" | \"both\"}}`, each optional"
    ))]
    Approval(String),
    /// A rule's `log_args` names something that is not a JSON pointer.
    #[error("{0}")]
    #[diagnostic(help(
        "`log_args` is `{{\"erase\": [\"/apiKey\"], \"mask\": [\"/token\"]}}`: the tool's arguments go into the decision log without what the erase pointers name and with what the mask pointers name replaced by \"***\""
    ))]
    LogArgs(String),
    /// A plugin refused the `config` a rule gives it.
    #[error("plugin `{name}` rejects its config: {error}")]
    #[diagnostic(help("the plugin's documentation says which config it takes"))]
    PluginConfig {
        /// The plugin's name.
        name: String,
        /// The plugin's reason.
        error: String,
    },
    /// A limit whose `counter` is blank.
    #[error("a counter needs a name")]
    #[diagnostic(help("limits with the same `counter` and `scope` share one count"))]
    UnnamedCounter,
    /// A limit with `max: 0`.
    #[error("`max` must be at least 1; to refuse every call use `\"action\": \"deny\"`")]
    ZeroMax,
}

impl Problem {
    /// The problem a serde error from reading the document stands for, from where it failed.
    ///
    /// Only two kinds need serde's words: an unknown field and a duplicate field reach here as
    /// text alone (serde_json keeps no more of them), in the fixed wording of serde's
    /// `Error::unknown_field` and `Error::duplicate_field`.
    pub(crate) fn of_serde(location: &str, message: String) -> Self {
        if message.starts_with("unknown field") {
            return Self::UnknownField(message);
        }
        if message.starts_with("duplicate field") {
            return Self::DuplicateKey(message);
        }
        let mut segments = location.rsplit('.');
        let last = segments.next().unwrap_or_default();
        let parent = segments.next().unwrap_or_default();
        // `require` or `require[0]`: the list or one of its elements.
        let is = |segment: &str, name: &str| {
            segment
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
        };
        let in_condition = |s: &str| is(s, "require") || is(s, "deny_if");
        let in_limit = |s: &str| is(s, "limits") || s == "rate_limit";
        match last {
            "version" => Self::Version(message),
            "default" => Self::Default(message),
            "action" => Self::Action(message),
            "window" => Self::Window(message),
            "scope" => Self::Scope(message),
            "op" => Self::Operator(message),
            _ if in_condition(last) || (last == "path" && in_condition(parent)) => {
                Self::Condition(message)
            }
            _ if in_limit(last) || (matches!(last, "max" | "counter") && in_limit(parent)) => {
                Self::Limit(message)
            }
            _ => Self::Shape(message),
        }
    }
}

impl PolicyError {
    /// An `Invalid` error at a 1-based line and column of `text`, as serde_json reports them.
    pub(crate) fn at_line_column(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        location: String,
        kind: Problem,
    ) -> Self {
        let line_start: usize = text
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum();
        let offset = (line_start + column.saturating_sub(1)).min(text.len());
        Self::invalid(file, text, line, column, location, kind, offset..offset + 1)
    }

    /// An `Invalid` error about the value at `location` (a path in the document), underlined
    /// where `spans` found it; at the start of the text if the text has no such path.
    pub(crate) fn at_path(
        file: &str,
        text: &str,
        spans: &Spans,
        location: String,
        kind: Problem,
    ) -> Self {
        let span = spans.underline(text, &location).unwrap_or(0..1);
        let before = &text[..span.start];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Self::invalid(file, text, line, column, location, kind, span)
    }

    fn invalid(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        location: String,
        kind: Problem,
        span: std::ops::Range<usize>,
    ) -> Self {
        let end = span.end.min(text.len());
        let start = span.start.min(end);
        Self::Invalid(Box::new(InvalidPolicy {
            file: file.to_owned(),
            line,
            column,
            location,
            message: kind.to_string(),
            kind,
            src: NamedSource::new(file, text.to_owned()),
            span: SourceSpan::from(start..end),
        }))
    }
}
