//! The rule `toolgate plugin new` writes (refuse every `*_delete` tool), built against
//! `toolgate:policy/policy@0.3.0`: a 0.3.0 plugin that uses no `state` imports none.
wit_bindgen::generate!({ path: "../../../wit/v0.3.0", world: "policy" });

struct Plugin;

impl Guest for Plugin {
    fn evaluate(call: ToolCall, _config: String) -> Decision {
        if call.tool.ends_with("_delete") {
            return Decision::Deny(format!("{} is off limits", call.tool));
        }
        Decision::Allow
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "hostile/policy-v3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Refuses *_delete tools (the scaffold's example rule)".into(),
        }
    }
}

export!(Plugin);
