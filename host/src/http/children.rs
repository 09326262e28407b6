//! A stdio upstream behind the HTTP front: one child process per MCP session.
//!
//! A stdio server serves exactly one client, so each session that `initialize`s gets its own
//! child. Lines from the child are routed the way a Streamable HTTP server would send them:
//! - a reply goes to the POST that carried its request, and ends that POST's stream;
//! - a notification or a server→client request goes to the newest POST still waiting (the
//!   call it most likely belongs to: progress, sampling, elicitation), else to the session's
//!   GET stream, else into a small backlog that the next GET stream receives first.
//!
//! The child is killed when its session ends (DELETE, idle expiry, shutdown): only the
//! session holds the handle, and dropping it kills the process. Each child's output is read
//! by a plain thread with the stdio transport's capped line reader; the thread also reaps
//! the child when it exits.

use crate::framing::{read_line_capped, Frame};
use crate::jsonrpc::{self, Envelope};
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Messages waiting for a GET stream; older ones are dropped beyond this (with a warning).
const BACKLOG: usize = 256;
/// Messages buffered per stream before the child's output waits for the client.
const STREAM_BUFFER: usize = 64;

type Sender = mpsc::Sender<Vec<u8>>;

#[derive(Default)]
struct Routes {
    /// Streams waiting for a reply, by the gateway's request id.
    waiting: HashMap<u64, Sender>,
    /// The same ids, oldest first.
    order: Vec<u64>,
    listener: Option<Sender>,
    backlog: VecDeque<Vec<u8>>,
    exited: bool,
}

/// A request that could not be handed to the child.
#[derive(Debug)]
pub(crate) struct RequestError {
    /// What went wrong.
    pub(crate) error: std::io::Error,
    /// Whether any of the request may have reached the child.
    pub(crate) written: bool,
}

/// One child process serving one session, or one session's set of upstreams
/// ([`crate::upstreams`]), which speaks on a pipe pair as a child does.
pub(crate) struct Child {
    stdin: tokio::sync::Mutex<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    routes: Arc<Mutex<Routes>>,
    /// The child's pid, to kill it when the session ends (`None` for a set: closing its
    /// input, when this is dropped, stops it).
    pid: Option<u32>,
}

impl Drop for Child {
    fn drop(&mut self) {
        // The output thread sees EOF, marks the routes `exited`, then reaps the process. While
        // `exited` is false (checked under the lock the thread sets it under) the process has
        // not been reaped, so the pid is still ours and cannot name another process.
        let routes = lock(&self.routes);
        if let (false, Some(pid)) = (routes.exited, self.pid) {
            // SAFETY: kill(2) takes no memory; the pid is our unreaped child (see above).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

impl Child {
    /// Starts `command` and the task that routes its output.
    pub(crate) fn spawn(command: &[String], max_line: usize) -> std::io::Result<Self> {
        let mut process = crate::child::spawn_upstream(command)?;
        let stdin = tokio::process::ChildStdin::from_std(process.stdin.take().expect("piped"))?;
        let stdout = process.stdout.take().expect("stdout is piped");
        let routes = Arc::new(Mutex::new(Routes::default()));
        let pid = process.id();
        let thread_routes = routes.clone();
        std::thread::Builder::new()
            .name(format!("upstream-{pid}"))
            .spawn(move || {
                route_output(stdout, &thread_routes, max_line);
                let _ = process.kill();
                let _ = process.wait();
            })?;
        Ok(Self {
            stdin: tokio::sync::Mutex::new(Box::new(stdin)),
            routes,
            pid: Some(pid),
        })
    }

    /// Starts a session's set of upstreams (one router thread, its children and HTTP
    /// sessions), reporting their states on `board`.
    pub(crate) fn connect(
        set: &crate::upstreams::UpstreamSet,
        board: crate::upstreams::Board,
        max_line: usize,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let connected = crate::upstreams::connect(set, Some(runtime), board)?;
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(connected.input.into())?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let thread_routes = routes.clone();
        let output = connected.output;
        std::thread::Builder::new()
            .name("upstreams-out".into())
            .spawn(move || route_output(output, &thread_routes, max_line))?;
        Ok(Self {
            stdin: tokio::sync::Mutex::new(Box::new(stdin)),
            routes,
            pid: None,
        })
    }

    /// Writes a request sent under the gateway's id `id`; the returned stream gets the
    /// messages for it, ending with its reply.
    pub(crate) async fn request(
        &self,
        id: u64,
        line: &[u8],
    ) -> Result<mpsc::Receiver<Vec<u8>>, RequestError> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        {
            let mut routes = lock(&self.routes);
            if routes.exited {
                return Err(RequestError {
                    error: std::io::Error::other("upstream MCP server has exited"),
                    written: false,
                });
            }
            routes.order.push(id);
            routes.waiting.insert(id, tx);
        }
        // A failed write may still have delivered part of the line: counted as written.
        self.write(line).await.map_err(|error| RequestError {
            error,
            written: true,
        })?;
        Ok(rx)
    }

    /// Writes a notification or a reply to the server's request.
    pub(crate) async fn write(&self, line: &[u8]) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line.trim_ascii_end()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await
    }

    /// The session's GET stream: messages that belong to no request. A new one replaces the
    /// old (which ends).
    pub(crate) fn listen(&self) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(BACKLOG + STREAM_BUFFER);
        let mut routes = lock(&self.routes);
        for line in routes.backlog.drain(..) {
            let _ = tx.try_send(line);
        }
        if !routes.exited {
            routes.listener = Some(tx);
        }
        rx
    }
}

fn route_output(stdout: impl std::io::Read, routes: &Mutex<Routes>, max: usize) {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    let mut line = Vec::new();
    loop {
        match read_line_capped(&mut reader, &mut line, max) {
            Ok(Frame::Line) => {}
            Ok(Frame::Oversized(length)) => {
                tracing::error!(
                    length,
                    max,
                    "upstream message over the size cap was dropped"
                );
                continue;
            }
            Ok(Frame::Eof) | Err(_) => break,
        }
        let (sender, is_reply) = {
            let mut routes = lock(routes);
            let reply_to = match Envelope::parse(&line) {
                Ok(e) if e.method.is_none() => e.id.and_then(jsonrpc::gateway_id),
                _ => None,
            };
            match reply_to {
                Some(key) => {
                    routes.order.retain(|k| k != &key);
                    (routes.waiting.remove(&key), true)
                }
                None => {
                    let newest = routes
                        .order
                        .last()
                        .and_then(|k| routes.waiting.get(k))
                        .cloned();
                    match newest.or_else(|| routes.listener.clone().filter(|l| !l.is_closed())) {
                        Some(sender) => (Some(sender), false),
                        None => {
                            if routes.backlog.len() == BACKLOG {
                                routes.backlog.pop_front();
                                tracing::warn!("no stream open for the upstream's messages; dropped the oldest");
                            }
                            routes.backlog.push_back(line.clone());
                            (None, false)
                        }
                    }
                }
            }
        };
        match sender {
            Some(sender) => {
                // Waits while the client reads slowly: backpressure on this child alone.
                let _ = sender.blocking_send(line.clone());
            }
            None if is_reply => tracing::debug!("reply to a request nobody waits for (cancelled)"),
            None => {}
        }
    }
    // The child is gone: every waiting request gets an error reply, under the gateway's id
    // (the session restores the client's). Counter units stay spent: the child may have run
    // the call before it went.
    let waiting: Vec<(u64, Sender)> = {
        let mut routes = lock(routes);
        routes.exited = true;
        routes.listener = None;
        routes.order.clear();
        routes.waiting.drain().collect()
    };
    for (key, sender) in waiting {
        let id = serde_json::value::RawValue::from_string(key.to_string()).expect("a number");
        let _ = sender.blocking_send(jsonrpc::error_line(
            Some(&id),
            jsonrpc::UPSTREAM_GONE,
            "upstream MCP server exited before answering",
        ));
    }
}
