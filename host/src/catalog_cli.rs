//! `toolgate catalog`, `toolgate init` and `toolgate check --against`: where the tool list
//! comes from, and what is printed and written. The classes, the starter policy and the drift
//! themselves are the library's `catalog` module.
//!
//! Every command takes one source: a saved `tools/list` reply (`--tools FILE`), a Streamable
//! HTTP server (`--url URL`), a `serve` config's `[[upstreams]]` (`--config FILE`), or a stdio
//! server's command after `--`. `check` spells them `--against-tools`, `--against-url`,
//! `--against-config` and `--against -- CMD...`, so that they cannot be taken for its own
//! policy files.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use toolgate::catalog::{drift, starter_policy, Catalog};
use toolgate::policy::{Loader, Policy, RecordedCatalog};
use toolgate::upstreams::{self, Target, UpstreamSpec};

/// Where the tools come from (exactly one).
#[derive(clap::Args, Debug)]
pub struct SourceArgs {
    /// A saved `tools/list` result (`{"tools": [...]}`) or a whole JSON-RPC reply
    /// (`{"result": {"tools": [...]}}`).
    #[arg(long, value_name = "FILE")]
    tools: Option<PathBuf>,
    /// A Streamable HTTP MCP server's endpoint.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// With `--url`: a header to send it (`'Authorization: Bearer ...'`); repeat for several.
    #[arg(long, value_name = "NAME: VALUE", requires = "url", value_parser = header)]
    header: Vec<(String, String)>,
    /// A `toolgate serve` config: every one of its `[[upstreams]]`, tools named as the gateway
    /// exposes them (`{prefix}__{tool}`).
    #[arg(long, value_name = "SERVE_TOML")]
    config: Option<PathBuf>,
    /// Seconds to wait for live servers to list their tools.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_s: u64,
    /// A stdio MCP server's command and arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `toolgate catalog`.
#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `toolgate init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Write the policy here instead of to stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace `--out` if it exists.
    #[arg(long, requires = "out")]
    force: bool,
}

/// `toolgate check`'s drift options.
#[derive(clap::Args, Debug)]
pub struct AgainstArgs {
    /// Compare the policy with a saved `tools/list` reply.
    #[arg(long, value_name = "FILE")]
    against_tools: Option<PathBuf>,
    /// Compare the policy with a Streamable HTTP server's tools.
    #[arg(long, value_name = "URL")]
    against_url: Option<String>,
    /// With `--against-url`: a header to send it; repeat for several.
    #[arg(long, value_name = "NAME: VALUE", requires = "against_url", value_parser = header)]
    against_header: Vec<(String, String)>,
    /// Compare the policy with the tools of a `serve` config's `[[upstreams]]`.
    #[arg(long, value_name = "SERVE_TOML")]
    against_config: Option<PathBuf>,
    /// Compare the policy with the tools of the stdio server whose command follows `--`.
    #[arg(long)]
    against: bool,
    /// Exit 1 when there is drift (for CI).
    #[arg(long)]
    strict: bool,
    /// Seconds to wait for a live server to list its tools.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    against_timeout_s: u64,
    /// With `--against`: the stdio server's command and arguments.
    #[arg(last = true, value_name = "CMD")]
    against_command: Vec<String>,
}

impl AgainstArgs {
    /// Whether a drift check was asked for.
    pub fn given(&self) -> bool {
        self.against
            || self.against_tools.is_some()
            || self.against_url.is_some()
            || self.against_config.is_some()
            || !self.against_command.is_empty()
            || self.strict
    }

    fn source(&self) -> anyhow::Result<SourceArgs> {
        anyhow::ensure!(
            self.against
                || self.against_tools.is_some()
                || self.against_url.is_some()
                || self.against_config.is_some(),
            "name the tools to compare with: `--against-tools FILE`, `--against-url URL`, `--against-config SERVE_TOML` or `--against -- CMD...`"
        );
        anyhow::ensure!(
            self.against || self.against_command.is_empty(),
            "a command after `--` is a source only with `--against`"
        );
        anyhow::ensure!(
            !self.against || !self.against_command.is_empty(),
            "`--against` needs the server's command after `--`"
        );
        Ok(SourceArgs {
            tools: self.against_tools.clone(),
            url: self.against_url.clone(),
            header: self.against_header.clone(),
            config: self.against_config.clone(),
            timeout_s: self.against_timeout_s,
            command: self.against_command.clone(),
        })
    }
}

/// `NAME: VALUE` (or `NAME:VALUE`) as a header.
fn header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not a header: write `NAME: VALUE`")),
    }
}

/// The `[[upstreams]]` of a `serve` config.
fn upstreams_from_config(path: &Path) -> anyhow::Result<Vec<UpstreamSpec>> {
    let set = upstreams::config::from_config_file(path)?;
    if set.separator != toolgate::catalog::SEPARATOR {
        anyhow::bail!(
            "`{}` sets namespace_separator `{}`: the catalogue and the policies `init` writes name tools with `{}`",
            path.display(),
            set.separator,
            toolgate::catalog::SEPARATOR
        );
    }
    Ok(set.upstreams)
}

impl SourceArgs {
    /// Lists the tools of the one source given.
    fn catalog(&self) -> anyhow::Result<Catalog> {
        let given = [
            self.tools.is_some(),
            self.url.is_some(),
            self.config.is_some(),
            !self.command.is_empty(),
        ];
        match given.iter().filter(|g| **g).count() {
            1 => {}
            0 => anyhow::bail!(
                "name the tools' source: `--tools FILE`, `--url URL`, `--config SERVE_TOML` or `-- CMD...`"
            ),
            _ => anyhow::bail!("give one source of tools, not several"),
        }
        if let Some(file) = &self.tools {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            return Catalog::from_tools_json(&text, format!("tools file {}", file.display()))
                .with_context(|| format!("`{}`", file.display()));
        }
        let (specs, source) = if let Some(url) = &self.url {
            let target = Target::Url {
                url: url.clone(),
                headers: self.header.clone(),
            };
            (vec![single(target)], format!("url {url}"))
        } else if let Some(config) = &self.config {
            let specs = upstreams_from_config(config)?;
            (specs, format!("config {}", config.display()))
        } else {
            let source = format!("command `{}`", self.command.join(" "));
            (vec![single(Target::Command(self.command.clone()))], source)
        };
        let listings = upstreams::list_tools(&specs, Duration::from_secs(self.timeout_s))
            .with_context(|| format!("cannot list the tools of {source}"))?;
        Ok(Catalog::from_listings(&listings, &specs, source)?)
    }
}

/// The one upstream of `--url` or `-- CMD`: alone, its tools keep their own names.
fn single(target: Target) -> UpstreamSpec {
    UpstreamSpec {
        name: "upstream".into(),
        prefix: None,
        target,
    }
}

/// Writes to stdout; a reader that stopped reading (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn failed(command: &str, e: anyhow::Error) -> ExitCode {
    eprintln!("toolgate {command}: {e:#}");
    ExitCode::from(2)
}

/// `toolgate catalog`: the table, or JSON.
pub fn catalog(args: CatalogArgs) -> ExitCode {
    match args.source.catalog() {
        Ok(catalog) if args.json => {
            emit(&format!("{:#}\n", catalog.to_json()));
            ExitCode::SUCCESS
        }
        Ok(catalog) => {
            emit(&catalog.table());
            ExitCode::SUCCESS
        }
        Err(e) => failed("catalog", e),
    }
}

/// `toolgate init`: the starter policy, checked to load before it is written.
pub fn init(args: InitArgs) -> ExitCode {
    let written = || -> anyhow::Result<String> {
        let catalog = args.source.catalog()?;
        let text = format!("{:#}\n", starter_policy(&catalog));
        Policy::from_json(&text, "(init)")
            .map_err(|e| anyhow::anyhow!("{:?}", miette::Report::new(e)))
            .context("the starter policy does not load (a bug: please report it)")?;
        let Some(out) = &args.out else {
            emit(&text);
            return Ok(String::new());
        };
        anyhow::ensure!(
            args.force || !out.exists(),
            "`{}` exists; pass --force to replace it",
            out.display()
        );
        std::fs::write(out, &text).with_context(|| format!("cannot write `{}`", out.display()))?;
        Ok(format!(
            "wrote {}: {} tools from {}; `toolgate check {}` validates it",
            out.display(),
            catalog.tools.len(),
            catalog.source,
            out.display()
        ))
    };
    match written() {
        Ok(note) => {
            if !note.is_empty() {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => failed("init", e),
    }
}

/// `toolgate check FILES --against...`: each policy must load, then its drift is printed.
/// Exit 2 when a policy does not load or the source cannot be listed, 1 on drift with
/// `--strict`, else 0.
pub fn check_against(loader: &Loader, files: &[PathBuf], args: &AgainstArgs) -> ExitCode {
    let catalog = match args.source().and_then(|s| s.catalog()) {
        Ok(catalog) => catalog,
        Err(e) => return failed("check", e),
    };
    // 2 (a policy that does not load) outranks 1 (drift under --strict); every file is checked.
    let mut code = 0u8;
    for file in files {
        let (policy, text) = match loader.load_with_text(file) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e));
                code = 2;
                continue;
            }
        };
        let recorded = match recorded_catalog(&text) {
            Ok(recorded) => recorded,
            Err(e) => {
                eprintln!("toolgate check: {}: {e:#}", file.display());
                code = 2;
                continue;
            }
        };
        let found = drift(&policy, recorded.as_ref(), &catalog);
        emit(&format!(
            "{}: ok; against {}:\n{}",
            file.display(),
            catalog.source,
            found.report()
        ));
        if args.strict && !found.is_empty() {
            code = code.max(1);
        }
    }
    ExitCode::from(code)
}

/// The policy's `catalog` key (the loader has already checked its shape).
fn recorded_catalog(text: &str) -> anyhow::Result<Option<RecordedCatalog>> {
    let mut doc: serde_json::Value = serde_json::from_str(text)?;
    match doc.get_mut("catalog").map(serde_json::Value::take) {
        Some(catalog) => Ok(Some(serde_json::from_value(catalog)?)),
        None => Ok(None),
    }
}
