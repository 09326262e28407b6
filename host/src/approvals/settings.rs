//! A rule's `"approval"` object: how long a call is held, how long its request stays open, how
//! far an approval reaches, and who may give it.

use serde::Deserialize;
use std::time::Duration;

/// The longest reuse window an approval may have.
pub const MAX_REUSE: Duration = Duration::from_secs(24 * 3600);

/// `"approval": {"hold": "45s", "timeout": "10m", "reuse": "once", "bind": "args", "via": "both"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long the call itself is held waiting (default 45 s: under the 60 s at which most
    /// clients give up). After it the agent gets `require_approval` with the request's id.
    pub hold: Duration,
    /// How long the request stays pending before it expires (default 10 min).
    pub timeout: Duration,
    /// How far one approval reaches.
    pub reuse: Reuse,
    /// What an approval is bound to.
    pub bind: Bind,
    /// Who may decide.
    pub via: Via,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(45),
            timeout: Duration::from_secs(600),
            reuse: Reuse::Once,
            bind: Bind::Args,
            via: Via::Both,
        }
    }
}

/// How far one approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The one call (or its identical retry), once.
    Once,
    /// Every identical call in the same MCP session, until the request's timeout.
    Session,
    /// Every identical call of the grant for this long (at most [`MAX_REUSE`]).
    For(Duration),
}

/// What an approval is bound to, besides the grant and the policy's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bind {
    /// The tool and its canonical arguments (the default).
    Args,
    /// The tool, whatever its arguments: only when written.
    Tool,
}

/// Who may decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The agent's own client (MCP elicitation).
    Client,
    /// An operator (CLI, HTTP API, web page).
    Operator,
    /// Either.
    Both,
}

/// The object as written in a policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    #[serde(default)]
    hold: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    reuse: Option<String>,
    #[serde(default)]
    bind: Option<Bind>,
    #[serde(default)]
    via: Option<Via>,
}

impl ApprovalSpec {
    /// The settings it says, the defaults for what it leaves out; an error names the field.
    pub fn settings(&self) -> Result<ApprovalSettings, String> {
        let mut s = ApprovalSettings::default();
        if let Some(hold) = &self.hold {
            s.hold = duration("hold", hold)?;
        }
        if let Some(timeout) = &self.timeout {
            s.timeout = duration("timeout", timeout)?;
        }
        if s.hold > s.timeout {
            return Err(format!(
                "`hold` ({}) is longer than `timeout` ({}): a call cannot wait for a request that has expired",
                show(s.hold),
                show(s.timeout)
            ));
        }
        if let Some(reuse) = &self.reuse {
            s.reuse = reuse.parse()?;
        }
        s.bind = self.bind.unwrap_or(Bind::Args);
        s.via = self.via.unwrap_or(Via::Both);
        Ok(s)
    }
}

impl std::str::FromStr for Reuse {
    type Err = String;

    /// `once`, `session`, or a duration up to 24 h (`1h`), as a rule or an approver writes it.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "once" => Reuse::Once,
            "session" => Reuse::Session,
            other => {
                let window = duration("reuse", other).map_err(|_| {
                    format!(
                        "`reuse` is `once`, `session` or a duration up to 24h (`1h`), not `{other}`"
                    )
                })?;
                if window > MAX_REUSE {
                    return Err(format!(
                        "`reuse` of {} is over the 24h maximum",
                        show(window)
                    ));
                }
                Reuse::For(window)
            }
        })
    }
}

/// `45s`, `10m`, `1h`, `500ms`: a positive duration.
fn duration(field: &str, text: &str) -> Result<Duration, String> {
    let bad = || format!("`{field}` is a duration such as `45s`, `10m` or `1h`, not `{text}`");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(unit_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

fn show(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<ApprovalSettings, String> {
        serde_json::from_str::<ApprovalSpec>(json)
            .map_err(|e| e.to_string())?
            .settings()
    }

    #[test]
    fn defaults_and_each_field_as_written() {
        assert_eq!(spec("{}").unwrap(), ApprovalSettings::default());
        let s = spec(
            r#"{"hold": "5s", "timeout": "1h", "reuse": "2h", "bind": "tool", "via": "operator"}"#,
        )
        .unwrap();
        assert_eq!(s.hold, Duration::from_secs(5));
        assert_eq!(s.timeout, Duration::from_secs(3600));
        assert_eq!(s.reuse, Reuse::For(Duration::from_secs(7200)));
        assert_eq!((s.bind, s.via), (Bind::Tool, Via::Operator));
        assert_eq!(
            spec(r#"{"reuse": "session"}"#).unwrap().reuse,
            Reuse::Session
        );
    }

    #[test]
    fn what_cannot_work_is_refused_naming_the_field() {
        for (json, needle) in [
            (r#"{"hold": "soon"}"#, "`hold` is a duration"),
            (r#"{"hold": "0s"}"#, "`hold` is a duration"),
            (
                r#"{"hold": "2m", "timeout": "1m"}"#,
                "longer than `timeout`",
            ),
            (r#"{"reuse": "25h"}"#, "over the 24h maximum"),
            (r#"{"reuse": "forever"}"#, "`reuse` is `once`, `session`"),
            (r#"{"bind": "grant"}"#, "unknown variant"),
            (r#"{"holds": "1s"}"#, "unknown field"),
        ] {
            let err = spec(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
