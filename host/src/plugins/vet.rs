//! Step 2, verify: everything that decides whether these bytes may run, checked on the bytes
//! before any of them is compiled, in this order:
//!
//! 1. the content has the sha256 the policy pins (a warning when it pins none);
//! 2. it is a component, not a core module or another file;
//! 3. it carries exactly one toolgate manifest at its top level, for a world this host
//!    implements and the one the component's imports (and, for 0.3.0, exports) name, whose
//!    capabilities are the component's real imports (`crate::manifest`);
//! 4. the policy grants every capability it imports (`"grants"`; a policy without `grants`
//!    grants all of them, with a warning that prints the line to add);
//! 5. when the operator configured a trust file, its signatures satisfy the trust rule,
//!    capabilities included (`crate::trust`).
//!
//! What passes is exactly what is compiled: the same buffer, never read again.

use super::build;
use super::error::PluginError;
use super::vouch::Vouched;
use crate::capability::{json_list, Capability, World};
use crate::manifest::{Manifest, ManifestError};
use crate::trust::{Signature, Trust};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A plugin's bytes as read from its file or the store, with the signatures found for them.
pub struct Candidate {
    /// Where it was read from, for messages.
    pub shown: String,
    /// The file it was read from (`None`: the store).
    pub file: Option<std::path::PathBuf>,
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// Its detached signatures.
    pub signatures: Vec<Signature>,
}

/// What the policy and the operator require of one plugin.
#[derive(Default, Clone, Copy)]
pub struct Vetting<'a> {
    /// The sha256 the policy pins.
    pub pinned: Option<&'a str>,
    /// The capabilities the policy grants (`None`: it says nothing, all are granted).
    pub grants: Option<&'a BTreeSet<Capability>>,
    /// The operator's trust file, if one is configured.
    pub trust: Option<&'a Arc<Trust>>,
}

/// A plugin that passed: its digest, manifest, world, and the capabilities its linker holds.
pub(crate) struct Vetted {
    pub(crate) digest: String,
    pub(crate) manifest: Manifest,
    /// The world its manifest says and its imports name (the two agree, or it failed here).
    pub(crate) world: World,
    pub(crate) linked: BTreeSet<Capability>,
    /// What its trust rests on, to judge it again while it runs (`None`: no trust file).
    pub(crate) vouched: Option<Vouched>,
}

/// Runs the checks of this step on `candidate`, in order; the first that fails is the error.
pub(crate) fn vet(
    name: &str,
    candidate: &Candidate,
    vetting: Vetting<'_>,
) -> Result<Vetted, PluginError> {
    let path = candidate.shown.as_str();
    let bytes = candidate.bytes.as_slice();
    let digest = verify_digest(name, path, bytes, vetting.pinned)?;
    let manifest = Manifest::read(bytes).map_err(|e| match e {
        // Bytes that do not parse are a broken file before they are a missing manifest.
        ManifestError::NotAComponent(why) => PluginError::Invalid {
            path: path.to_owned(),
            reason: format!("it is not a valid component (truncated, or damaged): {why}"),
        },
        e => PluginError::Manifest {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })?;
    let world = manifest.world().map_err(|e| PluginError::Manifest {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let imported = &manifest.capabilities;
    let linked = match vetting.grants {
        Some(grants) => {
            if let Some(missing) = imported.iter().find(|c| !grants.contains(c)) {
                let mut wanted = grants.clone();
                wanted.extend(imported.iter().copied());
                // The import as the component names it (its version may not be ours).
                let import = crate::capability::component_interface(bytes)
                    .ok()
                    .and_then(|(imports, _)| {
                        imports
                            .into_iter()
                            .find(|i| Capability::from_import(i) == Some(*missing))
                    })
                    .unwrap_or_else(|| missing.import(world));
                return Err(PluginError::Ungranted {
                    path: path.to_owned(),
                    plugin: name.to_owned(),
                    import,
                    line: format!("\"grants\": {}", json_list(&wanted)),
                });
            }
            grants.clone()
        }
        None => {
            tracing::warn!(
                plugin = name,
                path,
                "the policy grants this plugin every capability; to grant only what it imports, add `\"grants\": {}` to plugins.{name}",
                json_list(imported)
            );
            Capability::ALL.into_iter().collect()
        }
    };
    let mut vouched = None;
    if let Some(trust) = vetting.trust {
        let verdict = trust.judge(bytes, &candidate.signatures, imported, chrono::Utc::now());
        if !verdict.satisfied() {
            return Err(PluginError::Untrusted {
                path: path.to_owned(),
                trust: trust.origin().to_owned(),
                rule: verdict.rule.clone(),
                explain: verdict.explain(),
            });
        }
        tracing::info!(plugin = name, sha256 = %digest, rule = %verdict.rule, "plugin satisfies the trust file");
        vouched = Some(Vouched::new(
            trust.clone(),
            Arc::from(bytes),
            candidate.signatures.clone(),
            imported.clone(),
            &verdict,
        ));
    }
    Ok(Vetted {
        digest,
        manifest,
        world,
        linked,
        vouched,
    })
}

/// Checks 1 and 2: the content has the digest the policy pins (a warning when it pins none),
/// and it is a component. Returns the content's sha256.
pub(crate) fn verify_digest(
    name: &str,
    path: &str,
    bytes: &[u8],
    pinned: Option<&str>,
) -> Result<String, PluginError> {
    let digest = crate::digest::sha256_hex(bytes);
    match pinned {
        Some(expected) if !expected.eq_ignore_ascii_case(&digest) => {
            return Err(PluginError::DigestMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual: digest,
            })
        }
        Some(_) => {}
        None => {
            tracing::warn!(plugin = name, path, sha256 = %digest, "plugin loaded without a pinned sha256")
        }
    }
    if !build::is_component(bytes) {
        let reason = if build::is_core_module(bytes) {
            "it is a core wasm module, not a component; build it with `toolgate plugin build`"
        } else {
            "it is not WebAssembly (truncated, or another file)"
        };
        return Err(PluginError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        });
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_digest_is_checked_before_the_format() {
        let bytes = b"definitely not wasm";
        let digest = crate::digest::sha256_hex(bytes);
        let wrong = "00".repeat(32);
        let mismatch = verify_digest("p", "p.wasm", bytes, Some(&wrong)).unwrap_err();
        assert!(
            matches!(mismatch, PluginError::DigestMismatch { .. }),
            "{mismatch}"
        );
        let not_wasm =
            verify_digest("p", "p.wasm", bytes, Some(&digest.to_uppercase())).unwrap_err();
        assert_eq!(
            not_wasm.to_string(),
            "`p.wasm` is not a usable plugin: it is not WebAssembly (truncated, or another file)"
        );
        let core = verify_digest("p", "p.wasm", b"\0asm\x01\0\0\0", None).unwrap_err();
        assert!(
            core.to_string()
                .contains("core wasm module, not a component"),
            "{core}"
        );
        let component = b"\0asm\x0d\0\x01\0";
        assert_eq!(
            verify_digest("p", "p.wasm", component, None).unwrap(),
            crate::digest::sha256_hex(component)
        );
    }
}
