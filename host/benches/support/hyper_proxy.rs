//! A bare reverse proxy on the stack `toolgate serve` is built on (tokio and hyper, one worker
//! thread): each client connection gets one upstream connection, and every request and
//! response passes through unread (bodies stream frame by frame, so SSE replies too). No
//! parsing, no policy, no session: what is left of the gateway's added latency when all of its
//! own work is taken away. `http_overhead` runs it as a child of its own (`hyper-proxy`
//! mode), beside nginx.

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Listens on 127.0.0.1:`listen` and proxies to 127.0.0.1:`upstream` until killed.
pub fn run(listen: u16, upstream: u16) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .expect("bind");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(up)).await
                else {
                    return;
                };
                tokio::spawn(conn);
                // HTTP/1.1: one request at a time on a connection, so a lock held per exchange
                // costs nothing.
                let sender = Arc::new(tokio::sync::Mutex::new(sender));
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let sender = sender.clone();
                    async move { sender.lock().await.send_request(request).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(client), service)
                    .await;
            });
        }
    });
    unreachable!("the accept loop never ends")
}
