//! A bare byte relay: the floor of any stdio proxy.
//!
//! It spawns a command and copies bytes both ways with two threads, parsing nothing. The
//! latency benchmark compares `toolgate run` against this, in the same run, call by call, and
//! against [`run_parsing`], the same relay parsing every message it forwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Copies line by line, parsing each line as JSON (into a `serde_json::Value`, the least a
/// gateway that decides on what it forwards must do) and forwarding its bytes unchanged.
fn copy_parsed(from: impl Read, mut to: impl Write) {
    let mut from = BufReader::with_capacity(64 * 1024, from);
    let mut line = Vec::with_capacity(64 * 1024);
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let parsed = serde_json::from_slice::<serde_json::Value>(&line);
                std::hint::black_box(&parsed);
                drop(parsed);
                if to.write_all(&line).and_then(|_| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Relays this process's stdin/stdout to `command` until the command's stdout closes; returns
/// the command's exit code.
pub fn run(command: &[String]) -> std::io::Result<i32> {
    relay(command, copy, copy)
}

/// [`run`], but each line in either direction is parsed as JSON before its bytes are
/// forwarded: the floor of a gateway that reads the messages it relays.
pub fn run_parsing(command: &[String]) -> std::io::Result<i32> {
    relay(command, copy_parsed, copy_parsed)
}

fn relay(
    command: &[String],
    up: fn(std::io::Stdin, std::process::ChildStdin),
    down: fn(std::process::ChildStdout, std::io::Stdout),
) -> std::io::Result<i32> {
    let (program, args) = command.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command to relay to")
    })?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let child_in = child.stdin.take().expect("piped");
    let child_out = child.stdout.take().expect("piped");
    std::thread::spawn(move || up(std::io::stdin(), child_in));
    down(child_out, std::io::stdout());
    Ok(child.wait()?.code().unwrap_or(1))
}
