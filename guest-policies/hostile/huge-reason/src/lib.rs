//! Denies with a 10 MB reason: the host must refuse to pass it on.
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
    fn evaluate(_call: ToolCall, _config: String) -> Decision {
        Decision::Deny("x".repeat(10 * 1024 * 1024))
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/huge-reason")
    }
}

export!(Hostile);
