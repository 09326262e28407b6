//! `plugin inspect`: what a plugin is, what it says it is, what it may touch, and who vouched
//! for it. Everything is read from the bytes; no guest code runs.

use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use toolgate::capability;
use toolgate::manifest::Manifest;
use toolgate::store::Store;
use toolgate::trust::{self, Signature, Trust};

#[derive(Args)]
pub struct InspectArgs {
    /// A component file, or a plugin of the store (`registry/repo:tag` or its sha256).
    plugin: String,
    /// Judge its signatures by every rule of this trust file (default: `$TOOLGATE_TRUST`).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Print JSON instead.
    #[arg(long)]
    json: bool,
}

/// The component's bytes and signatures, from a file or the store, and where they came from.
fn find(plugin: &str) -> anyhow::Result<(Vec<u8>, Vec<Signature>, String)> {
    let path = Path::new(plugin);
    if path.exists() {
        let bytes = std::fs::read(path)?;
        return Ok((
            bytes,
            trust::signatures_beside(path),
            path.display().to_string(),
        ));
    }
    let store = Store::from_env()?;
    let Some(sha256) = store.resolve(plugin)? else {
        anyhow::bail!(
            "`{plugin}` is neither a file nor a plugin of the store at `{}` (`toolgate plugin ls` lists them)",
            store.root().display()
        );
    };
    let bytes = store.component(&sha256)?;
    let signatures = store.signatures(&sha256)?;
    Ok((bytes, signatures, format!("store: {plugin}")))
}

fn report(args: &InspectArgs) -> anyhow::Result<(Value, bool)> {
    let (bytes, signatures, origin) = find(&args.plugin)?;
    let (imports, exports) = capability::component_interface(&bytes)
        .map_err(|e| anyhow::anyhow!("`{origin}` is not a readable component: {e}"))?;
    let imported = capability::imported(&bytes).unwrap_or_default();
    let manifest = Manifest::read(&bytes);
    let trust_path = args
        .trust
        .clone()
        .or_else(toolgate::policy::Loader::trust_from_env);
    let trust = trust_path.as_deref().map(Trust::read).transpose()?;
    let mut rules = Vec::new();
    let mut satisfied = true;
    if let Some(trust) = &trust {
        let names: Vec<String> = trust.rule_names().map(str::to_owned).collect();
        for name in names {
            let verdict =
                trust.judge_by(&name, &bytes, &signatures, &imported, chrono::Utc::now())?;
            if name == trust.default_rule() {
                satisfied = verdict.satisfied();
            }
            rules.push(json!({
                "rule": name,
                "default": name == trust.default_rule(),
                "satisfied": verdict.satisfied(),
                "counted": verdict.counted.iter().map(|c| json!({
                    "identity": c.identity, "role": c.role.name(), "key_id": c.key_id,
                    "origin": c.origin,
                    "expires": c.expires.map(|e| e.to_rfc3339()),
                })).collect::<Vec<_>>(),
                "ignored": verdict.ignored.iter().map(|i| json!({
                    "origin": i.origin, "reason": i.reason,
                })).collect::<Vec<_>>(),
                "unmet": verdict.unmet,
            }));
        }
    }
    let report = json!({
        "origin": origin,
        "sha256": toolgate::digest::sha256_hex(&bytes),
        "size": bytes.len(),
        "manifest": match &manifest {
            Ok(m) => serde_json::to_value(m)?,
            Err(e) => json!({"error": e.to_string()}),
        },
        "imports": imports,
        "exports": exports,
        "capabilities": imported.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "signatures": signatures.iter().map(|s| json!({
            "origin": s.origin,
            "key_id": trust::signature_key_id(&s.text),
            "trusted_comment": s.text.lines()
                .find_map(|l| l.strip_prefix("trusted comment: ")),
        })).collect::<Vec<_>>(),
        "trust": trust.as_ref().map(|t| json!({"file": t.origin(), "rules": rules})),
    });
    Ok((report, manifest.is_ok() && satisfied))
}

fn print_text(r: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    println!("{}", s(&r["origin"]));
    println!("  sha256       {}", s(&r["sha256"]));
    println!("  size         {} bytes", r["size"]);
    let m = &r["manifest"];
    if let Some(error) = m.get("error") {
        println!("  manifest     NONE USABLE: {}", s(error));
    } else {
        println!(
            "  manifest     {} {}: {}",
            s(&m["name"]),
            s(&m["version"]),
            s(&m["description"])
        );
        for key in [
            "authors",
            "license",
            "source",
            "revision",
            "world",
            "config_schema",
        ] {
            if !m[key].is_null() {
                println!("    {key:<12} {}", m[key]);
            }
        }
    }
    println!("  capabilities {}", r["capabilities"]);
    println!("  imports      {}", r["imports"]);
    println!("  exports      {}", r["exports"]);
    let sigs = r["signatures"].as_array().cloned().unwrap_or_default();
    println!("  signatures   {}", sigs.len());
    for sig in &sigs {
        println!(
            "    key {} `{}` ({})",
            s(&sig["key_id"]),
            s(&sig["trusted_comment"]),
            s(&sig["origin"])
        );
    }
    match r["trust"].as_object() {
        None => println!("  trust        no trust file given (--trust or $TOOLGATE_TRUST)"),
        Some(t) => {
            println!("  trust        {}", s(&t["file"]));
            for rule in t["rules"].as_array().into_iter().flatten() {
                let default = if rule["default"] == true {
                    " (default)"
                } else {
                    ""
                };
                let verdict = if rule["satisfied"] == true {
                    "satisfied"
                } else {
                    "NOT satisfied"
                };
                println!("    rule `{}`{default}: {verdict}", s(&rule["rule"]));
                for c in rule["counted"].as_array().into_iter().flatten() {
                    println!(
                        "      counted  {} as {} (key {})",
                        s(&c["identity"]),
                        s(&c["role"]),
                        s(&c["key_id"])
                    );
                }
                for i in rule["ignored"].as_array().into_iter().flatten() {
                    println!("      ignored  {}: {}", s(&i["origin"]), s(&i["reason"]));
                }
                for u in rule["unmet"].as_array().into_iter().flatten() {
                    println!("      unmet    {}", s(u));
                }
            }
        }
    }
}

/// Exits 0 when the component has a usable manifest and, given a trust file, satisfies its
/// default rule; 1 otherwise; 2 when it cannot be read at all.
pub fn inspect(args: InspectArgs) -> ExitCode {
    match report(&args) {
        Ok((report, ok)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_text(&report);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("toolgate plugin inspect: {e:#}");
            ExitCode::from(2)
        }
    }
}
