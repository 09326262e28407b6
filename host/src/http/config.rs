//! The `toolgate serve` config file (TOML): listeners, the upstream, grants and limits.
//!
//! Paths in it (grant policies) are relative to the file. Unknown keys fail the load, so a
//! misspelt limit is an error and not a silent default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Where the MCP endpoint (`/mcp`) listens.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// Where the admin endpoints listen. Keep it on loopback: it can reload policies.
    #[serde(default = "default_admin_listen")]
    pub(crate) admin_listen: SocketAddr,
    /// sha256 (hex) of the admin bearer token. Without it, the admin listener serves only
    /// `/healthz`: status and reload stay shut (fail closed).
    #[serde(default)]
    pub(crate) admin_token_sha256: Option<String>,
    /// Serve `GET /metrics` on the admin listener without the admin token (for a scraper).
    #[serde(default)]
    pub(crate) metrics_public: bool,
    /// Count every call in `/metrics` (on by default). `false` leaves the per-call families
    /// at zero and spares each call their cost: for a gateway that nobody scrapes.
    #[serde(default = "yes")]
    pub(crate) metrics: bool,
    /// The grant for requests that carry no `Authorization` header. Off by default; meant for
    /// loopback use and for clients that cannot send headers (the Inspector CLI, the
    /// conformance suite). A request with a wrong token is refused all the same.
    #[serde(default)]
    pub(crate) anonymous_grant: Option<String>,
    /// `Host` values accepted besides the loopback names (`localhost`, `127.0.0.1`, `[::1]`,
    /// with any port). Anything else gets 403: the defence against DNS rebinding.
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    /// `Origin` values accepted besides loopback origins. Requests without `Origin`
    /// (non-browser clients) are accepted.
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,
    /// Watch the grants' policy and plugin files, and the `[tls]` certificate and key, and
    /// reload them when they change.
    #[serde(default = "yes")]
    pub(crate) watch: bool,
    /// Threads serving requests (default: one per core). One thread avoids cross-thread
    /// wake-ups and gives the lowest latency on a small machine, as nginx's single worker
    /// does; more threads add throughput where cores are spare. Plugin decisions leave the
    /// thread (`block_in_place`) either way.
    #[serde(default)]
    pub(crate) worker_threads: Option<usize>,
    /// The one upstream; or, instead, `[[upstreams]]`.
    #[serde(default)]
    pub(crate) upstream: Option<UpstreamConfig>,
    /// Several upstreams behind one endpoint ([`crate::upstreams::config`]).
    #[serde(default)]
    pub(crate) upstreams: Vec<crate::upstreams::config::UpstreamEntry>,
    /// The decision log: a file (relative to this file; rotated at 100 MiB, five kept) or `-`
    /// for standard output. Off without it.
    #[serde(default)]
    pub(crate) decision_log: Option<String>,
    /// Forward calls with `params._meta.traceparent` set to their span (a byte change).
    #[serde(default)]
    pub(crate) inject_trace_context: bool,
    /// With `[[upstreams]]`: what joins an upstream's prefix and a tool's name (default `__`).
    #[serde(default)]
    pub(crate) namespace_separator: Option<String>,
    /// TLS on both listeners (`/mcp` and admin). Without it they speak plain HTTP: keep them
    /// on loopback, or put a TLS terminator in front, since bearer tokens cross them.
    #[serde(default)]
    pub(crate) tls: Option<TlsConfig>,
    #[serde(default)]
    pub(crate) grants: Vec<GrantConfig>,
    #[serde(default)]
    pub(crate) limits: Limits,
    /// Where plugins come from and whom they must satisfy.
    #[serde(default)]
    pub(crate) plugins: PluginsConfig,
    /// The people who may approve held calls, each with a token of their own (never a
    /// grant's) and the grants whose calls they may decide.
    #[serde(default)]
    pub(crate) approvers: Vec<ApproverConfig>,
    /// Where new approval requests are announced (an HMAC-signed POST, never the arguments).
    #[serde(default)]
    pub(crate) approvals_webhook: Option<WebhookConfig>,
    /// `[counters]`: where every grant's counters are kept.
    #[serde(default)]
    pub(crate) counters: CountersConfig,
    /// The key the replicas share (64 hex characters, relative to this file, private to the
    /// gateway's user): with it, session ids are sealed (`http/sealed.rs`) and any replica
    /// holding the same key serves any session of an HTTP upstream. Refused with a stdio
    /// upstream, whose sessions live in one replica's child processes.
    #[serde(default)]
    pub(crate) session_key_file: Option<PathBuf>,
}

/// `[counters]`: `store = "memory"` (the default: this process only) or `store = "sqlite"`
/// with `path` (relative to this file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountersConfig {
    #[serde(default)]
    pub(crate) store: Option<String>,
    /// `store = "sqlite"`: the file.
    #[serde(default)]
    pub(crate) path: Option<PathBuf>,
    /// `store = "redis"`: `redis://HOST:PORT/DB`, `rediss://...` or `redis+unix:///PATH`.
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) key_prefix: Option<String>,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
    /// `closed` (the default), `open` or `local`.
    #[serde(default)]
    pub(crate) on_error: Option<String>,
    /// `redis` (the default) or `gateway`.
    #[serde(default)]
    pub(crate) clock: Option<String>,
}

impl CountersConfig {
    /// The store spec for [`crate::counters::open`].
    pub(crate) fn spec(&self) -> anyhow::Result<String> {
        use anyhow::bail;
        let store = self.store.as_deref().unwrap_or("memory");
        let redis_only = self.url.is_some()
            || self.key_prefix.is_some()
            || self.timeout_ms.is_some()
            || self.on_error.is_some()
            || self.clock.is_some();
        if store != "redis" && redis_only {
            bail!("[counters] `url`, `key_prefix`, `timeout_ms`, `on_error` and `clock` are for store = \"redis\"");
        }
        if store != "sqlite" && self.path.is_some() {
            bail!("[counters] `path` is for store = \"sqlite\"");
        }
        match store {
            "memory" => Ok("memory".into()),
            "sqlite" => match &self.path {
                Some(path) => Ok(format!("sqlite:{}", path.display())),
                None => bail!("[counters] store = \"sqlite\" needs a `path`"),
            },
            "redis" => {
                let Some(url) = &self.url else {
                    bail!("[counters] store = \"redis\" needs a `url`");
                };
                let mut url =
                    url::Url::parse(url).map_err(|e| anyhow::anyhow!("[counters] url: {e}"))?;
                let options = [
                    ("key_prefix", self.key_prefix.clone()),
                    ("timeout_ms", self.timeout_ms.map(|t| t.to_string())),
                    ("on_error", self.on_error.clone()),
                    ("clock", self.clock.clone()),
                ];
                if options.iter().any(|(_, v)| v.is_some()) {
                    let mut query = url.query_pairs_mut();
                    for (name, value) in &options {
                        if let Some(value) = value {
                            query.append_pair(name, value);
                        }
                    }
                }
                Ok(url.to_string())
            }
            other => {
                bail!("[counters] store is \"memory\", \"sqlite\" or \"redis\", not {other:?}")
            }
        }
    }
}

/// `[approvals_webhook]`: `url`, `secret_file` (the HMAC-SHA256 key, relative to this file),
/// and `link` (the approvals page's address, for the link in each POST).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    pub(crate) url: String,
    pub(crate) secret_file: PathBuf,
    #[serde(default)]
    pub(crate) link: Option<String>,
}

/// `[[approvers]]`: `name`, `token_sha256`, `grants = ["ci-agent"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproverConfig {
    pub(crate) name: String,
    /// sha256 (hex) of the approver's bearer token (on the admin listener).
    pub(crate) token_sha256: String,
    /// The grants whose held calls this approver may decide.
    pub(crate) grants: Vec<String>,
}

/// `[plugins]`: the operator's side of running other people's plugins. Never in a policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginsConfig {
    /// The trust file every plugin of every grant must satisfy (relative to this file;
    /// default: `$TOOLGATE_TRUST`, else none).
    #[serde(default)]
    pub(crate) trust: Option<PathBuf>,
    /// The store `ref` entries are read from (relative to this file; default:
    /// `$TOOLGATE_STORE`, else under the user's data folder).
    #[serde(default)]
    pub(crate) store: Option<PathBuf>,
}

/// The MCP server behind the gateway: a Streamable HTTP URL or a stdio command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// A Streamable HTTP endpoint, e.g. `http://127.0.0.1:3001/mcp` or
    /// `https://mcp.example.com/mcp`.
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// For an `https://` upstream: a PEM file of the certificate authorities to trust instead
    /// of the bundled public roots (Mozilla's, from `webpki-roots`), for a private CA or a
    /// self-signed server. Relative to the config file.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// For an `https://` upstream that asks for a client certificate (mutual TLS): the
    /// certificate chain toolgate presents, and its key. Both or neither; relative to the
    /// config file.
    #[serde(default)]
    pub(crate) client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) client_key_file: Option<PathBuf>,
    /// A stdio server's command and arguments: one child per MCP session.
    #[serde(default)]
    pub(crate) command: Option<Vec<String>>,
    /// Extra headers sent to an HTTP upstream (its own credentials, say). The clients' tokens
    /// are toolgate's and are never forwarded.
    #[serde(default)]
    pub(crate) headers: std::collections::BTreeMap<String, String>,
    /// Tools whose arguments are not checked against their advertised `inputSchema` (a
    /// server whose schema is known to be wrong); `["*"]` for every tool.
    #[serde(default)]
    pub(crate) skip_schema: Vec<String>,
}

/// The listeners' certificate and key (PEM files, relative to the config file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// The certificate chain, leaf first.
    pub(crate) cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key_file: PathBuf,
}

/// One agent identity: a token (stored as its sha256) and the policy its calls answer to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantConfig {
    pub(crate) name: String,
    /// sha256 (hex) of the bearer token. A grant without one can only be the anonymous grant.
    #[serde(default)]
    pub(crate) token_sha256: Option<String>,
    /// The policy file, relative to the config file. No policy: every call is denied.
    #[serde(default)]
    pub(crate) policy: Option<PathBuf>,
    /// A policy decided beside `policy` on every call, logged, never enforced (relative).
    #[serde(default)]
    pub(crate) shadow_policy: Option<PathBuf>,
}

/// Limits on the listener. Each one answers with a clear HTTP status and JSON-RPC error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    /// Largest request body. Bigger bodies get 413 before they are read in full.
    pub(crate) max_body_bytes: usize,
    /// Largest message accepted from the upstream (one JSON reply or one SSE event).
    pub(crate) max_upstream_message_bytes: usize,
    /// Open MCP sessions at once (for a stdio upstream: child processes). An `initialize`
    /// beyond it gets 503; nothing already open is touched.
    pub(crate) max_sessions: usize,
    /// A session with no request and no open stream for this long is closed (its upstream
    /// session deleted, its child stopped). Shorter frees memory sooner; longer lets agents
    /// pause. Later use of its id gets 404.
    pub(crate) session_idle_timeout_s: u64,
    /// How long the upstream may take to start answering a request (504 after). A streamed
    /// answer may then go on for as long as the upstream keeps it open.
    pub(crate) request_timeout_s: u64,
    /// How long a client may take to send its headers and its body (a slow-loris guard):
    /// 408, or the connection is closed.
    pub(crate) client_timeout_s: u64,
    /// TCP connections open at once; more wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// On SIGTERM or SIGINT the listeners close at once and requests in flight get this long
    /// to finish (idle keep-alive connections are closed, GET streams end at once); then the
    /// rest are cut off.
    pub(crate) shutdown_grace_s: u64,
    /// Plugin evaluations running at once, over all grants and sessions; a call past it waits
    /// up to its plugin's timeout for one to finish, then is denied. Calls run plugins on the
    /// runtime's blocking threads, so without a cap a burst would take one instance slot of
    /// the pool (256 in all) per call. More only helps up to the number of cores and leaves
    /// fewer slots to idle instances; fewer makes bursts wait.
    pub(crate) max_plugin_evaluations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_upstream_message_bytes: 16 << 20,
            max_sessions: 1024,
            session_idle_timeout_s: 1800,
            request_timeout_s: 300,
            client_timeout_s: 10,
            max_connections: 4096,
            shutdown_grace_s: 10,
            max_plugin_evaluations: crate::plugins::DEFAULT_MAX_CONCURRENT_EVALUATIONS,
        }
    }
}

impl Limits {
    pub(crate) fn idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_timeout_s)
    }
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }
    pub(crate) fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_s)
    }
    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 7400).into()
}
fn default_admin_listen() -> SocketAddr {
    ([127, 0, 0, 1], 7401).into()
}
fn yes() -> bool {
    true
}

/// The upstream, checked: exactly one of `url` and `command`.
#[derive(Clone, Debug)]
pub(crate) enum Upstream {
    Http {
        url: String,
        /// `[upstream] headers`, checked as HTTP header names and values.
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
        tls: UpstreamTls,
    },
    Stdio(Vec<String>),
    /// `[[upstreams]]`: a set per session, on a pipe pair like a stdio child.
    Set(std::sync::Arc<crate::upstreams::UpstreamSet>),
}

/// The TLS settings of an `https://` upstream, paths absolute.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UpstreamTls {
    /// The CAs to trust instead of the public roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// The client certificate chain and key, for mutual TLS.
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

impl UpstreamTls {
    pub(crate) fn is_set(&self) -> bool {
        *self != Self::default()
    }
}

impl Config {
    /// Reads and checks the config at `path`; policy paths become absolute.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config `{}`", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config `{}`: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut names = std::collections::HashSet::new();
        for grant in &mut config.grants {
            if !names.insert(grant.name.clone()) {
                bail!(
                    "config `{}`: grant `{}` is listed twice",
                    path.display(),
                    grant.name
                );
            }
            if let Some(hash) = &grant.token_sha256 {
                parse_sha256(hash).with_context(|| format!("grant `{}`", grant.name))?;
            }
            if grant.shadow_policy.is_some() && !config.metrics && config.decision_log.is_none() {
                bail!(
                    "config `{}`: grant `{}` has a shadow_policy, but with metrics = false and no decision_log nothing would report what it decides: set decision_log, or leave the metrics on",
                    path.display(),
                    grant.name
                );
            }
            for policy in [&mut grant.policy, &mut grant.shadow_policy]
                .into_iter()
                .flatten()
            {
                *policy = base.join(&*policy);
            }
        }
        if let Some(counters) = &mut config.counters.path {
            *counters = base.join(&*counters);
        }
        config.counters.spec()?;
        if let Some(log) = config.decision_log.as_mut().filter(|l| *l != "-") {
            *log = base.join(&*log).to_string_lossy().into_owned();
        }
        if let Some(key) = &mut config.session_key_file {
            *key = base.join(&*key);
            if config.upstream.as_ref().is_none_or(|u| u.command.is_some()) {
                bail!(
                    "config `{}`: session_key_file is for an HTTP upstream: a stdio upstream's sessions are child processes of one replica, so put replicas behind a load balancer that keeps each session on the replica that opened it (one that learns the `Mcp-Session-Id` from the response, such as HAProxy's stick tables; see the README)",
                    path.display()
                );
            }
        }
        if let Some(webhook) = &mut config.approvals_webhook {
            webhook.secret_file = base.join(&webhook.secret_file);
            let scheme = url::Url::parse(&webhook.url).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                bail!(
                    "config `{}`: approvals_webhook.url must be an http or https URL",
                    path.display()
                );
            }
        }
        for path in [&mut config.plugins.trust, &mut config.plugins.store]
            .into_iter()
            .flatten()
        {
            *path = base.join(&*path);
        }
        let grant_tokens: Vec<[u8; 32]> = config
            .grants
            .iter()
            .filter_map(|g| g.token_sha256.as_deref())
            .filter_map(|h| parse_sha256(h).ok())
            .collect();
        let mut approver_names = std::collections::HashSet::new();
        for approver in &config.approvers {
            if !approver_names.insert(approver.name.as_str()) {
                bail!(
                    "config `{}`: approver `{}` is listed twice",
                    path.display(),
                    approver.name
                );
            }
            let token = parse_sha256(&approver.token_sha256)
                .with_context(|| format!("approver `{}`", approver.name))?;
            // A grant's token can never approve: the agent would approve its own calls.
            if grant_tokens.contains(&token) {
                bail!(
                    "config `{}`: approver `{}` has a grant's token; an approver needs a token of their own",
                    path.display(),
                    approver.name
                );
            }
            if approver.grants.is_empty() {
                bail!(
                    "config `{}`: approver `{}` may decide for no grant (`grants = [...]`)",
                    path.display(),
                    approver.name
                );
            }
            for grant in &approver.grants {
                if !names.contains(grant) {
                    bail!(
                        "config `{}`: approver `{}` names grant `{grant}`, which is not a grant",
                        path.display(),
                        approver.name
                    );
                }
            }
        }
        if let Some(anonymous) = &config.anonymous_grant {
            if !names.contains(anonymous) {
                bail!(
                    "config `{}`: anonymous_grant `{anonymous}` is not a grant",
                    path.display()
                );
            }
        }
        if let Some(up) = &mut config.upstream {
            for file in [
                &mut up.ca_file,
                &mut up.client_cert_file,
                &mut up.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                *file = base.join(&*file);
            }
        }
        if let Some(tls) = &mut config.tls {
            tls.cert_file = base.join(&tls.cert_file);
            tls.key_file = base.join(&tls.key_file);
        }
        if let Some(hash) = &config.admin_token_sha256 {
            parse_sha256(hash).context("admin_token_sha256")?;
        }
        config.upstream()?;
        Ok(config)
    }

    /// The upstream, checked.
    pub(crate) fn upstream(&self) -> anyhow::Result<Upstream> {
        let up = match (&self.upstream, self.upstreams.is_empty()) {
            (Some(up), true) => up,
            (None, false) => {
                let set = crate::upstreams::config::set_of(
                    &self.upstreams,
                    self.namespace_separator.as_deref(),
                )
                .map_err(anyhow::Error::msg)?;
                return Ok(Upstream::Set(std::sync::Arc::new(set)));
            }
            _ => anyhow::bail!("the config needs exactly one of `[upstream]` and `[[upstreams]]`"),
        };
        let tls = UpstreamTls {
            ca_file: up.ca_file.clone(),
            client: match (&up.client_cert_file, &up.client_key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                _ => anyhow::bail!(
                    "[upstream] client_cert_file and client_key_file go together: set both or neither"
                ),
            },
        };
        match (&up.url, &up.command) {
            (None, Some(_)) if tls.is_set() => {
                anyhow::bail!("[upstream] ca_file and client certificates are for an https:// url, not a command")
            }
            (Some(url), None) => Ok(Upstream::Http {
                url: url.clone(),
                tls,
                headers: up
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let checked = (name.parse(), value.parse());
                        match checked {
                            (Ok(name), Ok(value)) => Ok((name, value)),
                            _ => anyhow::bail!(
                                "[upstream] headers: `{name} = {value:?}` is not a valid HTTP header"
                            ),
                        }
                    })
                    .collect::<anyhow::Result<_>>()?,
            }),
            (None, Some(command)) if !command.is_empty() => Ok(Upstream::Stdio(command.clone())),
            _ => anyhow::bail!("[upstream] needs exactly one of `url` and a non-empty `command`"),
        }
    }
}

/// Decodes a 64-digit hex sha256.
pub(crate) fn parse_sha256(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        anyhow::bail!("a sha256 is 64 hex digits, got {} characters", hex.len());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow::anyhow!("`{hex}` is not hex"))?;
    }
    Ok(out)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
