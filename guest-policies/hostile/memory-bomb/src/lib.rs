//! Allocates 1 MiB blocks until the memory cap stops it.
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
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![7u8; 1 << 20]);
            std::hint::black_box(&blocks);
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/memory-bomb")
    }
}

export!(Hostile);
