//! The policy document as written: PolicyLayer "version 1", with toolgate's extensions.
//!
//! These types only describe the JSON; [`super::Policy`] compiles them into what the gateway
//! evaluates. Every struct rejects unknown keys, so a misspelt `deny-if` fails the load instead
//! of silently not denying.

use super::condition::Condition;
use crate::counters::Scope;
use crate::counters::MAX_WINDOW_MS;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The whole document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Always `"1"` (the number `1` is accepted too).
    pub version: Version,
    /// What happens to a tool no rule names. Absent means `deny`: the gateway fails closed.
    #[serde(default)]
    pub default: DefaultAction,
    /// Tool names or globs removed from `tools/list` and answered "unknown tool" when called.
    #[serde(default)]
    pub hide: Vec<String>,
    /// Limits every allowed call must also pass.
    #[serde(default)]
    pub all_tools: AllTools,
    /// Rules by tool name or glob (`session_*`).
    #[serde(default)]
    pub tools: BTreeMap<String, ToolRule>,
    /// Plugins (WebAssembly components) that rules can `use`, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSpec>,
    /// A label for people and status pages.
    #[serde(default)]
    pub name: Option<String>,
    /// A description for people.
    #[serde(default)]
    pub description: Option<String>,
    /// What `toolgate init` saw when it wrote the policy: the server and each tool's risk class
    /// and annotations. The engine ignores it; `toolgate check --against` compares it with
    /// what a server lists now, to report the tools added, removed and reclassified since.
    #[serde(default)]
    pub catalog: Option<RecordedCatalog>,
}

/// `catalog`: a server's tool list as `toolgate init` classified it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedCatalog {
    /// Where the list came from (a file, a URL, a command), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Each upstream's `serverInfo` (`name`, `version`), by upstream name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, Value>,
    /// Every tool listed, by the name the policy calls it.
    #[serde(default)]
    pub tools: BTreeMap<String, RecordedTool>,
}

/// One tool of a [`RecordedCatalog`].
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedTool {
    /// Its risk class.
    pub class: RiskClass,
    /// Whether it reaches outside the server (`openWorldHint`, true when absent).
    pub open_world: bool,
    /// Its behaviour hints exactly as the server declared them; an absent hint is absent here.
    #[serde(default)]
    pub annotations: serde_json::Map<String, Value>,
}

/// A tool's risk class, from its MCP annotations (see `toolgate catalog`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RiskClass {
    /// `readOnlyHint: true`: does not modify its environment.
    Read,
    /// Modifies its environment, only additively (`destructiveHint: false`).
    Write,
    /// May destroy or overwrite (`destructiveHint: true`, or absent: the spec's default).
    Destructive,
}

impl RiskClass {
    /// The class's name as written: `read`, `write`, `destructive`.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Read => "read",
            RiskClass::Write => "write",
            RiskClass::Destructive => "destructive",
        }
    }
}

/// The format version; only "1" exists.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Value")]
pub struct Version;

/// A `version` other than 1, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported policy version {0}; this gateway reads version \"1\"")]
pub struct UnsupportedVersion(pub String);

impl TryFrom<Value> for Version {
    type Error = UnsupportedVersion;
    fn try_from(v: Value) -> Result<Self, UnsupportedVersion> {
        match v {
            Value::String(s) if s == "1" => Ok(Version),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(Version),
            other => Err(UnsupportedVersion(other.to_string())),
        }
    }
}

/// `default`: the verdict for tools that no rule names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Unnamed tools are listed and allowed.
    Allow,
    /// Unnamed tools are hidden and refused as "unknown tool".
    #[default]
    Deny,
}

/// `action` on a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The call goes through, subject to the rule's conditions and limits.
    #[default]
    Allow,
    /// The tool stays listed; every call is refused with the rule's `reason`.
    Deny,
    /// Every call waits for a human. Until approvals exist, such calls are refused.
    RequireApproval,
}

/// `all_tools`: limits that apply to every call that the rest of the policy allows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllTools {
    /// Counters every allowed call consumes.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Shorthand for one more limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Plugins every call that passes the declarative rules must also pass, in order.
    #[serde(default, rename = "use")]
    pub uses: Vec<UseSpec>,
}

/// A plugin: a file, `{"path": "plugins/gw_id_check.wasm", "sha256": "<hex>"}`, or one
/// from the store, `{"ref": "registry/repo:tag", "sha256": "<hex>"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The component file, relative to the policy file.
    #[serde(default)]
    pub path: Option<String>,
    /// The reference it was pulled by, for people; the store is searched by `sha256` only.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// The component's sha256 (hex). Checked whenever given; without it the digest is
    /// logged. Required with `ref`.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The capabilities the plugin may link (`["counters", "log"]`): an import of any other
    /// fails the load. Without it, all of them, with a warning that prints the line to add.
    #[serde(default)]
    pub grants: Option<BTreeSet<crate::capability::Capability>>,
    /// `fresh` (default) or `pooled`: see [`crate::plugins::Isolation`].
    #[serde(default)]
    pub isolation: crate::plugins::Isolation,
    /// Fuel (instructions) per evaluation.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per evaluation, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Linear memory cap per instance, in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Pooled mode: calls an instance serves before it is rebuilt.
    #[serde(default)]
    pub recycle_after: Option<u32>,
    /// Counters of this policy's limits the plugin may consume, by name. Any other counter
    /// the plugin names is its own, apart from the policy's.
    #[serde(default)]
    pub counters: Vec<String>,
    /// The bounds of the plugin's `state` entries, per grant; only for a plugin granted
    /// `state`.
    #[serde(default)]
    pub state: Option<StateSpec>,
    /// The results a `policy-with-results` plugin is shown.
    #[serde(default)]
    pub results: Option<ResultsSpec>,
}

/// `plugins.<name>.state`: each bound unset is the default of
/// [`crate::counters::StateLimits`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Live entries per grant, 1 to [`MAX_STATE_ENTRIES`].
    #[serde(default)]
    pub max_entries: Option<u32>,
    /// Bytes of keys and values per grant, 1 to [`MAX_STATE_BYTES`].
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The longest time to live a plugin may ask for, in seconds, 1 to [`MAX_STATE_TTL_S`].
    #[serde(default)]
    pub max_ttl_s: Option<u64>,
}

/// `plugins.<name>.results`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsSpec {
    /// The largest result shown to the plugin, in bytes, 1 to [`MAX_RESULT_BYTES`].
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// What happens to a larger one: `pass` or `refuse` (default).
    #[serde(default)]
    pub oversized: Option<crate::plugins::Oversized>,
}

/// The most entries a policy may let one plugin keep per grant.
pub const MAX_STATE_ENTRIES: u32 = 1_000_000;
/// The most bytes a policy may let one plugin keep per grant (64 MiB).
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// The longest time to live a policy may allow, in seconds (a year).
pub const MAX_STATE_TTL_S: u64 = 365 * 86_400;
/// The largest `results.max_bytes` (64 MiB): the result is copied into the plugin's memory.
pub const MAX_RESULT_BYTES: u64 = 64 << 20;

/// `value` if it is within `1..=max`, else why not, naming `field`.
fn bounded<T: PartialOrd + From<u8> + std::fmt::Display>(
    field: &str,
    value: T,
    max: T,
) -> Result<T, String> {
    if value < T::from(1) || value > max {
        return Err(format!("`{field}` is {value}; it must be 1 to {max}"));
    }
    Ok(value)
}

impl PluginSpec {
    /// The bounds of its `state` entries: the defaults, with what `state` sets. A `state`
    /// config on a plugin whose `grants` leave `state` out, or a bound of zero or past its
    /// ceiling, is an error.
    pub fn state_limits(&self) -> Result<crate::counters::StateLimits, String> {
        let mut limits = crate::counters::StateLimits::default();
        let Some(spec) = &self.state else {
            return Ok(limits);
        };
        if let Some(grants) = &self.grants {
            if !grants.contains(&crate::capability::Capability::State) {
                return Err(
                    "it has a `state` config, but its `grants` leave out `state`: add \"state\" to its \"grants\", or remove the config".into(),
                );
            }
        }
        if let Some(n) = spec.max_entries {
            limits.max_entries = bounded("state.max_entries", n, MAX_STATE_ENTRIES)?;
        }
        if let Some(n) = spec.max_bytes {
            limits.max_bytes = bounded("state.max_bytes", n, MAX_STATE_BYTES)?;
        }
        if let Some(n) = spec.max_ttl_s {
            let secs = bounded("state.max_ttl_s", n, MAX_STATE_TTL_S)?;
            limits.max_ttl = std::time::Duration::from_secs(secs);
        }
        Ok(limits)
    }

    /// The largest result shown to it, if `results` sets one (checked), and what happens to
    /// a larger one, if it says.
    pub fn result_limits(
        &self,
    ) -> Result<(Option<usize>, Option<crate::plugins::Oversized>), String> {
        let Some(spec) = &self.results else {
            return Ok((None, None));
        };
        let max = spec
            .max_bytes
            .map(|n| bounded("results.max_bytes", n, MAX_RESULT_BYTES).map(|n| n as usize))
            .transpose()?;
        Ok((max, spec.oversized))
    }
}

/// One use of a plugin by a rule: `{"plugin": "gw-id-check", "config": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseSpec {
    /// The plugin's name in `plugins`.
    pub plugin: String,
    /// The configuration passed to the plugin (as JSON text) with every call.
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// What the policy says about one tool (or every tool a glob matches).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// allow (default), deny or require_approval.
    #[serde(default)]
    pub action: Action,
    /// Text returned with a refusal from this rule.
    #[serde(default)]
    pub reason: Option<String>,
    /// Conditions that must all hold, or the call is denied.
    #[serde(default)]
    pub require: Vec<Condition>,
    /// Conditions any one of which denies the call.
    #[serde(default)]
    pub deny_if: Vec<Condition>,
    /// Counters the call consumes.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Shorthand for one more limit, counted per tool pattern.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// Plugins the call must also pass, in order, after the declarative checks.
    #[serde(default, rename = "use")]
    pub uses: Vec<UseSpec>,
    /// How a call this rule sends for approval is held (`hold`, `timeout`, `reuse`, `bind`,
    /// `via`; defaults when absent).
    #[serde(default)]
    pub approval: Option<crate::approvals::ApprovalSpec>,
    /// Log this tool's arguments in the decision log (off without it), without what the
    /// JSON pointers in `erase` name and with what those in `mask` name replaced by `"***"`.
    #[serde(default)]
    pub log_args: Option<crate::audit::ArgsLogging>,
    /// `false`: the rule is in shadow. It is evaluated beside the call (its own counters, off
    /// the call's path) and what it would have decided is logged, but the call is decided as
    /// if the rule were not there. So a shadow rule can never turn a deny into an allow.
    #[serde(default = "enforced")]
    pub enforce: bool,
    /// A note for people.
    #[serde(default)]
    pub description: Option<String>,
}

fn enforced() -> bool {
    true
}

/// A named counter: `{"counter": "session_create_rate", "window": "minute", "max": 30, "scope": "grant"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The counter's name; limits with the same name and scope share one count.
    pub counter: String,
    /// The window's length.
    pub window: WindowSpec,
    /// Calls admitted in any interval of the window's length; at least 1.
    pub max: u64,
    /// Who shares the count. Absent means `grant`.
    #[serde(default = "grant_scope")]
    pub scope: Scope,
}

/// `rate_limit: {max, window}`, shorthand for a limit on a counter named after the rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Calls admitted per window; at least 1.
    pub max: u64,
    /// The window's length.
    pub window: WindowSpec,
    /// Who shares the count. Absent means `grant`.
    #[serde(default = "grant_scope")]
    pub scope: Scope,
    /// The counter's name. Absent means `rate:<tool pattern>` (or `rate:all_tools`).
    #[serde(default)]
    pub counter: Option<String>,
}

fn grant_scope() -> Scope {
    Scope::Grant
}

/// A window length: seconds as a number, a unit name (`second`, `minute`, `hour`, `day`),
/// or a number with a unit suffix (`"90s"`, `"5m"`, `"2h"`, `"1d"`, `"250ms"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "Value")]
pub struct WindowSpec {
    /// The length in milliseconds.
    pub length_ms: u64,
    /// How a reason names the window: `per minute`, `per 90 s`.
    pub label: String,
}

/// Why a `window` is not one, with the window as JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// Not a positive number, a unit or a length with a unit.
    #[error("invalid window {0}: a window is seconds (a number) or one of second|minute|hour|day, or like \"90s\", \"5m\", \"2h\", \"1d\"")]
    Invalid(String),
    /// Longer than counters keep.
    #[error("window {0} is longer than the 7-day maximum")]
    TooLong(String),
}

impl TryFrom<Value> for WindowSpec {
    type Error = WindowError;
    fn try_from(v: Value) -> Result<Self, WindowError> {
        let length_ms = match &v {
            Value::Number(n) => n
                .as_f64()
                .filter(|s| *s > 0.0)
                .map(|s| (s * 1000.0).round() as u64),
            Value::String(s) => match s.as_str() {
                "second" => Some(1_000),
                "minute" => Some(60_000),
                "hour" => Some(3_600_000),
                "day" => Some(86_400_000),
                other => {
                    let split = other
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(other.len());
                    let (num, unit) = other.split_at(split);
                    let unit_ms = match unit {
                        "ms" => Some(1),
                        "s" => Some(1_000),
                        "m" => Some(60_000),
                        "h" => Some(3_600_000),
                        "d" => Some(86_400_000),
                        _ => None,
                    };
                    num.parse::<u64>()
                        .ok()
                        .zip(unit_ms)
                        .map(|(n, u)| n.saturating_mul(u))
                }
            },
            _ => None,
        }
        .filter(|ms| *ms > 0)
        .ok_or_else(|| WindowError::Invalid(v.to_string()))?;
        if length_ms > MAX_WINDOW_MS {
            return Err(WindowError::TooLong(v.to_string()));
        }
        let label = match length_ms {
            1_000 => "per second".to_owned(),
            60_000 => "per minute".to_owned(),
            3_600_000 => "per hour".to_owned(),
            86_400_000 => "per day".to_owned(),
            ms if ms % 1000 == 0 => format!("per {} s", ms / 1000),
            ms => format!("per {ms} ms"),
        };
        Ok(Self { length_ms, label })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[rstest::rstest]
    #[case(json!("minute"), 60_000, "per minute")]
    #[case(json!(60), 60_000, "per minute")]
    #[case(json!(1.5), 1_500, "per 1500 ms")]
    #[case(json!("90s"), 90_000, "per 90 s")]
    #[case(json!("5m"), 300_000, "per 300 s")]
    #[case(json!("1d"), 86_400_000, "per day")]
    fn windows(#[case] v: Value, #[case] ms: u64, #[case] label: &str) {
        let w = WindowSpec::try_from(v).unwrap();
        assert_eq!((w.length_ms, w.label.as_str()), (ms, label));
    }

    #[test]
    fn bad_windows_and_versions_say_why() {
        assert_eq!(
            WindowSpec::try_from(json!("30d")).unwrap_err().to_string(),
            "window \"30d\" is longer than the 7-day maximum"
        );
        assert!(WindowSpec::try_from(json!("5x"))
            .unwrap_err()
            .to_string()
            .starts_with("invalid window \"5x\": a window is seconds"));
        assert_eq!(
            Version::try_from(json!(2)).unwrap_err().to_string(),
            "unsupported policy version 2; this gateway reads version \"1\""
        );
    }

    #[rstest::rstest]
    #[case(json!(0))]
    #[case(json!(-1))]
    #[case(json!("fortnight"))]
    #[case(json!("5x"))]
    #[case(json!("30d"))]
    #[case(json!(true))]
    fn bad_windows(#[case] v: Value) {
        assert!(WindowSpec::try_from(v).is_err());
    }

    fn plugin(entry: Value) -> PluginSpec {
        serde_json::from_value(entry).unwrap()
    }

    #[test]
    fn state_and_result_bounds_are_read_and_checked() {
        let spec = plugin(json!({
            "path": "p.wasm",
            "grants": ["state"],
            "state": {"max_entries": 10, "max_bytes": 4096, "max_ttl_s": 60},
            "results": {"max_bytes": 2048, "oversized": "pass"},
        }));
        let limits = spec.state_limits().unwrap();
        assert_eq!(
            (
                limits.max_entries,
                limits.max_bytes,
                limits.max_ttl.as_secs()
            ),
            (10, 4096, 60)
        );
        assert_eq!(
            spec.result_limits().unwrap(),
            (Some(2048), Some(crate::plugins::Oversized::Pass))
        );
        // Nothing said: the defaults; all granted (no `grants`): `state` may be set.
        let spec = plugin(json!({"path": "p.wasm", "state": {"max_entries": 3}}));
        assert_eq!(spec.state_limits().unwrap().max_entries, 3);
        assert_eq!(spec.result_limits().unwrap(), (None, None));
        let spec = plugin(json!({"path": "p.wasm", "grants": ["log"], "state": {}}));
        assert!(
            spec.state_limits()
                .unwrap_err()
                .contains("`grants` leave out `state`"),
            "state without the grant"
        );
        for (entry, error) in [
            (
                json!({"max_entries": 0}),
                "`state.max_entries` is 0; it must be 1 to 1000000",
            ),
            (
                json!({"max_bytes": 1_u64 << 40}),
                "`state.max_bytes` is 1099511627776; it must be 1 to 67108864",
            ),
            (
                json!({"max_ttl_s": 0}),
                "`state.max_ttl_s` is 0; it must be 1 to 31536000",
            ),
        ] {
            let spec = plugin(json!({"path": "p.wasm", "state": entry}));
            assert_eq!(spec.state_limits().unwrap_err(), error);
        }
        let spec = plugin(json!({"path": "p.wasm", "results": {"max_bytes": 0}}));
        assert_eq!(
            spec.result_limits().unwrap_err(),
            "`results.max_bytes` is 0; it must be 1 to 67108864"
        );
        // Unknown fields and values are refused as the document is read.
        for entry in [
            json!({"path": "p.wasm", "state": {"max_keys": 1}}),
            json!({"path": "p.wasm", "results": {"oversized": "drop"}}),
        ] {
            assert!(serde_json::from_value::<PluginSpec>(entry).is_err());
        }
    }
}
