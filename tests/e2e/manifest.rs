//! The plugin manifest through the binary: `plugin build` embeds one from the crate's
//! Cargo.toml, `plugin pack` embeds one into a component built elsewhere, and a crate whose
//! declared capabilities are not its real imports does not build.

use crate::plugins::plugins;
use crate::support::{workspace, TOOLGATE};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use toolgate::capability::{Capability, World};
use toolgate::manifest::{self, Manifest};

/// Runs `toolgate` with `args` (and `env`); returns stdout, stderr and whether it succeeded.
fn toolgate(args: &[&str], env: &[(&str, &Path)]) -> (String, String, bool) {
    let mut command = Command::new(TOOLGATE);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

/// The payloads of the top-level custom sections named `name`.
fn top_level_sections(component: &[u8], name: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut depth = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.unwrap() {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::CustomSection(c) if depth == 1 && c.name() == name => {
                found.push(c.data().to_vec())
            }
            _ => {}
        }
    }
    found
}

#[test]
fn plugin_build_embeds_the_crates_manifest_with_its_capabilities() {
    let gw = std::fs::read(&plugins()["gw-id-check"]).unwrap();
    let manifest = Manifest::read(&gw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest.name, "gw-id-check");
    assert_eq!(manifest.version, "0.1.0");
    assert_eq!(manifest.license.as_deref(), Some("Apache-2.0"));
    assert_eq!(manifest.world, "toolgate:policy/policy@0.1.0");
    assert!(manifest.capabilities.is_empty());
    assert!(manifest.description.contains("session-ID hygiene"));
    // The standard fields say the same, for generic wasm tools, and the manifest comes last.
    assert_eq!(top_level_sections(&gw, "version"), [b"0.1.0".to_vec()]);
    assert_eq!(
        top_level_sections(&gw, "licenses"),
        [b"Apache-2.0".to_vec()]
    );
    assert_eq!(
        top_level_sections(&gw, manifest::SECTION),
        [manifest.to_canonical_json()]
    );
    for (name, capabilities) in [
        ("rate-cap", vec![Capability::Counters]),
        ("probe", vec![Capability::Log]),
        (
            "hostile/import-flood",
            vec![Capability::Clock, Capability::Counters, Capability::Log],
        ),
    ] {
        let bytes = std::fs::read(&plugins()[name]).unwrap();
        let read = Manifest::read(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            read.capabilities,
            capabilities.into_iter().collect::<BTreeSet<_>>(),
            "{name}"
        );
    }
    // The build says what it embedded.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gw.wasm");
    let crate_dir = workspace().join("guest-policies/gw-id-check");
    let (stdout, stderr, ok) = toolgate(
        &[
            "plugin",
            "build",
            "-o",
            out.to_str().unwrap(),
            crate_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("manifest: gw-id-check 0.1.0, capabilities []"),
        "{stderr}"
    );
    assert_eq!(stdout.lines().last(), Some(out.to_str().unwrap()));
}

#[test]
fn plugin_pack_embeds_a_manifest_from_flags_or_a_file_and_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("rate-cap.wasm");
    let built = plugins()["rate-cap"].to_str().unwrap().to_owned();
    let (stdout, stderr, ok) = toolgate(
        &[
            "plugin",
            "pack",
            &built,
            "--name",
            "capped",
            "--version",
            "2.0.0",
            "--description",
            "a cap",
            "--author",
            "Ada",
            "--author",
            "Grace",
            "--license",
            "MIT",
            "--source",
            "https://example.com/capped",
            "--revision",
            "abc123",
            "--capability",
            "counters",
            "-o",
            packed.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), packed.to_str().unwrap());
    let bytes = std::fs::read(&packed).unwrap();
    let read = Manifest::read(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let expected = Manifest {
        name: "capped".into(),
        version: "2.0.0".into(),
        description: "a cap".into(),
        authors: vec!["Ada".into(), "Grace".into()],
        license: Some("MIT".into()),
        source: Some("https://example.com/capped".into()),
        revision: Some("abc123".into()),
        // The packed component's own world (0.1.0: rate-cap), not the newest.
        world: World::V0_1.name(),
        capabilities: [Capability::Counters].into(),
        config_schema: None,
        outcomes: None,
    };
    assert_eq!(read, expected);
    assert_eq!(top_level_sections(&bytes, "revision"), [b"abc123".to_vec()]);

    // A file in any layout, without `world` and `capabilities` (both defaulted), over the
    // packed component in place: one manifest again, the file's.
    let file = dir.path().join("manifest.json");
    std::fs::write(
        &file,
        r#"{
            "name": "capped", "version": "2.1.0", "description": "a cap", "authors": [],
            "config_schema": {"type": "object", "required": ["max"]}
        }"#,
    )
    .unwrap();
    let (_, stderr, ok) = toolgate(
        &[
            "plugin",
            "pack",
            packed.to_str().unwrap(),
            "--manifest",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("taking `[\"counters\"]`"), "{stderr}");
    let bytes = std::fs::read(&packed).unwrap();
    let read = Manifest::read(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.version, "2.1.0");
    assert_eq!(read.license, None);
    assert_eq!(
        read.config_schema,
        Some(serde_json::json!({"type": "object", "required": ["max"]}))
    );
    assert_eq!(top_level_sections(&bytes, manifest::SECTION).len(), 1);
    assert!(top_level_sections(&bytes, "licenses").is_empty());

    // The packed component still loads and decides.
    let policy = serde_json::json!({"version": "1", "default": "allow",
        "plugins": {"cap": {"path": packed}},
        "all_tools": {"use": [{"plugin": "cap", "config": {"counter": "c", "window": "minute", "max": 1}}]}});
    toolgate::policy::Loader::from_env()
        .from_json(&policy.to_string(), "pack.json")
        .unwrap_or_else(|e| panic!("{e}"));

    // Capabilities that are not the imports are refused, with the line to write.
    let (_, stderr, ok) = toolgate(
        &[
            "plugin",
            "pack",
            &built,
            "--name",
            "capped",
            "--version",
            "1.0.0",
            "--capability",
            "log",
            "-o",
            dir.path().join("bad.wasm").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            r#"declares the capabilities `["log"]` but the component imports `["counters"]`"#
        ) && stderr.contains(r#"`capabilities = ["counters"]`"#),
        "{stderr}"
    );
    assert!(!dir.path().join("bad.wasm").exists());
}

#[test]
fn a_crate_declaring_capabilities_it_does_not_import_fails_to_build_with_the_line_to_write() {
    // A copy of `probe` (it imports `log`), in a folder of its own, under another name; it
    // builds in the guests' target folder so that its dependencies are already compiled.
    let dir = tempfile::tempdir().unwrap();
    let root = workspace();
    // The probe implements 0.2.0: its `wit/v0.2.0`, at the same place relative to the crate.
    std::fs::create_dir_all(dir.path().join("wit/v0.2.0")).unwrap();
    std::fs::copy(
        root.join("wit/v0.2.0/policy.wit"),
        dir.path().join("wit/v0.2.0/policy.wit"),
    )
    .unwrap();
    let crate_dir = dir.path().join("guests/manifest-probe");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::copy(
        root.join("guest-policies/probe/src/lib.rs"),
        crate_dir.join("src/lib.rs"),
    )
    .unwrap();
    let guest_root = std::fs::read_to_string(root.join("guest-policies/Cargo.toml")).unwrap();
    let profile = &guest_root[guest_root.find("[profile.release]").unwrap()..];
    let cargo_toml = |capabilities: Option<&str>| {
        let declared = capabilities
            .map(|c| format!("[package.metadata.toolgate]\ncapabilities = {c}\n\n"))
            .unwrap_or_default();
        let text = format!(
            "[package]\nname = \"manifest-probe\"\nedition = \"2021\"\nversion = \"0.3.0\"\n\n\
             {declared}[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwit-bindgen = \"0.63\"\n\n\
             [workspace]\n\n{profile}"
        );
        std::fs::write(crate_dir.join("Cargo.toml"), text).unwrap();
    };
    let target = root.join("guest-policies/target");
    let env = [("CARGO_TARGET_DIR", target.as_path())];
    let lock = root.join("guest-policies/Cargo.lock");
    std::fs::copy(&lock, crate_dir.join("Cargo.lock")).unwrap();
    let build = || toolgate(&["plugin", "build", crate_dir.to_str().unwrap()], &env);

    cargo_toml(Some(r#"["counters", "clock"]"#));
    let (_, stderr, ok) = build();
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(
            r#"the manifest declares the capabilities `["clock","counters"]` but the component imports `["log"]`"#
        ) && stderr.contains(r#"`capabilities = ["log"]` under `[package.metadata.toolgate]`"#),
        "{stderr}"
    );

    // Declaring none builds, with a warning that gives the line to add.
    cargo_toml(None);
    let (stdout, stderr, ok) = build();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(r#"warning: "#) && stderr.contains(r#"add `capabilities = ["log"]`"#),
        "{stderr}"
    );
    let component = std::fs::read(stdout.lines().last().unwrap()).unwrap();
    let read = Manifest::read(&component).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (read.name.as_str(), read.version.as_str()),
        ("manifest-probe", "0.3.0")
    );
    assert_eq!(read.capabilities, [Capability::Log].into());
}
