//! The plugin store against a real registry (`registry.rs`): push, pull into an empty store,
//! idempotent re-push, `--sha256` refusals, foreign layouts, save/load with the registry gone,
//! tampering, and `ls`/`rm`/`gc`. The CLI is driven as users run it (`TOOLGATE_STORE` set to a
//! temp folder); what landed in the store is read back through `toolgate::store`.

use crate::registry::Registry;
use crate::support::TOOLGATE;
use std::path::{Path, PathBuf};
use std::process::Command;
use toolgate::digest::sha256_hex;
use toolgate::store::{Store, StoreError};

/// A real component: one already built under guest-policies/target, else one built now.
fn component() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-policies/target/wasm32-wasip1/release");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&built)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".component.wasm"))
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| crate::plugins::plugins()["probe"].clone())
}

/// A component and two signature files beside it (any text: these tests are about transport,
/// not about what the signatures say).
struct Fixture {
    dir: tempfile::TempDir,
    file: PathBuf,
    bytes: Vec<u8>,
    signatures: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rule.component.wasm");
        let bytes = std::fs::read(component()).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        let signatures = vec![
            "untrusted comment: alice\nRWQ...alice...\ntrusted comment: role:author\nsig\n"
                .to_string(),
            "untrusted comment: bob\nRWQ...bob...\ntrusted comment: role:review\nsig\n".to_string(),
        ];
        std::fs::write(
            dir.path().join("rule.component.wasm.alice.minisig"),
            &signatures[0],
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rule.component.wasm.bob.minisig"),
            &signatures[1],
        )
        .unwrap();
        Fixture {
            dir,
            file,
            bytes,
            signatures,
        }
    }

    fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    fn store(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

fn toolgate(store: &Path, args: &[&str]) -> Run {
    let out = Command::new(TOOLGATE)
        .arg("plugin")
        .args(args)
        .env("TOOLGATE_STORE", store)
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn texts(store: &Store, sha256: &str) -> Vec<String> {
    let mut texts: Vec<_> = store
        .signatures(sha256)
        .unwrap()
        .into_iter()
        .map(|s| s.text)
        .collect();
    texts.sort();
    texts
}

#[test]
fn push_then_pull_into_an_empty_store_keeps_the_sha256_and_the_signatures() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let reference = format!("{}/team/rule:v1", registry.addr);
    let oci = format!("oci://{reference}");
    let entry = format!(r#"{{"ref": "{reference}", "sha256": "{}"}}"#, fx.sha256());

    let push = toolgate(
        &fx.store("unused"),
        &["push", fx.file.to_str().unwrap(), &oci],
    );
    assert!(push.ok, "{}", push.stderr);
    assert!(push.stderr.contains("2 signatures"), "{}", push.stderr);
    assert_eq!(push.last_line(), entry);

    let pulled = fx.store("pulled");
    let pull = toolgate(&pulled, &["pull", &oci, "--sha256", &fx.sha256()]);
    assert!(pull.ok, "{}", pull.stderr);
    assert_eq!(
        pull.last_line(),
        entry,
        "the policy entry to paste is the last line"
    );
    let store = Store::at(&pulled);
    assert_eq!(store.component(&fx.sha256()).unwrap(), fx.bytes);
    assert_eq!(texts(&store, &fx.sha256()), fx.signatures);
    assert_eq!(store.resolve(&reference).unwrap(), Some(fx.sha256()));

    // Pulling again (and without --sha256) changes nothing.
    let again = toolgate(&pulled, &["pull", &oci]);
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(store.signatures(&fx.sha256()).unwrap().len(), 2);
}

#[test]
fn a_repush_is_the_same_manifest() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let oci = format!("oci://{}/team/rule:v1", registry.addr);
    let first = toolgate::store::push(&fx.file, &oci, false).unwrap();
    let served = registry.manifest_digest("team/rule", "v1");
    assert_eq!(served, first.manifest_digest);
    let fallback = format!("sha256-{}", &first.manifest_digest["sha256:".len()..]);
    let referrers = registry.manifest_digest("team/rule", &fallback);

    let second = toolgate::store::push(&fx.file, &oci, false).unwrap();
    assert_eq!(second, first);
    assert_eq!(registry.manifest_digest("team/rule", "v1"), served);
    assert_eq!(
        registry.manifest_digest("team/rule", &fallback),
        referrers,
        "the referrers index is not rewritten with the same signatures"
    );
    assert_eq!(first.sha256, fx.sha256());
    assert_eq!(first.signatures, 2);
}

#[test]
fn a_pull_with_another_sha256_is_refused_and_stores_nothing() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let oci = format!("oci://{}/team/rule:v1", registry.addr);
    toolgate::store::push(&fx.file, &oci, false).unwrap();

    let store = fx.store("store");
    let wrong = sha256_hex(b"some other component");
    let pull = toolgate(&store, &["pull", &oci, "--sha256", &wrong]);
    assert!(!pull.ok);
    assert!(
        pull.stderr
            .contains(&format!("holds the component `sha256:{}`", fx.sha256())),
        "{}",
        pull.stderr
    );
    assert!(pull.stderr.contains(&wrong), "{}", pull.stderr);
    assert!(Store::at(&store).list().unwrap().is_empty());

    let missing = toolgate(
        &store,
        &["pull", &format!("oci://{}/team/rule:v2", registry.addr)],
    );
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("check the repository and the tag"),
        "{}",
        missing.stderr
    );
}

#[test]
fn foreign_wasm_layouts_are_refused() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::{OciImageManifest, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    let Some(registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let v0_config = Config::new(
        b"{}".to_vec(),
        "application/vnd.wasm.config.v0+json".into(),
        None,
    );
    let wasm = |bytes: &[u8]| ImageLayer::new(bytes.to_vec(), "application/wasm".into(), None);
    let cases = [
        (
            "two-layers",
            vec![wasm(&fx.bytes), wasm(b"\0asm second")],
            v0_config.clone(),
            "it has 2 layers",
        ),
        (
            "old-config",
            vec![ImageLayer::new(
                fx.bytes.clone(),
                WASM_LAYER_MEDIA_TYPE.into(),
                None,
            )],
            Config::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.into(), None),
            "its config is `application/vnd.wasm.config.v1+json`",
        ),
        (
            "tar-layer",
            vec![ImageLayer::oci_v1(fx.bytes.clone(), None)],
            v0_config.clone(),
            "its layer is `application/vnd.oci.image.layer.v1.tar`",
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = fx.store("store");
    for (tag, layers, config, reason) in cases {
        let image = Reference::with_tag(registry.addr.clone(), "team/foreign".into(), tag.into());
        let manifest = OciImageManifest::build(&layers, &config, None);
        runtime
            .block_on(client.push(
                &image,
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            ))
            .unwrap();
        let pull = toolgate(
            &store,
            &[
                "pull",
                &format!("oci://{}/team/foreign:{tag}", registry.addr),
            ],
        );
        assert!(!pull.ok, "{tag}");
        assert!(
            pull.stderr.contains("is not a toolgate plugin"),
            "{tag}: {}",
            pull.stderr
        );
        assert!(pull.stderr.contains(reason), "{tag}: {}", pull.stderr);
    }
    assert!(Store::at(&store).list().unwrap().is_empty());
}

#[test]
fn save_and_load_move_plugins_with_the_registry_stopped() {
    let Some(mut registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let reference = format!("{}/team/rule:v1", registry.addr);
    toolgate::store::push(&fx.file, &format!("oci://{reference}"), false).unwrap();
    let online = fx.store("online");
    assert!(toolgate(&online, &["pull", &format!("oci://{reference}")]).ok);
    registry.stop();

    let bundle = fx.dir.path().join("bundle.tar");
    let save = toolgate(
        &online,
        &["save", &reference, "-o", bundle.to_str().unwrap()],
    );
    assert!(save.ok, "{}", save.stderr);
    let offline = fx.store("offline");
    let load = toolgate(&offline, &["load", bundle.to_str().unwrap()]);
    assert!(load.ok, "{}", load.stderr);
    assert_eq!(
        load.last_line(),
        format!(r#"{{"ref": "{reference}", "sha256": "{}"}}"#, fx.sha256())
    );
    let store = Store::at(&offline);
    assert_eq!(store.component(&fx.sha256()).unwrap(), fx.bytes);
    assert_eq!(texts(&store, &fx.sha256()), fx.signatures);

    // A blob changed in the store is refused, not handed to the compiler.
    let blob = offline.join("blobs/sha256").join(fx.sha256());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let err = store.component(&fx.sha256()).unwrap_err();
    assert!(matches!(err, StoreError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("toolgate plugin rm"), "{err}");
}

#[test]
fn ls_rm_and_gc_keep_the_store() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let fx = Fixture::new();
    let v1 = format!("{}/team/rule:v1", registry.addr);
    let stable = format!("{}/team/rule:stable", registry.addr);
    toolgate::store::push(&fx.file, &format!("oci://{v1}"), false).unwrap();
    toolgate::store::push(&fx.file, &format!("oci://{stable}"), false).unwrap();
    let store = fx.store("store");
    assert!(toolgate(&store, &["pull", &format!("oci://{v1}")]).ok);
    assert!(toolgate(&store, &["pull", &format!("oci://{stable}")]).ok);

    let ls = toolgate(&store, &["ls", "--json"]);
    assert!(ls.ok, "{}", ls.stderr);
    let listed: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let mut refs = vec![stable.clone(), v1.clone()];
    refs.sort();
    assert_eq!(
        listed,
        serde_json::json!([{
            "sha256": fx.sha256(),
            "refs": refs,
            "size": fx.bytes.len(),
            "signatures": 2,
        }])
    );
    let table = toolgate(&store, &["ls"]);
    assert!(
        table.stdout.contains(&format!("sha256:{}", fx.sha256())),
        "{}",
        table.stdout
    );

    let rm = toolgate(&store, &["rm", &format!("oci://{v1}")]);
    assert!(
        rm.ok && rm.stdout.contains("untagged"),
        "{}{}",
        rm.stdout,
        rm.stderr
    );
    assert_eq!(Store::at(&store).component(&fx.sha256()).unwrap(), fx.bytes);

    std::fs::write(store.join(".tmp/interrupted"), b"half a write").unwrap();
    let gc = toolgate(&store, &["gc"]);
    assert!(gc.ok, "{}", gc.stderr);
    assert!(
        gc.stdout.contains("removed 0 blobs and 1 temp file"),
        "{}",
        gc.stdout
    );

    let rm = toolgate(&store, &["rm", &fx.sha256()]);
    assert!(
        rm.ok && rm.stdout.contains("removed sha256:"),
        "{}{}",
        rm.stdout,
        rm.stderr
    );
    assert!(toolgate(&store, &["ls", "--json"]).stdout.trim() == "[]");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let err = Store::at(&store).component(&fx.sha256()).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    let again = toolgate(&store, &["rm", &fx.sha256()]);
    assert!(
        !again.ok && again.stderr.contains("toolgate plugin ls"),
        "{}",
        again.stderr
    );
}
