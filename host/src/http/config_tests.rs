//! The serve config as `Config::load` reads and checks it.

use super::*;

fn load(text: &str) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toolgate.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

#[test]
fn an_approver_needs_a_token_of_their_own_and_real_grants() {
    let hash = |c: char| c.to_string().repeat(64);
    let base = format!(
        "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\n",
        hash('a')
    );
    let approver = |token: &str, grants: &str| {
        format!(
            "{base}[[approvers]]\nname = \"ops\"\ntoken_sha256 = \"{token}\"\ngrants = {grants}\n"
        )
    };
    assert_eq!(
        load(&approver(&hash('b'), r#"["a"]"#))
            .unwrap()
            .approvers
            .len(),
        1
    );
    for (text, needle) in [
        (approver(&hash('a'), r#"["a"]"#), "has a grant's token"),
        (
            approver(&hash('b'), r#"["z"]"#),
            "grant `z`, which is not a grant",
        ),
        (approver(&hash('b'), "[]"), "may decide for no grant"),
    ] {
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn the_trust_file_and_store_are_the_operators_and_relative_to_the_config() {
    let upstream = "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n";
    let none = load(upstream).unwrap();
    assert!(none.plugins.trust.is_none() && none.plugins.store.is_none());
    let set = load(&format!(
        "{upstream}[plugins]\ntrust = \"trust.toml\"\nstore = \"/var/lib/store\"\n"
    ))
    .unwrap();
    let trust = set.plugins.trust.unwrap();
    assert!(
        trust.is_absolute() && trust.ends_with("trust.toml"),
        "{trust:?}"
    );
    assert_eq!(set.plugins.store.unwrap(), Path::new("/var/lib/store"));
    let typo = load(&format!("{upstream}[plugins]\ntrusted = \"t.toml\"\n")).unwrap_err();
    assert!(typo.to_string().contains("trusted"), "{typo}");
}

#[test]
fn the_plugin_evaluation_cap_defaults_to_the_runtimes_and_can_be_set() {
    let upstream = "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n";
    let default = load(upstream).unwrap();
    assert_eq!(
        default.limits.max_plugin_evaluations,
        crate::plugins::DEFAULT_MAX_CONCURRENT_EVALUATIONS
    );
    let set = load(&format!("{upstream}[limits]\nmax_plugin_evaluations = 8\n")).unwrap();
    assert_eq!(set.limits.max_plugin_evaluations, 8);
}

#[test]
fn upstream_headers_are_checked_when_the_config_loads() {
    let good = load(
        "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[upstream.headers]\nX-Api-Key = \"k\"\n",
    )
    .unwrap();
    let Upstream::Http { headers, .. } = good.upstream().unwrap() else {
        panic!("an HTTP upstream")
    };
    assert_eq!(headers[0].0.as_str(), "x-api-key");
    assert_eq!(headers[0].1, "k");
    let bad = load(
        "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[upstream.headers]\n\"bad name\" = \"k\"\n",
    );
    let message = bad.unwrap_err().to_string();
    assert!(
        message.contains("[upstream] headers: `bad name"),
        "{message}"
    );
    let bad_value = load(
        "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[upstream.headers]\nX-Key = \"a\\nb\"\n",
    );
    assert!(bad_value.is_err());
}

#[test]
fn a_ca_file_is_relative_to_the_config_and_only_for_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toolgate.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"https://h/mcp\"\nca_file = \"certs/ca.pem\"\n",
    )
    .unwrap();
    let Upstream::Http { tls, .. } = Config::load(&path).unwrap().upstream().unwrap() else {
        panic!("an HTTP upstream")
    };
    assert_eq!(tls.ca_file, Some(dir.path().join("certs/ca.pem")));
    assert_eq!(tls.client, None);
    let message = load("[upstream]\ncommand = [\"x\"]\nca_file = \"ca.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(message.contains("are for an https:// url"), "{message}");
    let half = load("[upstream]\nurl = \"https://h/mcp\"\nclient_cert_file = \"c.pem\"\n");
    let half = half.unwrap_err().to_string();
    assert!(half.contains("set both or neither"), "{half}");
}

/// A shadow policy nothing would report is a config error, not a silent no-op.
#[test]
fn a_shadow_policy_needs_something_to_report_it() {
    let grant = "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[[grants]]\nname = \"a\"\nshadow_policy = \"shadow.json\"\n";
    let error = load(&format!("metrics = false\n{grant}"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("nothing would report"), "{error}");
    assert!(load(grant).is_ok(), "the metrics report it");
    assert!(load(&format!(
        "metrics = false\ndecision_log = \"d.jsonl\"\n{grant}"
    ))
    .is_ok());
}
