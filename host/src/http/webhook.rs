//! The approvals webhook: every new approval request is announced by a POST to the
//! operator's URL, signed with HMAC-SHA256 (`X-Toolgate-Signature: sha256=<hex>` over the
//! body), carrying the request's id, grant, tool, rule, reason, times and a link to the page:
//! never the arguments, which may hold what the agent should not leak.

use super::config::WebhookConfig;
use crate::approvals::Request;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the body's signature.
pub(crate) const SIGNATURE: &str = "x-toolgate-signature";

/// What `Approvals::with_announce` calls for each new request: spawns the POST on the
/// current tokio runtime (a failure is logged; the request stands either way).
pub(crate) fn announcer(
    config: &WebhookConfig,
) -> anyhow::Result<impl Fn(&Request) + Send + Sync + 'static> {
    use anyhow::Context;
    let key = std::fs::read(&config.secret_file).with_context(|| {
        format!(
            "cannot read the approvals webhook secret `{}`",
            config.secret_file.display()
        )
    })?;
    let key = key.trim_ascii().to_vec();
    anyhow::ensure!(
        key.len() >= 16,
        "the approvals webhook secret `{}` is under 16 bytes",
        config.secret_file.display()
    );
    let runtime = tokio::runtime::Handle::try_current()
        .context("the approvals webhook needs the gateway's runtime")?;
    let client = reqwest::Client::new();
    let (url, link) = (config.url.clone(), config.link.clone());
    Ok(move |request: &Request| {
        let body = serde_json::json!({
            "id": request.id,
            "grant": request.grant,
            "tool": request.tool,
            "rule": request.rule,
            "reason": request.reason,
            "created_ms": request.created_ms,
            "expires_ms": request.expires_ms,
            "link": link.as_ref().map(|l| format!("{l}#{}", request.id)),
        })
        .to_string();
        let signature = sign(&key, body.as_bytes());
        let post = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header(SIGNATURE, format!("sha256={signature}"))
            .body(body);
        let id = request.id.clone();
        runtime.spawn(async move {
            match post.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(approval = %id, "approval announced to the webhook")
                }
                Ok(response) => {
                    tracing::warn!(approval = %id, status = %response.status(), "the approvals webhook refused the announcement")
                }
                Err(e) => {
                    tracing::warn!(approval = %id, error = %e, "cannot reach the approvals webhook")
                }
            }
        });
    })
}

/// HMAC-SHA256 of `body` under `key`, as hex.
pub(crate) fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
