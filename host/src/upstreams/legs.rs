//! The legs: how the router reaches each upstream. A stdio server is a child process on pipes;
//! a Streamable HTTP server is a client session (POST per message, JSON or SSE replies, the
//! GET stream for what belongs to no request). Either way, what the upstream says comes back
//! as [`Event`]s, one JSON-RPC message each.

use super::Target;
use crate::framing::{read_line_capped, Frame};
use crate::jsonrpc::{self, Envelope};
use crate::sse;
use std::io::{BufReader, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the driver hears.
pub(crate) enum Event {
    /// A line from the session core.
    Client(Vec<u8>),
    /// The session core closed its side.
    ClientClosed,
    /// A message from upstream `.0`.
    Upstream(usize, Vec<u8>),
    /// Upstream `.0` is gone, and why.
    Gone(usize, String),
}

/// Sends lines to one upstream. Dropping it closes the leg: the child's stdin is closed (and
/// the child killed if it does not exit within the grace), the HTTP session deleted.
pub(crate) enum Leg {
    Stdio(mpsc::Sender<Vec<u8>>),
    Http(HttpHandle),
    /// The leg could not start.
    None,
}

impl Leg {
    pub(crate) fn send(&self, line: Vec<u8>) {
        let _ = match self {
            Leg::Stdio(tx) => tx.send(line).map_err(|_| ()),
            Leg::Http(handle) => handle
                .lines
                .as_ref()
                .map_or(Err(()), |tx| tx.send(line).map_err(|_| ())),
            Leg::None => Ok(()),
        };
    }
}

/// The router's end of an HTTP leg. Dropping it ends the upstream session and waits (at most
/// [`END_WAIT`]) for the `DELETE` to have gone: a `toolgate run` that exits once its client
/// has closed must not leave the upstream session behind.
pub(crate) struct HttpHandle {
    lines: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    ended: mpsc::Receiver<()>,
}

impl Drop for HttpHandle {
    fn drop(&mut self) {
        drop(self.lines.take());
        // Ended, or its task is gone (the sender dropped): either way, nothing to wait for.
        let _ = self.ended.recv_timeout(END_WAIT);
    }
}

/// See [`HttpHandle`]: the `DELETE`'s own timeout, and a little more.
const END_WAIT: Duration = Duration::from_secs(6);

/// How long a stdio upstream may take to exit once its stdin is closed before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Starts upstream `index`; its messages and its end go to `events`.
pub(crate) fn start(
    index: usize,
    target: &Target,
    events: &mpsc::Sender<Event>,
    max_message: usize,
    runtime: &dyn Fn() -> std::io::Result<tokio::runtime::Handle>,
) -> Leg {
    let started = match target {
        Target::Command(command) => stdio(index, command, events, max_message),
        Target::Url { url, headers } => runtime()
            .and_then(|handle| http(index, url, headers, events.clone(), max_message, &handle)),
    };
    started.unwrap_or_else(|e| {
        let _ = events.send(Event::Gone(index, format!("failed to start: {e}")));
        Leg::None
    })
}

fn stdio(
    index: usize,
    command: &[String],
    events: &mpsc::Sender<Event>,
    max: usize,
) -> std::io::Result<Leg> {
    let mut child = crate::child::spawn_upstream(command)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let writer_child = child.clone();
    std::thread::Builder::new()
        .name(format!("upstream-{index}-in"))
        .spawn(move || {
            for line in rx {
                let written = stdin
                    .write_all(line.trim_ascii_end())
                    .and_then(|_| stdin.write_all(b"\n"))
                    .and_then(|_| stdin.flush());
                if written.is_err() {
                    break;
                }
            }
            drop(stdin);
            // The router let go: the child gets the grace to exit on EOF, then is killed.
            let deadline = Instant::now() + GRACE;
            loop {
                let mut child = writer_child.lock().unwrap_or_else(|e| e.into_inner());
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                drop(child);
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
    let events = events.clone();
    std::thread::Builder::new()
        .name(format!("upstream-{index}-out"))
        .spawn(move || {
            let mut reader = BufReader::with_capacity(64 << 10, stdout);
            let mut line = Vec::new();
            loop {
                match read_line_capped(&mut reader, &mut line, max) {
                    Ok(Frame::Line) => {
                        if events.send(Event::Upstream(index, line.clone())).is_err() {
                            return;
                        }
                    }
                    Ok(Frame::Oversized(length)) => {
                        tracing::error!(
                            length,
                            max,
                            "upstream message over the size cap was dropped"
                        )
                    }
                    Ok(Frame::Eof) | Err(_) => break,
                }
            }
            // Its output closed: say how it ended, if it has (it usually has by now).
            let deadline = Instant::now() + Duration::from_secs(1);
            let status = loop {
                let status = child.lock().unwrap_or_else(|e| e.into_inner()).try_wait();
                match status {
                    Ok(Some(status)) => break format!("exited ({status})"),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break "closed its output".to_owned(),
                }
            };
            let _ = events.send(Event::Gone(index, status));
        })?;
    Ok(Leg::Stdio(tx))
}

/// The TLS client for `https://` upstreams: the bundled public roots, ring.
fn tls() -> std::io::Result<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .map_err(std::io::Error::other)
}

fn http(
    index: usize,
    url: &str,
    headers: &[(String, String)],
    events: mpsc::Sender<Event>,
    max: usize,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<Leg> {
    let mut extra = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(std::io::Error::other)?;
        let value = reqwest::header::HeaderValue::from_str(value).map_err(std::io::Error::other)?;
        extra.insert(name, value);
    }
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls()?)
        .default_headers(extra)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let leg = HttpLeg {
        index,
        url: url.to_owned(),
        client,
        events,
        max,
        session: std::sync::Arc::new(std::sync::Mutex::new(None)),
        closed: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        sending: Sending::default(),
    };
    let (ended_tx, ended) = mpsc::channel();
    runtime.spawn(leg.run(rx, ended_tx));
    Ok(Leg::Http(HttpHandle {
        lines: Some(tx),
        ended,
    }))
}

/// `Mcp-Session-Id` (if the upstream gave one) and the protocol version, once known.
type SessionSlot = std::sync::Arc<std::sync::Mutex<Option<(Option<String>, String)>>>;

/// One client session with a Streamable HTTP upstream.
#[derive(Clone)]
struct HttpLeg {
    index: usize,
    url: String,
    client: reqwest::Client,
    events: mpsc::Sender<Event>,
    max: usize,
    /// `Mcp-Session-Id` and the protocol version, once `initialize` has been answered.
    session: SessionSlot,
    /// Set when the router lets go of the leg: the GET stream stops reconnecting.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests on their way, by id key: `true` once the body has gone to the connection.
    sending: Sending,
}

/// See [`HttpLeg::sending`].
type Sending = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>>,
>;

/// How long a cancellation waits for the request it names to be sent before it goes anyway.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// `line` as a request body that says (through `sent`) when the connection has taken all of it.
/// Its length is given, so that it goes out as an ordinary `content-length` body.
fn signalled_body(line: Vec<u8>, sent: tokio::sync::watch::Sender<bool>) -> reqwest::Body {
    let chunks = futures_util::stream::unfold((Some(line), Some(sent)), |(line, sent)| async {
        match line {
            Some(line) => Some((Ok::<_, std::io::Error>(line), (None, sent))),
            None => {
                if let Some(sent) = sent {
                    sent.send_replace(true);
                }
                None
            }
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

/// How long the GET stream waits before it is opened again after it ended.
const RELISTEN: Duration = Duration::from_secs(1);

impl HttpLeg {
    async fn run(
        self,
        mut lines: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
        ended: mpsc::Sender<()>,
    ) {
        while let Some(line) = lines.recv().await {
            let (method, id) = match Envelope::parse(&line) {
                Ok(e) => (
                    e.method.map(|m| m.into_owned()),
                    e.id.map(|i| i.get().to_owned()),
                ),
                Err(_) => continue,
            };
            match (method.as_deref(), id) {
                // Everything else waits for the session id.
                (Some("initialize"), Some(id)) => {
                    self.clone().exchange(line, Some(id), true).await;
                    if self.session().is_some() {
                        tokio::spawn(self.clone().listen());
                    }
                }
                // Requests run side by side, as over any HTTP client.
                (Some(_), Some(id)) => {
                    let key = jsonrpc::id_key(&id);
                    let (sent, watch) = tokio::sync::watch::channel(false);
                    self.lock_sending().insert(key.clone(), watch);
                    let leg = self.clone();
                    tokio::spawn(async move {
                        leg.clone()
                            .exchange_with(line, Some(id), false, Some(sent))
                            .await;
                        leg.lock_sending().remove(&key);
                    });
                }
                // Notifications and replies keep their order. A cancellation also waits for
                // its request to have been sent: the upstream must hear of the request first.
                _ => {
                    if method.as_deref() == Some("notifications/cancelled") {
                        self.wait_until_sent(&line).await;
                    }
                    self.clone().exchange(line, None, false).await
                }
            }
        }
        // The router let go: end the upstream session.
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some((Some(id), _)) = self.session() {
            let _ = self
                .client
                .delete(&self.url)
                .header("mcp-session-id", id)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
        }
        let _ = ended.send(());
    }

    fn session(&self) -> Option<(Option<String>, String)> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_sending(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>,
    > {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most [`SEND_WAIT`]) until the request a `notifications/cancelled` names has
    /// been sent, if it is on its way.
    async fn wait_until_sent(&self, line: &[u8]) {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let Some(request) = message.pointer("/params/requestId") else {
            return;
        };
        let key = jsonrpc::id_key(&request.to_string());
        let Some(mut watch) = self.lock_sending().get(&key).cloned() else {
            return;
        };
        // An error (the request ended: its sender is gone) is as good as sent.
        let _ = tokio::time::timeout(SEND_WAIT, watch.wait_for(|sent| *sent)).await;
    }

    fn emit(&self, line: Vec<u8>) {
        let _ = self.events.send(Event::Upstream(self.index, line));
    }

    /// The upstream is gone (unreachable, or its session ended): the router takes its tools
    /// down. Said at most once a leg matters; the router ignores repeats.
    fn gone(&self, why: String) {
        if !self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = self.events.send(Event::Gone(self.index, why));
        }
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, &self.url);
        if let Some((id, version)) = self.session() {
            if let Some(id) = id {
                request = request.header("mcp-session-id", id);
            }
            request = request.header("mcp-protocol-version", version);
        }
        request
    }

    /// POSTs one message and relays what comes back. A request that gets no reply gets an
    /// error in its place, so that nothing waits forever.
    ///
    /// `is_initialize`: the request is `initialize` (by its method: the word may be anywhere
    /// in another request's arguments), whose reply sets the session.
    async fn exchange(self, line: Vec<u8>, id: Option<String>, is_initialize: bool) {
        self.exchange_with(line, id, is_initialize, None).await
    }

    /// [`Self::exchange`], saying through `sent` when the body has gone to the connection.
    async fn exchange_with(
        self,
        line: Vec<u8>,
        id: Option<String>,
        is_initialize: bool,
        sent: Option<tokio::sync::watch::Sender<bool>>,
    ) {
        let length = line.len();
        let body = match sent {
            Some(sent) => signalled_body(line, sent),
            None => reqwest::Body::from(line),
        };
        let response = self
            .request(reqwest::Method::POST)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("content-length", length)
            .body(body)
            .send()
            .await;
        let fail = |why: String| {
            if let Some(id) = &id {
                let id = serde_json::value::RawValue::from_string(id.clone()).expect("an id");
                self.emit(jsonrpc::error_line(Some(&id), jsonrpc::UPSTREAM_GONE, &why));
            } else {
                tracing::warn!(why, "a notification to an HTTP upstream failed");
            }
        };
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let why = format!("cannot reach the upstream: {e}");
                fail(why.clone());
                // Nothing listens there any more: its tools go down, not just this request.
                if e.is_connect() {
                    self.gone(why);
                }
                return;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            fail(format!("the upstream answered HTTP {status}: {body}"));
            // A 404 to a request in a session: the upstream ended (or forgot) the session,
            // and every later request would get the same.
            if status == reqwest::StatusCode::NOT_FOUND
                && !is_initialize
                && self.session().is_some_and(|(id, _)| id.is_some())
            {
                self.gone(format!("the upstream ended the session (HTTP {status})"));
            }
            return;
        }
        if is_initialize {
            let session = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            *self.session.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((session, "2025-11-25".into()));
        }
        let is_sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        let mut answered = false;
        if is_sse {
            answered = self
                .relay_sse(&mut response, id.as_deref(), is_initialize)
                .await;
        } else if status != reqwest::StatusCode::ACCEPTED {
            match response.bytes().await {
                Ok(body) if body.len() <= self.max && !body.trim_ascii().is_empty() => {
                    self.note_version(&body, is_initialize);
                    self.emit(body.to_vec());
                    answered = true;
                }
                Ok(body) if body.len() > self.max => {
                    return fail(format!(
                        "the upstream's reply is over the {} byte cap",
                        self.max
                    ))
                }
                Ok(_) => {}
                Err(e) => return fail(format!("the upstream's reply broke off: {e}")),
            }
        }
        if !answered && id.is_some() {
            fail("the upstream answered without a reply to the request".into());
        }
    }

    /// After `initialize`: the version the upstream chose goes on every later request.
    fn note_version(&self, body: &[u8], is_initialize: bool) {
        if !is_initialize {
            return;
        }
        let version = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/result/protocolVersion")?
                    .as_str()
                    .map(str::to_owned)
            });
        if let Some(version) = version {
            if let Some((_, v)) = self
                .session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                *v = version;
            }
        }
    }

    /// Relays an SSE body's messages; whether the reply to `id` was among them.
    async fn relay_sse(
        &self,
        response: &mut reqwest::Response,
        id: Option<&str>,
        is_initialize: bool,
    ) -> bool {
        let mut parser = sse::Parser::new(self.max);
        let wanted = id.map(jsonrpc::id_key);
        let mut answered = false;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "an HTTP upstream's event stream broke off");
                    break;
                }
            };
            let Ok(events) = parser.push(&chunk) else {
                tracing::error!("an HTTP upstream's event was over the size cap; stream closed");
                break;
            };
            for event in events
                .into_iter()
                .filter(|e| e.has_data && !e.data.trim().is_empty())
            {
                let data = event.data.into_bytes();
                if let (Some(wanted), Ok(e)) = (&wanted, Envelope::parse(&data)) {
                    if e.method.is_none() && e.id_key().as_ref() == Some(wanted) {
                        answered = true;
                        self.note_version(&data, is_initialize);
                    }
                }
                self.emit(data);
            }
            if answered {
                break;
            }
        }
        answered
    }

    /// The session's GET stream: server→client messages that belong to no request. When it
    /// ends it is opened again (after [`RELISTEN`]); an upstream that can no longer be
    /// reached, or that no longer knows the session, is gone: so a server that dies between
    /// requests takes its tools down at once, not at the next call.
    async fn listen(self) {
        loop {
            let response = self
                .request(reqwest::Method::GET)
                .header("accept", "text/event-stream")
                .send()
                .await;
            if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match response {
                Ok(mut r) if r.status().is_success() => {
                    self.relay_sse(&mut r, None, false).await;
                }
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    self.gone(format!(
                        "the upstream ended the session (HTTP {})",
                        r.status()
                    ));
                    return;
                }
                Ok(r) => {
                    tracing::debug!(status = %r.status(), "HTTP upstream offers no GET stream");
                    return;
                }
                Err(e) if e.is_connect() => {
                    self.gone(format!("cannot reach the upstream: {e}"));
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "HTTP upstream's GET stream failed"),
            }
            tokio::time::sleep(RELISTEN).await;
            if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
        }
    }
}
