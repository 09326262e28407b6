//! `toolgate plugin keygen`, `sign` and `verify` on a real component: a signed plugin passes,
//! every way of breaking its vouching is refused with a message naming why, and signatures go
//! both ways between toolgate and the reference `minisign` CLI.

use crate::plugins::plugins;
use crate::support::TOOLGATE;
use rstest::rstest;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a command did: its exit code and its output.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn last_line(&self) -> PathBuf {
        PathBuf::from(self.stdout.lines().last().expect("a last line"))
    }
}

fn run(program: impl AsRef<OsStr>, args: &[&OsStr], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("TOOLGATE_TRUST")
        .env_remove("TOOLGATE_KEY_PASSWORD");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.stdin(std::process::Stdio::null()).output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn toolgate(args: &[&OsStr]) -> Ran {
    run(TOOLGATE, args, &[])
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// The base64 line of a `.pub` file (its second line).
fn key_line(public: &Path) -> String {
    std::fs::read_to_string(public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// A folder with one real component, `p.component.wasm`, and keys under `keys/`.
struct Bench {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.component.wasm");
        std::fs::copy(&plugins()["gw-id-check"], &file).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        Bench { dir, file }
    }

    fn key_name(&self, name: &str) -> PathBuf {
        self.dir.path().join("keys").join(name)
    }

    /// `toolgate plugin keygen --unencrypted`; returns the public key's line.
    fn keygen(&self, name: &str) -> String {
        let ran = toolgate(&[
            os("plugin"),
            os("keygen"),
            os("--out"),
            os(&self.key_name(name)),
            os("--unencrypted"),
        ]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        assert_eq!(ran.last_line(), self.key_name(&format!("{name}.pub")));
        key_line(&ran.last_line())
    }

    /// `toolgate plugin sign FILE --key NAME.key --role ROLE [--expires DATE]`; returns the
    /// signature's path (the last line).
    fn sign_file(&self, file: &Path, name: &str, role: &str, expires: Option<&str>) -> PathBuf {
        let key = self.key_name(&format!("{name}.key"));
        let mut args = vec![
            os("plugin"),
            os("sign"),
            os(file),
            os("--key"),
            os(&key),
            os("--role"),
            os(role),
        ];
        if let Some(expires) = expires {
            args.extend([os("--expires"), os(expires)]);
        }
        let ran = toolgate(&args);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let path = ran.last_line();
        assert!(path.exists(), "{path:?}");
        path
    }

    fn sign(&self, name: &str, role: &str) -> PathBuf {
        self.sign_file(&self.file, name, role, None)
    }

    fn write_trust(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("keys").join("trust.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn verify(&self, trust: &Path) -> Ran {
        toolgate(&[
            os("plugin"),
            os("verify"),
            os(&self.file),
            os("--trust"),
            os(trust),
        ])
    }
}

/// A team of three: alice or bob authors, and two of the three other than the author review.
fn team_trust(bench: &Bench, keys: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut text = format!("default_rule = \"team\"\n{extra}\n");
    for (name, line) in keys {
        text += &format!("[identities.{name}]\nkeys = [\"{line}\"]\n");
    }
    text += r#"[rules.team]
require = [
  { role = "author", any_of = ["alice", "bob"] },
  { role = "review", at_least = 2, any_of = ["alice", "bob", "carol"] },
]
"#;
    bench.write_trust(&text)
}

/// A bench signed by alice (author), bob and carol (review), and its trust file.
fn signed_team() -> (Bench, Vec<(&'static str, String)>, PathBuf) {
    let bench = Bench::new();
    let keys: Vec<(&str, String)> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|n| (n, bench.keygen(n)))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(n, l)| (*n, l.as_str())).collect();
    let trust = team_trust(&bench, &refs, "");
    bench.sign("alice", "author");
    bench.sign("bob", "review");
    bench.sign("carol", "review");
    (bench, keys, trust)
}

#[test]
fn an_author_and_two_reviewers_satisfy_the_trust_file() {
    let (bench, keys, trust) = signed_team();
    let ran = bench.verify(&trust);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("rule `team`: satisfied"),
        "{}",
        ran.stdout
    );
    for (name, line) in &keys {
        let id = toolgate::trust::public_key_id(line).unwrap();
        let role = if *name == "alice" { "author" } else { "review" };
        assert!(
            ran.stdout.contains(&format!("{name} ({role}, key {id})")),
            "{}",
            ran.stdout
        );
        let path = toolgate::trust::signature_path(&bench.file, &id);
        assert!(path.exists(), "sign writes FILE.<KEYID>.minisig: {path:?}");
    }
    // `$TOOLGATE_TRUST` is the default trust file.
    let env_trust = trust.display().to_string();
    let ran = run(
        TOOLGATE,
        &[os("plugin"), os("verify"), os(&bench.file)],
        &[("TOOLGATE_TRUST", &env_trust)],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

/// Ways to break a signed team's vouching.
#[derive(Debug, Clone, Copy)]
enum Break {
    FlipAByte,
    RemoveASignature,
    SignWithAnUnknownKey,
    RevokeAKey,
    CopyAnotherFilesSignature,
    LetASignatureExpire,
    ReviewOnesOwnPlugin,
}

const ONE_REVIEW: &str =
    "2 review signatures by distinct identities of alice, bob, carol other than the author: 1 found (bob)";

#[rstest]
#[case::a_flipped_byte(
    Break::FlipAByte,
    "the signature is not over these bytes",
    "an author signature by one of alice, bob: none found"
)]
#[case::a_removed_signature(Break::RemoveASignature, "", ONE_REVIEW)]
#[case::an_unknown_key(Break::SignWithAnUnknownKey, "is not in the trust file", ONE_REVIEW)]
#[case::a_revoked_key(Break::RevokeAKey, "is revoked by the trust file", ONE_REVIEW)]
#[case::another_files_signature(
    Break::CopyAnotherFilesSignature,
    "(carol): the signature is not over these bytes",
    ONE_REVIEW
)]
#[case::an_expired_signature(
    Break::LetASignatureExpire,
    "(carol): review signature expired on 2020-01-01T23:59:59Z",
    ONE_REVIEW
)]
#[case::the_authors_own_review(Break::ReviewOnesOwnPlugin, "a review by `alice`", ONE_REVIEW)]
fn broken_vouching_is_refused_saying_why(
    #[case] how: Break,
    #[case] ignored: &str,
    #[case] unmet: &str,
) {
    let (bench, keys, mut trust) = signed_team();
    assert_eq!(
        bench.verify(&trust).code,
        0,
        "satisfied before it is broken"
    );
    let line = |name: &str| keys.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let path_of = |name: &str| {
        toolgate::trust::signature_path(
            &bench.file,
            &toolgate::trust::public_key_id(&line(name)).unwrap(),
        )
    };
    match how {
        Break::FlipAByte => {
            let mut bytes = std::fs::read(&bench.file).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(&bench.file, bytes).unwrap();
        }
        Break::RemoveASignature => std::fs::remove_file(path_of("carol")).unwrap(),
        Break::SignWithAnUnknownKey => {
            std::fs::remove_file(path_of("carol")).unwrap();
            bench.keygen("mallory");
            bench.sign("mallory", "review");
        }
        Break::RevokeAKey => {
            let refs: Vec<(&str, &str)> = keys.iter().map(|(n, l)| (*n, l.as_str())).collect();
            trust = team_trust(&bench, &refs, &format!("revoked = [\"{}\"]", line("carol")));
        }
        Break::CopyAnotherFilesSignature => {
            let other = bench.dir.path().join("other.component.wasm");
            std::fs::copy(&plugins()["rate-cap"], &other).unwrap();
            let signature = bench.sign_file(&other, "carol", "review", None);
            std::fs::copy(signature, path_of("carol")).unwrap();
        }
        Break::LetASignatureExpire => {
            let path = bench.sign_file(&bench.file, "carol", "review", Some("2020-01-01"));
            assert_eq!(
                path,
                path_of("carol"),
                "signing again replaces the key's signature"
            );
        }
        Break::ReviewOnesOwnPlugin => {
            std::fs::remove_file(path_of("carol")).unwrap();
            let review = bench.sign("alice", "review");
            std::fs::rename(
                &review,
                bench
                    .dir
                    .path()
                    .join("p.component.wasm.self-review.minisig"),
            )
            .unwrap();
            bench.sign("alice", "author");
        }
    }
    let ran = bench.verify(&trust);
    assert_eq!(
        ran.code, 1,
        "{how:?} must be refused:\n{}\n{}",
        ran.stdout, ran.stderr
    );
    assert!(
        ran.stdout.contains("rule `team`: not satisfied"),
        "{}",
        ran.stdout
    );
    let ignored_section = ran.stdout.split("\nignored:").nth(1).unwrap_or("");
    assert!(
        ignored_section.contains(ignored),
        "{how:?}: expected `{ignored}` ignored:\n{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(&format!("unmet:\n  {unmet}")),
        "{how:?}: expected `{unmet}`:\n{}",
        ran.stdout
    );
}

#[test]
fn a_missing_or_unusable_trust_file_stops_verify() {
    let (bench, _, _) = signed_team();
    let ran = toolgate(&[os("plugin"), os("verify"), os(&bench.file)]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("no trust file: pass `--trust FILE` or set `$TOOLGATE_TRUST`"),
        "{}",
        ran.stderr
    );
    let bad = bench.write_trust("default_rule = \"team\"\n[rules.team]\nrequire = [{ role = \"author\", any_of = [\"alice\"] }]\n");
    let ran = bench.verify(&bad);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("rules.team.require[0].any_of: identity `alice` is not defined"),
        "{}",
        ran.stderr
    );
}

#[test]
fn an_encrypted_key_takes_its_password_from_the_environment() {
    let bench = Bench::new();
    let name = bench.key_name("enc");
    let ran = run(
        TOOLGATE,
        &[os("plugin"), os("keygen"), os("--out"), os(&name)],
        &[("TOOLGATE_KEY_PASSWORD", "correct horse")],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let key = bench.key_name("enc.key");
    let sign = |password: &str| {
        run(
            TOOLGATE,
            &[
                os("plugin"),
                os("sign"),
                os(&bench.file),
                os("--key"),
                os(&key),
            ],
            &[("TOOLGATE_KEY_PASSWORD", password)],
        )
    };
    let wrong = sign("wrong");
    assert_eq!(wrong.code, 2);
    assert!(wrong.stderr.contains("Wrong password"), "{}", wrong.stderr);
    let right = sign("correct horse");
    assert_eq!(right.code, 0, "{}", right.stderr);
    let trust = bench.write_trust(&format!(
        "default_rule = \"r\"\n[identities.enc]\nkeys = [\"{}\"]\n[rules.r]\nrequire = [{{ role = \"author\", any_of = [\"enc\"] }}]\n",
        key_line(&bench.key_name("enc.pub"))
    ));
    assert_eq!(bench.verify(&trust).code, 0);
}

#[test]
fn the_committed_test_keys_satisfy_their_trust_file() {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/keys");
    let bench = Bench::new();
    for (name, role) in [
        ("test-author", "author"),
        ("test-reviewer-1", "review"),
        ("test-reviewer-2", "review"),
    ] {
        let key = keys.join(format!("{name}.key"));
        let ran = toolgate(&[
            os("plugin"),
            os("sign"),
            os(&bench.file),
            os("--key"),
            os(&key),
            os("--role"),
            os(role),
        ]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    }
    let ran = bench.verify(&keys.join("trust.toml"));
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
}

/// The reference `minisign` CLI, or `None` (with a note) where it is not installed; CI
/// installs it.
fn minisign_cli() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/minisign");
    if path.exists() {
        return Some(path);
    }
    eprintln!("SKIPPED: /usr/bin/minisign is not installed (apt-get install minisign); the interop check did not run");
    None
}

#[test]
fn a_toolgate_signature_verifies_with_the_minisign_cli() {
    let Some(minisign) = minisign_cli() else {
        return;
    };
    let bench = Bench::new();
    bench.keygen("alice");
    let signature = bench.sign_file(&bench.file, "alice", "review", Some("2099-12-31"));
    let public = bench.key_name("alice.pub");
    let ran = run(
        &minisign,
        &[
            os("-V"),
            os("-m"),
            os(&bench.file),
            os("-x"),
            os(&signature),
            os("-p"),
            os(&public),
        ],
        &[],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("Trusted comment: toolgate role=review expires=2099-12-31T23:59:59Z"),
        "{}",
        ran.stdout
    );
    // And the CLI refuses it over other bytes: the check is real.
    let mut bytes = std::fs::read(&bench.file).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&bench.file, bytes).unwrap();
    let ran = run(
        &minisign,
        &[
            os("-V"),
            os("-m"),
            os(&bench.file),
            os("-x"),
            os(&signature),
            os("-p"),
            os(&public),
        ],
        &[],
    );
    assert_ne!(ran.code, 0);
}

#[test]
fn a_minisign_cli_signature_is_accepted_by_toolgate() {
    let Some(minisign) = minisign_cli() else {
        return;
    };
    let bench = Bench::new();
    let cli_keygen = |name: &str| {
        let (public, secret) = (
            bench.key_name(&format!("{name}.pub")),
            bench.key_name(&format!("{name}.key")),
        );
        let ran = run(
            &minisign,
            &[
                os("-G"),
                os("-W"),
                os("-p"),
                os(&public),
                os("-s"),
                os(&secret),
            ],
            &[],
        );
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        (key_line(&public), secret)
    };
    let cli_sign = |secret: &Path, signature: &Path, comment: Option<&str>| {
        let mut args = vec![
            os("-S"),
            os("-s"),
            os(secret),
            os("-m"),
            os(&bench.file),
            os("-x"),
            os(signature),
        ];
        if let Some(comment) = comment {
            args.extend([os("-t"), os(comment)]);
        }
        let ran = run(&minisign, &args, &[]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
    };
    let (author, author_key) = cli_keygen("cli-author");
    let (reviewer, reviewer_key) = cli_keygen("cli-reviewer");
    // The key ID toolgate computes is the one the CLI prints.
    let id = toolgate::trust::public_key_id(&author).unwrap();
    let pub_text = std::fs::read_to_string(bench.key_name("cli-author.pub")).unwrap();
    // The CLI writes the id as a number, without leading zeros (one key in 16 starts with one).
    let unpadded = id.trim_start_matches('0');
    assert!(
        pub_text.contains(&format!("minisign public key {unpadded}\n")),
        "{id}: {pub_text}"
    );
    let trust = bench.write_trust(&format!(
        r#"default_rule = "r"
[identities.author]
keys = ["{author}"]
[identities.reviewer]
keys = ["{reviewer}"]
[rules.r]
require = [{{ role = "author", any_of = ["author"] }}, {{ role = "review", any_of = ["reviewer"] }}]
"#
    ));
    let author_sig = bench.dir.path().join("p.component.wasm.minisig");
    let review_sig = bench.dir.path().join("p.component.wasm.review.minisig");
    cli_sign(&author_key, &author_sig, Some("role=author"));
    cli_sign(
        &reviewer_key,
        &review_sig,
        Some("role=review expires=2099-01-01"),
    );
    let ran = bench.verify(&trust);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(&format!("author (author, key {id})")),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("reviewer (review, key "),
        "{}",
        ran.stdout
    );
    // The CLI's default trusted comment (no `role=`) counts as an author signature...
    cli_sign(&author_key, &author_sig, None);
    assert_eq!(bench.verify(&trust).code, 0);
    // ...so a reviewer who forgets `-t 'role=review'` has not reviewed.
    cli_sign(&reviewer_key, &review_sig, None);
    let ran = bench.verify(&trust);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("a review signature by one of reviewer other than the author: none found"),
        "{}",
        ran.stdout
    );
}
