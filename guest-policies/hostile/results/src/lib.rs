//! A `policy-with-results` plugin whose config (one word, bare or a JSON string) says what to do, for the host's
//! tests of `state` and `after-call`: every well-behaved answer, and every hostile one.
//!
//! `evaluate`: `remember` stores the call's arguments under `last`; `recall` denies with what
//! `last` holds; `forget` deletes it; `flood` stores 60 entries of 1 KiB and denies with how
//! many were refused and the first refusal; `flood-calls` calls `state.set` past the per-call
//! cap (a trap); `long-key` and `ttl-0` try a bad entry and deny with the refusal; anything
//! else allows.
//!
//! `after-call`: `pass`, `replace` (a small CallToolResult naming the result's length),
//! `refuse`, `recall` (a CallToolResult with what `last` holds), `trap`, `loop`, `huge` (a
//! 2 MiB replacement), `garbage` (not JSON), `array` (JSON, not an object), `long-reason`.
wit_bindgen::generate!({ path: "../../../wit/v0.3.0", world: "policy-with-results" });

use toolgate::policy::state;

struct Hostile;

const MINUTE_MS: u64 = 60_000;

fn text_result(text: &str) -> String {
    format!(r#"{{"content":[{{"type":"text","text":"{text}"}}]}}"#)
}

impl Guest for Hostile {
    fn evaluate(call: ToolCall, config: String) -> Decision {
        // The host's tests pass the word itself; a policy passes it as a JSON string.
        match config.trim_matches('"') {
            "remember" => match state::set("last", &call.arguments, MINUTE_MS) {
                Ok(()) => Decision::Allow,
                Err(why) => Decision::Deny(format!("not stored: {why}")),
            },
            "recall" => Decision::Deny(format!("recalled {:?}", state::get("last"))),
            "forget" => {
                state::delete("last");
                Decision::Allow
            }
            "flood" => {
                let value = "v".repeat(1024);
                let (mut refused, mut first) = (0, String::new());
                for i in 0..60 {
                    if let Err(why) = state::set(&format!("k{i}"), &value, MINUTE_MS) {
                        refused += 1;
                        if first.is_empty() {
                            first = why;
                        }
                    }
                }
                Decision::Deny(format!("refused {refused}: {first}"))
            }
            "flood-calls" => {
                for _ in 0..1000 {
                    let _ = state::set("k", "v", MINUTE_MS);
                }
                Decision::Allow
            }
            "long-key" => match state::set(&"k".repeat(1000), "v", MINUTE_MS) {
                Ok(()) => Decision::Allow,
                Err(why) => Decision::Deny(why),
            },
            "ttl-0" => match state::set("k", "v", 0) {
                Ok(()) => Decision::Allow,
                Err(why) => Decision::Deny(why),
            },
            _ => Decision::Allow,
        }
    }

    fn after_call(_call: ToolCall, result: String, config: String) -> ResultVerdict {
        // The host's tests pass the word itself; a policy passes it as a JSON string.
        match config.trim_matches('"') {
            "replace" => ResultVerdict::Replace(text_result(&format!("{} bytes", result.len()))),
            "refuse" => ResultVerdict::Refuse("the result is not for you".into()),
            "recall" => ResultVerdict::Replace(text_result(
                &state::get("last").unwrap_or_default().replace('"', "'"),
            )),
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "huge" => ResultVerdict::Replace(text_result(&"x".repeat(2 << 20))),
            "garbage" => ResultVerdict::Replace("this is not json".into()),
            "array" => ResultVerdict::Replace("[1, 2]".into()),
            "long-reason" => ResultVerdict::Refuse("r".repeat(5000)),
            _ => ResultVerdict::Pass,
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "hostile/results".into(),
            version: "0.1.0".into(),
            description: "a hostile test plugin that sees results".into(),
        }
    }
}

export!(Hostile);
