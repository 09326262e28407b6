//! The client side of an HTTP upstream: HTTP/1.1 keep-alive connections, pooled, read and
//! written by the task that serves the client's request.
//!
//! The first version used reqwest, the second hyper's connection API. Both run each
//! connection as a task of its own that hands the response over through a channel, chunk by
//! chunk: every upstream reply cost two task switches, and an SSE reply that arrived in one
//! read still went out to the client as one write per chunk plus one for its end. Here the
//! request's own task writes the request in one write and decodes the reply straight from the
//! socket (`httparse` for the head and chunk sizes, the parser hyper uses), so a reply read in
//! one `recv` is relayed in one write, end included. It does only what the gateway needs: one
//! fixed upstream, HTTP/1.1 with keep-alive, in plain text or over TLS (rustls, with the
//! bundled public roots or the config's own CA file).
//!
//! A connection goes back to the pool only once its response has been read to the end; a
//! response dropped half-read closes its connection. An idle connection that the upstream has
//! closed is noticed before reuse and replaced; a request whose write fails is retried once on
//! a new connection (the upstream cannot have acted on a request it did not receive whole), so
//! a `tools/call` is never sent twice.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Idle connections kept; more are closed when their exchange ends.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 96;
/// An idle connection older than this is checked with a syscall before reuse (a younger one
/// by the reactor's readiness alone): servers close idle keep-alive connections (Node after
/// 5 s), and a request written into such a connection is lost.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

/// Connections to one upstream.
pub struct Pool {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header and the request path (`/mcp?...`).
    authority: String,
    path: String,
    /// For an `https://` upstream: the TLS client and the name its certificate must have.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// A request that got no response head.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: io::Error,
    /// Whether any of the request may have reached the upstream: only a failure to connect
    /// says for certain that it did not.
    pub written: bool,
}

impl SendError {
    fn written(error: io::Error) -> Self {
        Self {
            error,
            written: true,
        }
    }
}

/// One connection to the upstream.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(stream) => stream,
            Conn::Tls(stream) => stream.get_ref().0,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(stream) => stream.write_all(data).await,
            Conn::Tls(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
        }
    }

    /// Reads what the connection has into `buffer`, waiting for at least one byte; `Ok(0)`
    /// at the end.
    fn poll_fill(&mut self, buffer: &mut BytesMut, cx: &mut Context) -> Poll<io::Result<usize>> {
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(8192);
        }
        match self {
            Conn::Plain(stream) => loop {
                match stream.try_read_buf(buffer) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(stream.poll_read_ready(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Conn::Tls(stream) => {
                tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut **stream), cx, buffer)
            }
        }
    }
}

/// An upstream response: its head, read; its body, still on the connection.
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    pub fn into_body(self) -> Body {
        self.body
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
    /// Read to the end.
    Done,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines up to an empty one.
    Trailers,
}

/// A response body being read from its connection.
pub struct Body {
    /// `None` once the body has ended (the connection went back to the pool or was closed).
    stream: Option<Conn>,
    buffer: BytesMut,
    framing: Framing,
    /// Whether the connection may carry another request once this body has ended.
    reusable: bool,
    pool: Option<Arc<Pool>>,
}

/// A body that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream reply exceeds the gateway's {0}-byte limit")]
    TooLarge(usize),
    #[error("upstream reply cut off: {0}")]
    Io(#[from] io::Error),
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Body {
    /// Whether the body has been read to its end.
    pub fn is_end(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Moves the body data in the buffer to `out`, as far as the framing allows (up to the
    /// end, trailers included, when the buffer holds it).
    fn decode(&mut self, out: &mut BytesMut) -> io::Result<()> {
        loop {
            match self.framing {
                Framing::Done => return Ok(()),
                Framing::UntilClose => {
                    out.extend_from_slice(&self.buffer.split());
                    return Ok(());
                }
                Framing::Length(left) => {
                    let take = (self.buffer.len() as u64).min(left) as usize;
                    out.extend_from_slice(&self.buffer.split_to(take));
                    self.framing = match left - take as u64 {
                        0 => Framing::Done,
                        left => Framing::Length(left),
                    };
                    return Ok(());
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&self.buffer) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        self.buffer.advance(used);
                        self.framing = Framing::Chunked(Chunk::Trailers);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buffer.advance(used);
                        self.framing = Framing::Chunked(Chunk::Data(size));
                    }
                    Ok(httparse::Status::Partial) => return Ok(()),
                    Err(_) => return Err(invalid("invalid chunk size in the upstream reply")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if self.buffer.is_empty() {
                        return Ok(());
                    }
                    let take = (self.buffer.len() as u64).min(left) as usize;
                    out.extend_from_slice(&self.buffer.split_to(take));
                    self.framing = Framing::Chunked(match left - take as u64 {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if self.buffer.len() < 2 {
                        return Ok(());
                    }
                    if &self.buffer[..2] != b"\r\n" {
                        return Err(invalid(
                            "chunk data not followed by CRLF in the upstream reply",
                        ));
                    }
                    self.buffer.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
                        if self.buffer.len() > MAX_HEAD {
                            return Err(invalid("upstream trailers too large"));
                        }
                        return Ok(());
                    };
                    self.buffer.advance(end + 2);
                    if end == 0 {
                        self.framing = Framing::Done;
                    }
                }
            }
        }
    }

    /// The body's end: the connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let stream = self.stream.take();
        if let (Some(stream), Some(pool), true) = (stream, &self.pool, self.reusable) {
            if self.buffer.is_empty() {
                pool.put(stream);
            }
        }
    }

    /// The next body data: everything the socket has delivered, once there is any. `None` at
    /// the end. The end is noticed together with the last data when it arrived with it, so
    /// that [`Body::is_end`] is already true when that data is handed out.
    pub fn poll_data(&mut self, cx: &mut Context) -> Poll<io::Result<Option<Bytes>>> {
        let mut out = BytesMut::new();
        loop {
            self.decode(&mut out)?;
            if self.framing == Framing::Done {
                self.finish();
            }
            if !out.is_empty() {
                return Poll::Ready(Ok(Some(out.freeze())));
            }
            if self.framing == Framing::Done {
                return Poll::Ready(Ok(None));
            }
            let Some(stream) = &mut self.stream else {
                return Poll::Ready(Ok(None));
            };
            if ready!(stream.poll_fill(&mut self.buffer, cx))? == 0 {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Done;
                    self.stream = None;
                    return Poll::Ready(Ok(None));
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof)).into();
            }
        }
    }

    /// The next body data (see [`Body::poll_data`]).
    pub async fn data(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_data(cx)).await
    }

    /// The whole body, if it is at most `max` bytes.
    pub async fn read_all(mut self, max: usize) -> Result<Bytes, BodyError> {
        let mut all = BytesMut::new();
        while let Some(data) = self.data().await? {
            if all.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            all.extend_from_slice(&data);
        }
        Ok(all.freeze())
    }
}

impl Pool {
    /// A pool for `url` (`http://` or `https://host:port/path`); an https upstream's
    /// certificate must chain to a CA in `tls.ca_file` (PEM) or, without one, to a public root.
    pub fn new(url: &str, tls: &super::config::UpstreamTls) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("[upstream] url `{url}`: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("[upstream] url `{url}` has no host"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") if tls.is_set() => {
                anyhow::bail!(
                    "[upstream] ca_file or a client certificate is set but url `{url}` is not https://"
                )
            }
            Some("http") => (None, 80),
            Some("https") => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| anyhow::anyhow!("[upstream] url `{url}`: {e}"))?;
                (Some((super::tls::connector(tls)?, name)), 443)
            }
            _ => anyhow::bail!("[upstream] url `{url}`: only http:// and https:// are supported"),
        };
        let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
        let address = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:{default_port}")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            address,
            authority,
            path,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, stream: Conn) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }

    /// An idle connection that still looks open, if any.
    fn reuse(&self) -> Option<Conn> {
        loop {
            let (stream, since) = self.idle().pop()?;
            // The reactor's readiness costs no syscall. A peer's close (FIN, or RST) shows as
            // read-closed once an `epoll_wait` has seen it, and the one that woke this request
            // has. Readable alone is no news: it stays set from the last reply's read (no read
            // ended in `WouldBlock`). So a young connection is trusted unless closed; an old one
            // gets a real look (`MSG_PEEK`: no data, no end, no error).
            let open = match stream.tcp().ready(Interest::READABLE).now_or_never() {
                Some(Ok(ready)) if ready.is_read_closed() || ready.is_error() => false,
                Some(Err(_)) => false,
                _ => since.elapsed() < CHECK_IDLE_AFTER || peek_open(stream.tcp()),
            };
            if open {
                return Some(stream);
            }
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        let connect = async {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Conn::Plain(stream)),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS with {}: {e}", self.address))
                    })?;
                    Ok(Conn::Tls(Box::new(tls)))
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {} timed out", self.address),
                )
            })?
    }

    /// Sends a request with `headers` (besides `Host` and `Content-Length`, which are set
    /// here) and `body` to the upstream's URL, and reads the response head.
    pub async fn send(
        self: &Arc<Self>,
        method: Method,
        headers: &[(&str, &HeaderValue)],
        body: &[u8],
    ) -> Result<Response, SendError> {
        let mut request = Vec::with_capacity(256 + body.len());
        request.extend_from_slice(method.as_str().as_bytes());
        request.push(b' ');
        request.extend_from_slice(self.path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(self.authority.as_bytes());
        request.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == Method::POST {
            use std::io::Write;
            // Into the request itself: no string on the way.
            let _ = write!(request, "content-length: {}\r\n", body.len());
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);

        let mut stream = match self.reuse() {
            Some(mut stream) => match stream.write_all(&request).await {
                Ok(()) => stream,
                // Not received whole, so not acted on: once more on a new connection.
                Err(_) => self.write_new(&request).await?,
            },
            None => self.write_new(&request).await?,
        };
        let mut buffer = BytesMut::with_capacity(8192);
        let (status, headers, framing, reusable) = loop {
            let head = poll_fn(|cx| read_head(&mut stream, &mut buffer, cx))
                .await
                .map_err(SendError::written)?;
            // 1xx (100 Continue, 103 Early Hints): the real response follows.
            if !head.0.is_informational() {
                break head;
            }
        };
        let mut body = Body {
            stream: Some(stream),
            buffer,
            framing,
            reusable,
            pool: Some(self.clone()),
        };
        if body.is_end() {
            body.finish();
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn write_new(&self, request: &[u8]) -> Result<Conn, SendError> {
        let mut stream = self.connect().await.map_err(|error| SendError {
            error,
            written: false,
        })?;
        stream
            .write_all(request)
            .await
            .map_err(SendError::written)?;
        Ok(stream)
    }
}

/// Whether a connection is still open, by a non-blocking `MSG_PEEK` (no data, no EOF).
fn peek_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    // SAFETY: recv(2) into a valid one-byte buffer on a socket this function borrows.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

type Head = (StatusCode, HeaderMap, Framing, bool);

/// The response headers the gateway reads or relays (the framing ones, the content type, the
/// MCP ones); the others are dropped as the head is parsed.
static KEPT: [HeaderName; 7] = [
    hyper::header::TRANSFER_ENCODING,
    hyper::header::CONTENT_LENGTH,
    hyper::header::CONNECTION,
    hyper::header::CONTENT_TYPE,
    hyper::header::CACHE_CONTROL,
    HeaderName::from_static("mcp-session-id"),
    HeaderName::from_static("mcp-protocol-version"),
];

/// Reads and parses one response head from `stream`; the bytes after it stay in `buffer`.
fn read_head(stream: &mut Conn, buffer: &mut BytesMut, cx: &mut Context) -> Poll<io::Result<Head>> {
    loop {
        if !buffer.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(buffer) {
                Ok(httparse::Status::Complete(used)) => {
                    let head = head_of(&parsed)?;
                    buffer.advance(used);
                    return Poll::Ready(Ok(head));
                }
                Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => {
                    return Poll::Ready(Err(invalid("upstream response head too large")));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Poll::Ready(Err(invalid(format!("invalid upstream response: {e}"))))
                }
            }
        }
        if ready!(stream.poll_fill(buffer, cx))? == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before it answered",
            )));
        }
    }
}

fn head_of(parsed: &httparse::Response) -> io::Result<Head> {
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid upstream status"))?;
    let mut headers = HeaderMap::new();
    let (mut chunked, mut length, mut close) = (false, None, parsed.version == Some(0));
    for h in parsed.headers.iter() {
        let Some(name) = KEPT
            .iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(h.name))
        else {
            continue;
        };
        let name = name.clone();
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| invalid("invalid upstream header value"))?;
        let text = || String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if name == hyper::header::TRANSFER_ENCODING {
            chunked = text().split(',').any(|t| t.trim() == "chunked");
        } else if name == hyper::header::CONTENT_LENGTH {
            let parsed: u64 = text()
                .trim()
                .parse()
                .map_err(|_| invalid("invalid upstream content-length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(invalid("conflicting upstream content-length"));
            }
            length = Some(parsed);
        } else if name == hyper::header::CONNECTION {
            close |= text().split(',').any(|t| t.trim() == "close");
        }
        headers.append(name, value);
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(length) = length {
        match length {
            0 => Framing::Done,
            n => Framing::Length(n),
        }
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok((status, headers, framing, !close))
}

#[cfg(test)]
mod tests {
    use super::super::config::UpstreamTls;
    use super::*;

    fn body(framing: Framing, bytes: &[u8]) -> Body {
        Body {
            stream: None,
            buffer: BytesMut::from(bytes),
            framing,
            reusable: false,
            pool: None,
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..wire.len() {
            let mut b = body(Framing::Chunked(Chunk::Size), &wire[..split]);
            let mut out = BytesMut::new();
            b.decode(&mut out).unwrap();
            b.buffer.extend_from_slice(&wire[split..]);
            b.decode(&mut out).unwrap();
            assert_eq!(&out[..], b"hello, world", "split at {split}");
            assert!(b.is_end(), "split at {split}");
            assert!(b.buffer.is_empty());
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut out = BytesMut::new();
        assert!(body(Framing::Chunked(Chunk::Size), b"zz\r\n")
            .decode(&mut out)
            .is_err());
        assert!(body(Framing::Chunked(Chunk::Size), b"2\r\nabX\r\n")
            .decode(&mut out)
            .is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut b = body(Framing::Length(3), b"abcdef");
        let mut out = BytesMut::new();
        b.decode(&mut out).unwrap();
        assert_eq!(&out[..], b"abc");
        assert!(b.is_end());
        assert_eq!(&b.buffer[..], b"def");
    }

    #[test]
    fn urls_pick_plain_or_tls_and_the_default_port() {
        let none = UpstreamTls::default();
        let plain = Pool::new("http://127.0.0.1/mcp", &none).unwrap();
        assert_eq!(
            (plain.address.as_str(), plain.tls.is_none()),
            ("127.0.0.1:80", true)
        );
        let tls = Pool::new("https://mcp.example.com/mcp?x=1", &none).unwrap();
        assert_eq!(tls.address, "mcp.example.com:443");
        assert_eq!(
            (tls.authority.as_str(), tls.path.as_str()),
            ("mcp.example.com", "/mcp?x=1")
        );
        assert!(
            matches!(&tls.tls, Some((_, ServerName::DnsName(n))) if n.as_ref() == "mcp.example.com")
        );
        let ip = Pool::new("https://[::1]:8443/mcp", &none).unwrap();
        assert!(matches!(&ip.tls, Some((_, ServerName::IpAddress(_)))));
        assert_eq!(ip.address, "[::1]:8443");
    }

    #[test]
    fn bad_urls_and_ca_files_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let error = |url: &str, ca: Option<&std::path::Path>| {
            let tls = UpstreamTls {
                ca_file: ca.map(Into::into),
                client: None,
            };
            format!("{:#}", Pool::new(url, &tls).err().expect(url))
        };
        assert!(error("ftp://h/mcp", None).contains("only http:// and https://"));
        assert!(error("http://h/mcp", Some(&empty)).contains("is not https://"));
        assert!(error("https://h/mcp", Some(&empty)).contains("holds no certificate"));
        let missing = dir.path().join("missing.pem");
        assert!(error("https://h/mcp", Some(&missing)).contains("missing.pem"));
    }

    #[test]
    fn heads_choose_the_framing() {
        let parse = |wire: &[u8]| {
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Response::new(&mut slots);
            r.parse(wire).unwrap();
            head_of(&r).map(|(s, _, f, reuse)| (s.as_u16(), f, reuse))
        };
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n")
                .unwrap(),
            (200, Framing::Chunked(Chunk::Size), true)
        );
        assert_eq!(
            parse(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n").unwrap(),
            (202, Framing::Done, true)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n").unwrap(),
            (200, Framing::Length(2), false)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            (200, Framing::UntilClose, false)
        );
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
    }
}
