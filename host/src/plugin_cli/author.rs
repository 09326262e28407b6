//! `plugin new`, `wit`, `build` and `pack`: writing and building a plugin.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin crate (a `cdylib` using wit-bindgen against `wit/`).
    #[arg(default_value = ".")]
    crate_dir: PathBuf,
    /// Where to write the component (default: next to cargo's artifact).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// `wasm32-wasip1` (turned into a component with the reactor adapter) or `wasm32-wasip2`.
    #[arg(long, default_value = "wasm32-wasip1")]
    target: String,
    /// Then write the component's sha256 into every entry of this policy whose `path` is
    /// the component (repeatable); the rest of the file is left as it is.
    #[arg(long, value_name = "POLICY")]
    pin: Vec<PathBuf>,
}

#[derive(Args)]
pub struct PackArgs {
    /// The component.
    component: PathBuf,
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name (also the crate's).
    name: String,
    /// The folder to create it in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn new(NewArgs { name, dir }: NewArgs) -> ExitCode {
    match toolgate::plugins::scaffold::new_plugin(&dir, &name) {
        Ok(made) => {
            eprintln!(
                "created plugin `{name}`; next: toolgate plugin build {0} && toolgate test {0}",
                made.display()
            );
            println!("{}", made.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate plugin new: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn wit() -> ExitCode {
    print!("{}", toolgate::plugins::WIT);
    ExitCode::SUCCESS
}

pub fn build(
    BuildArgs {
        crate_dir,
        out,
        target,
        pin,
    }: BuildArgs,
) -> ExitCode {
    match toolgate::plugins::build::build(&crate_dir, &target, out.as_deref()) {
        Ok(path) => {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let digest = toolgate::digest::sha256_hex(&bytes);
            eprintln!("sha256 {digest}");
            for policy in &pin {
                match pin_policy(policy, &path, &digest) {
                    Ok(names) => {
                        eprintln!("pinned {} in {}", names.join(", "), policy.display())
                    }
                    Err(e) => {
                        eprintln!("toolgate plugin build --pin: {e:#}");
                        return ExitCode::from(2);
                    }
                }
            }
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate plugin build: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn pack(PackArgs { component }: PackArgs) -> ExitCode {
    eprintln!(
        "toolgate plugin pack {}: not yet implemented",
        component.display()
    );
    ExitCode::from(2)
}

/// Writes `digest` into the entries of `policy` whose `path` is `component`; the file is
/// replaced whole (written beside it, then renamed), so a watching gateway never reads half.
fn pin_policy(policy: &Path, component: &Path, digest: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(policy)
        .with_context(|| format!("cannot read `{}`", policy.display()))?;
    let base = policy.parent().unwrap_or(Path::new("."));
    let (pinned, names) = toolgate::policy::pin_plugin(
        &text,
        &policy.display().to_string(),
        base,
        component,
        digest,
    )?;
    let staged = policy.with_extension("json.pinning");
    std::fs::write(&staged, pinned)
        .and_then(|()| std::fs::rename(&staged, policy))
        .with_context(|| format!("cannot write `{}`", policy.display()))?;
    Ok(names)
}
