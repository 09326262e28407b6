//! `plugin new`, `wit`, `build` and `pack`: writing and building a plugin.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use toolgate::manifest::{self, Manifest};

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
    /// The manifest as a JSON file (any layout; `world` defaults to the one the component's
    /// imports name, and `capabilities` to its imports). Instead of the flags below.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["name", "version", "description", "author", "license", "source", "revision", "capability", "config_schema"])]
    manifest: Option<PathBuf>,
    /// The plugin's name (required without --manifest).
    #[arg(long)]
    name: Option<String>,
    /// Its version (required without --manifest).
    #[arg(long)]
    version: Option<String>,
    /// One line on what it does.
    #[arg(long, default_value = "")]
    description: String,
    /// An author (repeatable).
    #[arg(long)]
    author: Vec<String>,
    /// Its licence, an SPDX expression.
    #[arg(long)]
    license: Option<String>,
    /// Where its source is (a URL).
    #[arg(long)]
    source: Option<String>,
    /// The source revision it was built from.
    #[arg(long)]
    revision: Option<String>,
    /// A host capability it imports: `clock`, `counters` or `log` (repeatable; default: its
    /// real imports, with a warning).
    #[arg(long)]
    capability: Vec<String>,
    /// The JSON Schema of its config, as a file.
    #[arg(long, value_name = "FILE.json")]
    config_schema: Option<PathBuf>,
    /// Where to write the component (default: over COMPONENT).
    #[arg(short, long)]
    out: Option<PathBuf>,
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

#[derive(Args)]
pub struct WitArgs {
    /// The package version to print (`0.1.0`, `0.2.0`, `0.3.0`; default: the newest).
    #[arg(long = "version", value_name = "VERSION")]
    package_version: Option<String>,
}

pub fn wit(WitArgs { package_version }: WitArgs) -> ExitCode {
    use toolgate::capability::World;
    let world = match package_version.as_deref() {
        None => World::LATEST,
        Some(version) => match World::from_version(version) {
            Some(world) => world,
            None => {
                eprintln!(
                    "toolgate plugin wit: this binary implements no `toolgate:policy@{version}`; it implements {}",
                    World::all_names()
                );
                return ExitCode::from(2);
            }
        },
    };
    print!("{}", world.wit());
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
    match toolgate::plugins::build::build_plugin(&crate_dir, &target, out.as_deref()) {
        Ok(built) => {
            for warning in &built.warnings {
                eprintln!("warning: {warning}");
            }
            let m = &built.manifest;
            eprintln!(
                "manifest: {} {}, capabilities {}",
                m.name,
                m.version,
                manifest::capability_names(&m.capabilities)
            );
            let path = built.path;
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

pub fn pack(args: PackArgs) -> ExitCode {
    match pack_component(args) {
        Ok((path, manifest, warnings)) => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!(
                "manifest: {} {}, capabilities {}",
                manifest.name,
                manifest.version,
                manifest::capability_names(&manifest.capabilities)
            );
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toolgate plugin pack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Embeds the manifest the arguments describe, checks it as a gateway will, and writes the
/// component (beside the target, then renamed). Returns where, the manifest and the warnings.
fn pack_component(args: PackArgs) -> anyhow::Result<(PathBuf, Manifest, Vec<String>)> {
    use toolgate::capability::Capability;
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read `{}`", args.component.display()))?;
    let imported = toolgate::capability::imported(&component)
        .map_err(|e| anyhow::anyhow!("`{}` is not a component: {e}", args.component.display()))?;
    let (world, unnamed) = toolgate::plugins::build::world_of(&component)?;
    let mut warnings: Vec<String> = unnamed.into_iter().collect();
    let mut derived = || {
        warnings.push(format!(
            "no capabilities declared; taking `{}` from the component's imports",
            manifest::capability_names(&imported)
        ));
        serde_json::to_value(imported.iter().map(|c| c.name()).collect::<Vec<_>>())
    };
    let manifest = match &args.manifest {
        Some(file) => {
            let mut read = || -> anyhow::Result<Manifest> {
                let mut value =
                    manifest::parse_json(&std::fs::read(file)?).map_err(anyhow::Error::msg)?;
                if let Some(object) = value.as_object_mut() {
                    if !object.contains_key("world") {
                        object.insert("world".into(), world.name().into());
                    }
                    if !object.contains_key("capabilities") {
                        object.insert("capabilities".into(), derived()?);
                    }
                }
                Ok(Manifest::from_json(&serde_json::to_vec(&value)?)?)
            };
            read().with_context(|| format!("`{}`", file.display()))?
        }
        None => {
            let (Some(name), Some(version)) = (args.name, args.version) else {
                anyhow::bail!("give the manifest as `--manifest FILE.json`, or at least `--name` and `--version`");
            };
            let capabilities = if args.capability.is_empty() {
                derived()?;
                imported.clone()
            } else {
                args.capability
                    .iter()
                    .map(|c| {
                        Capability::from_name(c).ok_or_else(|| {
                            anyhow::anyhow!(
                                "`{c}` is not a capability: use `clock`, `counters` or `log`"
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let config_schema = match &args.config_schema {
                Some(file) => Some(
                    std::fs::read(file)
                        .map_err(anyhow::Error::from)
                        .and_then(|b| manifest::parse_json(&b).map_err(anyhow::Error::msg))
                        .with_context(|| {
                            format!("cannot read the config schema `{}`", file.display())
                        })?,
                ),
                None => None,
            };
            Manifest {
                name,
                version,
                description: args.description,
                authors: args.author,
                license: args.license,
                source: args.source,
                revision: args.revision,
                world: world.name(),
                capabilities,
                config_schema,
                outcomes: None,
            }
        }
    };
    let packed = manifest::embed(&component, &manifest)?;
    let manifest = Manifest::read(&packed)?;
    let out = args.out.unwrap_or(args.component);
    let staged = out.with_extension("wasm.packing");
    std::fs::write(&staged, &packed)
        .and_then(|()| std::fs::rename(&staged, &out))
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    Ok((out, manifest, warnings))
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
