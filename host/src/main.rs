//! The `toolgate` command line.
//!
//! `toolgate run` loads the policy through a [`Loader`] holding the process's one plugin
//! runtime, builds a [`Session`] and hands it to [`stdio::run`]. Where a `tools/call` is then
//! decided: `Session::decide_call` in `host/src/session/mod.rs`, which calls
//! `Policy::decide` (`host/src/policy/decide.rs`). ARCHITECTURE.md has the rest.

use anyhow::Context;
use clap::{Parser, Subcommand};
use plugin_cli::PluginCommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use toolgate::counters::MemoryCounterStore;
use toolgate::policy::{Loader, Policy};
use toolgate::reload;
use toolgate::testing;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

mod approvals_cli;
mod catalog_cli;
mod log_cli;
mod plugin_cli;
mod run_cli;

#[derive(Parser)]
#[command(
    name = "toolgate",
    version,
    about = "A policy gateway for MCP tool calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a stdio MCP server in front of UPSTREAM_CMD, enforcing the policy.
    ///
    /// Paste this command into an MCP client's config in place of the server's command.
    Run(run_cli::RunArgs),
    /// Serve MCP over Streamable HTTP at `/mcp`, for many agents, each with its own grant.
    ///
    /// The config (TOML) names the listeners, the upstream (a URL or a stdio command), the
    /// grants (token hashes and policies) and the limits; see README.md.
    Serve {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the grants (agent identities) of a `serve` config.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Validate policy files; prints each problem with its line, column and a hint. With
    /// `--against-*`, also what differs between each policy and a server's tools.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check every plugin against this trust file too (default: `$TOOLGATE_TRUST`).
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// The plugin store `ref` entries are read from (default: `$TOOLGATE_STORE`).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        #[command(flatten)]
        against: catalog_cli::AgainstArgs,
    },
    /// List a server's tools with their risk class (read, write, destructive), the open-world
    /// flag, and the annotations each came from.
    Catalog(catalog_cli::CatalogArgs),
    /// Read a decision log: `tail` (recent decisions) and `stats` (per rule and tool).
    Log {
        #[command(subcommand)]
        command: log_cli::LogCommand,
    },
    /// Write a starter policy from a server's tools: reads allowed, writes rate-limited per
    /// grant, destructive tools behind approval, everything else denied.
    Init(catalog_cli::InitArgs),
    /// Run case files (`*.cases.json`) against their policies: no upstream, a simulated clock,
    /// the production engine and limits. Prints PASS/FAIL per case and `N passed, N failed`.
    Test {
        /// Case files, or directories to search for them (default: the current directory).
        paths: Vec<PathBuf>,
        /// Print the results as JSON instead.
        #[arg(long)]
        json: bool,
        /// Report which rules, conditions and plugin outcomes no case reached.
        #[arg(long)]
        coverage: bool,
        /// Fail when coverage is under this percentage (implies --coverage).
        #[arg(long, value_name = "PERCENT")]
        fail_under: Option<f64>,
        /// Print each case's plugin instructions and wall time.
        #[arg(long)]
        bench: bool,
    },
    /// Evaluate one call against a policy and print the decision with a trace of each step.
    Eval {
        /// The policy document (JSON).
        #[arg(long)]
        policy: PathBuf,
        /// The call: `{"tool": "...", "args": {...}, "grant": "...", "session": "..."}`.
        #[arg(long)]
        call: String,
        /// Exit 1 when the decision is not `allow` (for scripts); without it, any decision
        /// exits 0 and only a bad policy or call fails.
        #[arg(long)]
        exit_code: bool,
        /// Print the decision as the decision log writes it (one JSON line) instead of the steps.
        #[arg(long)]
        log: bool,
        /// The upstream's result for the call (a `CallToolResult` object as JSON): when the
        /// call is allowed, the policy's result hooks run on it, and eval prints what the
        /// client would get.
        #[arg(long, value_name = "JSON")]
        result: Option<String>,
    },
    /// Make a running gateway reload its policy now; prints the outcome and the status.
    Reload {
        /// The gateway's `--admin-socket`.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Print a running gateway's status: active policy digest, plugins, last reload error.
    Status {
        /// The gateway's `--admin-socket`.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Calls held for approval by a running gateway (`toolgate run --admin-socket`, or
    /// `toolgate serve`'s admin listener): list them, show one, approve or deny it.
    Approvals(approvals_cli::ApprovalsArgs),
    /// See toolgate work: a scripted agent calls an LLM CLI Gateway stand-in through the gateway.
    Demo,
    /// Work with plugins (WebAssembly components).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run the built-in LLM CLI Gateway stand-in on stdio (used by the demo and the tests).
    Standin {
        /// Run the minimal echo server instead.
        #[arg(long)]
        echo: bool,
        /// With --echo: serve Streamable HTTP on this address (`/mcp`) instead of stdio.
        #[arg(long, value_name = "ADDR", requires = "echo")]
        http: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Add a grant: prints a new random token once and writes only its sha256 to the config.
    Add {
        /// The grant's name.
        name: String,
        /// The `serve` config file to add it to.
        #[arg(long)]
        config: PathBuf,
        /// The grant's policy file, relative to the config (none: every call is denied).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

/// A loader from the environment, with the operator's trust file and store when given.
fn operator_loader(trust: Option<PathBuf>, store: Option<PathBuf>) -> Loader {
    let mut loader = Loader::from_env();
    if trust.is_some() {
        loader = loader.with_trust(trust);
    }
    if let Some(store) = store {
        loader = loader.with_store(store);
    }
    loader
}

/// Logs to stderr, through a bounded queue that a thread of its own writes out. A line that
/// finds the queue full is dropped. stderr may be a pipe that nobody reads, and what a client
/// or an upstream sends can make the gateway warn once a message: written on the call's
/// thread, those lines would hold calls up once the pipe filled. Hold the guard until exit:
/// dropping it writes out what is queued (waiting about a second at most).
#[must_use = "the guard writes out queued lines when dropped"]
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("toolgate=info"));
    let (stderr, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(STDERR_QUEUED_LINES)
        .thread_name("stderr-log")
        .finish(std::io::stderr());
    // stdout belongs to the protocol: logs go to stderr only.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_target(false)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(fmt);
    // With `otlp`, and a collector named by OTEL_EXPORTER_OTLP_ENDPOINT: every call's span.
    #[cfg(feature = "otlp")]
    if let Some(provider) = toolgate::telemetry::otlp_from_env() {
        match provider {
            Ok(provider) => {
                let spans = tracing_subscriber::filter::Targets::new()
                    .with_target("toolgate::mcp", tracing::Level::DEBUG);
                registry
                    .with(toolgate::telemetry::layer(&provider).with_filter(spans))
                    .init();
                // Kept for the process's life (spans still in a batch at exit are lost).
                std::mem::forget(provider);
                return guard;
            }
            Err(e) => eprintln!("toolgate: {e}; spans are not exported"),
        }
    }
    registry.init();
    guard
}

/// Lines waiting for stderr at most (a line is typically 100–300 bytes).
const STDERR_QUEUED_LINES: usize = 8_192;

fn load_policy(loader: &Loader, path: &std::path::Path) -> Result<Policy, ExitCode> {
    loader.load(path).map_err(|e| {
        eprintln!("{:?}", miette::Report::new(e));
        ExitCode::from(2)
    })
}

/// Buffers of a MiB or more (a large message, a plugin's oversized result) get mappings of
/// their own, which go back to the OS when freed. glibc's default raises its mmap threshold
/// after the first large buffer is freed, so later ones come from the heap and stay resident
/// in steps of their size: 1,000 calls of a plugin that returns a 10 MiB reason left the
/// gateway at 53–67 MiB, against a flat 32 MiB with this. `MALLOC_MMAP_THRESHOLD_` in the
/// environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_to_the_os() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: sets one allocator parameter, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return_large_buffers_to_the_os();
    let cli = Cli::parse();
    // Unwrapped diagnostics: a message is searchable in logs and CI output as one line.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));
    match cli.command {
        Command::Run(args) => run_cli::run(args),
        Command::Serve { config } => {
            let _log = init_logging();
            match toolgate::http::serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("toolgate serve: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Grant {
            command:
                GrantCommand::Add {
                    name,
                    config,
                    policy,
                },
        } => match grant_add(&name, &config, policy.as_deref()) {
            Ok(token) => {
                eprintln!(
                    "added grant `{name}` to {}; its token (shown only now):",
                    config.display()
                );
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("toolgate grant add: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Check {
            files,
            trust,
            store,
            against,
        } => {
            let mut failed = false;
            let loader = operator_loader(trust, store);
            if against.given() {
                return catalog_cli::check_against(&loader, &files, &against);
            }
            for file in &files {
                match load_policy(&loader, file) {
                    Ok(_) => println!("{}: ok", file.display()),
                    Err(_) => failed = true,
                }
            }
            if failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Catalog(args) => catalog_cli::catalog(args),
        Command::Log { command } => log_cli::log(command),
        Command::Init(args) => catalog_cli::init(args),
        Command::Test {
            paths,
            json,
            coverage,
            fail_under,
            bench,
        } => test(paths, json, coverage, fail_under, bench),
        Command::Eval {
            policy,
            call,
            exit_code,
            log,
            result,
        } => eval(&policy, &call, exit_code, log, result.as_deref()),
        Command::Reload { socket } => admin(&socket, "reload"),
        Command::Status { socket } => admin(&socket, "status"),
        Command::Approvals(args) => approvals_cli::run(args),
        Command::Demo => match toolgate::demo::run(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("toolgate demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin { command } => plugin_cli::run(command),
        Command::Standin {
            echo: true,
            http: Some(addr),
        } => match toolgate_standin::echo_http::serve(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("toolgate standin: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Standin { echo, .. } => {
            let (stdin, stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
            let served = if echo {
                toolgate_standin::echo::serve(stdin, stdout)
            } else {
                toolgate_standin::llm_cli_gateway::serve(stdin, stdout)
            };
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
    }
}

fn test(
    paths: Vec<PathBuf>,
    json: bool,
    coverage: bool,
    fail_under: Option<f64>,
    bench: bool,
) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths
    };
    let files = match testing::find_case_files(&paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("toolgate test: {e}");
            return ExitCode::from(2);
        }
    };
    if files.is_empty() {
        eprintln!("toolgate test: no *.cases.json under {paths:?}");
        return ExitCode::from(2);
    }
    let loader = Loader::from_env();
    let results: Vec<_> = files
        .iter()
        .map(|f| testing::run_file(&loader, f))
        .collect();
    let options = testing::ReportOptions {
        bench,
        coverage,
        fail_under,
    };
    let (text, ok) = testing::report(&results, options);
    if json {
        let coverage = testing::coverage(&results);
        let doc = serde_json::json!({
            "ok": ok,
            "files": results,
            "coverage": {"percent": testing::percent(&coverage), "policies": coverage},
        });
        println!("{doc:#}");
    } else {
        print!("{text}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn eval(
    policy: &std::path::Path,
    call: &str,
    exit_code: bool,
    log: bool,
    result: Option<&str>,
) -> ExitCode {
    let call: testing::CallSpec = match serde_json::from_str(call) {
        Ok(call) => call,
        Err(e) => {
            eprintln!("toolgate eval: --call is not a call: {e}");
            return ExitCode::from(2);
        }
    };
    let result: Option<serde_json::Value> = match result.map(serde_json::from_str).transpose() {
        Ok(result) => result,
        Err(e) => {
            eprintln!("toolgate eval: --result is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match load_policy(&Loader::from_env(), policy) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let clock = toolgate::clock::ManualClock::starting_at(testing::START_MS);
    let counters: Arc<dyn toolgate::counters::CounterStore> =
        Arc::new(MemoryCounterStore::new(clock));
    let mut steps = Vec::new();
    let started = std::time::Instant::now();
    let outcome = policy.decide_traced(&call.tool_call(), &counters, &mut steps);
    let eval_us = started.elapsed().as_micros() as u64;
    let seen = result
        .filter(|_| outcome.decision.is_allow())
        .map(|result| {
            testing::seen_result(
                &outcome.after,
                &call.tool_call(),
                &result,
                &counters,
                &mut steps,
            )
        });
    let steps = if log {
        println!(
            "{}",
            testing::decision_line(&policy, &call.tool_call(), &outcome, eval_us)
        );
        Vec::new()
    } else {
        steps
    };
    for (i, step) in steps.iter().enumerate() {
        match step.instructions {
            Some(n) => println!(
                "{}. {}: {} [{n} instructions]",
                i + 1,
                step.point,
                step.result
            ),
            None => println!("{}. {}: {}", i + 1, step.point, step.result),
        }
        for line in &step.logs {
            println!("   log {line}");
        }
    }
    let d = &outcome.decision;
    if !log {
        println!(
            "decision: {} (rule {}): {}",
            d.verdict.as_str(),
            d.rule,
            d.reason
        );
        if let Some(seen) = &seen {
            println!("result: {}: {}", seen.fate, seen.text);
        }
    }
    let refused = seen.as_ref().is_some_and(|s| s.reason.is_some());
    if exit_code && (d.verdict != toolgate::decision::Verdict::Allow || refused) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn admin(socket: &std::path::Path, command: &str) -> ExitCode {
    match reload::admin_command(socket, command) {
        Ok(answer) => {
            println!("{answer:#}");
            if answer["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("toolgate {command}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Appends a `[[grants]]` entry with a new token's hash; returns the token. The config is
/// appended to, not rewritten, so its comments and layout stay.
fn grant_add(
    name: &str,
    config: &std::path::Path,
    policy: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use std::io::Write;
    let existing = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read config `{}`", config.display()))?;
    let parsed: toml::Table = toml::from_str(&existing)
        .map_err(|e| anyhow::anyhow!("invalid config `{}`: {e}", config.display()))?;
    let taken = parsed
        .get("grants")
        .and_then(|g| g.as_array())
        .is_some_and(|grants| {
            grants
                .iter()
                .any(|g| g.get("name").and_then(|n| n.as_str()) == Some(name))
        });
    anyhow::ensure!(
        !taken,
        "grant `{name}` already exists in `{}`",
        config.display()
    );
    let (token, hash) =
        toolgate::http::grants::new_token().context("cannot draw a random token")?;
    let mut entry = toml::Table::new();
    entry.insert("name".into(), name.into());
    entry.insert("token_sha256".into(), hash.into());
    if let Some(policy) = policy {
        entry.insert("policy".into(), policy.display().to_string().into());
    }
    let mut text = String::new();
    if !existing.ends_with('\n') && !existing.is_empty() {
        text.push('\n');
    }
    text.push_str("\n[[grants]]\n");
    text.push_str(&toml::to_string(&entry)?);
    // Check the result loads before writing it.
    let mut whole = existing.clone();
    whole.push_str(&text);
    toml::from_str::<toml::Table>(&whole).context("the new grant would not parse")?;
    let mut file = std::fs::OpenOptions::new().append(true).open(config)?;
    file.write_all(text.as_bytes())?;
    Ok(token)
}
