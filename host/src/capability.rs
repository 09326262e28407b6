//! The host capabilities a plugin can be granted: one per function-bearing interface of the
//! WIT package (`counters`, `clock`, `log`, and from 0.3.0 `state`). `types` holds data only
//! and is not one.
//!
//! The same names appear in a plugin's manifest (what it says it imports), in a policy's
//! plugin entry (`"grants"`: what the policy lets it link) and in a trust file's rule (the most
//! any plugin it vouches for may have).

use std::collections::BTreeSet;

/// The WIT package every capability belongs to.
pub const PACKAGE: &str = "toolgate:policy";

/// A world of the `toolgate:policy` package this host implements. A component implements
/// exactly one, named by the version of the `toolgate:policy` interfaces it imports (every
/// policy component imports at least `types`) and, from 0.3.0 on, by whether it exports
/// `after-call` (`policy-with-results`); its manifest must name the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum World {
    /// `toolgate:policy/policy@0.1.0`: the first contract.
    V0_1,
    /// `toolgate:policy/policy@0.2.0`: 0.1.0 with the approval that covers a call.
    V0_2,
    /// `toolgate:policy/policy@0.3.0`: 0.2.0 with the `state` import.
    V0_3,
    /// `toolgate:policy/policy-with-results@0.3.0`: 0.3.0's `policy` plus the `after-call`
    /// export, which sees each allowed call's result.
    V0_3Results,
}

impl World {
    /// Every world this host implements, oldest first.
    pub const ALL: [World; 4] = [World::V0_1, World::V0_2, World::V0_3, World::V0_3Results];
    /// The newest `policy`: what `toolgate plugin wit` prints and `plugin new` starts from.
    pub const LATEST: World = World::V0_3;

    /// Its package version (`0.2.0`).
    pub fn version(self) -> &'static str {
        match self {
            World::V0_1 => "0.1.0",
            World::V0_2 => "0.2.0",
            World::V0_3 | World::V0_3Results => "0.3.0",
        }
    }

    /// The world's name inside its package: `policy`, or `policy-with-results`.
    pub fn world_name(self) -> &'static str {
        match self {
            World::V0_3Results => "policy-with-results",
            _ => "policy",
        }
    }

    /// Its full name, as a manifest writes it: `toolgate:policy/policy@0.2.0`.
    pub fn name(self) -> String {
        format!("{PACKAGE}/{}@{}", self.world_name(), self.version())
    }

    /// Whether its plugins export `after-call` and see results.
    pub fn has_results(self) -> bool {
        self == World::V0_3Results
    }

    /// Whether a plugin of this world can import `capability` (`state` is 0.3.0's).
    pub fn offers(self, capability: Capability) -> bool {
        capability != Capability::State || self >= World::V0_3
    }

    /// The world a manifest's `world` names, if this host implements it.
    pub fn from_name(name: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The world whose package version is `version` (`0.1.0`), if this host implements it.
    pub fn from_version(version: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.version() == version)
    }

    /// Its WIT package, as this binary was built against it.
    pub fn wit(self) -> &'static str {
        match self {
            World::V0_1 => include_str!("../../wit/v0.1.0/policy.wit"),
            World::V0_2 => include_str!("../../wit/v0.2.0/policy.wit"),
            World::V0_3 | World::V0_3Results => include_str!("../../wit/v0.3.0/policy.wit"),
        }
    }

    /// The names of every world this host implements, for messages (`toolgate:policy/policy@0.1.0`,
    /// `toolgate:policy/policy@0.2.0`).
    pub fn all_names() -> String {
        let names: Vec<String> = World::ALL
            .iter()
            .map(|w| format!("`{}`", w.name()))
            .collect();
        names.join(", ")
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The world a component's imports name: the one version of the `toolgate:policy` interfaces
/// it imports. `Ok(None)`: it imports none of them, so it names no world (it cannot be a
/// policy plugin, and fails to link as one). `Err`: it names several versions, or one this
/// host does not implement.
pub fn world_of_imports(imports: &[String]) -> Result<Option<World>, String> {
    let mut versions: BTreeSet<&str> = BTreeSet::new();
    for import in imports {
        if let Some(rest) = import
            .strip_prefix(PACKAGE)
            .and_then(|r| r.strip_prefix('/'))
        {
            versions.insert(rest.split_once('@').map_or("", |(_, v)| v));
        }
    }
    let mut found = versions.iter();
    match (found.next(), found.next()) {
        (None, _) => Ok(None),
        (Some(version), None) => World::from_version(version).map(Some).ok_or_else(|| {
            format!(
                "it imports `{PACKAGE}@{version}`, a version this host does not implement (it implements {})",
                World::all_names()
            )
        }),
        (Some(_), Some(_)) => Err(format!(
            "it imports `{PACKAGE}` interfaces of several versions ({}); a plugin implements one",
            versions.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The world a component's imports and exports name: [`world_of_imports`], where a 0.3.0
/// component that exports `after-call` is a `policy-with-results`.
pub fn world_of_interface(imports: &[String], exports: &[String]) -> Result<Option<World>, String> {
    let world = world_of_imports(imports)?;
    Ok(match world {
        Some(World::V0_3) if exports.iter().any(|e| e == AFTER_CALL) => Some(World::V0_3Results),
        world => world,
    })
}

/// The export that makes a 0.3.0 component a `policy-with-results`.
pub const AFTER_CALL: &str = "after-call";

/// [`world_of_interface`] of a component's bytes.
pub fn world_of(bytes: &[u8]) -> Result<Option<World>, String> {
    let (imports, exports) = component_interface(bytes)?;
    world_of_interface(&imports, &exports)
}

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
    /// `state`: a small key-value store of the plugin's own, per grant (0.3.0 on).
    State,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 4] = [
        Capability::Counters,
        Capability::Clock,
        Capability::Log,
        Capability::State,
    ];

    /// Its name, as written in manifests, policies and trust files.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Counters => "counters",
            Capability::Clock => "clock",
            Capability::Log => "log",
            Capability::State => "state",
        }
    }

    /// The capability named `name` (`counters`, `clock`, `log`, `state`).
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

    /// The import name of this capability's interface in `world`.
    pub fn import(self, world: World) -> String {
        format!("{PACKAGE}/{}@{}", self.name(), world.version())
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
        assert_eq!(
            Capability::Clock.import(World::V0_1),
            "toolgate:policy/clock@0.1.0"
        );
        assert_eq!(
            Capability::Log.import(World::V0_2),
            "toolgate:policy/log@0.2.0"
        );
        let set: BTreeSet<_> = [Capability::Log, Capability::Counters].into();
        assert_eq!(json_list(&set), r#"["counters","log"]"#);
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_component_names_its_world_by_the_version_of_its_toolgate_imports() {
        // What a 0.1.0 reference plugin really imports (gw-id-check: `types` and WASI only).
        let v1 = names(&["toolgate:policy/types@0.1.0", "wasi:cli/environment@0.2.12"]);
        assert_eq!(world_of_imports(&v1), Ok(Some(World::V0_1)));
        let v2 = names(&["toolgate:policy/log@0.2.0", "toolgate:policy/types@0.2.0"]);
        assert_eq!(world_of_imports(&v2), Ok(Some(World::V0_2)));
        // Another world altogether: nothing of ours imported.
        assert_eq!(
            world_of_imports(&names(&["wasi:io/error@0.2.12"])),
            Ok(None)
        );
        let mixed = names(&["toolgate:policy/types@0.1.0", "toolgate:policy/log@0.2.0"]);
        let err = world_of_imports(&mixed).unwrap_err();
        assert!(err.contains("`0.1.0`, `0.2.0`"), "{err}");
        let future = names(&["toolgate:policy/types@0.9.0"]);
        let err = world_of_imports(&future).unwrap_err();
        assert!(
            err.contains("`toolgate:policy@0.9.0`")
                && err.contains("`toolgate:policy/policy@0.2.0`"),
            "{err}"
        );
        for world in World::ALL {
            assert_eq!(World::from_name(&world.name()), Some(world));
            assert!(world
                .wit()
                .contains(&format!("package toolgate:policy@{};", world.version())));
        }
        assert_eq!(World::from_name("toolgate:policy/policy@0.9.0"), None);
    }

    #[test]
    fn a_0_3_component_that_exports_after_call_sees_results() {
        let imports = names(&["toolgate:policy/types@0.3.0", "toolgate:policy/state@0.3.0"]);
        let plain = names(&["evaluate", "validate-config", "metadata"]);
        let mut with_results = plain.clone();
        with_results.push("after-call".into());
        assert_eq!(world_of_interface(&imports, &plain), Ok(Some(World::V0_3)));
        assert_eq!(
            world_of_interface(&imports, &with_results),
            Ok(Some(World::V0_3Results))
        );
        // `after-call` means nothing to an older world.
        let v2 = names(&["toolgate:policy/types@0.2.0"]);
        assert_eq!(
            world_of_interface(&v2, &with_results),
            Ok(Some(World::V0_2))
        );
        assert_eq!(
            World::V0_3Results.name(),
            "toolgate:policy/policy-with-results@0.3.0"
        );
        assert_eq!(
            Capability::from_import("toolgate:policy/state@0.3.0"),
            Some(Capability::State)
        );
        assert!(!World::V0_2.offers(Capability::State));
        assert!(World::V0_3Results.offers(Capability::State));
        assert!(World::V0_1.offers(Capability::Log));
    }
}
