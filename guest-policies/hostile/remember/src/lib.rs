//! Keeps the grant of every call it evaluated in a static, and denies with that list: a
//! pooled instance must never carry one grant's state into another grant's call.
wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "policy" });

use std::sync::Mutex;

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Hostile;

impl Guest for Hostile {
    fn evaluate(call: ToolCall, _config: String) -> Decision {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let reason = format!("this instance served before: [{}]", seen.join(","));
        seen.push(call.grant);
        Decision::Deny(reason)
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "hostile/remember".into(),
            version: "0.1.0".into(),
            description: "a hostile test plugin".into(),
        }
    }
}

export!(Hostile);
