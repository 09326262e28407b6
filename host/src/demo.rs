//! `toolgate demo`: the product working, in one command and half a minute of reading.
//!
//! It starts this very binary as `toolgate run` with the example policy
//! (`examples/llm-cli-gateway/policy.json`) in front of the built-in LLM CLI Gateway stand-in,
//! then plays a scripted agent over real pipes and prints what each call got.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The example policy the demo runs, as committed in `examples/llm-cli-gateway/policy.json`.
pub const EXAMPLE_POLICY: &str = include_str!("../../examples/llm-cli-gateway/policy.json");

/// A minimal line-oriented MCP client over a child's pipes.
struct Agent {
    child: Child,
    to_gateway: ChildStdin,
    from_gateway: BufReader<ChildStdout>,
    next_id: u64,
}

impl Agent {
    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.to_gateway, "{line}")?;
        self.to_gateway.flush()?;
        loop {
            let mut reply = String::new();
            if self.from_gateway.read_line(&mut reply)? == 0 {
                bail!("the gateway closed its output while `{method}` was pending");
            }
            let mut reply: Value =
                serde_json::from_str(&reply).context("the gateway sent a line that is not JSON")?;
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    bail!("`{method}` failed: {error}");
                }
                return Ok(reply["result"].take());
            }
        }
    }

    fn notify(&mut self, method: &str) -> anyhow::Result<()> {
        writeln!(
            self.to_gateway,
            "{}",
            json!({"jsonrpc": "2.0", "method": method})
        )?;
        Ok(self.to_gateway.flush()?)
    }
}

fn text_of(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs the demo, writing the transcript to `out`.
pub fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the toolgate binary")?;
    let policy_path =
        std::env::temp_dir().join(format!("toolgate-demo-{}.json", std::process::id()));
    std::fs::write(&policy_path, EXAMPLE_POLICY)?;
    let mut child = Command::new(&exe)
        .arg("run")
        .arg("--policy")
        .arg(&policy_path)
        .arg("--grant")
        .arg("demo-agent")
        .arg("--")
        .arg(&exe)
        .arg("standin")
        .env("TOOLGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start `toolgate run`")?;
    let mut agent = Agent {
        to_gateway: child.stdin.take().expect("piped"),
        from_gateway: BufReader::new(child.stdout.take().expect("piped")),
        child,
        next_id: 0,
    };
    let result = script(&mut agent, out);
    drop(agent.to_gateway); // closing stdin shuts the gateway and the stand-in down cleanly
    let status = agent.child.wait()?;
    let _ = std::fs::remove_file(&policy_path);
    result?;
    writeln!(
        out,
        "\nThe client closed its stdin; the gateway stopped the upstream and exited ({status})."
    )?;
    Ok(())
}

fn call(
    agent: &mut Agent,
    out: &mut impl Write,
    label: &str,
    tool: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let result = agent.request("tools/call", json!({"name": tool, "arguments": args}))?;
    let verdict = result
        .pointer("/_meta/toolgate/decision")
        .and_then(Value::as_str)
        .unwrap_or("allow");
    let shown = match verdict {
        "allow" => {
            let text = text_of(&result);
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let detail = body
                .pointer("/session/id")
                .or_else(|| body.get("sessionId"))
                .cloned()
                .unwrap_or(body);
            format!("upstream ran it: {detail}")
        }
        _ => text_of(&result),
    };
    writeln!(out, "{label:<44} {verdict:<16} {shown}")?;
    Ok(result)
}

fn script(agent: &mut Agent, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "toolgate demo: a scripted agent -> toolgate run -> LLM CLI Gateway stand-in"
    )?;
    writeln!(
        out,
        "policy: examples/llm-cli-gateway/policy.json (grant `demo-agent`)\n"
    )?;
    let init = agent.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "toolgate-demo", "version": "1"}}),
    )?;
    agent.notify("notifications/initialized")?;
    writeln!(
        out,
        "initialize       -> {} {}",
        init["serverInfo"]["name"], init["serverInfo"]["version"]
    )?;

    let upstream: Value = serde_json::from_str(toolgate_standin::llm_cli_gateway::CATALOGUE_JSON)?;
    let upstream_names: Vec<&str> = upstream["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let listed = agent.request("tools/list", json!({}))?;
    let seen: Vec<&str> = listed["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let hidden: Vec<&str> = upstream_names
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    writeln!(
        out,
        "tools/list       -> the upstream offers {} tools; the agent sees {} (hidden: {})\n",
        upstream_names.len(),
        seen.len(),
        hidden.join(", ")
    )?;

    call(
        agent,
        out,
        "session_create {cli: claude}",
        "session_create",
        json!({"cli": "claude"}),
    )?;
    let tracked = call(
        agent,
        out,
        "claude_request {prompt}",
        "claude_request",
        json!({"prompt": "hello"}),
    )?;
    let gw_id = serde_json::from_str::<Value>(&text_of(&tracked))?["sessionId"]
        .as_str()
        .unwrap_or("gw-?")
        .to_owned();
    call(
        agent,
        out,
        "codex_request {sessionId: <that gw- id>}",
        "codex_request",
        json!({"prompt": "resume", "sessionId": gw_id}),
    )?;
    call(
        agent,
        out,
        "session_clear_all (hidden)",
        "session_clear_all",
        json!({}),
    )?;
    call(
        agent,
        out,
        "no_such_tool (does not exist)",
        "no_such_tool",
        json!({}),
    )?;
    call(
        agent,
        out,
        "session_create {cli: vim}",
        "session_create",
        json!({"cli": "vim"}),
    )?;
    call(
        agent,
        out,
        "session_delete {sessionId}",
        "session_delete",
        json!({"sessionId": "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40"}),
    )?;
    writeln!(out, "\nThe seed's rule caps session_create at 30 per minute per grant. One call was made above; 29 more:")?;
    let mut allowed = 1;
    for _ in 0..29 {
        let r = agent.request(
            "tools/call",
            json!({"name": "session_create", "arguments": {"cli": "codex"}}),
        )?;
        if r.get("isError") != Some(&json!(true)) {
            allowed += 1;
        }
    }
    writeln!(
        out,
        "{:<44} {:<16} {allowed} of 30 created",
        "session_create x29", "allow"
    )?;
    let limited = call(
        agent,
        out,
        "session_create (the 31st)",
        "session_create",
        json!({"cli": "codex"}),
    )?;
    if let Some(ms) = limited.pointer("/_meta/toolgate/retry_after_ms") {
        writeln!(
            out,
            "{:<44} {:<16} _meta.toolgate.retry_after_ms = {ms}",
            "", ""
        )?;
    }
    Ok(())
}
