//! Compiling a policy: the [`Loader`] reads the document, checks it, loads its plugins into the
//! runtime it was given, and builds the [`Policy`] that `decide.rs` evaluates.

use super::document::{LimitSpec, PluginSpec, PolicyDocument, RateLimitSpec, ToolRule, UseSpec};
use super::error::Problem;
use super::spans::Spans;
use super::{unique_keys, Limit, PluginUse, Policy, PolicyError, Rule};
use crate::counters::Window;
use crate::plugins::{Plugin, PluginError, PluginLimits, PluginRuntime, Source, Vetting};
use crate::store::Store;
use crate::trust::Trust;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wildmatch::WildMatch;

/// Tool patterns: `*` matches any run of characters (also none), `?` exactly one. Tool names
/// are not paths, so nothing else is special and every pattern is valid.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Compiles policies: the one way a [`Policy`] is made. It carries what compiling needs from
/// outside the document, the plugin runtime that loads a policy's plugins; it is given, never
/// reached through a global (Kubewarden's evaluator takes its engine the same way). Without a
/// runtime, a policy that names plugins fails to load.
///
/// The operator's side of loading plugins comes with it too: the trust file every plugin must
/// satisfy (read again at every load, so a revoked key takes effect at the next reload) and
/// the store `ref` entries are read from.
#[derive(Clone)]
pub struct Loader {
    /// The runtime, or why there is none (said when a policy names plugins).
    plugins: Result<Arc<PluginRuntime>, Arc<str>>,
    /// The trust file, if the operator configured one.
    trust: Option<PathBuf>,
    /// The store (`None`: `$TOOLGATE_STORE` or its default, looked up when a `ref` needs it).
    store: Option<PathBuf>,
}

impl Default for Loader {
    fn default() -> Self {
        Self {
            plugins: Err("no plugin runtime was given to load it with".into()),
            trust: None,
            store: None,
        }
    }
}

impl Loader {
    /// A loader for policies without plugins.
    pub fn new() -> Self {
        Self::default()
    }

    /// A loader whose policies load their plugins into `runtime`, under the trust file named
    /// by `$TOOLGATE_TRUST` if it is set (as every loader: an embedder that configured trust
    /// in the environment never gets a loader without it; [`Loader::with_trust`] replaces it).
    pub fn with_plugins(runtime: Arc<PluginRuntime>) -> Self {
        Self {
            plugins: Ok(runtime),
            trust: Self::trust_from_env(),
            store: None,
        }
    }

    /// Every plugin must satisfy the trust file at `path` (`None`: no trust file, as before).
    /// It is read at every load; if it cannot be read or is invalid, no policy with plugins
    /// loads.
    pub fn with_trust(mut self, path: Option<PathBuf>) -> Self {
        self.trust = path;
        self
    }

    /// `ref` entries are read from the store at `root`.
    pub fn with_store(mut self, root: PathBuf) -> Self {
        self.store = Some(root);
        self
    }

    /// The trust file every plugin must satisfy, if any.
    pub fn trust(&self) -> Option<&Path> {
        self.trust.as_deref()
    }

    /// A loader with a new plugin runtime configured from the environment
    /// ([`PluginRuntime::from_env`]). If the engine cannot start, policies without plugins
    /// still load, and one that names plugins fails saying why.
    pub fn from_env() -> Self {
        Self::from_runtime(PluginRuntime::from_env())
    }

    /// The trust file named by `$TOOLGATE_TRUST`, if it is set and not empty.
    pub fn trust_from_env() -> Option<PathBuf> {
        std::env::var_os("TOOLGATE_TRUST")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    /// A loader with `runtime`; if it could not be made, policies without plugins still load,
    /// and one that names plugins fails saying why.
    pub fn from_runtime(runtime: Result<PluginRuntime, PluginError>) -> Self {
        Self {
            plugins: runtime.map(Arc::new).map_err(|e| e.to_string().into()),
            trust: Self::trust_from_env(),
            store: None,
        }
    }

    /// Reads and compiles the policy at `path`.
    pub fn load(&self, path: &std::path::Path) -> Result<Policy, PolicyError> {
        self.load_with_text(path).map(|(policy, _)| policy)
    }

    /// Like [`Loader::load`], and also returns the text it loaded (read once, so that a
    /// digest of it is the digest of what was loaded).
    pub fn load_with_text(&self, path: &std::path::Path) -> Result<(Policy, String), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let policy = self.compile_json(&text, &path.display().to_string(), base)?;
        Ok((policy, text))
    }

    /// Compiles a policy from its JSON text; `file` names it in errors. Plugin paths are
    /// relative to the current directory.
    pub fn from_json(&self, text: &str, file: &str) -> Result<Policy, PolicyError> {
        self.compile_json(text, file, Path::new("."))
    }

    /// Compiles a policy from its JSON text, resolving plugin paths against `base`.
    pub(crate) fn compile_json(
        &self,
        text: &str,
        file: &str,
        base: &Path,
    ) -> Result<Policy, PolicyError> {
        // A serde error keeps the line and column serde_json gave; its kind follows from the
        // pass and the place it failed at.
        let located = |err: serde_path_to_error::Error<serde_json::Error>,
                       data: fn(&str, String) -> Problem| {
            let location = match err.path().to_string() {
                p if p == "." => "the document".to_owned(),
                p => p,
            };
            let inner = err.inner();
            let full = inner.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_owned(),
                None => full,
            };
            let kind = match inner.classify() {
                serde_json::error::Category::Data => data(&location, message),
                _ => Problem::Syntax(message),
            };
            PolicyError::at_line_column(file, text, inner.line(), inner.column(), location, kind)
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let doc: PolicyDocument =
            serde_path_to_error::deserialize(&mut de).map_err(|e| located(e, Problem::of_serde))?;
        // The typed parse keeps the last copy of a key named twice in a map; refuse instead.
        let _: unique_keys::UniqueKeys =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| located(e, |_, message| Problem::DuplicateKey(message)))?;
        de.end().map_err(|e| {
            PolicyError::at_line_column(
                file,
                text,
                e.line(),
                e.column(),
                "the document".into(),
                Problem::TrailingCharacters,
            )
        })?;
        Policy::compile(doc, text, file, base, self)
    }
}

impl Policy {
    /// Builds the policy from a document that parsed; `text` and `file` place its errors.
    fn compile(
        doc: PolicyDocument,
        text: &str,
        file: &str,
        base: &Path,
        loader: &Loader,
    ) -> Result<Self, PolicyError> {
        let runtime = loader.plugins.as_deref().map_err(|e| &**e);
        let mut compiler = Compiler {
            file,
            text,
            spans: OnceCell::new(),
            plugins: HashMap::new(),
        };
        // Plugins first, so that rules can use them.
        if !doc.plugins.is_empty() {
            let runtime = runtime.map_err(|why| {
                compiler.invalid(
                    "plugins".into(),
                    Problem::NoPluginRuntime {
                        why: why.to_owned(),
                    },
                )
            })?;
            compiler.shared_counters_exist(&doc)?;
            compiler.load_plugins(&doc.plugins, base, runtime, loader)?;
        }
        let hide = doc.hide.iter().map(|p| WildMatch::new(p)).collect();
        let all_tools_limits = compiler.limits(
            &doc.all_tools.limits,
            &doc.all_tools.rate_limit,
            "all_tools",
            "rate:all_tools",
        )?;

        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        for (pattern, spec) in doc.tools {
            let rule = compiler.rule(&pattern, spec)?;
            if is_glob(&pattern) {
                globs.push((pattern, rule));
            } else {
                exact.insert(pattern, rule);
            }
        }
        // Most specific glob first: the most literal characters, then alphabetical for stability.
        let literal_len = |p: &str| p.chars().filter(|c| !"*?".contains(*c)).count();
        globs.sort_by(|(a, _): &(String, Rule), (b, _)| {
            literal_len(b).cmp(&literal_len(a)).then_with(|| a.cmp(b))
        });
        let globs: Vec<(WildMatch, Rule)> = globs
            .into_iter()
            .map(|(p, rule)| (WildMatch::new(&p), rule))
            .collect();
        let argument_keys = crate::jsonrpc::Spellings::of(
            exact
                .values()
                .chain(globs.iter().map(|(_, rule)| rule))
                .flat_map(|rule: &Rule| rule.require.iter().chain(&rule.deny_if))
                .flat_map(|condition| condition.path.argument_keys()),
        );
        Ok(Self {
            argument_keys,
            audit_ref: std::sync::OnceLock::new(),
            digest: crate::digest::sha256_hex(text.as_bytes()),
            name: doc.name,
            default: doc.default,
            hide,
            exact,
            globs,
            all_tools_limits,
            all_tools_uses: compiler.uses(&doc.all_tools.uses, "all_tools")?,
            plugins: compiler.plugins.into_values().collect(),
        })
    }
}

/// What compiling one document keeps at hand: its text, to place errors, and the plugins
/// loaded so far, for the rules that use them.
struct Compiler<'a> {
    file: &'a str,
    text: &'a str,
    /// Walked only when there is an error to place: a policy that loads costs no more.
    spans: OnceCell<Spans>,
    plugins: HashMap<String, Arc<Plugin>>,
}

impl Compiler<'_> {
    /// A load error about the value at `location`, underlined where it is in the text.
    fn invalid(&self, location: String, kind: Problem) -> PolicyError {
        let spans = self.spans.get_or_init(|| Spans::of(self.text));
        PolicyError::at_path(self.file, self.text, spans, location, kind)
    }

    /// Every counter a plugin entry shares (`counters`) is a counter of this policy's limits:
    /// a misspelt name would otherwise quietly become a counter of the plugin's own.
    fn shared_counters_exist(&self, doc: &PolicyDocument) -> Result<(), PolicyError> {
        let rules = doc
            .tools
            .iter()
            .map(|(pattern, r)| (format!("rate:{pattern}"), &r.limits, &r.rate_limit))
            .chain([(
                "rate:all_tools".to_owned(),
                &doc.all_tools.limits,
                &doc.all_tools.rate_limit,
            )]);
        let mut declared = std::collections::BTreeSet::new();
        for (default_rate_name, limits, rate_limit) in rules {
            declared.extend(limits.iter().map(|l| l.counter.clone()));
            if let Some(rate) = rate_limit {
                declared.insert(rate.counter.clone().unwrap_or(default_rate_name));
            }
        }
        for (name, spec) in &doc.plugins {
            for (i, counter) in spec.counters.iter().enumerate() {
                if !declared.contains(counter) {
                    return Err(self.invalid(
                        format!("plugins.{name}.counters[{i}]"),
                        Problem::UnknownSharedCounter {
                            plugin: name.clone(),
                            counter: counter.clone(),
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each plugin through load → verify → compile → pre-instantiate; any failure is a load
    /// error at the plugin's entry. The trust file is read once for all of them.
    fn load_plugins(
        &mut self,
        specs: &BTreeMap<String, PluginSpec>,
        base: &Path,
        runtime: &PluginRuntime,
        loader: &Loader,
    ) -> Result<(), PolicyError> {
        let trust = match &loader.trust {
            Some(path) => Some(Arc::new(Trust::read(path).map_err(|e| {
                self.invalid("plugins".into(), Problem::Trust(e.to_string()))
            })?)),
            None => None,
        };
        let mut store: Option<Store> = None;
        for (name, spec) in specs {
            let location = format!("plugins.{name}");
            let source_problem = |message: &str| {
                self.invalid(
                    location.clone(),
                    Problem::PluginSource(format!("plugin `{name}` {message}")),
                )
            };
            let path;
            let source = match (&spec.path, &spec.reference, &spec.sha256) {
                (Some(p), None, _) => {
                    path = base.join(p);
                    Source::Path(&path)
                }
                (None, Some(reference), Some(sha256)) => {
                    if store.is_none() {
                        store = Some(match &loader.store {
                            Some(root) => Store::at(root.clone()),
                            None => Store::from_env().map_err(|e| {
                                source_problem(&format!("cannot use the plugin store: {e}"))
                            })?,
                        });
                    }
                    Source::Store {
                        store: store.as_ref().expect("set just above"),
                        reference,
                        sha256,
                    }
                }
                (None, Some(_), None) => return Err(source_problem(
                    "has a `ref` without a `sha256`: the store is searched by digest, never by tag",
                )),
                (Some(_), Some(_), _) => {
                    return Err(source_problem("has both a `path` and a `ref`"))
                }
                (None, None, _) => return Err(source_problem("has neither a `path` nor a `ref`")),
            };
            let vetting = Vetting {
                pinned: spec.sha256.as_deref(),
                grants: spec.grants.as_ref(),
                trust: trust.as_ref(),
            };
            let limits = plugin_limits(spec).map_err(|error| {
                self.invalid(
                    location.clone(),
                    Problem::PluginLoad {
                        name: name.clone(),
                        error,
                    },
                )
            })?;
            let plugin = runtime
                .load(name, source, vetting, spec.isolation, limits)
                .map_err(|e| {
                    self.invalid(
                        location.clone(),
                        Problem::PluginLoad {
                            name: name.clone(),
                            error: e.to_string(),
                        },
                    )
                })?;
            self.plugins.insert(name.clone(), plugin);
        }
        Ok(())
    }

    /// The rule for one tool name or glob of `tools`.
    fn rule(&self, pattern: &str, spec: ToolRule) -> Result<Rule, PolicyError> {
        let location = format!("tools.{pattern}");
        Ok(Rule {
            limits: self.limits(
                &spec.limits,
                &spec.rate_limit,
                &location,
                &format!("rate:{pattern}"),
            )?,
            uses: self.uses(&spec.uses, &location)?,
            approval: spec
                .approval
                .as_ref()
                .map(|a| a.settings())
                .transpose()
                .map_err(|e| self.invalid(format!("{location}.approval"), Problem::Approval(e)))?,
            log_args: spec
                .log_args
                .map(|l| l.check().map(|()| l))
                .transpose()
                .map_err(|e| self.invalid(format!("{location}.log_args"), Problem::LogArgs(e)))?,
            enforce: spec.enforce,
            id: location,
            action: spec.action,
            reason: spec.reason,
            require: spec.require,
            deny_if: spec.deny_if,
        })
    }

    /// The plugin uses at `location` (`tools.<pattern>` or `all_tools`), each plugin declared
    /// and accepting its config.
    fn uses(&self, specs: &[UseSpec], location: &str) -> Result<Vec<Arc<PluginUse>>, PolicyError> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let at = format!("{location}.use[{i}]");
                let plugin = self.plugins.get(&spec.plugin).ok_or_else(|| {
                    self.invalid(
                        format!("{at}.plugin"),
                        Problem::UnknownPlugin {
                            name: spec.plugin.clone(),
                        },
                    )
                })?;
                let config = spec.config.to_string();
                plugin.validate_config(&config).map_err(|e| {
                    self.invalid(
                        format!("{at}.config"),
                        Problem::PluginConfig {
                            name: spec.plugin.clone(),
                            error: e.to_string(),
                        },
                    )
                })?;
                Ok(Arc::new(PluginUse {
                    plugin: plugin.clone(),
                    config,
                    site: at,
                }))
            })
            .collect()
    }

    /// The limits at `location`: `limits`, then the `rate_limit` shorthand, whose counter is
    /// `default_counter` unless it names one.
    fn limits(
        &self,
        specs: &[LimitSpec],
        shorthand: &Option<RateLimitSpec>,
        location: &str,
        default_counter: &str,
    ) -> Result<Vec<Limit>, PolicyError> {
        let mut out = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            if spec.counter.trim().is_empty() {
                return Err(self.invalid(
                    format!("{location}.limits[{i}].counter"),
                    Problem::UnnamedCounter,
                ));
            }
            out.push((
                spec.counter.clone(),
                spec.scope,
                spec.max,
                &spec.window,
                format!("{location}.limits[{i}].max"),
            ));
        }
        if let Some(rl) = shorthand {
            let counter = rl
                .counter
                .clone()
                .unwrap_or_else(|| default_counter.to_owned());
            out.push((
                counter,
                rl.scope,
                rl.max,
                &rl.window,
                format!("{location}.rate_limit.max"),
            ));
        }
        out.into_iter()
            .map(|(counter, scope, max, window, max_location)| {
                if max == 0 {
                    return Err(self.invalid(max_location, Problem::ZeroMax));
                }
                Ok(Limit {
                    counter: counter.into(),
                    scope,
                    window: Window {
                        max,
                        length_ms: window.length_ms,
                    },
                    label: window.label.clone(),
                })
            })
            .collect()
    }
}

/// A plugin's limits: what its entry sets, the runtime's defaults for the rest (`Err`: a
/// `state` or `results` bound out of range, or `state` set on a plugin not granted it).
fn plugin_limits(spec: &PluginSpec) -> Result<PluginLimits, String> {
    let defaults = PluginLimits::default();
    let (max_result_bytes, oversized) = spec.result_limits()?;
    Ok(PluginLimits {
        fuel: spec.fuel.unwrap_or(defaults.fuel),
        timeout: spec
            .timeout_ms
            .map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: spec
            .memory_mib
            .map_or(defaults.memory_bytes, |m| (m as usize) << 20),
        recycle_after: spec.recycle_after.unwrap_or(defaults.recycle_after),
        shared_counters: spec.counters.clone().into(),
        state: spec.state_limits()?,
        max_result_bytes: max_result_bytes.unwrap_or(defaults.max_result_bytes),
        oversized_results: oversized.unwrap_or(defaults.oversized_results),
        ..defaults
    })
}
