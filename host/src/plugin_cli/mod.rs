//! `toolgate plugin ...`: the commands of a plugin's life outside the gateway, grouped by who
//! uses them. `author.rs`: write and build one (`new`, `wit`, `build`, `pack`); `sign.rs`:
//! vouch for one and check the vouching (`keygen`, `sign`, `verify`); `inspect.rs`: what a
//! plugin is, says and may touch; `store.rs`: move it between machines (`push`, `pull`,
//! `save`, `load`) and keep the local store (`ls`, `rm`, `gc`).
//!
//! Each command's arguments are a clap struct in its file, and its work is a library call
//! (`toolgate::manifest`, `toolgate::trust`, `toolgate::store`); these files only parse, print
//! and choose the exit code. Everything but `push` and `pull` works offline.

mod author;
mod inspect;
mod sign;
mod store;

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Build a plugin crate into a component with its manifest; prints the component's path as
    /// the last line.
    Build(author::BuildArgs),
    /// Embed a manifest into a component built elsewhere.
    Pack(author::PackArgs),
    /// Print the WIT package plugins implement (the contract this binary was built with; the
    /// newest unless `--version` names an older one it still loads).
    Wit(author::WitArgs),
    /// Create a plugin crate that builds as it is: the WIT, one example rule, a policy that
    /// uses it, a case file and a README. Prints the crate's folder as the last line.
    New(author::NewArgs),
    /// Make a minisign key pair: NAME.key (secret) and NAME.pub.
    Keygen(sign::KeygenArgs),
    /// Sign a component; prints the signature's path as the last line.
    Sign(sign::SignArgs),
    /// Check a component's signatures against a trust file; exits 0 only if it is satisfied.
    Verify(sign::VerifyArgs),
    /// Show a component: digest, manifest, real imports and exports, signatures and the trust
    /// rules they satisfy.
    Inspect(inspect::InspectArgs),
    /// Push a component and its signatures to an OCI registry.
    Push(store::PushArgs),
    /// Pull a component and its signatures from an OCI registry into the store; prints the
    /// policy entry to paste as the last line.
    Pull(store::PullArgs),
    /// Write plugins of the store, with their signatures, to one tar file.
    Save(store::SaveArgs),
    /// Read a tar file written by `save` into the store, checking every digest.
    Load(store::LoadArgs),
    /// List the store's plugins.
    Ls(store::LsArgs),
    /// Remove a plugin (by digest or reference) from the store.
    Rm(store::RmArgs),
    /// Delete the store's blobs that no plugin uses.
    Gc(store::GcArgs),
}

/// Runs one `toolgate plugin` command.
pub fn run(command: PluginCommand) -> ExitCode {
    match command {
        PluginCommand::Build(args) => author::build(args),
        PluginCommand::Pack(args) => author::pack(args),
        PluginCommand::Wit(args) => author::wit(args),
        PluginCommand::New(args) => author::new(args),
        PluginCommand::Keygen(args) => sign::keygen(args),
        PluginCommand::Sign(args) => sign::sign(args),
        PluginCommand::Verify(args) => sign::verify(args),
        PluginCommand::Inspect(args) => inspect::inspect(args),
        PluginCommand::Push(args) => store::push(args),
        PluginCommand::Pull(args) => store::pull(args),
        PluginCommand::Save(args) => store::save(args),
        PluginCommand::Load(args) => store::load(args),
        PluginCommand::Ls(args) => store::ls(args),
        PluginCommand::Rm(args) => store::rm(args),
        PluginCommand::Gc(args) => store::gc(args),
    }
}
