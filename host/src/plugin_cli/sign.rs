//! `plugin keygen`, `sign` and `verify`: vouching for a plugin, and checking the vouching
//! against the operator's trust file.
//!
//! Exit codes: 0 done (for `verify`: the trust file's rule is satisfied), 1 `verify` judged
//! and not satisfied, 2 anything that stopped the command (a missing or invalid trust file, an
//! unreadable component or key, a bad argument).

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use toolgate::trust::{self, Role, Trust};

/// The environment variable that holds a secret key's password, so that CI and scripts never
/// meet a prompt. Unset: `keygen` and `sign` ask on the terminal.
const PASSWORD_VAR: &str = "TOOLGATE_KEY_PASSWORD";

#[derive(Args)]
pub struct KeygenArgs {
    /// Writes NAME.key and NAME.pub (never over existing files).
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    /// Leave the secret key without a password (for CI). Otherwise the password is
    /// `$TOOLGATE_KEY_PASSWORD`, or asked twice on the terminal.
    #[arg(long)]
    unencrypted: bool,
}

#[derive(Args)]
pub struct SignArgs {
    /// The component.
    file: PathBuf,
    /// The secret key (NAME.key); if encrypted, its password is `$TOOLGATE_KEY_PASSWORD`, or
    /// asked on the terminal.
    #[arg(long)]
    key: PathBuf,
    /// What the signer vouches for: `author` (wrote it) or `review` (read it).
    #[arg(long, default_value = "author")]
    role: Role,
    /// The signature counts until this date: YYYY-MM-DD (through the end of that day, UTC),
    /// or RFC 3339.
    #[arg(long, value_name = "DATE")]
    expires: Option<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The component.
    file: PathBuf,
    /// The trust file (default: `$TOOLGATE_TRUST`).
    #[arg(long)]
    trust: Option<PathBuf>,
}

fn password_from_env() -> Option<String> {
    std::env::var(PASSWORD_VAR).ok()
}

fn fail(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("toolgate plugin {command}: {error}");
    ExitCode::from(2)
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    let made = match (args.unencrypted, password_from_env()) {
        (true, _) => trust::keygen(&args.out, None),
        (false, Some(password)) => trust::keygen(&args.out, Some(&password)),
        (false, None) => trust::keygen_prompting(&args.out),
    };
    match made {
        Ok((secret, public)) => {
            let id = std::fs::read_to_string(&public)
                .ok()
                .and_then(|text| text.lines().nth(1).map(str::to_owned))
                .and_then(|line| trust::public_key_id(&line).ok())
                .unwrap_or_default();
            eprintln!(
                "key {id}: keep {} secret; {} is the public key (its second line goes in a trust file)",
                secret.display(),
                public.display()
            );
            println!("{}", public.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail("keygen", e),
    }
}

pub fn sign(args: SignArgs) -> ExitCode {
    let expires = match args.expires.as_deref().map(trust::parse_expiry).transpose() {
        Ok(expires) => expires,
        Err(e) => return fail("sign", e),
    };
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => {
            return fail(
                "sign",
                format!("cannot read `{}`: {e}", args.file.display()),
            )
        }
    };
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let password = password_from_env();
    let text = match trust::sign(
        &bytes,
        &name,
        &args.key,
        password.as_deref(),
        args.role,
        expires,
    ) {
        Ok(text) => text,
        Err(e) => return fail("sign", e),
    };
    let Some(id) = trust::signature_key_id(&text) else {
        return fail("sign", "the signature made has no key ID");
    };
    let path = trust::signature_path(&args.file, &id);
    if let Err(e) = std::fs::write(&path, &text) {
        return fail("sign", format!("cannot write `{}`: {e}", path.display()));
    }
    if let Some(expires) = expires.filter(|e| *e < chrono::Utc::now()) {
        eprintln!(
            "warning: this signature expired on {}; it will be ignored",
            expires.to_rfc3339()
        );
    }
    eprintln!(
        "{} signature by key {id} over sha256 {}",
        args.role,
        toolgate::digest::sha256_hex(&bytes)
    );
    println!("{}", path.display());
    ExitCode::SUCCESS
}

pub fn verify(args: VerifyArgs) -> ExitCode {
    let trust = match &args.trust {
        Some(path) => Trust::read(path).map(Some),
        None => Trust::from_env(),
    };
    let trust = match trust {
        Ok(Some(trust)) => trust,
        Ok(None) => {
            return fail(
                "verify",
                "no trust file: pass `--trust FILE` or set `$TOOLGATE_TRUST`",
            )
        }
        Err(e) => return fail("verify", e),
    };
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => {
            return fail(
                "verify",
                format!("cannot read `{}`: {e}", args.file.display()),
            )
        }
    };
    let capabilities = match toolgate::capability::imported(&bytes) {
        Ok(capabilities) => capabilities,
        Err(e) => {
            let file = args.file.display();
            return fail(
                "verify",
                format!("`{file}` is not a readable component: {e}"),
            );
        }
    };
    let signatures = trust::signatures_beside(&args.file);
    let verdict = trust.judge(&bytes, &signatures, &capabilities, chrono::Utc::now());
    println!("{}", args.file.display());
    println!("sha256 {}", toolgate::digest::sha256_hex(&bytes));
    println!("trust file {}", trust.origin());
    println!("{}", verdict.explain());
    if verdict.satisfied() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
