//! Several upstream MCP servers behind one gateway.
//!
//! (Being written: the router, the legs and the driver land in the next commits.)

use serde_json::Value;
use std::time::Duration;

/// One upstream server of a set, as the config or the command line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The upstream's name: `[A-Za-z][A-Za-z0-9-]{0,31}`. Its tools are exposed as
    /// `{prefix}{separator}{tool}`, its resources as `{name}+{uri}`.
    pub name: String,
    /// The tool and prompt prefix (default: the name).
    pub prefix: Option<String>,
    /// Where the server is.
    pub target: Target,
}

/// How to reach an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A stdio server: its command and arguments.
    Command(Vec<String>),
    /// A Streamable HTTP server: its MCP endpoint, and extra headers to send it.
    Url {
        /// The endpoint (`http://` or `https://`).
        url: String,
        /// Extra headers (its own credentials, say).
        headers: Vec<(String, String)>,
    },
}

/// What one upstream listed, as a client sees it.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The upstream's name (from its spec).
    pub upstream: String,
    /// Its `initialize` result's `serverInfo` (`name`, `version`, ...), if it gave one.
    pub server_info: Option<Value>,
    /// Every tool of every page of its `tools/list`, as it wrote them (names not prefixed).
    pub tools: Vec<Value>,
}

/// Connects to each upstream like a client (`initialize`, `notifications/initialized`, every
/// page of `tools/list`), then closes. Any upstream that cannot be listed fails the whole call.
pub fn list_tools(specs: &[UpstreamSpec], timeout: Duration) -> anyhow::Result<Vec<Listing>> {
    let _ = (specs, timeout);
    anyhow::bail!("listing live upstreams is not written yet")
}
