//! `plugin inspect`: what a plugin is, what it says it is, what it may touch, and who vouched
//! for it.

use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct InspectArgs {
    /// A component file, or a store reference (`registry/repo:tag` or a sha256).
    plugin: String,
    /// The trust file to judge its signatures by (default: `$TOOLGATE_TRUST`).
    #[arg(long)]
    trust: Option<std::path::PathBuf>,
    /// Print JSON instead.
    #[arg(long)]
    json: bool,
}

pub fn inspect(_: InspectArgs) -> ExitCode {
    eprintln!("toolgate plugin inspect: not yet implemented");
    ExitCode::from(2)
}
