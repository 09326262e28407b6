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
//! Triggers, each in a module of its own: changes to the policy file or any plugin file it
//! names ([`watch`]: `notify`, debounced so that an editor's several writes make one reload),
//! `SIGHUP` ([`reload_on_sighup`]), and `reload` on the admin socket (`admin.rs`, used by
//! `toolgate reload`).

mod admin;
mod watch;

pub use admin::{admin_command, bind_admin_socket, serve_admin, AdminError};
pub use watch::{reload_on_sighup, watch, TriggerError};

use crate::policy::{Loader, Policy};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the files must be quiet before a reload: writes in a burst make one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// How long a file change that failed to load waits for a further change before it counts as
/// a failed reload (a writer slowed down mid-write by a busy machine).
pub const SETTLE: Duration = Duration::from_millis(250);

/// Why a reload failed. The active set or certificate stays, and the status says this.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The policy set did not load: its file, line, column and cause (the log at debug level
    /// gets the full diagnostic).
    #[error("{0}")]
    Policy(Box<crate::policy::PolicyError>),
    /// The listener certificate or its key did not load, with the chain of causes.
    #[error("{0:#}")]
    Certificate(anyhow::Error),
}

/// What files on disk define and can be loaded again while traffic flows: a policy set (the
/// policy and its plugins), or the HTTP listeners' certificate.
pub trait Reloadable: Send + Sync + 'static {
    /// The files whose change triggers a reload (a reload may change them: new plugins).
    fn files(&self) -> Vec<PathBuf>;
    /// Loads the files again and swaps the result in; `Ok(false)`: nothing changed. On failure
    /// the active one stays, and the error is returned, not yet recorded.
    fn try_reload(&self, trigger: &str) -> Result<bool, ReloadError>;
    /// Records a failed reload: the status and the log say why.
    fn record_failure(&self, trigger: &str, error: &ReloadError);

    /// Loads the files again and swaps the result in; a failure is recorded, and the active
    /// one stays. `Ok(false)`: nothing changed.
    fn reload(&self, trigger: &str) -> Result<bool, ReloadError> {
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
    /// How the last swap weakened enforcement (a rule put in shadow or removed, a deny made
    /// an allow, a limit raised...), until a swap that does not.
    pub weakened: Vec<String>,
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
fn load_set(loader: &Loader, path: &Path) -> Result<(Policy, String), ReloadError> {
    let (policy, text) = loader.load_with_text(path).map_err(|e| {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut diagnostic = String::new();
            // Rendering into a String cannot fail.
            let _ = miette::GraphicalReportHandler::new().render_report(&mut diagnostic, &e);
            tracing::debug!("{diagnostic}");
        }
        ReloadError::Policy(Box::new(e))
    })?;
    let digest = digest(&text, &policy);
    Ok((policy, digest))
}

/// sha256 over the policy's text, its plugins' digests and, under a trust file, the
/// signatures they were judged by (a new signature is a new set: it may carry an expiry).
fn digest(text: &str, policy: &Policy) -> String {
    let mut whole = text.as_bytes().to_vec();
    for plugin in policy.plugins() {
        whole.extend_from_slice(plugin.digest().as_bytes());
        if let Some(signatures) = plugin.signatures_digest() {
            whole.extend_from_slice(signatures.as_bytes());
        }
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
        files.extend(
            self.current()
                .plugins()
                .iter()
                .filter_map(|p| p.path().map(Path::to_owned)),
        );
        files
    }

    fn try_reload(&self, trigger: &str) -> Result<bool, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let old = {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.reloads += 1;
            status.digest.clone()
        };
        // The running plugins first, by the trust file as it is now: if the reload fails (a
        // plugin no longer trusted fails it too), the old set keeps serving, but not a plugin
        // whose key was just revoked.
        let withdrawn = self.current().rejudge_plugins(self.loader.trust());
        for (plugin, why) in &withdrawn {
            tracing::error!(trigger, plugin, reason = %why, "plugin withdrawn: every call through it is denied until a load replaces it");
        }
        let (policy, digest) = load_set(&self.loader, &self.path)?;
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = None;
        // The same bytes are no change, unless a plugin of the set was withdrawn: a load that
        // now satisfies the trust file brings it back.
        if digest == old && withdrawn.is_empty() {
            tracing::debug!(trigger, "reload: no change");
            return Ok(false);
        }
        status.plugins = plugin_digests(&policy);
        status.weakened = self.current().weakened_by(&policy);
        for change in &status.weakened {
            tracing::warn!(trigger, policy = %self.path.display(), %change, "the reload weakens enforcement");
        }
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

    fn record_failure(&self, trigger: &str, error: &ReloadError) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.failed_reloads += 1;
        status.last_error = Some(error.to_string());
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
