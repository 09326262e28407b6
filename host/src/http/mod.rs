//! `toolgate serve`: the gateway as a Streamable HTTP endpoint shared by many agents.
//!
//! One `tools/call` over HTTP passes through the submodules in this order:
//! 1. [`serve`] (here): the listener accepts the connection (TLS by `tls`) and hands each
//!    request to `mcp::handle`.
//! 2. `admission`: `Host`/`Origin` (403) and the bearer token (401), which names a grant
//!    ([`grants`]); the request's headers are read with `headers`.
//! 3. `mcp`: the POST handler reads the body and finds the session in the registry
//!    (`sessions`, held by the shared state in `gateway`). With a shared key
//!    (`session_key_file`), session ids are sealed (`sealed`), and a session another replica
//!    opened is adopted, its core learning the upstream's tools first (`adopted`).
//! 4. **The decision**: `mcp::decide` (in `http/mcp.rs`) calls the session core's
//!    [`Session::from_client_parsed`](crate::session::Session::from_client_parsed), exactly as
//!    the stdio transport does. A refusal is answered there and never reaches the upstream.
//!    (An `initialize`, which opens the session, is decided the same way in `mcp::initialize`.)
//! 5. The allowed message goes upstream: an HTTP upstream through `upstream` (pooled
//!    keep-alive connections), or the session's own stdio child (`children`).
//! 6. `relay`: the reply, JSON or an SSE stream (`sse`), passes back message by message
//!    through [`Session::from_upstream`](crate::session::Session::from_upstream).
//!
//! Every refusal the gateway answers itself (at any step) is an `error::GatewayError`,
//! mapped to its status, JSON-RPC code and headers in one place.
//!
//! Beside the request path: `config` (the TOML file: listeners, upstream, grants, limits)
//! and `admin` (health, status, metrics and reload on a separate listener).
//!
//! Dependencies point one way (no cycles): `mcp` → `gateway` → `admission`/`sessions` →
//! `grants`, and `mcp` → `relay` → `sessions`/`sse`/`upstream`; `error` (which names
//! `upstream`'s body error) and `headers` sit below the handlers. Outside `http`, only lower
//! modules are used (`session`, `policy`, `reload`, `jsonrpc`, `framing`, `child`, `counters`,
//! `clock`, `digest`, `metrics`).

pub(crate) mod admin;
pub(crate) mod admission;
mod adopted;
mod approval_events;
mod approvals_page;
pub(crate) mod children;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod gateway;
pub mod grants;
pub(crate) mod headers;
mod held;
pub(crate) mod mcp;
pub(crate) mod relay;
pub(crate) mod sealed;
pub(crate) mod sessions;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod webhook;

use config::Config;
use gateway::Gateway;
use grants::Grants;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping gateway waits for the upstream to answer its sessions' DELETEs.
const SESSION_DELETES_WITHIN: Duration = Duration::from_secs(3);

/// Loads the config and serves until the process is stopped.
pub fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = crate::plugins::PluginRuntime::from_env()
        .map(|r| r.with_max_concurrent_evaluations(config.limits.max_plugin_evaluations));
    let mut loader = crate::policy::Loader::from_runtime(runtime);
    if let Some(trust) = &config.plugins.trust {
        loader = loader.with_trust(Some(trust.clone()));
    }
    if let Some(store) = &config.plugins.store {
        loader = loader.with_store(store.clone());
    }
    let grants = Grants::load(&config, &loader)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().thread_name("toolgate-http").build()?;
    runtime.block_on(run(config, grants))
}

async fn run(config: Config, grants: Grants) -> anyhow::Result<()> {
    use anyhow::Context;
    for live in grants.live_policies() {
        if config.watch {
            crate::reload::watch("policy-watch", live.clone()).map_err(anyhow::Error::msg)?;
        }
        crate::reload::reload_on_sighup("policy-sighup", live).map_err(anyhow::Error::msg)?;
    }
    let mut gateway = Gateway::new(
        grants,
        config.upstream()?,
        config.limits,
        config.allowed_hosts.clone(),
        config.allowed_origins.clone(),
    )?
    .with_schema_checks(crate::session::SchemaChecks::skipping(
        config
            .upstream
            .iter()
            .flat_map(|u| u.skip_schema.iter().cloned()),
    ))
    .with_approvers(
        config
            .approvers
            .iter()
            .map(|a| gateway::Approver {
                name: a.name.clone(),
                token_sha256: config::parse_sha256(&a.token_sha256).expect("checked at load"),
                grants: a.grants.clone(),
            })
            .collect(),
    );
    if let Some(path) = &config.session_key_file {
        gateway = gateway.with_session_key(sealed::SessionKey::load(path)?);
    }
    // Every session reports to the metrics (unless `metrics = false`), and to the decision
    // log when there is one.
    let mut observers: Vec<Arc<dyn crate::audit::Observer>> = Vec::new();
    if let Some(sink) = &config.decision_log {
        let log = crate::audit::DecisionLog::open(
            crate::audit::LogSink::parse(sink, true),
            crate::audit::DEFAULT_CAPACITY,
        )
        .with_context(|| format!("cannot open the decision log `{sink}`"))?;
        let log = Arc::new(log);
        observers.push(log.clone());
        gateway.decision_log = Some(log);
    }
    if config.metrics {
        observers.push(gateway.metrics.clone());
    }
    gateway.audit = match observers.len() {
        0 => None,
        1 => Some(crate::session::Audit::new(observers.remove(0), "http")),
        _ => Some(crate::session::Audit::new(
            Arc::new(crate::audit::Observers(observers)),
            "http",
        )),
    };
    if let Some(webhook) = &config.approvals_webhook {
        // reqwest takes the process's TLS provider; the listeners pass theirs explicitly.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        gateway = gateway.with_announce(webhook::announcer(webhook)?);
    }
    gateway.inject_trace = config.inject_trace_context;
    let gateway = Arc::new(gateway);
    let decision_log = gateway.decision_log.clone();
    let shadows = gateway.audit.as_ref().and_then(|a| a.shadow.clone());
    let weak = Arc::downgrade(&gateway);
    gateway.metrics.read_from(move || {
        weak.upgrade()
            .map(|gw| admin::snapshot(&gw))
            .unwrap_or_default()
    });
    if config.anonymous_grant.is_some() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "anonymous_grant on a non-loopback listener: anyone who can reach it gets that grant");
    }
    let mcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
    let cert = match &config.tls {
        Some(tls) => Some(tls::ListenerCert::load(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
    if let Some(cert) = cert.clone() {
        if config.watch {
            crate::reload::watch("tls-watch", cert.clone()).map_err(anyhow::Error::msg)?;
        }
        crate::reload::reload_on_sighup("tls-sighup", cert).map_err(anyhow::Error::msg)?;
    }
    let tls = cert.clone().map(tls::acceptor).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "plain HTTP on a non-loopback listener: bearer tokens cross it in clear text; set [tls] or put a TLS terminator in front");
    }
    tracing::info!(
        mcp = %mcp.local_addr()?, admin = %admin.local_addr()?, tls = tls.is_some(),
        grants = gateway.grants.all().len(), "toolgate serve: listening"
    );
    // The tests and scripts read the bound addresses from here (ports may be 0).
    eprintln!(
        "toolgate serve: listening on {scheme}://{}/mcp (admin {scheme}://{})",
        mcp.local_addr()?,
        admin.local_addr()?
    );
    let reaper = gateway.clone();
    tokio::spawn(async move {
        let every =
            (reaper.limits.idle() / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            reaper.expire_idle();
        }
    });
    let token = config.admin_token_sha256.as_deref();
    let admin_router = admin::router(gateway.clone(), cert, token, config.metrics_public)?;
    let stopping = gateway.stopping();
    let stop = gateway.clone();
    tokio::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!(
            signal,
            "stopping: listeners closed, GET streams ended, requests in flight may finish"
        );
        stop.stop();
    });
    let options = Options {
        tls,
        header_timeout: gateway.limits.client_timeout(),
        max: 64,
        stop: stopping,
        grace: gateway.limits.shutdown_grace(),
    };
    let admin_service = hyper_util::service::TowerToHyperService::new(admin_router);
    let admin_service = move || admin_service.clone();
    let admin = tokio::spawn(accept(admin, admin_service, options.clone()));
    let max = gateway.limits.max_connections;
    // `/mcp` is served by a plain hyper service (one route needs no router), one per
    // connection, remembering the token that the connection last presented.
    let sessions = gateway.clone();
    let mcp_service = move || {
        let gateway = gateway.clone();
        let remembered = Arc::new(grants::Remembered::default());
        hyper::service::service_fn(move |request| {
            let (gateway, remembered) = (gateway.clone(), remembered.clone());
            async move { Ok(mcp::handle(gateway, remembered, request).await) }
        })
    };
    accept(mcp, mcp_service, Options { max, ..options }).await;
    let _ = admin.await;
    let closed = sessions.close_all(SESSION_DELETES_WITHIN).await;
    // The last decisions (and their shadows, decided first) are written before the process
    // exits.
    let within = Duration::from_secs(2);
    if let Some(shadows) = shadows {
        let _ = tokio::task::spawn_blocking(move || shadows.flush(within)).await;
    }
    if let Some(log) = &decision_log {
        let log = log.clone();
        let _ = tokio::task::spawn_blocking(move || log.flush(within)).await;
    }
    tracing::info!(sessions = closed, "stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT: no graceful stop");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Returns once the gateway is stopping.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        // The sender only goes once it has said stop: never here, but never a stop either.
        std::future::pending::<()>().await;
    }
}

/// What both listeners serve each connection with: a hyper service that cannot fail (a
/// trait alias, hence the blanket impl).
trait Service:
    hyper::service::Service<
        Request,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> Service for S where
    S: hyper::service::Service<
            Request,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

type Request = hyper::Request<hyper::body::Incoming>;
type Response = axum::response::Response;

/// How a listener serves its connections.
#[derive(Clone)]
struct Options {
    /// TLS, if the listeners speak HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The deadline for a TLS handshake and for each request's headers.
    header_timeout: Duration,
    /// Connections at once.
    max: usize,
    /// Becomes true when the gateway is stopping.
    stop: tokio::sync::watch::Receiver<bool>,
    /// How long connections may take to finish once it stops.
    grace: Duration,
}

/// Serves HTTP/1.1 connections, over TLS if set: at most `max` at once, each with a deadline
/// for its TLS handshake and for its request headers (the slow-loris guard; bodies have
/// theirs in the handlers). When the gateway stops, the listener closes, and the connections
/// get the grace period to finish what they are doing; then it returns.
async fn accept<S: Service>(
    listener: tokio::net::TcpListener,
    new_service: impl Fn() -> S,
    options: Options,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max));
    let mut stop = options.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            accepted = async {
                let permit = permits.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => accepted,
        };
        let (stream, permit) = match accepted {
            (Ok(permit), Ok((stream, _))) => (stream, permit),
            (Err(_), _) => break,
            (_, Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = new_service();
        let options = options.clone();
        tokio::spawn(async move {
            match &options.tls {
                None => serve_connection(stream, service, &options).await,
                Some(tls) => {
                    match tokio::time::timeout(options.header_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, &options).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake not finished in time"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back means every connection has ended.
    let all = u32::try_from(options.max).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        let open = options.max - permits.available_permits();
        tracing::warn!(
            open,
            "connections still open after the shutdown grace; cut off"
        );
    }
}

/// One HTTP/1.1 connection; when the gateway stops, it ends after its request in flight.
async fn serve_connection<I, S: Service>(stream: I, service: S, options: &Options)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // `writev(false)`: a reply's head and body are copied into one buffer and sent with one
    // plain write, cheaper than a writev of several small pieces.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .writev(false)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut stop = options.stop.clone();
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
