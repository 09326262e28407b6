//! `plugin push`, `pull`, `save`, `load`, `ls`, `rm` and `gc`: moving plugins between machines
//! and keeping the local store.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use toolgate::store::{self, Store};

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

fn fail(command: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("toolgate plugin {command}: {e}");
    ExitCode::FAILURE
}

fn open(command: &str) -> Result<Store, ExitCode> {
    Store::from_env().map_err(|e| fail(command, e))
}

/// The policy entry that names a plugin: what `pull` and `push` print as their last line.
fn policy_entry(reference: &str, sha256: &str) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        r#"{{"ref": {}, "sha256": {}}}"#,
        quote(reference),
        quote(sha256)
    )
}

pub fn push(args: PushArgs) -> ExitCode {
    match store::push(&args.file, &args.reference, args.insecure_registry) {
        Ok(report) => {
            eprintln!(
                "pushed {} (manifest {}, {} signature{})",
                report.reference,
                report.manifest_digest,
                report.signatures,
                if report.signatures == 1 { "" } else { "s" }
            );
            println!("{}", policy_entry(&report.reference, &report.sha256));
            ExitCode::SUCCESS
        }
        Err(e) => fail("push", e),
    }
}

pub fn pull(args: PullArgs) -> ExitCode {
    let store = match open("pull") {
        Ok(store) => store,
        Err(code) => return code,
    };
    let reference = match store::Target::parse(&args.reference) {
        Ok(target) => target.to_string(),
        Err(e) => return fail("pull", e),
    };
    match store::pull(
        &store,
        &args.reference,
        args.sha256.as_deref(),
        args.insecure_registry,
    ) {
        Ok(sha256) => {
            let signatures = store.signatures(&sha256).map(|s| s.len()).unwrap_or(0);
            eprintln!(
                "pulled {reference} into {} ({signatures} signature{})",
                store.root().display(),
                if signatures == 1 { "" } else { "s" }
            );
            println!("{}", policy_entry(&reference, &sha256));
            ExitCode::SUCCESS
        }
        Err(e) => fail("pull", e),
    }
}

pub fn save(args: SaveArgs) -> ExitCode {
    let store = match open("save") {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store::save(&store, &args.plugins, &args.out) {
        Ok(saved) => {
            for sha256 in &saved {
                eprintln!("saved sha256:{sha256}");
            }
            println!("{}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail("save", e),
    }
}

pub fn load(args: LoadArgs) -> ExitCode {
    let store = match open("load") {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store::load(&store, &args.bundle) {
        Ok(loaded) => {
            let list = store.list().unwrap_or_default();
            for sha256 in &loaded {
                let refs = list
                    .iter()
                    .find(|e| &e.sha256 == sha256)
                    .map(|e| e.refs.clone())
                    .unwrap_or_default();
                match refs.first() {
                    Some(reference) => println!("{}", policy_entry(reference, sha256)),
                    None => println!(r#"{{"sha256": "{sha256}"}}"#),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("load", e),
    }
}

pub fn ls(args: LsArgs) -> ExitCode {
    let store = match open("ls") {
        Ok(store) => store,
        Err(code) => return code,
    };
    let entries = match store.list() {
        Ok(entries) => entries,
        Err(e) => return fail("ls", e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("entries serialize")
        );
        return ExitCode::SUCCESS;
    }
    if entries.is_empty() {
        eprintln!("the store at {} is empty", store.root().display());
    }
    for entry in entries {
        let refs = if entry.refs.is_empty() {
            "-".to_string()
        } else {
            entry.refs.join(", ")
        };
        println!(
            "sha256:{}  {:>9}  {} sig  {refs}",
            entry.sha256, entry.size, entry.signatures
        );
    }
    ExitCode::SUCCESS
}

pub fn rm(args: RmArgs) -> ExitCode {
    let store = match open("rm") {
        Ok(store) => store,
        Err(code) => return code,
    };
    let mut code = ExitCode::SUCCESS;
    for plugin in &args.plugins {
        match store.remove(plugin) {
            Ok(removed) if removed.component_removed => {
                println!("removed sha256:{}", removed.sha256)
            }
            Ok(removed) => println!("untagged {plugin} (sha256:{} stays)", removed.sha256),
            Err(e) => code = fail("rm", e),
        }
    }
    code
}

pub fn gc(_: GcArgs) -> ExitCode {
    let store = match open("gc") {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.gc() {
        Ok(report) => {
            println!(
                "removed {} blob{} and {} temp file{}, {} bytes",
                report.blobs_removed,
                if report.blobs_removed == 1 { "" } else { "s" },
                report.temp_files_removed,
                if report.temp_files_removed == 1 {
                    ""
                } else {
                    "s"
                },
                report.bytes_freed
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("gc", e),
    }
}
