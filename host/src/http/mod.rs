//! `toolgate serve`: the gateway as a Streamable HTTP endpoint shared by many agents.
//!
//! - [`config`]: the TOML file (listeners, upstream, grants, limits).
//! - [`grants`]: bearer tokens → grants, each with its own policy and counters.
//! - [`gateway`]: `/mcp` (POST, GET, DELETE), sessions, and where a request meets policy.
//! - [`children`]: a stdio upstream, one child per session.
//! - [`upstream`]: an HTTP upstream, pooled keep-alive connections.
//! - [`tls`]: rustls for an `https://` upstream and for the listeners.
//! - [`sse`]: server-sent events in and out.
//! - [`admin`]: health, status and reload on a separate listener.
//! - [`echo`]: a tiny Streamable HTTP upstream for benchmarks and tests.

pub mod admin;
pub mod children;
pub mod config;
pub mod echo;
pub mod gateway;
pub mod grants;
pub mod sse;
pub mod tls;
pub mod upstream;

use config::Config;
use gateway::Gateway;
use grants::Grants;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Loads the config and serves until the process is stopped.
pub fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let grants = Grants::load(&config)?;
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
            crate::reload::watch(live.clone()).map_err(anyhow::Error::msg)?;
        }
        crate::reload::reload_on_sighup(live).map_err(anyhow::Error::msg)?;
    }
    let gateway = Arc::new(Gateway::new(
        grants,
        config.upstream()?,
        config.limits,
        config.allowed_hosts.clone(),
        config.allowed_origins.clone(),
    )?);
    if config.anonymous_grant.is_some() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "anonymous_grant on a non-loopback listener: anyone who can reach it gets that grant");
    }
    let mcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
    let tls = match &config.tls {
        Some(tls) => Some(tls::acceptor(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
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
    let admin_router = admin::router(gateway.clone(), config.admin_token_sha256.as_deref())?;
    let client_timeout = gateway.limits.client_timeout();
    let max_connections = gateway.limits.max_connections;
    let admin_service = hyper_util::service::TowerToHyperService::new(admin_router);
    let admin_service = move || admin_service.clone();
    tokio::spawn(accept(
        admin,
        tls.clone(),
        admin_service,
        client_timeout,
        64,
    ));
    // `/mcp` is served by a plain hyper service (one route needs no router), one per
    // connection, remembering the token that the connection last presented.
    let mcp_service = move || {
        let gateway = gateway.clone();
        let remembered = Arc::new(grants::Remembered::default());
        hyper::service::service_fn(move |request| {
            let (gateway, remembered) = (gateway.clone(), remembered.clone());
            async move { Ok(gateway::handle(gateway, remembered, request).await) }
        })
    };
    accept(mcp, tls, mcp_service, client_timeout, max_connections).await;
    Ok(())
}

/// Serves HTTP/1.1 connections, over TLS if `tls` is set: at most `max` at once, each with a
/// deadline for its TLS handshake and for its request headers (the slow-loris guard; bodies
/// have theirs in the handlers).
async fn accept<S>(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    new_service: impl Fn() -> S,
    header_timeout: Duration,
    max: usize,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = new_service();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, service, header_timeout).await,
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, service, header_timeout).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake not finished in time"),
                },
            }
            drop(permit);
        });
    }
}

async fn serve_connection<I, S>(stream: I, service: S, header_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    // `writev(false)`: a reply's head and body are copied into one buffer and sent with one
    // plain write, cheaper than a writev of several small pieces.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .writev(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
