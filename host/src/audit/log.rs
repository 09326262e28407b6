//! The JSON-lines writer. The call's thread only hands the event to a bounded channel; a writer
//! thread serializes and writes it. When the channel is full (a sink that cannot keep up, a
//! pipe nobody reads) the event is dropped and counted: a decision is never delayed by its log.

use super::{
    facts::{DecisionLine, OutcomeLine},
    ApprovalEvent, DecisionFacts, Facts, Observer, OutcomeFacts, ShadowEvent, SCHEMA,
};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSink {
    /// A file, rotated by size: at `max_bytes` it becomes `FILE.1` (the older ones `FILE.2`,
    /// ... up to `keep`) and a new `FILE` starts.
    File {
        /// The file.
        path: PathBuf,
        /// Size at which it is rotated. Default 100 MiB.
        max_bytes: u64,
        /// Rotated files kept. Default 5.
        keep: usize,
    },
    /// Standard error (`toolgate run`: stdout is the protocol).
    Stderr,
    /// Standard output (`serve`).
    Stdout,
}

impl LogSink {
    /// `-` for standard error or output (as `stdout` says), else a file with the default
    /// rotation.
    pub fn parse(text: &str, stdout: bool) -> Self {
        match (text, stdout) {
            ("-", true) => LogSink::Stdout,
            ("-", false) => LogSink::Stderr,
            (path, _) => LogSink::File {
                path: PathBuf::from(path),
                max_bytes: 100 << 20,
                keep: 5,
            },
        }
    }
}

/// Events written and dropped so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Lines written.
    pub written: u64,
    /// Events dropped because the writer could not keep up.
    pub dropped: u64,
}

#[derive(Default)]
struct Counts {
    /// Events handed to the log.
    pushed: AtomicU64,
    /// Events whose line reached the sink's buffer and was flushed, or that were dropped.
    settled: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// The decision log: an [`Observer`] that writes JSON lines.
pub struct DecisionLog {
    tx: SyncSender<Queued>,
    counts: Arc<Counts>,
}

/// Events the channel holds before new ones are dropped. Each is a few hundred bytes.
pub const DEFAULT_CAPACITY: usize = 4096;

impl DecisionLog {
    /// Opens the sink (creating a file, appending to one that exists) and starts the writer.
    pub fn open(sink: LogSink, capacity: usize) -> io::Result<Self> {
        Self::start(Output::open(sink)?, capacity)
    }

    /// A log written to `out` (a pipe, a socket): no rotation.
    pub fn to_writer(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<Self> {
        Self::start(Output::Stream(out), capacity)
    }

    fn start(out: Output, capacity: usize) -> io::Result<Self> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_all(rx, out, &thread_counts))?;
        Ok(Self { tx, counts })
    }

    /// Lines written and events dropped so far.
    pub fn stats(&self) -> LogStats {
        LogStats {
            written: self.counts.written.load(Ordering::Relaxed),
            dropped: self.counts.dropped.load(Ordering::Relaxed),
        }
    }

    fn push(&self, event: Queued) {
        self.counts.pushed.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                self.counts.settled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `within`) until every event handed over so far is written and flushed,
    /// or dropped: before the process exits, so that its last decisions are not lost.
    pub fn flush(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let pushed = self.counts.pushed.load(Ordering::Relaxed);
            if self.counts.settled.load(Ordering::Relaxed) >= pushed {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Observer for DecisionLog {
    fn decision(&self, facts: &Arc<DecisionFacts>) {
        self.push(Queued::Facts(Facts::Decision(facts.clone())));
    }
    fn outcome(&self, facts: &Arc<OutcomeFacts>) {
        self.push(Queued::Facts(Facts::Outcome(facts.clone())));
    }
    fn shadow(&self, event: &ShadowEvent) {
        self.push(Queued::Shadow(Box::new(event.clone())));
    }
    fn approval(&self, event: &ApprovalEvent) {
        self.push(Queued::Approval(Box::new(event.clone())));
    }
}

enum Output {
    File {
        path: PathBuf,
        file: BufWriter<File>,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
    Stream(Box<dyn Write + Send>),
}

impl Output {
    fn open(sink: LogSink) -> io::Result<Self> {
        Ok(match sink {
            LogSink::File {
                path,
                max_bytes,
                keep,
            } => {
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                let size = file.metadata()?.len();
                Output::File {
                    path,
                    file: BufWriter::with_capacity(64 << 10, file),
                    size,
                    max_bytes,
                    keep,
                }
            }
            LogSink::Stderr => Output::Stream(Box::new(io::stderr())),
            LogSink::Stdout => Output::Stream(Box::new(io::stdout())),
        })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Output::Stream(out) => out.write_all(line),
            Output::File {
                path,
                file,
                size,
                max_bytes,
                keep,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    file.flush()?;
                    rotate(path, *keep)?;
                    *file = BufWriter::with_capacity(
                        64 << 10,
                        OpenOptions::new().create(true).append(true).open(&*path)?,
                    );
                    *size = 0;
                }
                file.write_all(line)?;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stream(out) => out.flush(),
            Output::File { file, .. } => file.flush(),
        }
    }
}

/// `FILE` → `FILE.1`, `FILE.1` → `FILE.2`, ...; the oldest beyond `keep` is removed.
fn rotate(path: &std::path::Path, keep: usize) -> io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::rename(path, numbered(1))
}

/// How often the writer wakes to drain the queue. The writer never waits on the queue itself:
/// a sender that found it waiting would have to wake it, a futex call and a thread switch on
/// the call's path for every event. Polling costs one wake-up per period instead.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// An event waiting for the writer: the facts of decisions and outcomes (shared with the other
/// observers), made into events by the writer, off the call's thread.
enum Queued {
    Facts(Facts),
    Shadow(Box<ShadowEvent>),
    Approval(Box<ApprovalEvent>),
}

/// A line as written ([`super::Line`] when read back), borrowing its event.
#[derive(serde::Serialize)]
struct LineRef<'a> {
    schema: &'a str,
    #[serde(flatten)]
    event: EventRef<'a>,
}

#[derive(serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum EventRef<'a> {
    Decision(&'a DecisionLine<'a>),
    Outcome(&'a OutcomeLine<'a>),
    Shadow(&'a ShadowEvent),
    Approval(&'a ApprovalEvent),
}

impl Queued {
    /// Its line, written into `buf`.
    fn write(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        let line = |event| LineRef {
            schema: SCHEMA,
            event,
        };
        match self {
            Queued::Facts(Facts::Decision(facts)) => {
                serde_json::to_writer(buf, &line(EventRef::Decision(&facts.line())))
            }
            Queued::Facts(Facts::Outcome(facts)) => {
                serde_json::to_writer(buf, &line(EventRef::Outcome(&facts.line())))
            }
            Queued::Shadow(e) => serde_json::to_writer(buf, &line(EventRef::Shadow(e))),
            Queued::Approval(e) => serde_json::to_writer(buf, &line(EventRef::Approval(e))),
        }
    }
}

fn write_all(rx: Receiver<Queued>, mut out: Output, counts: &Counts) {
    let mut buf = Vec::with_capacity(1024);
    let mut spent = Vec::new();
    loop {
        std::thread::sleep(DRAIN_EVERY);
        let first = match rx.try_recv() {
            Ok(event) => event,
            Err(std::sync::mpsc::TryRecvError::Empty) => continue,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        };
        let mut next = Some(first);
        let mut taken = 0;
        // Everything already waiting goes out before one flush.
        while let Some(event) = next.take().or_else(|| rx.try_recv().ok()) {
            taken += 1;
            buf.clear();
            if event.write(&mut buf).is_err() {
                continue;
            }
            buf.push(b'\n');
            if let Queued::Facts(facts) = event {
                spent.push(facts);
            }
            match out.write_line(&buf) {
                Ok(()) => {
                    counts.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot write the decision log");
                }
            }
        }
        super::retire(&mut spent);
        if let Err(e) = out.flush() {
            tracing::warn!(error = %e, "cannot write the decision log");
        }
        counts.settled.fetch_add(taken, Ordering::Relaxed);
    }
}
