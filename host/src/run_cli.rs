//! `toolgate run`: the stdio gateway's command line, from its flags to [`stdio::run`].

use crate::{init_logging, operator_loader};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use toolgate::audit::{DecisionLog, LogSink, Observer, Observers};
use toolgate::clock::SystemClock;
use toolgate::metrics::{Metrics, PolicyState, Snapshot};
use toolgate::reload::{self, LivePolicy};
use toolgate::session::{Audit, Identity, SchemaChecks, Session};
use toolgate::stdio::{self, Ending, StdioLimits};
use toolgate::upstreams::UpstreamSet;

/// Run as a stdio MCP server in front of UPSTREAM_CMD, enforcing the policy.
///
/// Paste this command into an MCP client's config in place of the server's command.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The policy document (JSON).
    #[arg(long)]
    pub(crate) policy: PathBuf,
    /// The grant (agent identity) this gateway's calls count against.
    #[arg(long, default_value = "default")]
    pub(crate) grant: String,
    /// Longest message accepted from the client, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub(crate) max_message_bytes: usize,
    /// Listen for admin commands (`toolgate reload`, `toolgate status`) on this Unix
    /// socket (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    pub(crate) admin_socket: Option<PathBuf>,
    /// Do not reload when the policy or plugin files change (SIGHUP and the admin socket
    /// still reload).
    #[arg(long)]
    pub(crate) no_watch: bool,
    /// Seconds a forwarded request may wait for the upstream's reply; then the client gets
    /// an error (the call's counter units stay spent: the tool may be running).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub(crate) reply_timeout_s: u64,
    /// Do not check this tool's arguments against its advertised `inputSchema` (for a
    /// server whose schema is known to be wrong); repeat for several; `*` for every tool.
    #[arg(long, value_name = "TOOL")]
    pub(crate) skip_schema: Vec<String>,
    /// The operator's trust file: every plugin must satisfy it (default: `$TOOLGATE_TRUST`).
    #[arg(long, value_name = "FILE")]
    pub(crate) trust: Option<PathBuf>,
    /// The plugin store `ref` entries are read from (default: `$TOOLGATE_STORE`, else
    /// under the user's data folder).
    #[arg(long, value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
    /// Where the policy's counters are kept: `memory` (this process only: a new process
    /// starts from zero), or `sqlite:PATH` (a file that every `toolgate run` on this
    /// machine naming it shares, kept across restarts).
    #[arg(long, value_name = "STORE", default_value = "memory")]
    pub(crate) counters: String,
    /// Write the decision log (JSON lines: every decision, every forwarded call's outcome)
    /// to this file (rotated at 100 MiB, five kept), or `-` for stderr.
    #[arg(long, value_name = "FILE")]
    pub(crate) decision_log: Option<String>,
    /// Decide every call by this policy too, in shadow: what it would have decided goes to
    /// the decision log (`shadow` events), never to the call. Reloaded like `--policy`.
    #[arg(long, value_name = "FILE", requires = "decision_log")]
    pub(crate) shadow_policy: Option<PathBuf>,
    /// Forward each allowed call with `params._meta.traceparent` set to its span, so that the
    /// upstream's spans join the trace. A byte change: off by default.
    #[arg(long)]
    pub(crate) inject_trace_context: bool,
    /// Serve Prometheus metrics (`GET /metrics`, no token) on this address, e.g.
    /// `127.0.0.1:9464`; keep it on loopback or behind a firewall.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Several upstream servers behind one gateway, each `NAME=COMMAND` (split like a
    /// shell would) or `NAME=URL` (Streamable HTTP); repeat for each. Their tools are
    /// `NAME__TOOL` (see `--separator`). Instead of UPSTREAM_CMD.
    #[arg(
        long = "upstream",
        value_name = "NAME=CMD|URL",
        conflicts_with = "upstream"
    )]
    pub(crate) upstreams: Vec<String>,
    /// With `--upstream`: what joins an upstream's name and its tool's name.
    #[arg(long, default_value = "__", requires = "upstreams")]
    pub(crate) separator: String,
    /// The upstream MCP server's command and arguments (after `--`, or simply last: every
    /// word from the first positional one on belongs to the upstream).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "upstreams",
        value_name = "UPSTREAM_CMD"
    )]
    pub(crate) upstream: Vec<String>,
}

/// Waits for the shadow thread and the decision log's writer when `run` returns.
struct FlushAtExit(
    Option<Arc<toolgate::session::ShadowRunner>>,
    Option<Arc<DecisionLog>>,
);

impl Drop for FlushAtExit {
    fn drop(&mut self) {
        let within = std::time::Duration::from_secs(2);
        if let Some(shadow) = &self.0 {
            shadow.flush(within);
        }
        if let Some(log) = &self.1 {
            if !log.flush(within) {
                eprintln!("toolgate: the decision log's last events could not all be written");
            }
        }
    }
}

/// A shadow policy, as sessions read it.
type ShadowCell = Arc<arc_swap::ArcSwap<toolgate::policy::Policy>>;

/// Runs `toolgate run` until the client or the upstream closes.
pub(crate) fn run(args: RunArgs) -> ExitCode {
    let RunArgs {
        policy,
        grant,
        max_message_bytes,
        admin_socket,
        no_watch,
        reply_timeout_s,
        skip_schema,
        trust,
        store,
        counters,
        decision_log,
        shadow_policy,
        inject_trace_context,
        metrics_listen,
        upstreams,
        separator,
        upstream,
    } = args;
    let _log = init_logging();
    let counters = match toolgate::counters::open(&counters, Arc::new(SystemClock::new())) {
        Ok(counters) => counters,
        Err(e) => {
            eprintln!("toolgate: --counters: {e}");
            return ExitCode::from(2);
        }
    };
    let loader = operator_loader(trust, store);
    let loaded = LivePolicy::load(&policy, loader.clone()).and_then(|live| {
        let shadow = shadow_policy
            .map(|p| LivePolicy::load(&p, loader))
            .transpose()?;
        Ok((live, shadow))
    });
    let (live, shadow) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{:?}", miette::Report::new(e));
            return ExitCode::from(2);
        }
    };
    // Calls that need approval are held where someone can approve them: the operator
    // through the admin socket (`toolgate approvals`), or the client's user if the
    // client declares elicitation; otherwise they are refused at once.
    let approvals = Arc::new(toolgate::approvals::Approvals::new(Arc::new(
        SystemClock::new(),
    )));
    let triggers = || -> anyhow::Result<()> {
        for live in std::iter::once(&live).chain(&shadow) {
            if !no_watch {
                reload::watch("policy-watch", live.clone())?;
            }
            reload::reload_on_sighup("policy-sighup", live.clone())?;
        }
        if let Some(socket) = &admin_socket {
            reload::serve_admin(live.clone(), Some(approvals.clone()), socket)?;
        }
        Ok(())
    };
    if let Err(e) = triggers() {
        eprintln!("toolgate: {e}");
        return ExitCode::FAILURE;
    }
    let limits = StdioLimits {
        max_client_message: max_message_bytes,
        reply_timeout: std::time::Duration::from_secs(reply_timeout_s),
        ..StdioLimits::default()
    };
    let log = match decision_log.map(|sink| LogSink::parse(&sink, false)) {
        Some(sink) => match DecisionLog::open(sink, toolgate::audit::DEFAULT_CAPACITY) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => {
                eprintln!("toolgate: --decision-log: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let metrics = match metrics_listen.map(|addr| listen_metrics(addr, &live, &grant, log.clone()))
    {
        Some(Ok(metrics)) => Some(metrics),
        Some(Err(e)) => {
            eprintln!("toolgate: --metrics-listen: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let log_at_exit = log.clone();
    let observers: Vec<Arc<dyn Observer>> = log
        .map(|log| log as Arc<dyn Observer>)
        .into_iter()
        .chain(metrics.map(|m| m as Arc<dyn Observer>))
        .collect();
    let audit = match observers.len() {
        0 => None,
        1 => Some(Audit::new(observers[0].clone(), "stdio")),
        _ => Some(Audit::new(Arc::new(Observers(observers)), "stdio")),
    };
    let shadow_at_exit = audit.as_ref().and_then(|a| a.shadow.clone());
    let schemas = (
        SchemaChecks::skipping(skip_schema),
        audit,
        shadow.map(|s| s.cell()),
        inject_trace_context,
    );
    let operator = admin_socket.is_some();
    // The last decisions (and their shadows) are written before the process exits.
    let _flush = FlushAtExit(shadow_at_exit, log_at_exit);
    match serve(
        &live,
        (grant, counters),
        &limits,
        schemas,
        (approvals, operator),
        (&upstream, &upstreams, separator),
    ) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("toolgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--metrics-listen`: the metrics, read from this process's policy and log, served on `addr`.
fn listen_metrics(
    addr: std::net::SocketAddr,
    live: &Arc<LivePolicy>,
    grant: &str,
    log: Option<Arc<DecisionLog>>,
) -> std::io::Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::new());
    let (live, grant) = (live.clone(), grant.to_owned());
    metrics.read_from(move || {
        let status = live.status();
        Snapshot {
            policies: vec![PolicyState {
                grant: grant.clone(),
                digest: status.digest,
                reloads: status.reloads,
                failed_reloads: status.failed_reloads,
            }],
            decision_log: log.as_ref().map(|log| log.stats()),
            ..Snapshot::default()
        }
    });
    let bound = toolgate::metrics::listen(addr, metrics.clone())?;
    // The tests and scripts read the bound address from here (the port may be 0).
    eprintln!("toolgate run: metrics on http://{bound}/metrics");
    Ok(metrics)
}

fn serve(
    live: &LivePolicy,
    (grant, counters): (String, Arc<dyn toolgate::counters::CounterStore>),
    limits: &StdioLimits,
    (schemas, audit, shadow, inject): (SchemaChecks, Option<Arc<Audit>>, Option<ShadowCell>, bool),
    (approvals, operator): (Arc<toolgate::approvals::Approvals>, bool),
    (upstream, set, separator): (&[String], &[String], String),
) -> anyhow::Result<ExitCode> {
    let identity = Identity {
        grant,
        session: uuid::Uuid::new_v4().to_string(),
    };
    tracing::info!(policy = live.current().name().unwrap_or("(unnamed)"), grant = %identity.grant, session = %identity.session, upstream = ?if set.is_empty() { upstream } else { set }, "starting");
    let session = Arc::new(
        Session::live(live.cell(), counters, identity)
            .with_schema_checks(schemas)
            .with_audit(audit)
            .with_shadow_policy(shadow)
            .with_trace_injection(inject)
            .with_approvals(approvals, operator, true),
    );
    let (ending, status) = if set.is_empty() {
        let child = toolgate::child::spawn_upstream(upstream)
            .with_context(|| format!("cannot start upstream `{}`", upstream.join(" ")))?;
        let (ending, status) = stdio::run(session, child, limits);
        let status = status.context("cannot wait for the upstream")?;
        (ending, status.to_string())
    } else {
        let specs = set.iter().map(|f| UpstreamSet::parse_flag(f));
        let mut set = UpstreamSet::new(
            specs
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
        );
        set.separator = separator;
        let ending = stdio::run_set(session, &set, limits).context("cannot start the upstreams")?;
        (ending, "every upstream server had gone".to_owned())
    };
    match ending {
        Ending::ClientClosed { .. } => {
            tracing::info!(%status, "client closed; upstream stopped");
            Ok(ExitCode::SUCCESS)
        }
        Ending::UpstreamClosed { pending } => {
            anyhow::bail!(
                "upstream `{}` exited ({status}) while the client was connected; {pending} pending request(s) were answered with errors",
                upstream.join(" ")
            )
        }
    }
}
