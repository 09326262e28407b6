//! Server-sent events, both ways: reading an upstream's `text/event-stream` and writing one.
//!
//! Each event carries one JSON-RPC message in `data`; `id` (for resumption with
//! `Last-Event-ID`), `event` and `retry` pass through as the upstream wrote them. Events with
//! no data (the 2025-11-25 "priming" event) pass through too.

/// One event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub retry: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
    /// Whether any `data` field was present.
    pub has_data: bool,
}

impl Event {
    /// An event carrying one message.
    pub fn message(data: &[u8]) -> Self {
        Self {
            event: Some("message".into()),
            data: String::from_utf8_lossy(data.trim_ascii_end()).into_owned(),
            has_data: true,
            ..Self::default()
        }
    }

    /// The event on the wire, ending with its blank line.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(&self.data)
    }

    /// The event on the wire with `data` in place of its own.
    pub fn encode_with(&self, data: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 32);
        if let Some(id) = &self.id {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
        if let Some(event) = &self.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(event.as_bytes());
            out.push(b'\n');
        }
        if let Some(retry) = &self.retry {
            out.extend_from_slice(b"retry: ");
            out.extend_from_slice(retry.as_bytes());
            out.push(b'\n');
        }
        if self.has_data {
            for line in data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        out.push(b'\n');
        out
    }
}

/// Splits a byte stream into events. Memory is bounded: an event longer than `max` bytes is
/// an error (the stream is then closed; a message cut in half cannot be forwarded).
pub struct Parser {
    buf: Vec<u8>,
    /// Where the scan for a line end resumes.
    scanned: usize,
    current: Event,
    max: usize,
}

/// An event over the size cap.
#[derive(Debug)]
pub struct Oversized(pub usize);

impl Parser {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            current: Event::default(),
            max,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, Oversized> {
        // Taken out while its lines are read, so that they are borrowed rather than copied.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let (start, events, over) = self.lines(&buf);
        buf.drain(..start);
        self.scanned -= start;
        self.buf = buf;
        if let Some(length) = over {
            return Err(Oversized(length));
        }
        if self.buf.len() > self.max {
            return Err(Oversized(self.buf.len()));
        }
        Ok(events)
    }

    /// Reads the complete lines in `buf` from `self.scanned`: where the unread rest starts,
    /// the events completed, and the length of an event that went over the cap.
    fn lines(&mut self, buf: &[u8]) -> (usize, Vec<Event>, Option<usize>) {
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &buf[self.scanned..]) {
            let end = self.scanned + offset;
            // A CR at the very end may be half of a CRLF: wait for the next byte.
            if buf[end] == b'\r' && end + 1 == buf.len() {
                break;
            }
            let next = if buf[end] == b'\r' && buf[end + 1] == b'\n' {
                end + 2
            } else {
                end + 1
            };
            self.field(&String::from_utf8_lossy(&buf[start..end]), &mut events);
            start = next;
            self.scanned = next;
            if self.current.data.len() > self.max {
                return (start, events, Some(self.current.data.len()));
            }
        }
        (start, events, None)
    }

    fn field(&mut self, line: &str, events: &mut Vec<Event>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            if event.has_data || event.id.is_some() || event.retry.is_some() {
                events.push(event);
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "data" => {
                if self.current.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.current.has_data = true;
            }
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            "retry" => self.current.retry = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_and_round_trip() {
        let wire = b"id: 7\nevent: message\ndata: {\"a\":1}\n\n: ping\n\nretry: 10\nid: 8\n\r\ndata: x\r\ndata: y\r\n\r\n";
        for split in 0..wire.len() {
            let mut p = Parser::new(1000);
            let mut got = p.push(&wire[..split]).unwrap();
            got.extend(p.push(&wire[split..]).unwrap());
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].id.as_deref(), Some("7"));
            assert_eq!(got[0].data, "{\"a\":1}");
            assert!(!got[1].has_data);
            assert_eq!(got[1].retry.as_deref(), Some("10"));
            assert_eq!(got[2].data, "x\ny");
        }
        let mut p = Parser::new(1000);
        let again = p.push(&Event::message(b"{\"b\":2}\n").encode()).unwrap();
        assert_eq!(again[0].data, "{\"b\":2}");
        assert_eq!(again[0].event.as_deref(), Some("message"));
    }

    #[test]
    fn an_event_over_the_cap_is_an_error() {
        let mut p = Parser::new(10);
        assert!(p.push(b"data: 0123456789abc").is_err());
        let mut p = Parser::new(10);
        assert!(p.push(b"data: 01234\ndata: 56789\n").is_err());
    }

    /// Any field value the parser can carry: no line ends (they delimit fields), and no
    /// leading space (one leading space after the colon is part of the syntax).
    fn value() -> impl Strategy<Value = String> {
        "[^\\r\\n ][^\\r\\n]{0,20}|"
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            proptest::option::of(value()),
            proptest::option::of(value()),
            proptest::option::of(value()),
            proptest::collection::vec(value(), 0..4),
        )
            .prop_map(|(id, event, retry, data)| Event {
                id,
                event,
                retry,
                has_data: !data.is_empty(),
                data: data.join("\n"),
            })
            // An event with only an `event` field, or none at all, is not dispatched.
            .prop_filter("dispatched", |e| {
                e.has_data || e.id.is_some() || e.retry.is_some()
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// Events written with [`Event::encode`] and read back, fed in pieces cut anywhere
        /// (between a CR and its LF too), with CRLF or LF line ends and comments between
        /// them, are the same events.
        #[test]
        fn events_round_trip_whatever_the_chunks(
            events in proptest::collection::vec(event(), 0..6),
            cuts in proptest::collection::vec(0usize..2000, 0..16),
            crlf in any::<bool>(),
            comments in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            for event in &events {
                if comments {
                    wire.extend_from_slice(b": keep-alive\n\n");
                }
                wire.extend_from_slice(&event.encode());
            }
            if crlf {
                wire = String::from_utf8(wire).unwrap().replace('\n', "\r\n").into_bytes();
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut parser = Parser::new(1 << 20);
            let (mut got, mut start) = (Vec::new(), 0);
            for cut in cuts.into_iter().chain([wire.len()]) {
                let cut = cut.clamp(start, wire.len());
                got.extend(parser.push(&wire[start..cut]).unwrap());
                start = cut;
            }
            prop_assert_eq!(got, events);
        }
    }
}
