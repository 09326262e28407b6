//! Line framing, as MCP's stdio transport defines it: one JSON-RPC message per line.
//!
//! Both transports read an upstream child's stdout with it ([`crate::stdio`] for `toolgate run`,
//! `http::children` for `toolgate serve`), and `toolgate run` reads its client with it. A line
//! longer than the cap is skipped up to its newline, so one bad message costs one message and
//! never more than the cap in memory.

use std::io::{self, BufRead};

/// One frame read by [`read_line_capped`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line is in the buffer (newline and trailing `\r` removed).
    Line,
    /// A line of this many bytes exceeded the cap and was skipped.
    Oversized(usize),
    /// End of input.
    Eof,
}

/// Reads the next non-blank line into `buf`, never buffering more than `max` bytes of it.
pub fn read_line_capped(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Frame> {
    buf.clear();
    let mut skipped = 0usize;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if skipped > 0 {
                Frame::Oversized(skipped)
            } else if buf.iter().all(u8::is_ascii_whitespace) {
                Frame::Eof
            } else {
                Frame::Line
            });
        }
        let newline = memchr::memchr(b'\n', available);
        let chunk = &available[..newline.unwrap_or(available.len())];
        if skipped > 0 || buf.len() + chunk.len() > max {
            skipped += buf.len() + chunk.len();
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            if skipped > 0 {
                return Ok(Frame::Oversized(skipped));
            }
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
                continue;
            }
            return Ok(Frame::Line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn frames(input: &[u8], max: usize) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(4, input); // tiny buffer: lines span many reads
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let frame = read_line_capped(&mut reader, &mut buf, max).unwrap();
            if frame == Frame::Eof {
                return out;
            }
            out.push((frame, buf.clone()));
        }
    }

    #[test]
    fn lines_blank_lines_crlf_and_a_last_line_without_newline() {
        let got = frames(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\":3}", 100);
        let lines: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
    }

    #[test]
    fn an_oversized_line_is_skipped_whole_and_the_next_line_survives() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        let got = frames(&input, 10);
        assert_eq!(got[0].0, Frame::Oversized(50));
        assert_eq!(got[1], (Frame::Line, b"ok".to_vec()));
        assert_eq!(got.len(), 2);
    }
}
