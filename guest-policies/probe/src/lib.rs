//! Denies every call with a reason that quotes the call record the host passed in, so that a
//! test can check each field end to end (tool, grant, session, server, annotations). It also
//! logs one line per call, for the tests of traces (`toolgate eval`, `toolgate test --json`).
//!
//! It implements `toolgate:policy@0.2.0` (the reference plugins stay on 0.1.0), and its
//! config picks what it does about approvals:
//! - `"ask"`: `require-approval`, always (met once a person approves);
//! - `"ask-then-allow-cli"`: `require-approval` while the call has no `approval`; with one,
//!   allow it if it came through the `cli` channel, else deny it quoting the approval;
//! - `"ask-then-deny"`: `require-approval` without an approval, and with one a deny quoting
//!   it (`approved by <approver> via <channel> as <id>`): a plugin may refuse an approved call.
wit_bindgen::generate!({ path: "../../wit/v0.2.0", world: "policy" });

struct Probe;

impl Guest for Probe {
    fn evaluate(call: ToolCall, config: String) -> Decision {
        toolgate::policy::log::log(
            toolgate::policy::log::Level::Info,
            &format!("probed {}", call.tool),
        );
        // The tests of approvals: send the call to a person, and judge the approval.
        let ask =
            || Decision::RequireApproval(format!("the probe asks a person about {}", call.tool));
        let quoted = |a: &toolgate::policy::types::Approval| {
            format!("approved by {} via {} as {}", a.approver, a.channel, a.id)
        };
        match (config.as_str(), &call.approval) {
            ("\"ask\"", _) => return ask(),
            ("\"ask-then-allow-cli\"" | "\"ask-then-deny\"", None) => return ask(),
            ("\"ask-then-allow-cli\"", Some(a)) if a.channel == "cli" => return Decision::Allow,
            ("\"ask-then-allow-cli\"" | "\"ask-then-deny\"", Some(a)) => {
                return Decision::Deny(format!("the probe refuses a call {}", quoted(a)))
            }
            _ => {}
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
