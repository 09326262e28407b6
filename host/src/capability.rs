//! The host capabilities a plugin can be granted: one per function-bearing interface of the
//! WIT package (`counters`, `clock`, `log`). `types` holds data only and is not one.
//!
//! The same names appear in a plugin's manifest (what it says it imports), in a policy's
//! plugin entry (`"grants"`: what the policy lets it link) and in a trust file's rule (the most
//! any plugin it vouches for may have).

use std::collections::BTreeSet;

/// The WIT package every capability belongs to, with the version this host implements.
pub const PACKAGE: &str = "toolgate:policy";
/// The version of [`PACKAGE`] this host implements.
pub const PACKAGE_VERSION: &str = "0.1.0";

/// One host interface a plugin may import.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `counters`: consume units of named, windowed, scoped counters.
    Counters,
    /// `clock`: the gateway's time.
    Clock,
    /// `log`: lines in the gateway's log.
    Log,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 3] = [Capability::Counters, Capability::Clock, Capability::Log];

    /// Its name, as written in manifests, policies and trust files.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Counters => "counters",
            Capability::Clock => "clock",
            Capability::Log => "log",
        }
    }

    /// The capability named `name` (`counters`, `clock`, `log`).
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The capability a component import names (`toolgate:policy/counters@0.1.0`), whatever
    /// its version; `None` for `types` and anything outside the package.
    pub fn from_import(import: &str) -> Option<Capability> {
        let rest = import.strip_prefix(PACKAGE)?.strip_prefix('/')?;
        let interface = rest.split('@').next()?;
        Capability::from_name(interface)
    }

    /// The import name of this capability's interface, at this host's version.
    pub fn import(self) -> String {
        format!("{PACKAGE}/{}@{PACKAGE_VERSION}", self.name())
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities as a JSON list (`["counters", "log"]`), in order: the line a policy
/// or manifest would say.
pub fn json_list(set: &BTreeSet<Capability>) -> String {
    let names: Vec<&str> = set.iter().map(|c| c.name()).collect();
    serde_json::to_string(&names).unwrap_or_default()
}

/// The names of a component's top-level imports and exports (instances and functions, not
/// types), read from its bytes without compiling or running it (nested components and modules
/// are skipped).
pub fn component_interface(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != wasmparser::Encoding::Component {
                    return Err("it is a core module, not a component".into());
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            // Types a component imports or exports (`tool-call`, `decision`) are not things
            // it uses or offers: only instances and functions are listed.
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| e.to_string())?;
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name.to_owned());
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| e.to_string())?;
                    if !matches!(export.kind, wasmparser::ComponentExternalKind::Type) {
                        exports.push(export.name.name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// The capabilities a component really imports (its `toolgate:policy/*` interfaces but
/// `types`), read from its bytes.
pub fn imported(bytes: &[u8]) -> Result<BTreeSet<Capability>, String> {
    let (imports, _) = component_interface(bytes)?;
    Ok(imports
        .iter()
        .filter_map(|i| Capability::from_import(i))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_map_to_capabilities_whatever_their_version() {
        assert_eq!(
            Capability::from_import("toolgate:policy/counters@0.1.0"),
            Some(Capability::Counters)
        );
        assert_eq!(
            Capability::from_import("toolgate:policy/log@0.2.0"),
            Some(Capability::Log)
        );
        assert_eq!(Capability::from_import("toolgate:policy/types@0.1.0"), None);
        assert_eq!(Capability::from_import("wasi:cli/environment@0.2.0"), None);
        assert_eq!(Capability::Clock.import(), "toolgate:policy/clock@0.1.0");
        let set: BTreeSet<_> = [Capability::Log, Capability::Counters].into();
        assert_eq!(json_list(&set), r#"["counters","log"]"#);
    }
}
