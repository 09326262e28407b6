//! Hot swap: the active policy is replaced whole and atomically when its files change, and a
//! failed reload leaves the last good one serving.
//!
//! The pipeline, off the request path: read → parse and validate → check plugin digests →
//! compile → pre-instantiate → run each plugin's `validate-config` (all of that is
//! [`Loader::load`]) → swap. Sessions read the active policy once per decision
//! ([`ArcSwap`]), so a call finishes under the set it started with and no call ever sees half
//! a new one. Counters live in the [`crate::counters::CounterStore`], outside the policy, so a
//! count survives every swap; a changed `max` applies from the next call.
//!
//! Triggers: changes to the policy file or any plugin file it names (watched with `notify`,
//! debounced so that an editor's several writes make one reload), `SIGHUP`, and `reload` on
//! the admin socket ([`serve_admin`], used by `toolgate reload`).

use crate::policy::{Loader, Policy};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the files must be quiet before a reload: writes in a burst make one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// How long a file change that failed to load waits for a further change before it counts as
/// a failed reload (a writer slowed down mid-write by a busy machine).
pub const SETTLE: Duration = Duration::from_millis(250);

/// What files on disk define and can be loaded again while traffic flows: a policy set (the
/// policy and its plugins), or the HTTP listeners' certificate.
pub trait Reloadable: Send + Sync + 'static {
    /// The files whose change triggers a reload (a reload may change them: new plugins).
    fn files(&self) -> Vec<PathBuf>;
    /// Loads the files again and swaps the result in; `Ok(false)`: nothing changed. On failure
    /// the active one stays, and the error is returned, not yet recorded.
    fn try_reload(&self, trigger: &str) -> Result<bool, String>;
    /// Records a failed reload: the status and the log say why.
    fn record_failure(&self, trigger: &str, error: &str);

    /// Loads the files again and swaps the result in; a failure is recorded, and the active
    /// one stays. `Ok(false)`: nothing changed.
    fn reload(&self, trigger: &str) -> Result<bool, String> {
        self.try_reload(trigger)
            .inspect_err(|error| self.record_failure(trigger, error))
    }
}

/// What `status` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The policy file.
    pub policy: String,
    /// sha256 over the policy text and every plugin's digest: the active set's identity.
    pub digest: String,
    /// Each plugin's name and sha256.
    pub plugins: Vec<(String, String)>,
    /// How many sets have been active (1 after the first load).
    pub version: u64,
    /// When the active set was loaded (ms since the Unix epoch).
    pub loaded_at_ms: u64,
    /// Reloads tried since the process started (changed, unchanged or failed).
    pub reloads: u64,
    /// Reloads that failed since the process started.
    pub failed_reloads: u64,
    /// The last failed reload's error, until a later reload succeeds.
    pub last_error: Option<String>,
}

/// The active policy and its status.
pub struct LivePolicy {
    path: PathBuf,
    /// What each reload compiles with (the same plugin runtime as the first load).
    loader: Loader,
    active: Arc<ArcSwap<Policy>>,
    status: Mutex<Status>,
    /// Held while a reload runs: reloads never overlap.
    reloading: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads and loads the policy at `path`: the set and its digest. The file is read once, so
/// the digest is always the digest of what was loaded.
fn load_set(loader: &Loader, path: &Path) -> Result<(Policy, String), String> {
    // The error names the file, line, column and cause (the log gets the full diagnostic).
    let (policy, text) = loader.load_with_text(path).map_err(|e| {
        let line = e.to_string();
        tracing::debug!("{:?}", miette::Report::new(e));
        line
    })?;
    let digest = digest(&text, &policy);
    Ok((policy, digest))
}

/// sha256 over the policy's text and its plugins' digests.
fn digest(text: &str, policy: &Policy) -> String {
    let mut whole = text.as_bytes().to_vec();
    for plugin in policy.plugins() {
        whole.extend_from_slice(plugin.digest().as_bytes());
    }
    crate::digest::sha256_hex(&whole)
}

impl LivePolicy {
    /// Loads the policy at `path` for the first time, and keeps `loader` for its reloads; the
    /// error is the full diagnostic.
    pub fn load(path: &Path, loader: Loader) -> Result<Arc<Self>, crate::policy::PolicyError> {
        let (policy, text) = loader.load_with_text(path)?;
        let status = Status {
            policy: path.display().to_string(),
            digest: digest(&text, &policy),
            plugins: plugin_digests(&policy),
            version: 1,
            loaded_at_ms: now_ms(),
            ..Status::default()
        };
        Ok(Arc::new(Self {
            path: path.to_owned(),
            loader,
            active: Arc::new(ArcSwap::from_pointee(policy)),
            status: Mutex::new(status),
            reloading: Mutex::new(()),
        }))
    }

    /// The cell sessions read the active policy from.
    pub fn cell(&self) -> Arc<ArcSwap<Policy>> {
        self.active.clone()
    }

    /// The active policy.
    pub fn current(&self) -> Arc<Policy> {
        self.active.load_full()
    }

    /// The status record.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `changed`: the set's digest changed (a policy or plugin byte), and the new set is active.
impl Reloadable for LivePolicy {
    /// The policy and every plugin it names.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.current().plugins().iter().map(|p| p.path().to_owned()));
        files
    }

    fn try_reload(&self, trigger: &str) -> Result<bool, String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let old = {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.reloads += 1;
            status.digest.clone()
        };
        let (policy, digest) = load_set(&self.loader, &self.path)?;
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = None;
        if digest == old {
            tracing::debug!(trigger, "reload: no change");
            return Ok(false);
        }
        status.plugins = plugin_digests(&policy);
        self.active.store(Arc::new(policy));
        status.digest = digest.clone();
        status.version += 1;
        status.loaded_at_ms = now_ms();
        tracing::info!(
            trigger,
            from = %&old[..12],
            to = %&digest[..12],
            version = status.version,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "policy swapped"
        );
        Ok(true)
    }

    fn record_failure(&self, trigger: &str, error: &str) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.failed_reloads += 1;
        status.last_error = Some(error.to_owned());
        tracing::error!(trigger, policy = %self.path.display(), %error, "reload failed; the last good policy stays active");
    }
}

fn plugin_digests(policy: &Policy) -> Vec<(String, String)> {
    policy
        .plugins()
        .iter()
        .map(|p| (p.name().to_owned(), p.digest().to_owned()))
        .collect()
}

/// Watches `item`'s files (a policy and its plugins, or a certificate and its key) on a thread
/// of its own, `name`; reloads after each burst of changes has been quiet for [`DEBOUNCE`].
/// Runs until the process exits.
pub fn watch(name: &str, item: Arc<impl Reloadable>) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes_content(&event.kind) => {
                let _ = tx.send(event.paths);
            }
            _ => {}
        })
        .map_err(|e| format!("cannot watch files: {e}"))?;
    let mut watched = Watched::default();
    watched.update(&*item, &mut watcher);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(paths) = rx.recv() {
                if !paths.iter().any(|p| watched.files.contains(&absolute(p))) {
                    continue;
                }
                loop {
                    // Coalesce: wait until no event has come for DEBOUNCE.
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    let Err(error) = item.try_reload("file change") else {
                        break;
                    };
                    // A file caught between a writer's truncate and its write does not
                    // load: if more changes come within SETTLE, it was not the last write.
                    if rx.recv_timeout(SETTLE).is_err() {
                        item.record_failure("file change", &error);
                        break;
                    }
                }
                watched.update(&*item, &mut watcher);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether an event can mean new content. An open or a read cannot, and a reload's own read
/// of the files must not trigger the next reload (it did: 50 loads a second after one change).
/// The end of a write (`CLOSE_WRITE`) is an access event too, and does count.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The files that trigger a reload, and the directories watched for them.
#[derive(Default)]
struct Watched {
    dirs: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

impl Watched {
    /// Follows the item's files (a reload can name new plugins).
    fn update(&mut self, item: &impl Reloadable, watcher: &mut notify::RecommendedWatcher) {
        use notify::{RecursiveMode, Watcher};
        self.files.clear();
        for file in item.files() {
            let file = absolute(&file);
            if let Some(dir) = file.parent() {
                // The directory, not the file: an editor's rename-over replaces the file.
                if self.dirs.insert(dir.to_owned()) {
                    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch");
                    }
                }
            }
            self.files.insert(file);
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Reloads `item` on every `SIGHUP`, on a thread of its own named `name`.
pub fn reload_on_sighup(name: &str, item: Arc<impl Reloadable>) -> Result<(), String> {
    on_sighup(name, move || {
        let _ = item.reload("SIGHUP");
    })
}

/// Runs `reload` on every `SIGHUP`, on a thread of its own named `name`.
fn on_sighup(name: &str, mut reload: impl FnMut() + Send + 'static) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for _ in signals.forever() {
                reload();
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The admin socket: a local Unix socket (mode 0600) that takes one command per line,
/// `status` or `reload`, and answers each with one line of JSON. `toolgate reload` and
/// `toolgate status` are its clients. See [`bind_admin_socket`] for how `path` is claimed.
pub fn serve_admin(live: Arc<LivePolicy>, path: &Path) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let listener = bind_admin_socket(path)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let live = live.clone();
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(&stream).lines();
                    while let Some(Ok(command)) = lines.next() {
                        let answer = match command.trim() {
                            "status" => serde_json::json!({"ok": true, "status": live.status()}),
                            "reload" => match live.reload("admin") {
                                Ok(changed) => serde_json::json!({"ok": true, "changed": changed, "status": live.status()}),
                                Err(error) => serde_json::json!({"ok": false, "error": error, "status": live.status()}),
                            },
                            other => serde_json::json!({"ok": false, "error": format!("unknown command `{other}`: status or reload")}),
                        };
                        if writeln!(&stream, "{answer}").is_err() {
                            break;
                        }
                    }
                });
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
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
pub fn bind_admin_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(format!(
                "admin socket {shown}: it exists and is not a socket; refusing to replace it (remove it or choose another path)"
            ));
        }
        Ok(meta) => {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(format!(
                    "admin socket {shown}: a socket owned by uid {} is there, not by this user (uid {me}); refusing to replace it",
                    meta.uid()
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "admin socket {shown}: another process is listening on it"
                ));
            }
            // Ours, and nobody listens: left by a gateway that is gone.
            std::fs::remove_file(path).map_err(|e| {
                format!("admin socket {shown}: cannot remove the stale socket: {e}")
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("admin socket {shown}: {e}")),
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
        .map_err(|e| {
            format!(
                "admin socket {shown}: cannot create {}: {e}",
                private.display()
            )
        })?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged)
        .map_err(|e| format!("cannot listen on {shown}: {e}"))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| std::fs::hard_link(&staged, path))
                .map_err(|e| format!("cannot listen on {shown}: {e}"))?;
            Ok(listener)
        });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Sends one admin command to the gateway listening on `path`; returns its JSON answer.
pub fn admin_command(path: &Path, command: &str) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("cannot reach a gateway at {}: {e}", path.display()))?;
    writeln!(stream, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer from the gateway: {e}"))
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
            let err = bind_admin_socket(&dir.path().join(name)).unwrap_err();
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
        let err = bind_admin_socket(&path).unwrap_err();
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
        let err = bind_admin_socket(&path).unwrap_err();
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), 65534);
    }
}
