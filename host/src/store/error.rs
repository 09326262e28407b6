//! Why a store, registry or bundle operation failed; every message says what to do next.

use std::path::PathBuf;

/// A failure of the plugin store, of `push`/`pull`, or of `save`/`load`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Neither `TOOLGATE_STORE`, `XDG_DATA_HOME` nor `HOME` names a folder.
    #[error("no folder for the plugin store: set `TOOLGATE_STORE` (or `XDG_DATA_HOME` or `HOME`)")]
    NoStoreFolder,
    /// The component is not in the store. `reference` (where it can be pulled from) is known
    /// when the store still lists it, or when the caller adds it ([`StoreError::for_reference`]).
    #[error("{}", missing(sha256, reference.as_deref(), root))]
    Missing {
        sha256: String,
        reference: Option<String>,
        root: PathBuf,
    },
    /// A blob's bytes do not hash to its name.
    #[error(
        "the store's blob `sha256:{expected}` holds bytes that hash to `sha256:{actual}`: the \
         store at `{}` is damaged or was edited; run `toolgate plugin rm {expected}`, then pull \
         or load the plugin again", root.display()
    )]
    Tampered {
        root: PathBuf,
        expected: String,
        actual: String,
    },
    /// Not a sha256 digest.
    #[error("`{0}` is not a sha256 digest (64 lowercase hex digits, optionally after `sha256:`)")]
    BadDigest(String),
    /// Not `[oci://]HOST[:PORT]/REPO:TAG`.
    #[error(
        "`{reference}` is not a plugin reference ({reason}): write `oci://HOST[:PORT]/REPO:TAG`"
    )]
    BadReference { reference: String, reason: String },
    /// No plugin in the store has this reference or digest.
    #[error("no plugin in the store at `{}` is `{what}`: `toolgate plugin ls` lists them", root.display())]
    NotFound { what: String, root: PathBuf },
    /// A file could not be read or written.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A store file toolgate wrote is unreadable.
    #[error(
        "the store's `{}` is damaged ({reason}): run `toolgate plugin gc`, or move the store \
         away and pull or load its plugins again", path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    /// A component, signature or manifest over the size the store takes.
    #[error("{what} is {size} bytes, over the {max} bytes the store takes")]
    TooLarge { what: String, size: u64, max: u64 },
    /// A signature that cannot be a `.minisig` text.
    #[error("the signature `{origin}` is not a minisign signature ({reason})")]
    BadSignature { origin: String, reason: String },
    /// The registry holds another wasm-in-OCI layout.
    #[error(
        "`{reference}` is not a toolgate plugin: {reason}; toolgate reads only the CNCF wasm \
         layout (config `application/vnd.wasm.config.v0+json`, exactly one `application/wasm` \
         layer), as `toolgate plugin push` writes it"
    )]
    ForeignLayout { reference: String, reason: String },
    /// The component under the tag is not the one asked for with `--sha256`.
    #[error(
        "`{reference}` holds the component `sha256:{actual}`, not the `sha256:{expected}` asked \
         for: the tag was moved, or the digest is wrong; nothing was stored"
    )]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    /// Something fetched does not hash to the digest that named it.
    #[error(
        "{what} fetched from `{reference}` does not hash to `{expected}` (it hashes to \
         `{actual}`): the registry or the connection altered it; nothing was stored"
    )]
    Unverified {
        what: String,
        reference: String,
        expected: String,
        actual: String,
    },
    /// The registry refused, or could not be reached.
    #[error("registry `{registry}`: {message}")]
    Registry { registry: String, message: String },
    /// A bundle that `plugin load` refuses.
    #[error("bundle `{}`: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
}

fn missing(sha256: &str, reference: Option<&str>, root: &std::path::Path) -> String {
    let root = root.display();
    match reference {
        Some(reference) => format!(
            "plugin `{reference}` (sha256 `{sha256}`) is not in the store at `{root}`: run \
             `toolgate plugin pull oci://{reference} --sha256 {sha256}` (or `toolgate plugin \
             load` a bundle that has it)"
        ),
        None => format!(
            "the plugin with sha256 `{sha256}` is not in the store at `{root}`: run `toolgate \
             plugin pull oci://HOST/REPO:TAG --sha256 {sha256}` (or `toolgate plugin load` a \
             bundle that has it)"
        ),
    }
}

impl StoreError {
    /// Fills in where a missing component can be pulled from (the policy entry's `ref`), so
    /// that the message is the exact `toolgate plugin pull` line to run.
    pub fn for_reference(self, reference: &str) -> StoreError {
        match self {
            StoreError::Missing { sha256, root, .. } => StoreError::Missing {
                sha256,
                root,
                reference: Some(reference.trim_start_matches("oci://").to_string()),
            },
            other => other,
        }
    }

    /// The `toolgate plugin pull ...` line that would fetch a missing component, if this is
    /// that error and the reference is known.
    pub fn pull_command(&self) -> Option<String> {
        match self {
            StoreError::Missing {
                sha256,
                reference: Some(reference),
                ..
            } => Some(format!(
                "toolgate plugin pull oci://{reference} --sha256 {sha256}"
            )),
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}
