//! The store on a temp folder: identity by digest, references, signatures, tampering, gc.

use super::*;

fn signature(text: &str) -> Signature {
    Signature {
        text: text.to_string(),
        origin: "test".into(),
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::at(dir.path().join("store"));
    (dir, store)
}

#[test]
fn a_component_is_kept_by_its_sha256_with_its_signatures() {
    let (_dir, store) = store();
    let sha = store
        .add(
            b"component one",
            Some("oci://localhost:5000/rules:v1"),
            &[signature("sig a"), signature("sig b")],
        )
        .unwrap();
    assert_eq!(sha, sha256_hex(b"component one"));
    assert_eq!(store.component(&sha).unwrap(), b"component one");
    assert_eq!(
        store.component(&format!("sha256:{sha}")).unwrap(),
        b"component one"
    );
    let signatures = store.signatures(&sha).unwrap();
    let texts: Vec<_> = signatures.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["sig a", "sig b"]);
    assert_eq!(signatures[0].origin, format!("store:{}/1", &sha[..12]));
    assert_eq!(
        store.resolve("localhost:5000/rules:v1").unwrap(),
        Some(sha.clone())
    );
    assert_eq!(
        store.resolve("oci://localhost:5000/rules:v1").unwrap(),
        Some(sha.clone())
    );
    assert_eq!(store.resolve(&sha).unwrap(), Some(sha.clone()));
    assert_eq!(store.resolve("localhost:5000/rules:v2").unwrap(), None);
    // The layout is an OCI image layout.
    let root = store.root();
    assert!(root.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    assert!(root.join("blobs/sha256").join(&sha).is_file());
}

#[test]
fn adding_again_changes_nothing_and_a_new_signature_is_added_once() {
    let (_dir, store) = store();
    let sha = store
        .add(b"c", Some("h:1/r:t"), &[signature("s1")])
        .unwrap();
    let index = std::fs::read(store.root().join("index.json")).unwrap();
    store
        .add(b"c", Some("h:1/r:t"), &[signature("s1")])
        .unwrap();
    assert_eq!(
        std::fs::read(store.root().join("index.json")).unwrap(),
        index
    );
    store.add_signature(&sha, "s2").unwrap();
    store.add_signature(&sha, "s2").unwrap();
    assert_eq!(store.signatures(&sha).unwrap().len(), 2);
    assert_eq!(
        store.list().unwrap(),
        [StoreEntry {
            sha256: sha,
            refs: vec!["h:1/r:t".into()],
            size: 1,
            signatures: 2
        }]
    );
}

#[test]
fn a_missing_component_says_the_pull_line_to_run() {
    let (_dir, store) = store();
    let sha = sha256_hex(b"absent");
    let err = store.component(&sha).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    let err = err.for_reference("oci://ghcr.io/acme/rules:1");
    let line = format!("toolgate plugin pull oci://ghcr.io/acme/rules:1 --sha256 {sha}");
    assert!(err.to_string().contains(&line), "{err}");
    assert_eq!(err.pull_command().as_deref(), Some(line.as_str()));
    // Listed but its blob gone: the store knows the reference itself.
    let sha = store
        .add(b"gone", Some("ghcr.io/acme/gone:2"), &[])
        .unwrap();
    std::fs::remove_file(store.root().join("blobs/sha256").join(&sha)).unwrap();
    let err = store.component(&sha).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("pull oci://ghcr.io/acme/gone:2 --sha256 {sha}")),
        "{err}"
    );
}

#[test]
fn a_tampered_blob_is_refused() {
    let (_dir, store) = store();
    let sha = store.add(b"honest bytes", None, &[]).unwrap();
    std::fs::write(store.root().join("blobs/sha256").join(&sha), b"evil bytes").unwrap();
    let err = store.component(&sha).unwrap_err();
    assert!(matches!(err, StoreError::Tampered { .. }), "{err}");
    // Adding the component again repairs it.
    store.add(b"honest bytes", None, &[]).unwrap();
    assert_eq!(store.component(&sha).unwrap(), b"honest bytes");
}

#[test]
fn a_reference_moves_and_the_old_component_stays_by_digest() {
    let (_dir, store) = store();
    let old = store.add(b"v1", Some("h/r:latest"), &[]).unwrap();
    let new = store.add(b"v2", Some("h/r:latest"), &[]).unwrap();
    assert_eq!(store.resolve("h/r:latest").unwrap(), Some(new.clone()));
    let list = store.list().unwrap();
    let old_entry = list.iter().find(|e| e.sha256 == old).unwrap();
    assert!(old_entry.refs.is_empty());
    assert_eq!(store.component(&old).unwrap(), b"v1");
}

#[test]
fn rm_and_gc_delete_what_nothing_uses() {
    let (_dir, store) = store();
    let a = store.add(b"a", Some("h/a:1"), &[signature("sa")]).unwrap();
    store.add(b"a", Some("h/a:2"), &[]).unwrap();
    let b = store.add(b"b", None, &[]).unwrap();
    std::fs::write(store.root().join(".tmp/leftover"), b"x").unwrap();
    let report = store.gc().unwrap();
    assert_eq!((report.blobs_removed, report.temp_files_removed), (0, 1));

    // One of two references: the component stays.
    let removed = store.remove("h/a:1").unwrap();
    assert!(!removed.component_removed);
    assert_eq!(store.component(&a).unwrap(), b"a");
    // The last reference: the component, its signature and their blobs go.
    let removed = store.remove("oci://h/a:2").unwrap();
    assert!(removed.component_removed);
    assert_eq!(removed.gc.blobs_removed, 6, "{removed:?}");
    assert!(matches!(
        store.component(&a),
        Err(StoreError::Missing { .. })
    ));
    assert!(store.signatures(&a).unwrap().is_empty());
    // By digest.
    store.remove(&format!("sha256:{b}")).unwrap();
    assert!(store.list().unwrap().is_empty());
    let blobs = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    assert!(matches!(
        store.remove("h/a:1"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn an_unused_store_is_not_created_by_reading_it() {
    let (_dir, store) = store();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.gc().unwrap(), GcReport::default());
    assert!(!store.root().exists());
}

#[test]
fn save_then_load_keeps_the_sha256_and_the_signatures() {
    let (dir, store) = store();
    let sha = store
        .add(b"bundled", Some("h/b:1"), &[signature("s")])
        .unwrap();
    store.add(b"other", Some("h/o:1"), &[]).unwrap();
    let out = dir.path().join("bundle.tar");
    assert_eq!(
        save(&store, &["h/b:1".into()], &out).unwrap(),
        std::slice::from_ref(&sha)
    );
    let first = std::fs::read(&out).unwrap();
    save(&store, &["h/b:1".into()], &out).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        first,
        "the same plugins make the same tar"
    );

    let other = Store::at(dir.path().join("other"));
    assert_eq!(load(&other, &out).unwrap(), std::slice::from_ref(&sha));
    assert_eq!(other.component(&sha).unwrap(), b"bundled");
    assert_eq!(other.signatures(&sha).unwrap()[0].text, "s");
    assert_eq!(other.list().unwrap()[0].refs, ["h/b:1"]);
    assert_eq!(other.list().unwrap().len(), 1);
}

fn tar_with(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes, kind) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        // Written raw, so that `..` is not refused by the tar writer first.
        let name = header.as_old_mut();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        tar.append(&header, *bytes).unwrap();
    }
    tar.into_inner().unwrap()
}

#[test]
fn load_refuses_traversal_links_and_altered_blobs() {
    let (dir, store) = store();
    let bundle = dir.path().join("evil.tar");
    let hex = sha256_hex(b"x");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            tar_with(&[("../escape", b"x", tar::EntryType::Regular)]),
            "unexpected entry",
        ),
        (
            tar_with(&[("blobs/sha256/../../x", b"x", tar::EntryType::Regular)]),
            "unexpected entry",
        ),
        (
            tar_with(&[("oci-layout", b"", tar::EntryType::Symlink)]),
            "link",
        ),
        (
            tar_with(&[(
                &format!("blobs/sha256/{hex}"),
                b"y",
                tar::EntryType::Regular,
            )]),
            "altered",
        ),
        (
            tar_with(&[("index.json", b"{}", tar::EntryType::Regular)]),
            "oci-layout",
        ),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&bundle, bytes).unwrap();
        let err = load(&store, &bundle).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert!(!store.root().exists());
}
