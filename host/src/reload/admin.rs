//! The admin socket: `toolgate status` and `toolgate reload` talk to a running gateway through it.

use super::{LivePolicy, Reloadable};
use crate::approvals::Approvals;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the admin socket could not be claimed or reached. Each says which path, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Something that is not a socket is at the path: it is never replaced.
    #[error("admin socket {}: it exists and is not a socket; refusing to replace it (remove it or choose another path)", .path.display())]
    NotASocket {
        /// The socket's path.
        path: PathBuf,
    },
    /// Another user's socket is at the path.
    #[error("admin socket {}: a socket owned by uid {owner} is there, not by this user (uid {me}); refusing to replace it", .path.display())]
    OwnedByAnother {
        /// The socket's path.
        path: PathBuf,
        /// Who owns it.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// A live gateway (or anything else) listens there.
    #[error("admin socket {}: another process is listening on it", .path.display())]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// A stale socket of ours could not be removed.
    #[error("admin socket {}: cannot remove the stale socket: {source}", .path.display())]
    RemoveStale {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path could not be examined.
    #[error("admin socket {}: {source}", .path.display())]
    Inspect {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The private directory the socket is bound in could not be made.
    #[error("admin socket {}: cannot create {}: {source}", .path.display(), .dir.display())]
    PrivateDir {
        /// The socket's path.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Binding, restricting or linking the socket failed.
    #[error("cannot listen on {}: {source}", .path.display())]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No gateway answers at the path (`toolgate status`, `toolgate reload`).
    #[error("cannot reach a gateway at {}: {source}", .path.display())]
    Unreachable {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The gateway's answer is not one line of JSON.
    #[error("bad answer from the gateway: {0}")]
    BadAnswer(serde_json::Error),
    /// Reading or writing the socket, or starting its thread, failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The admin socket: a local Unix socket (mode 0600) that takes one command per line,
/// `status` or `reload`, and answers each with one line of JSON. `toolgate reload` and
/// `toolgate status` are its clients. See [`bind_admin_socket`] for how `path` is claimed.
pub fn serve_admin(
    live: Arc<LivePolicy>,
    approvals: Option<Arc<Approvals>>,
    path: &Path,
) -> Result<(), AdminError> {
    use std::io::{BufRead, BufReader, Write};
    let listener = bind_admin_socket(path)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (live, approvals) = (live.clone(), approvals.clone());
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(&stream).lines();
                    while let Some(Ok(command)) = lines.next() {
                        let answer = match command.trim() {
                            "status" => serde_json::json!({"ok": true, "status": live.status()}),
                            "reload" => match live.reload("admin") {
                                Ok(changed) => serde_json::json!({"ok": true, "changed": changed, "status": live.status()}),
                                Err(error) => serde_json::json!({"ok": false, "error": error.to_string(), "status": live.status()}),
                            },
                            other if other.starts_with("approvals ") => approvals_command(
                                approvals.as_deref(),
                                &other["approvals ".len()..],
                                peer_uid(&stream),
                            ),
                            other => serde_json::json!({"ok": false, "error": format!("unknown command `{other}`: status, reload or approvals ...")}),
                        };
                        if writeln!(&stream, "{answer}").is_err() {
                            break;
                        }
                    }
                });
            }
        })?;
    Ok(())
}

/// `approvals list`, `approvals show ID`, `approvals approve ID BY [REUSE]`, `approvals deny
/// ID BY REASON...`: the operator's channel of a `toolgate run` (the socket is this user's only).
/// The uid of the process at the other end of the socket (`SO_PEERCRED`): who decided, as
/// the kernel says, recorded beside the name the CLI sent.
fn peer_uid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the size passed; the fd is the open
    // stream's.
    let done = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (done == 0).then_some(cred.uid)
}

fn approvals_command(
    approvals: Option<&Approvals>,
    command: &str,
    uid: Option<u32>,
) -> serde_json::Value {
    use serde_json::json;
    let Some(approvals) = approvals else {
        return json!({"ok": false, "error": "this gateway holds no calls for approval"});
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    // The name is the CLI's word; the uid is the kernel's. Anyone who can open the socket
    // (mode 0600: this user) can decide, so run agents as another user.
    let who = |by: &str| match uid {
        Some(uid) => format!("{by} (uid {uid})"),
        None => by.to_owned(),
    };
    let decided = |r: Result<crate::approvals::Request, crate::approvals::ApprovalError>| match r {
        Ok(request) => json!({"ok": true, "request": request}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    match words.as_slice() {
        ["list"] => json!({"ok": true, "requests": approvals.list()}),
        ["show", id] => match approvals.get(id) {
            Some(request) => json!({"ok": true, "request": request}),
            None => json!({"ok": false, "error": format!("no approval request `{id}`")}),
        },
        ["approve", id, by] => decided(approvals.approve(id, &who(by), "cli")),
        ["approve", id, by, reuse] => match reuse.parse() {
            Ok(reuse) => decided(approvals.approve_reusing(id, &who(by), "cli", reuse)),
            Err(e) => json!({"ok": false, "error": e}),
        },
        ["deny", id, by, reason @ ..] if !reason.is_empty() => {
            decided(approvals.deny(id, &who(by), "cli", &reason.join(" ")))
        }
        _ => {
            json!({"ok": false, "error": format!("unknown approvals command `{command}`: list, show ID, approve ID BY, deny ID BY REASON")})
        }
    }
}

/// Binds the admin socket at `path`, so that no other user can connect to it at any moment.
///
/// - Something at `path` that is not a socket (a file, a directory, a symlink) is an error:
///   nothing is ever deleted but a socket.
/// - A socket there is replaced only if this user owns it and nobody listens on it (a
///   gateway that is gone left it); one owned by another user, or in use, is an error.
/// - The socket is bound in a fresh directory of mode 0700 beside `path`, set to 0600, and
///   then hard-linked to `path`. Bound straight at `path` and chmod-ed after, it would be
///   reachable under the umask's mode in between; and the link, unlike a rename, fails rather
///   than replace a file that appeared at `path` meanwhile. The process umask is left alone:
///   it is shared by every thread.
pub fn bind_admin_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, AdminError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    let path_buf = || path.to_owned();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(AdminError::NotASocket { path: path_buf() });
        }
        Ok(meta) => {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(AdminError::OwnedByAnother {
                    path: path_buf(),
                    owner: meta.uid(),
                    me,
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse { path: path_buf() });
            }
            // Ours, and nobody listens: left by a gateway that is gone.
            std::fs::remove_file(path).map_err(|source| AdminError::RemoveStale {
                path: path_buf(),
                source,
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AdminError::Inspect {
                path: path_buf(),
                source,
            })
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A short name: a socket's whole path must fit in 108 bytes.
    let private = parent.join(format!(
        ".tg{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| AdminError::PrivateDir {
            path: path_buf(),
            dir: private.clone(),
            source,
        })?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged)
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::hard_link(&staged, path)?;
            Ok(listener)
        })
        .map_err(|source| AdminError::Listen {
            path: path_buf(),
            source,
        });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Sends one admin command to the gateway listening on `path`; returns its JSON answer.
pub fn admin_command(path: &Path, command: &str) -> Result<serde_json::Value, AdminError> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        AdminError::Unreachable {
            path: path.to_owned(),
            source,
        }
    })?;
    writeln!(stream, "{command}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(AdminError::BadAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixListener;

    /// The names in `dir`, sorted: nothing but what the test put there may be left behind.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.sock");
        std::fs::write(&file, "precious").unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("a-link")).unwrap();
        for name in ["admin.sock", "a-dir", "a-link"] {
            let err = bind_admin_socket(&dir.path().join(name))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not a socket; refusing to replace it"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        assert_eq!(names(dir.path()), ["a-dir", "a-link", "admin.sock"]);
    }

    #[test]
    fn the_socket_is_0600_from_the_start_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = bind_admin_socket(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
        assert_eq!(names(dir.path()), ["admin.sock"]);
        // It is the listener's socket: a client gets through.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn a_stale_socket_of_ours_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(UnixListener::bind(&path).unwrap()); // a gateway that is gone
        let live = bind_admin_socket(&path).unwrap();
        let err = bind_admin_socket(&path).unwrap_err().to_string();
        assert!(err.contains("another process is listening"), "{err}");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(live);
    }

    #[test]
    fn a_socket_of_another_user_is_not_replaced() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give a socket to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(UnixListener::bind(&path).unwrap());
        std::os::unix::fs::lchown(&path, Some(65534), Some(65534)).unwrap();
        let err = bind_admin_socket(&path).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), 65534);
    }
}
