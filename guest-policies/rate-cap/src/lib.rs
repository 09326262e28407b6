//! `rate-cap`: a rate cap on the host's `counters` import.
//!
//! Its config has the keys of a declarative limit, `{"counter", "window", "max", "scope"}`,
//! and with the same config it decides exactly as the declarative limit does: the same
//! counter store, the same exact sliding window, the same reason text.

use serde::Deserialize;
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;

wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "policy" });

use toolgate::policy::counters::{self, Scope, Window};
use toolgate::policy::types::RateLimit;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    counter: String,
    window: Value,
    max: u64,
    #[serde(default = "grant")]
    scope: String,
}

fn grant() -> String {
    "grant".into()
}

/// A parsed config: the counter, its scope and window, and how reasons name the window.
struct Cap {
    counter: String,
    scope: Scope,
    window: Window,
    label: String,
}

/// Window lengths as the declarative engine reads them: seconds, a unit name, or `90s`-style.
fn window_ms(v: &Value) -> Option<u64> {
    match v {
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
                    "ms" => 1,
                    "s" => 1_000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    _ => return None,
                };
                num.parse::<u64>().ok().map(|n| n.saturating_mul(unit_ms))
            }
        },
        _ => None,
    }
    .filter(|ms| *ms > 0 && *ms <= 7 * 86_400_000)
}

fn label(ms: u64) -> String {
    match ms {
        1_000 => "per second".into(),
        60_000 => "per minute".into(),
        3_600_000 => "per hour".into(),
        86_400_000 => "per day".into(),
        ms if ms % 1000 == 0 => format!("per {} s", ms / 1000),
        ms => format!("per {ms} ms"),
    }
}

fn parse(text: &str) -> Result<Cap, String> {
    let config: Config =
        serde_json::from_str(text).map_err(|e| format!("invalid rate-cap config: {e}"))?;
    let length_ms = window_ms(&config.window).ok_or_else(|| {
        format!(
            "invalid window {}: seconds, second|minute|hour|day, or like \"90s\"",
            config.window
        )
    })?;
    if config.max == 0 {
        return Err("`max` must be at least 1".into());
    }
    if config.counter.trim().is_empty() {
        return Err("a counter needs a name".into());
    }
    let scope = match config.scope.as_str() {
        "grant" => Scope::Grant,
        "session" => Scope::Session,
        "global" => Scope::Global,
        other => return Err(format!("unknown scope `{other}`: grant, session or global")),
    };
    Ok(Cap {
        counter: config.counter,
        scope,
        window: Window {
            max: config.max,
            length_ms,
        },
        label: label(length_ms),
    })
}

thread_local! {
    /// The last config text this instance parsed, and the cap it gave: a pooled instance is
    /// called again and again with the same config, which then costs a string compare
    /// instead of a parse.
    static LAST_CAP: RefCell<Option<(String, Rc<Cap>)>> = const { RefCell::new(None) };
}

/// [`parse`], remembered for the next call with the same text.
fn cap_for(text: &str) -> Result<Rc<Cap>, String> {
    LAST_CAP.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, cap)) = last.as_ref() {
            if seen == text {
                return Ok(cap.clone());
            }
        }
        let cap = Rc::new(parse(text)?);
        *last = Some((text.to_owned(), cap.clone()));
        Ok(cap)
    })
}

struct RateCap;

impl Guest for RateCap {
    fn evaluate(_call: ToolCall, config: String) -> Decision {
        let cap = match cap_for(&config) {
            Ok(cap) => cap,
            Err(e) => return Decision::Deny(e),
        };
        match counters::consume(&cap.counter, cap.scope, cap.window) {
            Ok(()) => Decision::Allow,
            Err(retry_after_ms) => Decision::RateLimited(RateLimit {
                reason: format!(
                    "counter {} allows {} {}; retry in {} s",
                    cap.counter,
                    cap.window.max,
                    cap.label,
                    retry_after_ms.div_ceil(1000)
                ),
                retry_after_ms,
            }),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "rate-cap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A configurable rate cap on the host's counters".into(),
        }
    }
}

export!(RateCap);
