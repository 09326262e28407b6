//! Spins forever without calling the host: only fuel (or the epoch deadline) stops it.
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
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/loop")
    }
}

export!(Hostile);
