//! Calls host imports as often, and with arguments as large, as its config says, then
//! allows: the host's bounds on imports (calls per evaluation, counter name length, window
//! length) must stop it. The config is `"<what> <n>"`:
//!
//! - `names N`: `counters.consume` on N distinct counters;
//! - `long-name N`: one `counters.consume` on a counter named with N bytes;
//! - `window N`: one `counters.consume` with a window of N ms;
//! - `now N`: N calls of `clock.now-ms`;
//! - `log N`: N empty log messages (no bytes, so only the call cap can stop them).
wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "policy" });

use toolgate::policy::counters::{self, Scope, Window};

struct Hostile;

fn parse(config: &str) -> Option<(&str, u64)> {
    let config = config.trim().trim_matches('"');
    let (what, n) = config.split_once(' ')?;
    Some((what, n.parse().ok()?))
}

const MINUTE: Window = Window {
    max: 1_000_000,
    length_ms: 60_000,
};

impl Guest for Hostile {
    fn evaluate(_call: ToolCall, config: String) -> Decision {
        let Some((what, n)) = parse(&config) else {
            return Decision::Deny(format!("bad config {config}"));
        };
        let mut sum = 0u64;
        match what {
            "names" => {
                for i in 0..n {
                    let _ = counters::consume(&format!("c{i}"), Scope::Grant, MINUTE);
                }
            }
            "long-name" => {
                let _ = counters::consume(&"n".repeat(n as usize), Scope::Grant, MINUTE);
            }
            "window" => {
                let window = Window {
                    max: 1,
                    length_ms: n,
                };
                let _ = counters::consume("w", Scope::Grant, window);
            }
            "now" => {
                for _ in 0..n {
                    sum = sum.wrapping_add(toolgate::policy::clock::now_ms());
                }
            }
            "log" => {
                for _ in 0..n {
                    toolgate::policy::log::log(toolgate::policy::log::Level::Debug, "");
                }
            }
            other => return Decision::Deny(format!("unknown mode {other}")),
        }
        std::hint::black_box(sum);
        Decision::Allow
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config)
            .map(|_| ())
            .ok_or_else(|| format!("expected \"<what> <n>\", got {config}"))
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "hostile/import-flood".into(),
            version: "0.1.0".into(),
            description: "a hostile test plugin".into(),
        }
    }
}

export!(Hostile);
