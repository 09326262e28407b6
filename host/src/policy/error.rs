//! The one error a policy load can produce, rendered by miette with the file, line, column,
//! the offending text underlined, and a hint.

use miette::{Diagnostic, NamedSource, SourceSpan};
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
#[derive(Debug, Error, Diagnostic)]
#[error("invalid policy `{file}`, line {line}, column {column}: {message}")]
#[diagnostic(code(toolgate::policy::invalid))]
pub struct InvalidPolicy {
    /// The file's name as given.
    pub file: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem.
    pub column: usize,
    /// Where in the document, as a path such as `tools.session_create.limits[0].window`.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// The policy text, for the rendered snippet.
    #[source_code]
    pub src: NamedSource<String>,
    /// The offending text.
    #[label("{location}")]
    pub span: SourceSpan,
    /// What to do about it.
    #[help]
    pub help: Option<String>,
}

impl PolicyError {
    /// An `Invalid` error at a 1-based line and column of `text`.
    pub(crate) fn at_line_column(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        location: String,
        message: String,
    ) -> Self {
        let line_start: usize = text
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum();
        let offset = (line_start + column.saturating_sub(1)).min(text.len());
        let help = hint(&location, &message);
        Self::Invalid(Box::new(InvalidPolicy {
            file: file.to_owned(),
            line,
            column,
            location,
            message,
            src: NamedSource::new(file, text.to_owned()),
            span: SourceSpan::from((offset, 1.min(text.len() - offset))),
            help,
        }))
    }

    /// An `Invalid` error at the first occurrence of `needle` in `text` (or the start).
    pub(crate) fn at_text(
        file: &str,
        text: &str,
        needle: &str,
        location: String,
        message: String,
    ) -> Self {
        let offset = text.find(needle).unwrap_or(0);
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Self::at_line_column(file, text, line, column, location, message)
    }
}

/// A hint for the most common mistakes, keyed by where they happen.
fn hint(location: &str, message: &str) -> Option<String> {
    let last = location.rsplit('.').next().unwrap_or(location);
    let hint = if message.starts_with("duplicate") {
        "name each key once per object: JSON readers disagree on which copy counts, so a policy may not rely on either"
    } else if message.contains("unknown field") {
        "keys are case-sensitive and use snake_case (`deny_if`, `all_tools`, `rate_limit`)"
    } else if last == "version" {
        "write `\"version\": \"1\"`"
    } else if last.starts_with("window") || message.contains("window") {
        "a window is seconds (`60`), a unit (`\"second\"`, `\"minute\"`, `\"hour\"`, `\"day\"`) or a length like `\"90s\"` or `\"5m\"`"
    } else if last == "scope" {
        "a scope is `grant`, `session` or `global`"
    } else if last == "action" {
        "an action is `allow`, `deny` or `require_approval`"
    } else if last == "default" {
        "`default` is `allow` or `deny`"
    } else if last == "op" || message.contains("operator") {
        "operators: eq ne gt gte lt lte in not_in contains starts_with ends_with regex exists not_exists"
    } else if message.contains("path") {
        "a path starts at `args`, `tool`, `grant` or `session`, like `args.sessionId` or `args.items[0]`"
    } else if message.contains("EOF") || message.contains("expected") {
        "the file must be one JSON object; check for a missing comma, quote or bracket near here"
    } else {
        return None;
    };
    Some(hint.to_owned())
}
