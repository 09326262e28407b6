//! `toolgate approvals`: the operator's command line for held calls. It reaches a
//! `toolgate run` through its admin socket (`--socket`), or a `toolgate serve` through the
//! approvals API on its admin listener (`--admin URL`, with an approver's token); the same
//! subcommands, the same answers.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ApprovalsArgs {
    /// The gateway's `--admin-socket` (`toolgate run`).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "admin",
        conflicts_with = "admin"
    )]
    socket: Option<PathBuf>,
    /// `toolgate serve`'s admin listener, such as `http://127.0.0.1:7401`; you decide as the
    /// approver whose token you give.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// With --admin: a file holding your approver token (default: the environment variable
    /// TOOLGATE_APPROVER_TOKEN).
    #[arg(long, value_name = "PATH", requires = "admin")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Every request, newest first (pending, then decided, expired and consumed ones).
    List {
        /// The requests as JSON, as the gateway answered, instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One request, with its masked arguments.
    Show {
        /// The request's id.
        id: String,
    },
    /// Approve a request: its held call goes upstream once (or its identical retry does).
    Approve {
        /// The request's id.
        id: String,
        /// How far the approval reaches, instead of the rule's `reuse`: `once`, `session`
        /// (identical calls in the same session), or a duration up to 24h such as `1h`
        /// (identical calls of the grant).
        #[arg(long, value_name = "REUSE")]
        reuse: Option<String>,
    },
    /// Deny a request: the agent gets a deny naming you and the reason.
    Deny {
        /// The request's id.
        id: String,
        /// Why (the agent sees it).
        #[arg(long)]
        reason: String,
    },
}

pub fn run(args: ApprovalsArgs) -> ExitCode {
    let id = match &args.command {
        ApprovalsCommand::Show { id }
        | ApprovalsCommand::Approve { id, .. }
        | ApprovalsCommand::Deny { id, .. } => Some(id),
        ApprovalsCommand::List { .. } => None,
    };
    if let Some(id) = id.filter(|id| uuid::Uuid::parse_str(id).is_err()) {
        eprintln!("toolgate approvals: `{id}` is not a request id (a UUID, as `list` shows)");
        return ExitCode::from(2);
    }
    if let ApprovalsCommand::Approve {
        reuse: Some(reuse), ..
    } = &args.command
    {
        if let Err(e) = reuse.parse::<toolgate::approvals::Reuse>() {
            eprintln!("toolgate approvals: {e}");
            return ExitCode::from(2);
        }
    }
    let answer = match (&args.socket, &args.admin) {
        (Some(socket), _) => over_socket(socket, &args.command),
        (None, Some(url)) => over_http(url, args.token_file.as_deref(), &args.command),
        (None, None) => unreachable!("clap requires one"),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("toolgate approvals: {e:#}");
            return ExitCode::from(2);
        }
    };
    match &args.command {
        ApprovalsCommand::List { json: false } if answer["ok"] == true => {
            print!("{}", table(&answer["requests"]))
        }
        _ => println!("{answer:#}"),
    }
    if answer["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Over `toolgate run`'s admin socket, deciding as this user (the gateway adds the uid).
fn over_socket(socket: &std::path::Path, command: &ApprovalsCommand) -> anyhow::Result<Value> {
    let by = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let by: String = by.split_whitespace().collect::<Vec<_>>().join("_");
    let line = match command {
        ApprovalsCommand::List { .. } => "approvals list".to_owned(),
        ApprovalsCommand::Show { id } => format!("approvals show {id}"),
        ApprovalsCommand::Approve { id, reuse } => {
            format!(
                "approvals approve {id} {by} {}",
                reuse.as_deref().unwrap_or("")
            )
        }
        ApprovalsCommand::Deny { id, reason } => {
            format!("approvals deny {id} {by} {}", reason.replace('\n', " "))
        }
    };
    Ok(toolgate::reload::admin_command(socket, line.trim_end())?)
}

/// Over `toolgate serve`'s approvals API, as the approver whose token this is.
fn over_http(
    url: &str,
    token_file: Option<&std::path::Path>,
    command: &ApprovalsCommand,
) -> anyhow::Result<Value> {
    use anyhow::Context;
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file `{}`", path.display()))?,
        None => std::env::var("TOOLGATE_APPROVER_TOKEN")
            .context("give your approver token with --token-file or TOOLGATE_APPROVER_TOKEN")?,
    };
    let token = token.trim().to_owned();
    let base = format!("{}/approvals/api", url.trim_end_matches('/'));
    let (method, path, body) = match command {
        ApprovalsCommand::List { .. } => ("GET", String::new(), Value::Null),
        ApprovalsCommand::Show { id } => ("GET", format!("/{id}"), Value::Null),
        ApprovalsCommand::Approve { id, reuse } => {
            let body = reuse.as_ref().map_or(json!({}), |r| json!({"reuse": r}));
            ("POST", format!("/{id}/approve"), body)
        }
        ApprovalsCommand::Deny { id, reason } => {
            ("POST", format!("/{id}/deny"), json!({"reason": reason}))
        }
    };
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let request = match method {
            "GET" => client.get(format!("{base}{path}")),
            _ => client
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin listener at {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        // The API answers JSON, refusals included (`{"ok": false, "error": ...}`).
        let mut answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| json!({"ok": false, "error": text.trim()}));
        if !status.is_success() && answer.get("ok").is_none() {
            answer = json!({"ok": false, "status": status.as_u16(), "error": answer});
        }
        Ok(answer)
    })
}

/// The requests as a table for a person: pending first, as the gateway lists them.
fn table(requests: &Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = format!(
        "{:<36}  {:<9}  {:<16}  {:<20}  {:>8}  {}\n",
        "ID", "STATE", "GRANT", "TOOL", "EXPIRES", "DECIDED BY"
    );
    for r in requests.as_array().into_iter().flatten() {
        let left = r["expires_ms"].as_u64().unwrap_or(0).saturating_sub(now) / 1000;
        let expires = if r["state"] == "pending" {
            format!("{}m{:02}s", left / 60, left % 60)
        } else {
            "-".into()
        };
        out += &format!(
            "{:<36}  {:<9}  {:<16}  {:<20}  {:>8}  {}\n",
            r["id"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["grant"].as_str().unwrap_or(""),
            r["tool"].as_str().unwrap_or(""),
            expires,
            r["decided_by"].as_str().unwrap_or("")
        );
    }
    out
}
