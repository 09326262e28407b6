//! The stdio transport: `toolgate run` between a client on our stdin/stdout and an upstream
//! child process on pipes.
//!
//! Two threads move lines, one per direction, each handing every line to the [`Session`]:
//! the same shape as a bare byte relay, plus one parse per line. Plain threads rather than an
//! async runtime: a stdio gateway serves exactly one session, and blocking reads on pipes are
//! the cheapest wake-up there is (tokio's stdin/stdout go through a thread pool hop per read).
//!
//! Framing is MCP's: one JSON-RPC message per line. A line longer than the cap is skipped up
//! to its newline and answered with an error, so one bad message costs one message.

use crate::approvals::{Held, State};
use crate::framing::{read_line_capped, Frame};
use crate::session::{ClientLine, Forward, HeldCall, Session, PROGRESS_EVERY};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Limits of the stdio transport. Each says what it costs to raise it.
#[derive(Clone, Debug)]
pub struct StdioLimits {
    /// Longest message accepted from the client, in bytes. The line is buffered whole before
    /// it is parsed, so this bounds the memory one message can take. Default 4 MiB.
    pub max_client_message: usize,
    /// Longest message accepted from the upstream. Tool results (images, files) can be large,
    /// so the default is 64 MiB; a longer one is dropped and logged, and its request is
    /// answered with an error if the upstream then exits.
    pub max_upstream_message: usize,
    /// How long the upstream may take to exit after the client has closed its stdin, before it
    /// is killed. Default 5 s.
    pub shutdown_grace: Duration,
    /// How long a request forwarded upstream may wait for its reply. After it, the client
    /// gets a JSON-RPC error naming the gateway, the request is forgotten (a late reply is
    /// dropped) and a call's counter units stay spent: the tool may still be running. Servers
    /// drop lines they cannot read without a word, so without it such a request would wait
    /// forever. Default 600 s: coding-agent tools (an LLM CLI run) can take many minutes;
    /// lower it for servers whose tools are quick.
    pub reply_timeout: Duration,
}

impl Default for StdioLimits {
    fn default() -> Self {
        Self {
            max_client_message: 4 << 20,
            max_upstream_message: 64 << 20,
            shutdown_grace: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(600),
        }
    }
}

/// How a session over stdio ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client closed its input. `upstream_exited` says whether the upstream then exited
    /// within the grace period (if not, the caller kills it).
    ClientClosed {
        /// Whether the upstream closed its output in time.
        upstream_exited: bool,
    },
    /// The upstream closed its output first; `pending` requests were answered with errors.
    UpstreamClosed {
        /// Requests that were waiting for a reply.
        pending: usize,
    },
}

enum Event {
    ClientClosed,
    UpstreamClosed,
}

/// Writes a forwarded line to the upstream. On failure the request is abandoned and its
/// client answered; `false` when the client cannot be written to either.
fn send_upstream<W: Write>(
    session: &Session,
    upstream: &Mutex<Option<BufWriter<W>>>,
    client_out: &Mutex<impl Write>,
    forward: &Forward<'_>,
) -> bool {
    let written = {
        let mut upstream = upstream.lock().unwrap_or_else(|e| e.into_inner());
        match upstream.as_mut() {
            Some(upstream) => upstream
                .write_all(&forward.line)
                .and_then(|_| upstream.write_all(b"\n"))
                .and_then(|_| upstream.flush()),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client closed, and with it the upstream's input",
            )),
        }
    };
    if let Err(e) = written {
        // Part of it may have reached the upstream: its units stay spent. The upstream's
        // reader will see it exit.
        tracing::warn!(error = %e, "cannot write to upstream");
        let failed = forward
            .upstream_id
            .and_then(|id| session.abandon(id, true, "cannot write to the upstream MCP server"));
        if let Some(reply) = failed {
            return write_line(client_out, &reply).is_ok();
        }
    }
    true
}

/// Holds a call on its own thread until a person decides or its hold ends, while the
/// session's other lines keep flowing; then forwards it (approved) or answers the client.
fn hold<W: Write + Send + 'static, C: Write + Send + 'static>(
    session: &Arc<Session>,
    held: HeldCall,
    upstream: &Upstream<W>,
    client_out: &Arc<Mutex<C>>,
) {
    let Some(approvals) = session.approvals().cloned() else {
        return;
    };
    // The agent's own client asks its user first, if it can (MCP elicitation); its answer
    // comes back on the client's input and decides the request like an operator's would.
    if let Some(question) = session.elicitation(&held) {
        if write_line(client_out, &question).is_err() {
            tracing::warn!(approval = %held.approval, "cannot ask the client; the operator decides");
        }
    }
    let (session, upstream, client_out) = (session.clone(), upstream.clone(), client_out.clone());
    let spawned = thread::Builder::new()
        .name("held-call".into())
        .spawn(move || {
            // In slices, with a progress notification between them when the client asked for
            // progress: clients reset their request timeout on it.
            let token = held.progress_token();
            let deadline = std::time::Instant::now() + held.hold;
            let mut step = 0u64;
            let outcome = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let slice = if token.is_some() {
                    left.min(PROGRESS_EVERY)
                } else {
                    left
                };
                let outcome = approvals.hold(&held.approval, slice);
                let pending = matches!(
                    outcome,
                    Held::Undecided {
                        state: State::Pending,
                        ..
                    }
                );
                match &token {
                    Some(token) if pending && left > slice => {
                        step += 1;
                        if write_line(&client_out, &held.progress(token, step)).is_err() {
                            break outcome;
                        }
                    }
                    _ => break outcome,
                }
            };
            match session.release(&held, outcome) {
                ClientLine::Forward(forward) => {
                    send_upstream(&session, &upstream, &client_out, &forward);
                }
                ClientLine::Answer(reply) => {
                    let _ = write_line(&client_out, &reply);
                }
                ClientLine::Drop | ClientLine::Hold(_) => {}
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot hold a call: no thread");
    }
}

/// The upstream's stdin, shared by the client reader and held calls; `None` once the client
/// has closed (dropping it closes the pipe: the upstream's signal to shut down).
type Upstream<W> = Arc<Mutex<Option<BufWriter<W>>>>;

/// From now on this thread leaves the work a message causes beside its forwarding (reporting
/// the decision or outcome, tearing down a fresh plugin's instance) until [`after_write`].
fn defer_after_write() {
    crate::audit::defer_on_this_thread();
    crate::plugins::defer_teardown_on_this_thread();
}

/// What this thread left until its write was done.
fn after_write() {
    crate::audit::report_deferred();
    crate::plugins::tear_down_deferred();
}

fn write_line(out: &Mutex<impl Write>, line: &[u8]) -> io::Result<()> {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    out.write_all(line)?;
    if line.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Runs a session between a client (`client_in`/`client_out`) and an upstream (`upstream_out`,
/// its stdout, and `upstream_in`, its stdin) until one side closes.
pub fn serve(
    session: Arc<Session>,
    client_in: impl Read + Send + 'static,
    client_out: impl Write + Send + 'static,
    upstream_out: impl Read + Send + 'static,
    upstream_in: impl Write + Send + 'static,
    limits: &StdioLimits,
) -> Ending {
    let client_out = Arc::new(Mutex::new(BufWriter::with_capacity(64 << 10, client_out)));
    let (events, ending) = mpsc::channel();

    // Client → upstream: decide, then forward or answer.
    {
        let (session, client_out, events, max) = (
            session.clone(),
            client_out.clone(),
            events.clone(),
            limits.max_client_message,
        );
        thread::Builder::new()
            .name("client-reader".into())
            .spawn(move || {
                let mut reader = BufReader::with_capacity(64 << 10, client_in);
                // Shared with the threads of held calls, which forward once approved.
                let upstream: Upstream<_> = Arc::new(Mutex::new(Some(BufWriter::with_capacity(
                    64 << 10,
                    upstream_in,
                ))));
                let mut line = Vec::new();
                // A decision is reported, and a fresh plugin's instance torn down, once its
                // call is forwarded or answered.
                defer_after_write();
                loop {
                    after_write();
                    let answer = match read_line_capped(&mut reader, &mut line, max) {
                        Ok(Frame::Line) => match session.from_client(&line) {
                            ClientLine::Forward(forward) => {
                                let sent =
                                    send_upstream(&session, &upstream, &client_out, &forward);
                                drop(forward);
                                after_write();
                                if !sent {
                                    break;
                                }
                                continue;
                            }
                            ClientLine::Drop => continue,
                            ClientLine::Answer(reply) => reply,
                            ClientLine::Hold(held) => {
                                hold(&session, held, &upstream, &client_out);
                                continue;
                            }
                        },
                        Ok(Frame::Oversized(length)) => session.oversized_client_line(length, max),
                        Ok(Frame::Eof) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read from client");
                            break;
                        }
                    };
                    let written = write_line(&client_out, &answer);
                    after_write();
                    if written.is_err() {
                        break;
                    }
                }
                after_write();
                // Report first, then close the upstream's stdin (its signal to shut down): the
                // other way round, a fast upstream's exit could be reported before the client's
                // close, and a clean shutdown would look like a crash.
                let _ = events.send(Event::ClientClosed);
                // Close the upstream's stdin now, even while held calls keep a handle on it:
                // they find it closed and answer their clients with an error.
                drop(upstream.lock().unwrap_or_else(|e| e.into_inner()).take());
            })
            .expect("spawn client reader");
    }

    // Upstream → client: forward, filtering tools/list replies.
    {
        let (session, client_out, events, max) = (
            session.clone(),
            client_out.clone(),
            events,
            limits.max_upstream_message,
        );
        thread::Builder::new()
            .name("upstream-reader".into())
            .spawn(move || {
                let mut reader = BufReader::with_capacity(64 << 10, upstream_out);
                let mut line = Vec::new();
                // An outcome is reported once its reply is written.
                defer_after_write();
                loop {
                    after_write();
                    match read_line_capped(&mut reader, &mut line, max) {
                        Ok(Frame::Line) => {
                            if let Some(out) = session.from_upstream(&line) {
                                if let Err(e) = write_line(&client_out, &out) {
                                    tracing::warn!(error = %e, "cannot write to client");
                                }
                            }
                            after_write();
                        }
                        Ok(Frame::Oversized(length)) => {
                            tracing::error!(
                                length,
                                max,
                                "upstream message over the size cap was dropped"
                            )
                        }
                        Ok(Frame::Eof) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read from upstream");
                            break;
                        }
                    }
                }
                after_write();
                let _ = events.send(Event::UpstreamClosed);
            })
            .expect("spawn upstream reader");
    }

    // Requests the upstream never answers get an error after `reply_timeout`.
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (session, client_out, ended, timeout) = (
            session.clone(),
            client_out.clone(),
            ended.clone(),
            limits.reply_timeout,
        );
        let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        thread::Builder::new()
            .name("reply-timeout".into())
            .spawn(move || {
                while !ended.load(std::sync::atomic::Ordering::Relaxed) {
                    thread::sleep(tick);
                    for reply in session.expire(timeout) {
                        let _ = write_line(&client_out, &reply);
                    }
                }
            })
            .expect("spawn reply timer");
    }
    let _ended = EndOnDrop(ended);

    match ending.recv() {
        Ok(Event::UpstreamClosed) | Err(_) => {
            let replies = session.upstream_gone("upstream MCP server exited before answering");
            for reply in &replies {
                let _ = write_line(&client_out, reply);
            }
            Ending::UpstreamClosed {
                pending: replies.len(),
            }
        }
        Ok(Event::ClientClosed) => {
            let upstream_exited = matches!(
                ending.recv_timeout(limits.shutdown_grace),
                Ok(Event::UpstreamClosed)
            );
            Ending::ClientClosed { upstream_exited }
        }
    }
}

/// Stops the reply timer when [`serve`] returns.
struct EndOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `session` on this process's stdin/stdout in front of `child`, then stops the child.
/// Returns how the session ended and the child's exit status.
pub fn run(
    session: Arc<Session>,
    mut child: Child,
    limits: &StdioLimits,
) -> (Ending, io::Result<ExitStatus>) {
    let upstream_in = child.stdin.take().expect("child stdin is piped");
    let upstream_out = child.stdout.take().expect("child stdout is piped");
    let ending = serve(
        session,
        io::stdin(),
        io::stdout(),
        upstream_out,
        upstream_in,
        limits,
    );
    if ending
        == (Ending::ClientClosed {
            upstream_exited: false,
        })
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "upstream did not exit after its stdin closed; killing it");
        let _ = child.kill();
    }
    let status = child.wait();
    (ending, status)
}

/// Runs `session` on this process's stdin/stdout in front of a set of upstream servers
/// ([`crate::upstreams`]): the set is one upstream to [`serve`]. It ends when the client
/// closes or every upstream is gone.
pub fn run_set(
    session: Arc<Session>,
    set: &crate::upstreams::UpstreamSet,
    limits: &StdioLimits,
) -> io::Result<Ending> {
    let board = crate::upstreams::Board::default();
    let connected = crate::upstreams::connect(set, None, board)?;
    Ok(serve(
        session,
        io::stdin(),
        io::stdout(),
        connected.output,
        connected.input,
        limits,
    ))
}
