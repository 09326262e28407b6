//! A bare reverse proxy on the stack `toolgate serve` is built on (tokio and hyper, one worker
//! thread): each client connection gets one upstream connection, and every request and
//! response passes through unread (bodies stream frame by frame, so SSE replies too). No
//! parsing, no policy, no session: what is left of the gateway's added latency when all of its
//! own work is taken away. `http_overhead` runs it as a child of its own (`hyper-proxy`
//! mode), beside nginx.
//!
//! With `parse` (`hyper-parse` mode) it does the least that any gateway deciding on what it
//! forwards must also do: read each request's body whole and parse it as JSON before
//! forwarding it, and read each reply whole and parse it (a JSON body, or each SSE event's
//! `data`) before passing it on. The bytes pass unchanged. Nothing else of toolgate's work
//! (sessions, policy, ids, observers) is done: it is the floor of a deciding gateway on this
//! stack, as `relay-parse` is on stdio.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpStream;

/// `body` parsed as JSON, or for an event stream each event's `data` lines: the work is
/// kept, not its result.
fn parse(body: &[u8], event_stream: bool) {
    if !event_stream {
        let _ = std::hint::black_box(serde_json::from_slice::<serde_json::Value>(body));
        return;
    }
    for line in body.split(|&b| b == b'\n') {
        if let Some(data) = line.strip_prefix(b"data:") {
            let _ = std::hint::black_box(serde_json::from_slice::<serde_json::Value>(data));
        }
    }
}

/// One upstream connection's sender. HTTP/1.1: one request at a time on a connection, so a
/// lock held per exchange costs nothing.
pub type Sender<B> = tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<B>>;

/// The HTTP/1.1 client half on `up`, its connection driven by a task of its own.
pub async fn handshake<B>(up: TcpStream) -> Option<Arc<Sender<B>>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(Arc::new(tokio::sync::Mutex::new(sender)))
}

/// Reads `request` whole and parses it, sends it, reads the reply whole and parses it.
async fn exchange(
    sender: Arc<Sender<Full<Bytes>>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    parse(&body, false);
    let reply = sender
        .lock()
        .await
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = reply.into_parts();
    let body = body.collect().await?.to_bytes();
    let event_stream = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    parse(&body, event_stream);
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Listens on 127.0.0.1:`listen` on one worker thread, as nginx runs one worker, until
/// killed. Each client connection gets a connection of its own to 127.0.0.1:`upstream` (both
/// without Nagle's delay), and `serve` gets the pair.
pub fn accept_loop<F, Fut>(listen: u16, upstream: u16, serve: F) -> !
where
    F: Fn(TcpStream, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let serve = Arc::new(serve);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen))
            .await
            .expect("bind");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                serve(client, up).await;
            });
        }
    });
    unreachable!("the accept loop never ends")
}

/// Listens on 127.0.0.1:`listen` and proxies to 127.0.0.1:`upstream` until killed, reading
/// and parsing what passes when `parse` is set.
pub fn run(listen: u16, upstream: u16, parse: bool) -> ! {
    accept_loop(listen, upstream, move |client, up| async move {
        let server = hyper::server::conn::http1::Builder::new();
        if parse {
            let Some(sender) = handshake(up).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request| exchange(sender.clone(), request));
            let _ = server.serve_connection(TokioIo::new(client), service).await;
            return;
        }
        let Some(sender) = handshake::<Incoming>(up).await else {
            return;
        };
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let sender = sender.clone();
            async move { sender.lock().await.send_request(request).await }
        });
        let _ = server.serve_connection(TokioIo::new(client), service).await;
    })
}
