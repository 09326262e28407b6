//! `toolgate run --metrics-listen ADDR`: `/metrics` on a listener of its own (the stdio
//! gateway has no HTTP listener), served by one thread with a current-thread runtime, so that
//! a scrape never competes with the two threads that relay the session.

use super::{Metrics, CONTENT_TYPE};
use axum::http::header;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves `GET /metrics` on `addr` from a thread of its own until the process ends; returns
/// the bound address (port 0 picks one). Unauthenticated: bind it where only the scraper
/// can reach it (loopback by default in the examples).
pub fn listen(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("metrics-listen".into())
        .spawn(move || {
            runtime.block_on(async move {
                let router = axum::Router::new().route(
                    "/metrics",
                    get(move || {
                        let text = metrics.encode();
                        async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text) }
                    }),
                );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, router).await {
                            tracing::error!(error = %e, "metrics listener stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "metrics listener cannot start"),
                }
            });
        })?;
    Ok(bound)
}
