//! Loops calling a host import. Fuel counts only guest instructions, so fuel alone would let
//! it run long; the host's cap on calls per import stops it first (the epoch deadline is the
//! backstop).
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
        let mut sum: u64 = 0;
        loop {
            sum = sum.wrapping_add(toolgate::policy::clock::now_ms());
            std::hint::black_box(sum);
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/import-loop")
    }
}

export!(Hostile);
