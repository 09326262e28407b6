//! The upstream as a child process: how both transports start an MCP server on pipes.

use std::io;
use std::process::{Child, Command, Stdio};

/// Starts the upstream command with piped stdin/stdout; its stderr is ours.
///
/// On Linux the child is also asked to receive SIGTERM when the gateway dies, however it dies:
/// MCP clients often stop a server with a signal rather than by closing its stdin, and not every
/// server exits on EOF (server-everything keeps running until its next write fails), so without
/// this an upstream would outlive its gateway.
pub fn spawn_upstream(command: &[String]) -> io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no upstream command given"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid), touching no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The gateway may already have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
    command.spawn()
}
