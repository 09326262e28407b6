//! Denies every call with a reason that quotes the call record the host passed in, so that a
//! test can check each field end to end (tool, grant, session, server, annotations). It also
//! logs one line per call, for the tests of traces (`toolgate eval`, `toolgate test --json`).
//! With the config `"ask"` it returns `require-approval` instead.
wit_bindgen::generate!({ path: "../../wit", world: "policy" });

struct Probe;

impl Guest for Probe {
    fn evaluate(call: ToolCall, config: String) -> Decision {
        toolgate::policy::log::log(
            toolgate::policy::log::Level::Info,
            &format!("probed {}", call.tool),
        );
        // `"ask"`: send the call to a person instead (the tests of approvals).
        if config == "\"ask\"" {
            return Decision::RequireApproval(format!(
                "the probe asks a person about {}",
                call.tool
            ));
        }
        let annotations = call.annotations.map(|a| {
            format!(
                "readOnly={:?} destructive={:?} idempotent={:?} openWorld={:?}",
                a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint
            )
        });
        Decision::Deny(format!(
            "tool={} arguments={} grant={} session={} server={} annotations={}",
            call.tool,
            call.arguments,
            call.grant,
            call.session,
            call.server,
            annotations.as_deref().unwrap_or("none")
        ))
    }

    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn metadata() -> Metadata {
        Metadata {
            name: "probe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Quotes the call record it receives (tests only)".into(),
        }
    }
}

export!(Probe);
