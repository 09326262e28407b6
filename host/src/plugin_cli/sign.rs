//! `plugin keygen`, `sign` and `verify`: vouching for a plugin, and checking the vouching
//! against the operator's trust file.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct KeygenArgs {
    /// Writes NAME.key and NAME.pub.
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    /// Leave the secret key without a password (for CI).
    #[arg(long)]
    unencrypted: bool,
}

#[derive(Args)]
pub struct SignArgs {
    /// The component.
    file: PathBuf,
    /// The secret key (NAME.key).
    #[arg(long)]
    key: PathBuf,
    /// What the signer vouches for: `author` (wrote it) or `review` (read it).
    #[arg(long, default_value = "author")]
    role: String,
    /// The signature counts until this date (YYYY-MM-DD, or RFC 3339).
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

fn todo(what: &str) -> ExitCode {
    eprintln!("toolgate plugin {what}: not yet implemented");
    ExitCode::from(2)
}

pub fn keygen(_: KeygenArgs) -> ExitCode {
    todo("keygen")
}

pub fn sign(_: SignArgs) -> ExitCode {
    todo("sign")
}

pub fn verify(_: VerifyArgs) -> ExitCode {
    todo("verify")
}
