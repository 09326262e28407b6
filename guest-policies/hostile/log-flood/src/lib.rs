//! Logs without end, in messages long enough that the byte cap (4 KiB) trips before the cap
//! on import calls: the host's log cap must stop it.
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
        loop {
            toolgate::policy::log::log(
                toolgate::policy::log::Level::Info,
                "flood flood flood flood flood flood flood flood flood flood flood flood flood flood flood flood",
            );
        }
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        metadata("hostile/log-flood")
    }
}

export!(Hostile);
