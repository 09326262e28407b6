//! `byte-relay -- CMD [ARGS...]`: the floor of any stdio proxy.
//!
//! It spawns CMD and copies bytes both ways with two threads, parsing nothing. The latency
//! benchmark compares `toolgate run` against this, in the same run, call by call.
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

fn main() {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: byte-relay -- CMD [ARGS...]");
        std::process::exit(2);
    };
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn upstream");
    let child_in = child.stdin.take().unwrap();
    let child_out = child.stdout.take().unwrap();
    std::thread::spawn(move || copy(std::io::stdin(), child_in));
    let out = std::thread::spawn(move || copy(child_out, std::io::stdout()));
    out.join().ok();
    std::process::exit(child.wait().map(|s| s.code().unwrap_or(1)).unwrap_or(1));
}
