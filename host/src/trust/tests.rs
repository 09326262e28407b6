//! The trust file's refusals, the trusted comment, expiry dates and judging, with keys made
//! here.

use super::*;
use crate::capability::Capability;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::BTreeSet;

/// A key pair made for one test, in its own folder.
struct TestKey {
    _dir: tempfile::TempDir,
    secret: PathBuf,
    /// The base64 line of the public key.
    line: String,
    id: String,
}

fn key() -> TestKey {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(&dir.path().join("k"), None).unwrap();
    let line = std::fs::read_to_string(public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    let id = public_key_id(&line).unwrap();
    TestKey {
        _dir: dir,
        secret,
        line,
        id,
    }
}

const BYTES: &[u8] = b"\0asm pretend component bytes";

fn signed(key: &TestKey, bytes: &[u8], role: Role, expires: Option<DateTime<Utc>>) -> Signature {
    let text = sign(bytes, "p.component.wasm", &key.secret, None, role, expires).unwrap();
    Signature {
        text,
        origin: format!("{role} by {}", key.id),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap()
}

fn all() -> BTreeSet<Capability> {
    Capability::ALL.into_iter().collect()
}

/// The usual team: alice authors; two of bob, carol, dave review.
fn team(alice: &[&TestKey], bob: &TestKey, carol: &TestKey, dave: &TestKey, extra: &str) -> Trust {
    let alice: Vec<String> = alice.iter().map(|k| format!("{:?}", k.line)).collect();
    let text = format!(
        r#"
default_rule = "team"
{extra}
[identities.alice]
keys = [{}]
[identities.bob]
keys = ["{}"]
[identities.carol]
keys = ["{}"]
[identities.dave]
keys = ["{}"]
[rules.team]
capabilities = ["counters", "log"]
require = [
  {{ role = "author", any_of = ["alice"] }},
  {{ role = "review", at_least = 2, any_of = ["bob", "carol", "dave"] }},
]
"#,
        alice.join(", "),
        bob.line,
        carol.line,
        dave.line
    );
    Trust::parse(&text, "team.toml").unwrap()
}

#[test]
fn the_example_of_the_issue_reads_as_written() {
    let alice = key();
    let text = format!(
        r#"default_rule = "team"
[identities.alice]
keys = ["{}"]
[rules.team]
require = [{{ role = "author", any_of = ["alice"] }}]
"#,
        alice.line
    );
    let trust = Trust::parse(&text, "t.toml").unwrap();
    assert_eq!(trust.origin(), "t.toml");
    let verdict = trust.judge(
        BYTES,
        &[signed(&alice, BYTES, Role::Author, None)],
        &all(),
        now(),
    );
    assert!(verdict.satisfied(), "{}", verdict.explain());
    let verdict = trust.judge(BYTES, &[], &all(), now());
    assert_eq!(
        verdict.unmet,
        ["an author signature by one of alice: none found"]
    );
}

#[test]
fn unusable_trust_files_are_refused_naming_the_place() {
    let k = key();
    let k2 = key();
    let alice = format!("[identities.alice]\nkeys = [\"{}\"]\n", k.line);
    let bob = format!("[identities.bob]\nkeys = [\"{}\"]\n", k2.line);
    let rule = |require: &str| {
        format!("default_rule = \"r\"\n{alice}{bob}[rules.r]\nrequire = [{require}]\n")
    };
    let author = r#"{ role = "author", any_of = ["alice"] }"#;
    let already = format!(
        "identities.bob.keys[0]: key {} is already a key of `alice`",
        k.id
    );
    let cases: Vec<(String, &str)> = vec![
        (rule(""), "rules.r.require: a rule needs at least one requirement"),
        (rule(r#"{ role = "author", any_of = ["zed"] }"#), "rules.r.require[0].any_of: identity `zed` is not defined"),
        (rule(r#"{ role = "author", any_of = [] }"#), "rules.r.require[0].any_of: names no identity"),
        (rule(r#"{ role = "author", any_of = ["alice", "alice"] }"#), "`alice` is listed twice"),
        (rule(r#"{ role = "review", at_least = 3, any_of = ["alice", "bob"] }"#), "rules.r.require[0].at_least: is 3 but any_of names 2 identities"),
        (rule(r#"{ role = "review", at_least = 0, any_of = ["bob"] }"#), "rules.r.require[0].at_least: must be 1 or more"),
        (rule(&format!(r#"{author}, {{ role = "review", at_least = 2, any_of = ["alice", "bob"] }}"#)), "rules.r.require[1]: needs 2 reviewer(s)"),
        (rule(r#"{ role = "owner", any_of = ["alice"] }"#), "unknown variant `owner`"),
        (rule(r#"{ role = "author", any_of = ["alice"], at_most = 1 }"#), "unknown field `at_most`"),
        (format!("default_rule = \"nope\"\n{alice}[rules.r]\nrequire = [{author}]\n"), "default_rule: rule `nope` is not defined (defined: `r`)"),
        (format!("{alice}[rules.r]\nrequire = [{author}]\n"), "missing field `default_rule`"),
        (format!("default_rule = \"r\"\n[identities.alice]\nkeys = []\n[rules.r]\nrequire = [{author}]\n"), "identities.alice.keys: an identity needs at least one key"),
        (format!("default_rule = \"r\"\n[identities.alice]\nkeys = [\"RWQnotakey\"]\n[rules.r]\nrequire = [{author}]\n"), "identities.alice.keys[0]: `RWQnotakey` is not a minisign public key"),
        (format!("default_rule = \"r\"\n{alice}[identities.bob]\nkeys = [\"{}\"]\n[rules.r]\nrequire = [{author}]\n", k.line), &already),
        (format!("default_rule = \"r\"\nrevoked = [\"xyz\"]\n{alice}[rules.r]\nrequire = [{author}]\n"), "revoked[0]: `xyz` is not a minisign public key"),
        (format!("default_rule = \"r\"\n{alice}[identities.alice.extra]\n[rules.r]\nrequire = [{author}]\n"), "unknown field `extra`"),
        (format!("default_rule = \"r\"\nunsigned_allowed = true\n{alice}[rules.r]\nrequire = [{author}]\n"), "unknown field `unsigned_allowed`"),
        (format!("default_rule = \"r\"\n{alice}[rules.r]\ncapabilities = [\"net\"]\nrequire = [{author}]\n"), "unknown variant `net`"),
    ];
    for (text, expected) in cases {
        let error = Trust::parse(&text, "bad.toml").unwrap_err().to_string();
        assert!(error.starts_with("trust file `bad.toml`: "), "{error}");
        assert!(
            error.contains(expected),
            "expected `{expected}` in:\n{error}\nfor:\n{text}"
        );
    }
    // The same file with its problems removed is accepted, so the cases fail for their reason.
    Trust::parse(&rule(author), "good.toml").unwrap();
}

#[test]
fn an_author_and_two_distinct_reviewers_satisfy_the_team() {
    let (alice, bob, carol, dave) = (key(), key(), key(), key());
    let trust = team(&[&alice], &bob, &carol, &dave, "");
    let sigs = [
        signed(&alice, BYTES, Role::Author, None),
        signed(&bob, BYTES, Role::Review, None),
        signed(&dave, BYTES, Role::Review, None),
    ];
    let verdict = trust.judge(BYTES, &sigs, &[Capability::Log].into(), now());
    assert!(verdict.satisfied(), "{}", verdict.explain());
    assert_eq!(verdict.rule, "team");
    assert_eq!(verdict.counted.len(), 3);
    assert!(verdict.ignored.is_empty());
    assert!(verdict.explain().starts_with("rule `team`: satisfied"));

    // Missing one reviewer: the line names who was found.
    let verdict = trust.judge(BYTES, &sigs[..2], &BTreeSet::new(), now());
    assert_eq!(
        verdict.unmet,
        ["2 review signatures by distinct identities of bob, carol, dave other than the author: 1 found (bob)"]
    );
}

#[test]
fn two_keys_of_one_identity_count_once() {
    let (old, new, bob, carol, dave) = (key(), key(), key(), key(), key());
    let trust = team(&[&old, &new], &bob, &carol, &dave, "");
    let text = format!(
        r#"default_rule = "r"
[identities.bob]
keys = ["{}", "{}"]
[identities.carol]
keys = ["{}"]
[rules.r]
require = [{{ role = "review", at_least = 2, any_of = ["bob", "carol"] }}]
"#,
        old.line, new.line, carol.line
    );
    let two_of_bob = Trust::parse(&text, "t").unwrap();
    let sigs = [
        signed(&old, BYTES, Role::Review, None),
        signed(&new, BYTES, Role::Review, None),
    ];
    let verdict = two_of_bob.judge(BYTES, &sigs, &all(), now());
    assert!(!verdict.satisfied());
    assert_eq!(verdict.counted.len(), 2, "both are valid, and both listed");
    assert!(
        verdict.unmet[0].ends_with("1 found (bob)"),
        "{:?}",
        verdict.unmet
    );
    // Rotation: the new key alone is alice as much as the old one was.
    let sigs = [
        signed(&new, BYTES, Role::Author, None),
        signed(&bob, BYTES, Role::Review, None),
        signed(&carol, BYTES, Role::Review, None),
    ];
    assert!(trust
        .judge(BYTES, &sigs, &BTreeSet::new(), now())
        .satisfied());
}

#[test]
fn an_author_never_counts_as_a_reviewer() {
    let (alice, bob, carol) = (key(), key(), key());
    let text = format!(
        r#"default_rule = "r"
[identities.alice]
keys = ["{}"]
[identities.bob]
keys = ["{}"]
[identities.carol]
keys = ["{}"]
[rules.r]
require = [
  {{ role = "author", any_of = ["alice", "bob"] }},
  {{ role = "review", any_of = ["alice", "bob", "carol"] }},
]
"#,
        alice.line, bob.line, carol.line
    );
    let trust = Trust::parse(&text, "t").unwrap();
    // bob authors and also reviews with the same key (a second file): not a review.
    let sigs = [
        signed(&bob, BYTES, Role::Author, None),
        signed(&bob, BYTES, Role::Review, None),
    ];
    let verdict = trust.judge(BYTES, &sigs, &all(), now());
    assert!(!verdict.satisfied(), "{}", verdict.explain());
    assert!(verdict.ignored[0]
        .reason
        .contains("`bob` also signed these bytes as author"));
    // alice's review of bob's plugin counts.
    let sigs = [
        signed(&bob, BYTES, Role::Author, None),
        signed(&alice, BYTES, Role::Review, None),
    ];
    assert!(trust.judge(BYTES, &sigs, &all(), now()).satisfied());
}

#[test]
fn unusable_signatures_are_ignored_with_their_reason_never_fatal() {
    let (alice, bob, carol, dave, mallory) = (key(), key(), key(), key(), key());
    let revoke = format!("revoked = [\"{}\"]", dave.id.to_lowercase());
    let trust = team(&[&alice], &bob, &carol, &dave, &revoke);
    let other = b"another component";
    let mut tampered = signed(&carol, BYTES, Role::Review, None);
    tampered.text = tampered.text.replace("role=review", "role=author");
    let sigs = [
        signed(&alice, BYTES, Role::Author, None),
        signed(
            &bob,
            BYTES,
            Role::Review,
            Some(Utc.with_ymd_and_hms(2026, 12, 9, 0, 0, 0).unwrap()),
        ),
        signed(&carol, other, Role::Review, None),
        tampered,
        signed(&dave, BYTES, Role::Review, None),
        signed(&mallory, BYTES, Role::Review, None),
        Signature {
            text: "not a signature".into(),
            origin: "junk".into(),
        },
    ];
    let verdict = trust.judge(BYTES, &sigs, &BTreeSet::new(), now());
    let reasons: Vec<&str> = verdict.ignored.iter().map(|i| i.reason.as_str()).collect();
    assert_eq!(verdict.counted.len(), 1, "{}", verdict.explain());
    assert!(
        reasons[0].contains("review signature expired on 2026-12-09T00:00:00Z"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not over these bytes"), "{reasons:?}");
    assert!(reasons[2].contains("not over these bytes"), "{reasons:?}");
    assert!(
        reasons[3].contains(&format!("key {} is revoked", dave.id)),
        "{reasons:?}"
    );
    assert!(
        reasons[4].contains(&format!("key {} is not in the trust file", mallory.id)),
        "{reasons:?}"
    );
    assert!(
        reasons[5].starts_with("not a minisign signature"),
        "{reasons:?}"
    );
    assert_eq!(verdict.unmet.len(), 1);
    assert!(
        verdict.unmet[0].ends_with("none found"),
        "{:?}",
        verdict.unmet
    );
    // Capabilities beyond the rule's are unmet, naming what the rule allows.
    let verdict = trust.judge(BYTES, &sigs[..1], &[Capability::Clock].into(), now());
    assert!(verdict.unmet.contains(
        &"capability `clock` is not allowed by rule `team` (allows counters, log)".to_owned()
    ));
}

#[test]
fn an_expiry_counts_through_its_last_second() {
    let (alice, bob, carol, dave) = (key(), key(), key(), key());
    let trust = team(&[&alice], &bob, &carol, &dave, "");
    let until = parse_expiry("2026-12-10").unwrap();
    let sigs = [signed(&alice, BYTES, Role::Author, Some(until))];
    let at = |h, m, s| Utc.with_ymd_and_hms(2026, 12, 10, h, m, s).unwrap();
    assert!(trust
        .judge(BYTES, &sigs, &all(), at(23, 59, 59))
        .ignored
        .is_empty());
    let late = trust.judge(
        BYTES,
        &sigs,
        &all(),
        Utc.with_ymd_and_hms(2026, 12, 11, 0, 0, 0).unwrap(),
    );
    assert!(late.ignored[0]
        .reason
        .contains("expired on 2026-12-10T23:59:59Z"));
}

#[test]
fn expiry_dates_read_as_documented() {
    let day = parse_expiry("2027-01-01").unwrap();
    assert_eq!(day, Utc.with_ymd_and_hms(2027, 1, 1, 23, 59, 59).unwrap());
    let offset = parse_expiry("2027-01-01T02:00:00+02:00").unwrap();
    assert_eq!(offset, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    for bad in ["2027-1-1", "tomorrow", "2027-02-30", "2027-01-01 00:00", ""] {
        let error = parse_expiry(bad).unwrap_err().to_string();
        assert!(error.contains("is not an expiry date"), "{bad}: {error}");
    }
}

#[test]
fn trusted_comments_read_as_documented() {
    use sign::{read_comment, trusted_comment};
    let written = trusted_comment(Role::Review, Some(now()), now(), "my plugin.wasm");
    assert_eq!(
        written,
        "toolgate role=review expires=2026-12-10T12:00:00Z timestamp=2026-12-10T12:00:00Z file=my_plugin.wasm"
    );
    let read = read_comment(&written).unwrap();
    assert_eq!((read.role, read.expires), (Role::Review, Some(now())));
    // The minisign CLI's default comment, and `-t 'role=review'`.
    assert_eq!(
        read_comment("timestamp:1765000000\tfile:p.wasm\thashed")
            .unwrap()
            .role,
        Role::Author
    );
    assert_eq!(read_comment("role=review").unwrap().role, Role::Review);
    assert_eq!(read_comment("file:role=review").unwrap().role, Role::Author);
    // A file name is not the signer's word: the CLI's default comment carries the raw name.
    for named in [
        "timestamp:1765000000\tfile:q role=review x.wasm\thashed",
        "timestamp:1765000000\tfile:q expires=2020-01-01 x.wasm\thashed",
        "toolgate role=author timestamp=2026-12-10T12:00:00Z file=q role=review",
        "role=author file:x role=review",
    ] {
        let read = read_comment(named).unwrap();
        assert_eq!((read.role, read.expires), (Role::Author, None), "{named}");
    }
    for bad in [
        "role=owner",
        "role=author role=review",
        "role=review expires=soon",
        "expires=2027-01-01 expires=2028-01-01",
    ] {
        assert!(read_comment(bad).is_err(), "{bad}");
    }
}

#[test]
fn an_unreadable_trusted_comment_ignores_the_signature() {
    let (alice, bob, carol, dave) = (key(), key(), key(), key());
    let trust = team(&[&alice], &bob, &carol, &dave, "");
    let text = minisign_sign(&alice, "role=owner");
    let verdict = trust.judge(
        BYTES,
        &[Signature {
            text,
            origin: "o".into(),
        }],
        &all(),
        now(),
    );
    assert!(
        verdict.ignored[0]
            .reason
            .contains("trusted comment `role=owner` cannot be read"),
        "{}",
        verdict.explain()
    );
}

/// A signature with a trusted comment of our choosing, made with the minisign crate directly.
fn minisign_sign(key: &TestKey, comment: &str) -> String {
    let text = std::fs::read_to_string(&key.secret).unwrap();
    let secret = minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).unwrap(),
    )
    .unwrap();
    minisign::sign(
        None,
        &secret,
        std::io::Cursor::new(BYTES),
        Some(comment),
        None,
    )
    .unwrap()
    .into_string()
}

#[test]
fn keys_are_never_overwritten_and_passwords_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("alice.v2");
    let (secret, public) = keygen(&name, None).unwrap();
    assert_eq!(secret, dir.path().join("alice.v2.key"));
    assert_eq!(public, dir.path().join("alice.v2.pub"));
    let again = keygen(&name, None).unwrap_err().to_string();
    assert!(again.contains("already exists"), "{again}");
    let id =
        signature_key_id(&sign(BYTES, "p", &secret, None, Role::Author, None).unwrap()).unwrap();
    let line = std::fs::read_to_string(&public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(public_key_id(&line).unwrap(), id);
    assert!(
        std::fs::read_to_string(&public).unwrap().contains(&id),
        "the CLI's comment names the ID"
    );
    assert_eq!(
        signature_path(Path::new("d/p.component.wasm"), &id),
        PathBuf::from(format!("d/p.component.wasm.{id}.minisig"))
    );
}

/// A key ID is a label nothing covers: the same Ed25519 key under another ID is one key.
#[test]
fn one_key_under_two_ids_is_one_key_for_identities_and_revocation() {
    use base64::Engine;
    let alice = key();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut raw = engine.decode(&alice.line).unwrap();
    raw[2..10].copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let relabelled = engine.encode(&raw);
    let two = format!(
        "default_rule = \"r\"\n[identities.alice]\nkeys = [{:?}]\n[identities.bob]\nkeys = [{relabelled:?}]\n[rules.r]\nrequire = [{{ role = \"author\", at_least = 2, any_of = [\"alice\", \"bob\"] }}]\n",
        alice.line
    );
    let err = Trust::parse(&two, "t").unwrap_err().to_string();
    assert!(err.contains("same Ed25519 key"), "{err}");
    // Revoking the key written under another ID revokes it under the ID it is enrolled with.
    let revoked = format!(
        "default_rule = \"r\"\nrevoked = [{relabelled:?}]\n[identities.alice]\nkeys = [{:?}]\n[rules.r]\nrequire = [{{ role = \"author\", any_of = [\"alice\"] }}]\n",
        alice.line
    );
    let trust = Trust::parse(&revoked, "t").unwrap();
    let verdict = trust.judge(
        BYTES,
        &[signed(&alice, BYTES, Role::Author, None)],
        &all(),
        now(),
    );
    assert!(!verdict.satisfied(), "{}", verdict.explain());
    assert!(
        verdict.explain().contains("revoked"),
        "{}",
        verdict.explain()
    );
}
