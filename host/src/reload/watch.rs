//! What starts a reload without anyone asking: a change to a watched file, or `SIGHUP`.

use super::{Reloadable, DEBOUNCE, SETTLE};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a reload trigger could not be set up (the gateway does not start without it).
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The file watcher could not start.
    #[error("cannot watch files: {0}")]
    Watch(#[from] notify::Error),
    /// The `SIGHUP` handler could not be installed.
    #[error("cannot handle SIGHUP: {0}")]
    Signal(std::io::Error),
    /// The trigger's thread could not start.
    #[error("{0}")]
    Thread(std::io::Error),
}

/// Watches `item`'s files (a policy and its plugins, or a certificate and its key) on a thread
/// of its own, `name`; reloads after each burst of changes has been quiet for [`DEBOUNCE`].
/// Runs until the process exits.
pub fn watch(name: &str, item: Arc<impl Reloadable>) -> Result<(), TriggerError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes_content(&event.kind) => {
                let _ = tx.send(event.paths);
            }
            _ => {}
        })?;
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
        .map_err(TriggerError::Thread)?;
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
pub fn reload_on_sighup(name: &str, item: Arc<impl Reloadable>) -> Result<(), TriggerError> {
    on_sighup(name, move || {
        let _ = item.reload("SIGHUP");
    })
}

/// Runs `reload` on every `SIGHUP`, on a thread of its own named `name`.
fn on_sighup(name: &str, mut reload: impl FnMut() + Send + 'static) -> Result<(), TriggerError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(TriggerError::Signal)?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for _ in signals.forever() {
                reload();
            }
        })
        .map_err(TriggerError::Thread)?;
    Ok(())
}
