//! `plugin push`, `pull`, `save`, `load`, `ls`, `rm` and `gc`: moving plugins between machines
//! and keeping the local store.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct PushArgs {
    /// The component (its signatures beside it go too).
    file: PathBuf,
    /// `oci://HOST[:PORT]/REPO:TAG`.
    reference: String,
    /// Allow plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    insecure_registry: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// `oci://HOST[:PORT]/REPO:TAG`.
    reference: String,
    /// The component's sha256: refuse anything else.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Allow plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    insecure_registry: bool,
}

#[derive(Args)]
pub struct SaveArgs {
    /// References or digests of plugins in the store.
    #[arg(required = true)]
    plugins: Vec<String>,
    /// The tar file to write.
    #[arg(short = 'o', long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct LoadArgs {
    /// A tar file written by `plugin save`.
    bundle: PathBuf,
}

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON instead.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// References or digests.
    #[arg(required = true)]
    plugins: Vec<String>,
}

#[derive(Args)]
pub struct GcArgs {}

fn todo(what: &str) -> ExitCode {
    eprintln!("toolgate plugin {what}: not yet implemented");
    ExitCode::from(2)
}

pub fn push(_: PushArgs) -> ExitCode {
    todo("push")
}
pub fn pull(_: PullArgs) -> ExitCode {
    todo("pull")
}
pub fn save(_: SaveArgs) -> ExitCode {
    todo("save")
}
pub fn load(_: LoadArgs) -> ExitCode {
    todo("load")
}
pub fn ls(_: LsArgs) -> ExitCode {
    todo("ls")
}
pub fn rm(_: RmArgs) -> ExitCode {
    todo("rm")
}
pub fn gc(_: GcArgs) -> ExitCode {
    todo("gc")
}
