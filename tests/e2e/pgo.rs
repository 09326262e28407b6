//! `scripts/rustc-pgo`, the rustc wrapper of `.cargo/config.toml`: the committed PGO profile
//! goes to optimized host compilations by the compiler that made it, and to nothing else.
//! Every debug compilation of the test suite goes through the wrapper too, so its pass-through
//! is exercised anyway; this checks which compilations get the profile, with a stand-in
//! compiler that prints what it was given.

use crate::support::workspace;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A "compiler" that answers `-V` with `version` and otherwise prints its arguments.
fn stand_in(dir: &Path, version: &str) -> String {
    let path = dir.join("rustc");
    let script =
        format!("#!/bin/sh\nif [ \"$1\" = -V ]; then echo '{version}'; exit; fi\necho \"$@\"\n");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// What the wrapper runs the stand-in with, for `args`.
fn wrapped(rustc: &str, args: &[&str]) -> String {
    let out = Command::new(workspace().join("scripts/rustc-pgo"))
        .arg(rustc)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_profile_goes_to_optimized_host_builds_by_its_own_compiler_only() {
    let root = workspace();
    let version = std::fs::read_to_string(root.join("pgo/rustc-version")).unwrap();
    assert!(root.join("pgo/toolgate.profdata").is_file());
    let dir = tempfile::tempdir().unwrap();
    let same = stand_in(dir.path(), version.trim());
    let release = [
        "--crate-name",
        "toolgate",
        "-C",
        "opt-level=3",
        "src/lib.rs",
    ];
    let profile = format!(
        "-Cprofile-use={}",
        root.join("pgo/toolgate.profdata").display()
    );
    let on_this_machine = cfg!(all(target_os = "linux", target_arch = "x86_64"));

    let got = wrapped(&same, &release);
    assert_eq!(got.contains(&profile), on_this_machine, "{got}");
    assert_eq!(
        got.contains("-no-pgo-warn-mismatch"),
        on_this_machine,
        "{got}"
    );
    // Everything the compiler was given, unchanged and first.
    assert!(got.starts_with(&release.join(" ")), "{got}");

    for args in [
        // debug and test builds (and the dev profile's opt-level 2 packages)
        &[
            "--crate-name",
            "toolgate",
            "-C",
            "opt-level=0",
            "src/lib.rs",
        ][..],
        &[
            "--crate-name",
            "cranelift",
            "-C",
            "opt-level=2",
            "src/lib.rs",
        ][..],
        // the plugins, built for wasm32
        &[
            "--crate-name",
            "redact",
            "-C",
            "opt-level=3",
            "--target",
            "wasm32-wasip1",
            "lib.rs",
        ][..],
        &["-vV"][..],
    ] {
        assert_eq!(wrapped(&same, args).trim(), args.join(" "), "{args:?}");
    }

    // Another compiler names every symbol differently: no profile.
    let other = tempfile::tempdir().unwrap();
    let other = stand_in(other.path(), "rustc 1.96.0 (0000000 2026-06-01)");
    assert_eq!(wrapped(&other, &release).trim(), release.join(" "));
}
