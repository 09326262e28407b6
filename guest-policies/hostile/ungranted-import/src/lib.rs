//! Reads a file through WASI (std::fs). toolgate grants no WASI: the call must trap.
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
        match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => Decision::Deny(format!("read {} bytes of /etc/passwd", text.len())),
            Err(_) => Decision::Allow,
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/ungranted-import")
    }
}

export!(Hostile);
