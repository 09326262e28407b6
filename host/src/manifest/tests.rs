use super::*;
use wasm_encoder::{ComponentBuilder, ComponentTypeRef, InstanceType};

/// A component that imports the instances `imports` (empty ones: names are what count).
fn component(imports: &[&str]) -> Vec<u8> {
    let mut builder = ComponentBuilder::default();
    for import in imports {
        let ty = builder.type_instance(None, &InstanceType::new());
        builder.import(*import, ComponentTypeRef::Instance(ty));
    }
    builder.finish()
}

fn manifest(capabilities: &[Capability]) -> Manifest {
    Manifest {
        name: "rate-cap".into(),
        version: "0.1.0".into(),
        description: "a configurable rate cap".into(),
        authors: vec!["Ada <ada@example.com>".into()],
        license: Some("Apache-2.0".into()),
        source: Some("https://example.com/rate-cap".into()),
        revision: None,
        world: World::V0_1.name(),
        capabilities: capabilities.iter().copied().collect(),
        config_schema: Some(serde_json::json!({"type": "object", "required": ["cap"]})),
        outcomes: Some([Outcome::RateLimited, Outcome::Allow].into()),
    }
}

const COUNTERS: &str = "toolgate:policy/counters@0.1.0";
const LOG: &str = "toolgate:policy/log@0.1.0";

#[test]
fn the_canonical_form_round_trips_and_is_the_only_one_accepted() {
    let m = manifest(&[Capability::Log, Capability::Counters, Capability::Clock]);
    let bytes = m.to_canonical_json();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with(r#"{"authors":["Ada <ada@example.com>"],"capabilities":["clock","counters","log"],"config_schema":{"required":["cap"],"type":"object"},"description":"#),
        "{text}"
    );
    assert!(
        !text.contains("revision"),
        "None fields are left out: {text}"
    );
    assert_eq!(Manifest::from_canonical_json(&bytes).unwrap(), m);
    assert_eq!(
        serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap())
            .unwrap()
            .len(),
        bytes.len()
    );
    // The same manifest, differently written.
    let pretty = serde_json::to_vec_pretty(&m).unwrap();
    let with_null = text.replacen('{', r#"{"revision":null,"#, 1);
    let unsorted = text.replacen(r#""clock","counters""#, r#""counters","clock""#, 1);
    for other in [pretty, with_null.into_bytes(), unsorted.into_bytes()] {
        assert!(
            matches!(
                Manifest::from_canonical_json(&other),
                Err(ManifestError::NotCanonical)
            ),
            "{}",
            String::from_utf8_lossy(&other)
        );
        // ... which a hand-written file for `plugin pack` may be.
        assert_eq!(Manifest::from_json(&other).unwrap(), m);
    }
}

#[test]
fn duplicate_and_unknown_keys_are_refused() {
    let text = String::from_utf8(manifest(&[]).to_canonical_json()).unwrap();
    let duplicate = text.replacen('{', r#"{"name":"other","#, 1);
    let err = Manifest::from_canonical_json(duplicate.as_bytes()).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Json(m) if m.contains("duplicate key `name`")),
        "{err}"
    );
    let nested = text.replace(r#""type":"object""#, r#""type":"object","type":"string""#);
    assert!(matches!(
        Manifest::from_json(nested.as_bytes()),
        Err(ManifestError::Json(m)) if m.contains("duplicate key `type`")
    ));
    let unknown = text.replacen('{', r#"{"homepage":"x","#, 1);
    assert!(matches!(
        Manifest::from_json(unknown.as_bytes()),
        Err(ManifestError::Json(m)) if m.contains("homepage")
    ));
}

#[test]
fn an_embedded_manifest_reads_back_and_replaces_the_previous_one() {
    let m = manifest(&[Capability::Counters]);
    let embedded = embed(&component(&[COUNTERS, "toolgate:policy/types@0.1.0"]), &m).unwrap();
    assert_eq!(Manifest::read(&embedded).unwrap(), m);
    let mut second = m.clone();
    second.version = "0.2.0".into();
    let again = embed(&embedded, &second).unwrap();
    assert_eq!(Manifest::read(&again).unwrap(), second);
    // The standard fields, once each, and the manifest last.
    let walk = walk(&again).unwrap();
    let customs: Vec<&str> = walk
        .sections
        .iter()
        .filter_map(|s| s.custom.as_deref())
        .collect();
    for field in [
        "authors",
        "description",
        "licenses",
        "source",
        "version",
        SECTION,
    ] {
        assert_eq!(
            customs.iter().filter(|c| **c == field).count(),
            1,
            "{customs:?}"
        );
    }
    assert_eq!(customs.last(), Some(&SECTION));
    let version = walk
        .sections
        .iter()
        .find(|s| s.custom.as_deref() == Some("version"));
    assert_eq!(&again[version.unwrap().data.clone()], b"0.2.0");
}

#[test]
fn missing_and_several_manifests_are_refused() {
    let bare = component(&[]);
    assert!(matches!(Manifest::read(&bare), Err(ManifestError::Missing)));
    let payload = manifest(&[]).to_canonical_json();
    let once = append_custom_section(&bare, SECTION, &payload);
    assert!(Manifest::read(&once).is_ok());
    let twice = append_custom_section(&once, SECTION, &payload);
    assert!(matches!(
        Manifest::read(&twice),
        Err(ManifestError::Several { count: 2 })
    ));
    // `embed` leaves one.
    assert!(Manifest::read(&embed(&twice, &manifest(&[])).unwrap()).is_ok());
}

#[test]
fn a_manifest_inside_a_nested_component_does_not_count() {
    let payload = manifest(&[]).to_canonical_json();
    let inner = append_custom_section(&component(&[]), SECTION, &payload);
    let mut outer = ComponentBuilder::default();
    outer.component_raw(None, &inner);
    let outer = outer.finish();
    assert!(matches!(Manifest::read(&outer), Err(ManifestError::Nested)));
    // Embedding at the top level keeps the nested component as it is.
    let embedded = embed(&outer, &manifest(&[])).unwrap();
    assert_eq!(Manifest::read(&embedded).unwrap(), manifest(&[]));
    assert_eq!(walk(&embedded).unwrap().nested_manifests, 1);
}

#[test]
fn an_unsupported_world_is_refused_naming_both() {
    let mut m = manifest(&[]);
    m.world = "toolgate:policy/policy@0.9.0".into();
    let err = Manifest::read(&embed(&component(&[]), &m).unwrap()).unwrap_err();
    assert!(
        matches!(err, ManifestError::UnsupportedWorld { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`toolgate:policy/policy@0.9.0`")
            && text.contains("`toolgate:policy/policy@0.1.0`, `toolgate:policy/policy@0.2.0`"),
        "{text}"
    );
}

#[test]
fn the_manifest_world_must_be_the_one_the_component_imports() {
    const TYPES_1: &str = "toolgate:policy/types@0.1.0";
    const TYPES_2: &str = "toolgate:policy/types@0.2.0";
    const LOG_2: &str = "toolgate:policy/log@0.2.0";
    let on = |world: World, capabilities: &[Capability]| Manifest {
        world: world.name(),
        ..manifest(capabilities)
    };
    // Each world's component with its own manifest loads, capabilities counted in either.
    let v1 = embed(
        &component(&[TYPES_1, LOG]),
        &on(World::V0_1, &[Capability::Log]),
    )
    .unwrap();
    assert_eq!(Manifest::read(&v1).unwrap().world().unwrap(), World::V0_1);
    let v2 = embed(
        &component(&[TYPES_2, LOG_2]),
        &on(World::V0_2, &[Capability::Log]),
    )
    .unwrap();
    assert_eq!(Manifest::read(&v2).unwrap().world().unwrap(), World::V0_2);
    // A 0.1.0 component claiming 0.2.0, and the other way round: refused, naming both.
    for (imports, claimed) in [(&[TYPES_1][..], World::V0_2), (&[TYPES_2][..], World::V0_1)] {
        let err =
            Manifest::read(&embed(&component(imports), &on(claimed, &[])).unwrap()).unwrap_err();
        assert!(
            matches!(err, ManifestError::WorldsDiffer { declared, .. } if declared == claimed),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("`{claimed}`")), "{err}");
    }
    // Interfaces of two versions, or of one this host does not implement: no world.
    for imports in [&[TYPES_1, LOG_2][..], &["toolgate:policy/types@0.9.0"][..]] {
        let err = Manifest::read(&embed(&component(imports), &on(World::V0_1, &[])).unwrap())
            .unwrap_err();
        assert!(matches!(err, ManifestError::UnknownWorld(_)), "{err}");
    }
}

#[test]
fn capabilities_that_differ_from_the_imports_are_refused() {
    let declared = manifest(&[Capability::Counters]);
    let bytes = embed(&component(&[COUNTERS, LOG]), &declared).unwrap();
    let err = Manifest::read(&bytes).unwrap_err();
    assert!(
        matches!(err, ManifestError::CapabilitiesDiffer { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(r#"`capabilities = ["counters","log"]`"#),
        "{err}"
    );
    // Declaring more than is imported is refused as well.
    let bytes = embed(&component(&[]), &declared).unwrap();
    assert!(matches!(
        Manifest::read(&bytes),
        Err(ManifestError::CapabilitiesDiffer { .. })
    ));
}

#[test]
fn a_core_module_is_not_a_component() {
    let module = wasm_encoder::Module::new().finish();
    assert!(matches!(
        Manifest::read(&module),
        Err(ManifestError::NotAComponent(_))
    ));
    assert!(matches!(
        Manifest::read(b"not wasm"),
        Err(ManifestError::NotAComponent(_))
    ));
}

#[test]
fn cargo_metadata_becomes_the_manifest_with_workspace_inheritance() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\"p\"]\n[workspace.package]\nversion = \"1.2.3\"\nlicense = \"MIT\"\n",
    )
    .unwrap();
    let crate_dir = dir.path().join("p");
    std::fs::create_dir(&crate_dir).unwrap();
    std::fs::write(crate_dir.join("schema.json"), r#"{"type": "object"}"#).unwrap();
    let toml = |extra: &str| {
        let text = format!(
            "[package]\nname = \"p\"\nversion.workspace = true\nlicense.workspace = true\n\
             authors = [\"Ada\"]\nrepository = \"https://example.com/p\"\n\
             [package.metadata.toolgate]\nconfig-schema = \"schema.json\"\nrevision = \"abc\"\n{extra}"
        );
        std::fs::write(crate_dir.join("Cargo.toml"), text).unwrap();
    };
    let imported: BTreeSet<_> = [Capability::Log, Capability::Counters].into();
    toml("capabilities = [\"log\", \"counters\"]\n");
    let (m, warnings) = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (m.name.as_str(), m.version.as_str(), m.license.as_deref()),
        ("p", "1.2.3", Some("MIT"))
    );
    assert_eq!(m.source.as_deref(), Some("https://example.com/p"));
    assert_eq!(m.revision.as_deref(), Some("abc"));
    assert_eq!(m.config_schema, Some(serde_json::json!({"type": "object"})));
    assert_eq!(m.capabilities, imported);
    assert_eq!(m.outcomes, None);
    assert_eq!(m.outcomes(), [Outcome::Allow, Outcome::Deny].into());

    toml("outcomes = [\"rate_limited\", \"allow\"]\n");
    let (m, _) = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap();
    assert_eq!(m.outcomes(), [Outcome::Allow, Outcome::RateLimited].into());
    toml("outcomes = [\"maybe\"]\n");
    let err = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap_err();
    assert!(err.to_string().contains("rate_limited"), "{err}");

    toml("capabilities = [\"log\"]\n");
    let err = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"`capabilities = ["counters","log"]`"#),
        "{err}"
    );

    toml("");
    let (m, warnings) = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap();
    assert_eq!(m.capabilities, imported);
    assert!(
        warnings[0].contains(r#"add `capabilities = ["counters","log"]`"#),
        "{warnings:?}"
    );

    toml("capabilites = []\n");
    let err = Manifest::from_cargo_toml(&crate_dir, World::V0_1, &imported).unwrap_err();
    assert!(err.to_string().contains("capabilites"), "{err}");
}

#[test]
fn state_is_refused_in_a_world_before_0_3() {
    const STATE_1: &str = "toolgate:policy/state@0.1.0";
    let m = Manifest {
        world: World::V0_1.name(),
        ..manifest(&[Capability::State])
    };
    let err =
        Manifest::read(&embed(&component(&["toolgate:policy/types@0.1.0", STATE_1]), &m).unwrap())
            .unwrap_err();
    assert!(matches!(err, ManifestError::NotInWorld { .. }), "{err}");
    assert!(
        err.to_string().contains("has no `state` interface"),
        "{err}"
    );
    // In 0.3.0 it is a capability like the others.
    let m = Manifest {
        world: World::V0_3.name(),
        ..manifest(&[Capability::State])
    };
    let v3 = embed(
        &component(&["toolgate:policy/types@0.3.0", "toolgate:policy/state@0.3.0"]),
        &m,
    )
    .unwrap();
    assert_eq!(Manifest::read(&v3).unwrap().world().unwrap(), World::V0_3);
}
