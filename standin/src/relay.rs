//! A bare byte relay: the floor of any stdio proxy.
//!
//! It spawns a command and copies bytes both ways with two threads, parsing nothing. The
//! latency benchmark compares `toolgate run` against this, in the same run, call by call.

use std::io::{Read, Write};
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

/// Relays this process's stdin/stdout to `command` until the command's stdout closes; returns
/// the command's exit code.
pub fn run(command: &[String]) -> std::io::Result<i32> {
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
    std::thread::spawn(move || copy(std::io::stdin(), child_in));
    copy(child_out, std::io::stdout());
    Ok(child.wait()?.code().unwrap_or(1))
}
