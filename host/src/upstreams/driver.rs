//! The driver: one thread that owns a session's [`Router`], its legs, and the pipe pair the
//! session's transport reads and writes as if it were one upstream server's stdin and stdout.
//! So `toolgate run` and `serve`'s per-session upstreams take a set of servers through the
//! same code that takes one child process.

use super::legs::{self, Event, Leg};
use super::router::{Out, Router, UpState};
use super::{Board, UpstreamSet};
use crate::framing::{read_line_capped, Frame};
use std::io::{BufReader, PipeReader, PipeWriter, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running set of upstreams, as one upstream: write the session's lines to `input`, read
/// the merged upstream side from `output`. Closing `input` shuts the set down (children
/// stopped, HTTP sessions deleted); `output` then ends.
pub struct Connected {
    /// What the upstreams say, one JSON-RPC message per line.
    pub output: PipeReader,
    /// Where the session's lines go.
    pub input: PipeWriter,
}

/// The runtime HTTP legs run on: the caller's, or one thread of its own made on first use.
fn runtime(
    given: Option<tokio::runtime::Handle>,
) -> impl Fn() -> std::io::Result<tokio::runtime::Handle> {
    let made: Arc<Mutex<Option<tokio::runtime::Handle>>> = Arc::new(Mutex::new(given));
    move || {
        let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = made.as_ref() {
            return Ok(handle.clone());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("upstreams-http".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        *made = Some(handle.clone());
        Ok(handle)
    }
}

/// Starts every upstream of `set` and the thread that routes between them and the session.
/// `runtime`: where HTTP legs run (`None`: a thread of their own). `board`: where the
/// upstreams' states are reported.
pub fn connect(
    set: &UpstreamSet,
    runtime_handle: Option<tokio::runtime::Handle>,
    board: Board,
) -> std::io::Result<Connected> {
    let names = set.names().map_err(std::io::Error::other)?;
    let (session_r, session_w) = std::io::pipe()?;
    let (output_r, output_w) = std::io::pipe()?;
    let (events, heard) = mpsc::channel();
    let max = set.max_message;
    let get_runtime = runtime(runtime_handle);
    let legs: Vec<Leg> = set
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, spec)| legs::start(i, &spec.target, &events, max, &get_runtime))
        .collect();
    {
        let events = events.clone();
        let max = set.max_message;
        std::thread::Builder::new()
            .name("upstreams-session".into())
            .spawn(move || {
                let mut reader = BufReader::with_capacity(64 << 10, session_r);
                let mut line = Vec::new();
                loop {
                    match read_line_capped(&mut reader, &mut line, max) {
                        Ok(Frame::Line) => {
                            if events.send(Event::Client(line.clone())).is_err() {
                                return;
                            }
                        }
                        Ok(Frame::Oversized(_)) => continue,
                        Ok(Frame::Eof) | Err(_) => break,
                    }
                }
                let _ = events.send(Event::ClientClosed);
            })?;
    }
    drop(events);
    let mut router = Router::new(names);
    router.fanout_timeout = set.fanout_timeout;
    board.joined(router.states());
    std::thread::Builder::new()
        .name("upstreams".into())
        .spawn(move || drive(router, legs, heard, output_w, board))?;
    Ok(Connected {
        output: output_r,
        input: session_w,
    })
}

fn drive(
    mut router: Router,
    mut legs: Vec<Leg>,
    heard: mpsc::Receiver<Event>,
    mut output: PipeWriter,
    board: Board,
) {
    let tick = Duration::from_millis(500);
    // The states as last reported to the board: compared only when the router says they moved.
    let mut reported: Vec<UpState> = router.states().map(|(_, s)| s.clone()).collect();
    let mut generation = router.generation();
    loop {
        let out = match heard.recv_timeout(tick) {
            Ok(Event::Client(line)) => router.from_client(&line, Instant::now()),
            Ok(Event::Upstream(i, line)) => router.from_upstream(i, &line),
            Ok(Event::Gone(i, why)) => router.upstream_gone(i, &why),
            Ok(Event::ClientClosed) => {
                // Dropping the legs closes them: children get their stdin closed (and are
                // killed after a grace), HTTP sessions are deleted.
                legs.clear();
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => router.expire(Instant::now()),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for out in out {
            match out {
                Out::Client(line) => {
                    let written = output
                        .write_all(line.trim_ascii_end())
                        .and_then(|_| output.write_all(b"\n"));
                    if written.is_err() {
                        tracing::warn!("the session closed the upstreams' output");
                    }
                }
                Out::Upstream(i, line) => legs[i].send(line),
            }
        }
        if router.generation() == generation {
            continue;
        }
        generation = router.generation();
        let now: Vec<UpState> = router.states().map(|(_, s)| s.clone()).collect();
        board.changed(router.states().map(|(n, _)| n), &reported, &now);
        reported = now;
        // With every upstream gone there is nothing left to route to: the session ends
        // the way it ends when its one upstream exits.
        if reported.iter().all(|s| matches!(s, UpState::Down(_))) {
            tracing::error!("every upstream server is gone");
            break;
        }
    }
    board.left(router.states());
    drop(output);
}
