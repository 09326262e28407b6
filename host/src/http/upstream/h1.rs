//! HTTP/1.1 responses on the wire, without the socket: parsing a response head and decoding
//! its body as its framing says (`Content-Length`, chunked, or until close). The connection
//! code in [`super`] feeds the bytes it reads; everything here is plain functions over
//! buffers, so it is tested on bytes alone.

use bytes::{Buf, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::io;

/// The largest response head accepted (and the largest trailer section).
pub(super) const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 96;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
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
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines up to an empty one.
    Trailers,
}

pub(super) fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Framing {
    /// Moves the body data in `buffer` to `out`, as far as the framing allows (up to the
    /// end, trailers included, when the buffer holds it). What follows the body stays in
    /// `buffer`.
    pub(super) fn decode(&mut self, buffer: &mut BytesMut, out: &mut BytesMut) -> io::Result<()> {
        loop {
            match *self {
                Framing::Done => return Ok(()),
                Framing::UntilClose => {
                    out.extend_from_slice(&buffer.split());
                    return Ok(());
                }
                Framing::Length(left) => {
                    let take = (buffer.len() as u64).min(left) as usize;
                    out.extend_from_slice(&buffer.split_to(take));
                    *self = match left - take as u64 {
                        0 => Framing::Done,
                        left => Framing::Length(left),
                    };
                    return Ok(());
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buffer) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        buffer.advance(used);
                        *self = Framing::Chunked(Chunk::Trailers);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buffer.advance(used);
                        *self = Framing::Chunked(Chunk::Data(size));
                    }
                    Ok(httparse::Status::Partial) => return Ok(()),
                    Err(_) => return Err(invalid("invalid chunk size in the upstream reply")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if buffer.is_empty() {
                        return Ok(());
                    }
                    let take = (buffer.len() as u64).min(left) as usize;
                    out.extend_from_slice(&buffer.split_to(take));
                    *self = Framing::Chunked(match left - take as u64 {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buffer.len() < 2 {
                        return Ok(());
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(invalid(
                            "chunk data not followed by CRLF in the upstream reply",
                        ));
                    }
                    buffer.advance(2);
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
                        if buffer.len() > MAX_HEAD {
                            return Err(invalid("upstream trailers too large"));
                        }
                        return Ok(());
                    };
                    buffer.advance(end + 2);
                    if end == 0 {
                        *self = Framing::Done;
                    }
                }
            }
        }
    }
}

/// A response head: status, the headers kept, the body's framing, and whether the connection
/// may carry another request.
pub(super) type Head = (StatusCode, HeaderMap, Framing, bool);

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

/// The response head at the start of `buffer`, if it is there whole; it is then taken out of
/// `buffer`, and the bytes after it stay.
pub(super) fn parse_head(buffer: &mut BytesMut) -> io::Result<Option<Head>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(used)) => {
            let head = head_of(&parsed)?;
            buffer.advance(used);
            Ok(Some(head))
        }
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD => {
            Err(invalid("upstream response head too large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(invalid(format!("invalid upstream response: {e}"))),
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
    use super::*;
    use proptest::prelude::*;

    /// Decodes `wire` fed in pieces cut at `cuts`: the body, and the framing at the end.
    fn decode_in_pieces(
        framing: Framing,
        wire: &[u8],
        cuts: &[usize],
    ) -> io::Result<(Vec<u8>, Framing, BytesMut)> {
        let mut framing = framing;
        let (mut buffer, mut out) = (BytesMut::new(), BytesMut::new());
        let mut start = 0;
        for &cut in cuts.iter().chain([&wire.len()]) {
            let cut = cut.clamp(start, wire.len());
            buffer.extend_from_slice(&wire[start..cut]);
            framing.decode(&mut buffer, &mut out)?;
            start = cut;
        }
        Ok((out.to_vec(), framing, buffer))
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..wire.len() {
            let (out, framing, rest) =
                decode_in_pieces(Framing::Chunked(Chunk::Size), wire, &[split]).unwrap();
            assert_eq!(&out[..], b"hello, world", "split at {split}");
            assert_eq!(framing, Framing::Done, "split at {split}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let chunked = Framing::Chunked(Chunk::Size);
        assert!(decode_in_pieces(chunked, b"zz\r\n", &[]).is_err());
        assert!(decode_in_pieces(chunked, b"2\r\nabX\r\n", &[]).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (out, framing, rest) = decode_in_pieces(Framing::Length(3), b"abcdef", &[]).unwrap();
        assert_eq!(&out[..], b"abc");
        assert_eq!(framing, Framing::Done);
        assert_eq!(&rest[..], b"def");
    }

    #[test]
    fn heads_choose_the_framing() {
        let parse = |wire: &[u8]| {
            let mut buffer = BytesMut::from(wire);
            parse_head(&mut buffer).map(|head| {
                let (s, _, f, reuse) = head.expect("a whole head");
                (s.as_u16(), f, reuse)
            })
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
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 25, "a partial head stays in the buffer");
    }

    /// `body` chunk-encoded with chunks of the given sizes (cycled; a zero is skipped, since
    /// a zero-size chunk ends the body), then the last chunk, optional trailers and the end.
    fn chunk_encode(body: &[u8], sizes: &[usize], extension: bool, trailers: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut sizes = sizes.iter().cycle();
        let mut rest = body;
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            let (chunk, after) = rest.split_at(size);
            wire.extend_from_slice(format!("{size:x}").as_bytes());
            if extension {
                wire.extend_from_slice(b";name=value");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            rest = after;
        }
        wire.extend_from_slice(b"0\r\n");
        if trailers {
            wire.extend_from_slice(b"X-Trailer: 1\r\nX-Other: two\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest! {
        /// A body chunk-encoded at any chunk sizes and fed in any pieces decodes to itself,
        /// ends exactly at its last CRLF, and leaves what follows it (the next response) be.
        #[test]
        fn chunked_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..80, 1..8),
            cuts in proptest::collection::vec(0usize..800, 0..12),
            extension in any::<bool>(),
            trailers in any::<bool>(),
        ) {
            let mut wire = chunk_encode(&body, &sizes, extension, trailers);
            let end = wire.len();
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (out, framing, rest) =
                decode_in_pieces(Framing::Chunked(Chunk::Size), &wire, &cuts).unwrap();
            prop_assert_eq!(out, body);
            prop_assert_eq!(framing, Framing::Done);
            prop_assert_eq!(&rest[..], &wire[end..]);
        }

        /// A `Content-Length` body fed in any pieces: exactly its length, the rest left.
        #[test]
        fn length_round_trip(
            body in proptest::collection::vec(any::<u8>(), 1..300),
            after in proptest::collection::vec(any::<u8>(), 0..40),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let wire = [&body[..], &after[..]].concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let framing = Framing::Length(body.len() as u64);
            let (out, framing, rest) = decode_in_pieces(framing, &wire, &cuts).unwrap();
            prop_assert_eq!(out, body);
            prop_assert_eq!(framing, Framing::Done);
            prop_assert_eq!(&rest[..], &after[..]);
        }
    }
}
