//! Panics (with `panic = "abort"`, a trap).
wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "policy" });

struct Hostile;

fn metadata(name: &str) -> Metadata {
    Metadata {
        name: name.into(),
        version: "0.1.0".into(),
        description: "a hostile test plugin".into(),
    }
}

impl Guest for Hostile {
    fn evaluate(call: ToolCall, _config: String) -> Decision {
        if std::hint::black_box(!call.tool.is_empty()) {
            panic!("hostile plugin panics on purpose");
        }
        Decision::Allow
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/panic")
    }
}

export!(Hostile);
