//! Several upstream servers behind one gateway (issue 20), end to end: `toolgate run
//! --upstream NAME=CMD|URL` in front of the LLM CLI Gateway stand-in, the echo server and
//! server-everything; and `toolgate serve` with three `[[upstreams]]` (stdio, Streamable HTTP,
//! stdio), talked to with raw HTTP. The Python SDK and the Inspector CLI against the same
//! three are in tests/python/test_upstreams.py.

use crate::http::{Mcp, Serve};
use crate::support::{body, echo, everything, refusal, standin, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The 46 tools of the LLM CLI Gateway stand-in (its 2.10.0 catalogue), in its order.
fn standin_tools() -> Vec<String> {
    let catalogue: Value =
        serde_json::from_str(toolgate_standin::llm_cli_gateway::CATALOGUE_JSON).unwrap();
    let tools = catalogue.get("tools").unwrap_or(&catalogue);
    tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

const ECHO_TOOLS: [&str; 3] = ["echo", "crash", "fail"];

/// `--upstream NAME=COMMAND` for a command given as words (each quoted for the shell split).
fn flag(name: &str, command: &[String]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| shlex::try_quote(w).unwrap().into_owned())
        .collect();
    format!("{name}={}", words.join(" "))
}

/// `toolgate run --policy POLICY --upstream ...` (no single upstream command).
fn run(policy: &str, upstreams: &[String]) -> Client {
    let mut extra: Vec<&str> = Vec::new();
    for u in upstreams {
        extra.push("--upstream");
        extra.push(u);
    }
    Client::start_with(policy, &[], &extra)
}

/// `initialize` with these client capabilities, then `notifications/initialized`.
fn initialize_with(client: &mut Client, capabilities: Value) -> Value {
    let reply = client.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
               "clientInfo": {"name": "e2e", "version": "1"}}),
    );
    assert!(reply.get("result").is_some(), "initialize failed: {reply}");
    client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    reply
}

/// Every tool name of every page of `tools/list`, in order.
fn all_tools(client: &mut Client) -> Vec<String> {
    let mut names = Vec::new();
    let mut params = json!({});
    for _ in 0..100 {
        let reply = client.request("tools/list", params);
        let result = &reply["result"];
        assert!(result.is_object(), "tools/list failed: {reply}");
        for tool in result["tools"].as_array().unwrap() {
            names.push(tool["name"].as_str().unwrap().to_owned());
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) => params = json!({"cursor": cursor}),
            None => return names,
        }
    }
    panic!("tools/list did not end within 100 pages");
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or("")
}

/// Waits for the reply with `id`, collecting every message that came before it.
fn until_reply(client: &mut Client, id: &Value) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let message = client.recv();
        if message.get("method").is_none() && &message["id"] == id {
            return (message, before);
        }
        before.push(message);
    }
}

/// The processes whose parent is `pid`, with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((child, cmdline));
        }
    }
    found
}

fn three_upstreams() -> Option<Vec<String>> {
    let everything = everything()?;
    Some(vec![
        flag("llmgw", &standin()),
        flag("echo", &echo()),
        flag("everything", &everything),
    ])
}

const ALLOW_ALL: &str = r#"{"version": "1", "default": "allow"}"#;

#[test]
fn the_merged_list_names_every_tool_of_every_upstream_under_its_prefix() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    let names = all_tools(&mut client);
    let mut expected: Vec<String> = standin_tools()
        .iter()
        .map(|t| format!("llmgw__{t}"))
        .collect();
    assert_eq!(expected.len(), 46);
    expected.extend(ECHO_TOOLS.iter().map(|t| format!("echo__{t}")));
    let (got, want): (BTreeSet<_>, BTreeSet<_>) =
        (names.iter().collect(), expected.iter().collect());
    assert_eq!(got, want);
    assert_eq!(names.len(), 49, "no tool is listed twice: {names:?}");
}

#[test]
fn calls_reach_the_server_that_owns_the_tool() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    // The stand-in's own answer: a session record with a fresh UUID.
    let created = client.call("llmgw__session_create", json!({"cli": "claude"}));
    let record = body(&created);
    assert_eq!(record["success"], true, "{created}");
    assert_eq!(record["session"]["cli"], "claude", "{created}");
    // The echo server's own answer: the message, verbatim.
    let echoed = client.call("echo__echo", json!({"message": "from echo"}));
    assert_eq!(
        echoed,
        json!({"content": [{"type": "text", "text": "from echo"}]})
    );
    // Only the echo server has a `fail` tool answering with this JSON-RPC error (the
    // stand-in would answer an unknown tool with an `isError` result).
    let fail = client.request("tools/call", json!({"name": "echo__fail", "arguments": {}}));
    assert_eq!(fail["error"]["code"], -32603, "{fail}");
    assert!(
        fail["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("fail: "),
        "{fail}"
    );
}

#[test]
fn a_tool_under_an_unknown_prefix_is_refused_and_reaches_no_server() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    // Before any listing the policy does not know the catalogue: the router refuses.
    let early = client.request(
        "tools/call",
        json!({"name": "nope__echo", "arguments": {"message": "x"}}),
    );
    let early_refused = early["error"]["code"] == -32602 || early["result"]["isError"] == true;
    assert!(early_refused, "{early}");
    assert!(!early.to_string().contains("\"text\":\"x\""), "{early}");
    // Nor does a name with no separator at all.
    let bare = client.request(
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "x"}}),
    );
    assert!(
        bare["error"]["code"] == -32602 || bare["result"]["isError"] == true,
        "{bare}"
    );
    assert!(!bare.to_string().contains("\"text\":\"x\""), "{bare}");
    // After a listing: the same answer as any tool that does not exist.
    all_tools(&mut client);
    let late = client.call("nope__echo", json!({"message": "x"}));
    let (text, meta) = refusal(&late);
    assert_eq!(text, "[toolgate] deny: unknown tool");
    assert_eq!(meta["rule"], "unknown_tool");
}

#[test]
fn the_router_names_an_unknown_prefix_in_its_error() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    let reply = client.request(
        "tools/call",
        json!({"name": "nope__echo", "arguments": {"message": "x"}}),
    );
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("nope__echo"), "{message}");
}

#[test]
fn a_glob_hides_exactly_the_namespaced_tools_it_names_and_a_deny_rule_holds() {
    let policy = r#"{"version": "1", "default": "allow", "hide": ["llmgw__session_*"],
        "tools": {"echo__echo": {"action": "deny", "reason": "echo is off"}}}"#;
    let mut client = run(policy, &[flag("llmgw", &standin()), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    let names: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let all: BTreeSet<String> = standin_tools()
        .iter()
        .map(|t| format!("llmgw__{t}"))
        .chain(ECHO_TOOLS.iter().map(|t| format!("echo__{t}")))
        .collect();
    let hidden: BTreeSet<String> = all.difference(&names).cloned().collect();
    let expected: BTreeSet<String> = [
        "session_create",
        "session_list",
        "session_set_active",
        "session_delete",
        "session_get",
        "session_clear_all",
    ]
    .iter()
    .map(|t| format!("llmgw__{t}"))
    .collect();
    assert_eq!(hidden, expected);
    assert!(names.is_subset(&all), "{names:?}");
    // A hidden tool is refused as unknown, and never created a session.
    let (text, meta) = refusal(&client.call("llmgw__session_create", json!({"cli": "claude"})));
    assert_eq!(text, "[toolgate] deny: unknown tool");
    assert_eq!(meta["rule"], "unknown_tool");
    let (text, meta) = refusal(&client.call("echo__echo", json!({"message": "x"})));
    assert_eq!(text, "[toolgate] deny: echo is off");
    assert_eq!(meta["rule"], "tools.echo__echo");
    // The same tools of the other upstream are untouched.
    let ok = client.call("llmgw__workspace_list", json!({}));
    assert_ne!(ok["isError"], true, "{ok}");
}

#[test]
fn an_upstream_that_crashes_takes_only_its_own_tools() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    assert_eq!(all_tools(&mut client).len(), 49);
    // The echo server exits mid-call: that call gets -32000.
    client.send(
        &json!({"jsonrpc": "2.0", "id": "crash", "method": "tools/call",
                         "params": {"name": "echo__crash", "arguments": {}}}),
    );
    let (crashed, _) = until_reply(&mut client, &json!("crash"));
    assert_eq!(crashed["error"]["code"], -32000, "{crashed}");
    assert!(
        crashed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`echo`"),
        "{crashed}"
    );
    // The client is told to re-list.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = client
            .recv_within(left)
            .expect("no notifications/tools/list_changed after the crash");
        if message["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    // A call to one of its tools: a clear error naming it; it did not run.
    let dead = client.request(
        "tools/call",
        json!({"name": "echo__echo", "arguments": {"message": "x"}}),
    );
    assert_eq!(dead["error"]["code"], -32602, "{dead}");
    let message = dead["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream server `echo` is not available"),
        "{message}"
    );
    // The other keeps serving, and the list is now its tools alone.
    let created = client.call("llmgw__session_create", json!({"cli": "codex"}));
    assert_eq!(body(&created)["session"]["cli"], "codex", "{created}");
    let names = all_tools(&mut client);
    assert_eq!(names.len(), 46, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("llmgw__")), "{names:?}");
}

#[test]
fn an_upstream_killed_from_outside_takes_only_its_own_tools() {
    let mut client = run(
        ALLOW_ALL,
        &[flag("llmgw", &standin()), flag("echo", &echo())],
    );
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    let children = children_of(client.child.id());
    let llmgw: Vec<u32> = children
        .iter()
        .filter(|(_, cmd)| cmd.contains("standin") && !cmd.contains("--echo"))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(llmgw.len(), 1, "{children:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &llmgw[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = client
            .recv_within(left)
            .expect("no notifications/tools/list_changed after the kill");
        if message["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    let dead = client.request(
        "tools/call",
        json!({"name": "llmgw__session_create", "arguments": {"cli": "claude"}}),
    );
    assert_eq!(dead["error"]["code"], -32602, "{dead}");
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream server `llmgw` is not available"),
        "{dead}"
    );
    let echoed = client.call("echo__echo", json!({"message": "still here"}));
    assert_eq!(text(&echoed), "still here");
    let names: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let echo_only: BTreeSet<String> = ECHO_TOOLS.iter().map(|t| format!("echo__{t}")).collect();
    assert_eq!(names, echo_only);
}

#[test]
fn progress_from_server_everything_reaches_the_client() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({}));
    let names = all_tools(&mut client);
    assert!(
        names.contains(&"everything__trigger-long-running-operation".to_owned()),
        "{names:?}"
    );
    client.send(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "everything__trigger-long-running-operation",
        "arguments": {"duration": 1, "steps": 3},
        "_meta": {"progressToken": "p-7"}}}),
    );
    let (reply, before) = until_reply(&mut client, &json!(7));
    assert_eq!(
        text(&reply["result"]),
        "Long running operation completed. Duration: 1 seconds, Steps: 3.",
        "{reply}"
    );
    let progress: Vec<(Value, Value)> = before
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            (
                m["params"]["progressToken"].clone(),
                m["params"]["progress"].clone(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (json!("p-7"), json!(1)),
            (json!("p-7"), json!(2)),
            (json!("p-7"), json!(3))
        ]
    );
}

/// Answers server→client requests until the reply to `id` comes; `answer` gets each
/// request and returns the result to send back.
fn serve_requests_until(
    client: &mut Client,
    id: &Value,
    mut answer: impl FnMut(&Value) -> Value,
) -> (Value, Vec<Value>) {
    let mut requests = Vec::new();
    loop {
        let message = client.recv();
        if message.get("method").is_none() && &message["id"] == id {
            return (message, requests);
        }
        if message.get("method").is_some() && message.get("id").is_some() {
            let result = answer(&message);
            client.send(&json!({"jsonrpc": "2.0", "id": message["id"], "result": result}));
            requests.push(message);
        }
    }
}

#[test]
fn an_elicitation_from_server_everything_reaches_the_client_and_the_answer_goes_back() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({"elicitation": {}}));
    let names = all_tools(&mut client);
    assert!(
        names.contains(&"everything__trigger-elicitation-request".to_owned()),
        "{names:?}"
    );
    client.send(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "everything__trigger-elicitation-request", "arguments": {}}}));
    let (reply, requests) = serve_requests_until(&mut client, &json!(8), |request| {
        assert_eq!(request["method"], "elicitation/create", "{request}");
        json!({"action": "accept", "content": {"name": "Ada Through-The-Gateway"}})
    });
    assert_eq!(requests.len(), 1, "{requests:?}");
    let all = serde_json::to_string(&reply["result"]["content"]).unwrap();
    assert!(all.contains("- Name: Ada Through-The-Gateway"), "{reply}");
}

#[test]
fn a_sampling_request_from_server_everything_reaches_the_client_and_the_answer_goes_back() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({"sampling": {}}));
    client.send(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "everything__trigger-sampling-request",
                   "arguments": {"prompt": "say hi", "maxTokens": 20}}}));
    let (reply, requests) = serve_requests_until(&mut client, &json!(9), |request| {
        assert_eq!(request["method"], "sampling/createMessage", "{request}");
        json!({"role": "assistant", "model": "gateway-test-model",
               "content": {"type": "text", "text": "sampled-through-toolgate"}})
    });
    assert_eq!(requests.len(), 1, "{requests:?}");
    let text = text(&reply["result"]);
    assert!(text.contains("sampled-through-toolgate"), "{reply}");
    assert!(text.contains("gateway-test-model"), "{reply}");
}

/// Two copies of server-everything number their own requests alike; the gateway gives each
/// request its own id, and each answer goes back to the server that asked (answered in the
/// reverse order, so that a swap would show).
#[test]
fn two_servers_elicit_at_once_and_each_answer_goes_back_to_the_server_that_asked() {
    let Some(everything) = everything() else {
        return;
    };
    let mut client = run(
        ALLOW_ALL,
        &[flag("one", &everything), flag("two", &everything)],
    );
    initialize_with(&mut client, json!({"elicitation": {}}));
    all_tools(&mut client);
    // One asks first, then two: both wait, unanswered, so each question is known by
    // which call caused it.
    let mut asked = Vec::new();
    for (id, upstream) in [(21, "one"), (22, "two")] {
        client.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": format!("{upstream}__trigger-elicitation-request"),
                       "arguments": {}}}));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = client
                .recv_within(left)
                .unwrap_or_else(|| panic!("{upstream} did not ask"));
            assert!(
                message.get("method").is_some(),
                "a call ended early: {message}"
            );
            if message["method"] == "elicitation/create" {
                asked.push(message);
                break;
            }
        }
    }
    // Both servers number their own requests alike: the client sees two different ids.
    assert_ne!(asked[0]["id"], asked[1]["id"], "{asked:?}");
    // Answer in the reverse order, each with its own name.
    for (request, name) in [(&asked[1], "For-Two"), (&asked[0], "For-One")] {
        client.send(&json!({"jsonrpc": "2.0", "id": request["id"], "result":
            {"action": "accept", "content": {"name": name}}}));
    }
    // Each call's result shows the answer given to the question it caused.
    let mut results = std::collections::BTreeMap::new();
    while results.len() < 2 {
        let message = client.recv();
        if message.get("method").is_none() {
            let content = serde_json::to_string(&message["result"]["content"]).unwrap();
            results.insert(message["id"].as_i64().unwrap(), content);
        }
    }
    assert!(results[&21].contains("- Name: For-One"), "{results:?}");
    assert!(results[&22].contains("- Name: For-Two"), "{results:?}");
}

/// The session core drops a late reply to a cancelled call by itself, so this shows only that
/// server-everything's cancelled call ends quietly and everything keeps serving; that the
/// cancellation reaches the right server under its own id is
/// `a_cancellation_goes_to_the_server_running_the_call_under_its_id_and_nowhere_else`.
#[test]
fn a_cancelled_call_to_server_everything_gets_no_reply_and_the_rest_keeps_serving() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": 31, "method": "tools/call", "params": {
        "name": "everything__trigger-long-running-operation",
        "arguments": {"duration": 3, "steps": 3},
        "_meta": {"progressToken": "c-31"}}}),
    );
    // Wait for the first progress: the server is working on it.
    loop {
        let message = client.recv();
        assert_ne!(
            message["id"], 31,
            "the call ended before it was cancelled: {message}"
        );
        if message["method"] == "notifications/progress" {
            break;
        }
    }
    client.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 31, "reason": "the user gave up"}}),
    );
    // server-everything stops answering a cancelled request: no result comes, and no more
    // than one further progress step (one may have been on its way).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut late_progress = 0;
    while let Some(message) = client.recv_within(deadline.saturating_duration_since(Instant::now()))
    {
        assert!(
            !(message.get("method").is_none()
                && message["id"] == 31
                && message.get("result").is_some()),
            "the cancelled call still answered: {message}"
        );
        if message["method"] == "notifications/progress" {
            late_progress += 1;
        }
    }
    assert!(
        late_progress <= 2,
        "{late_progress} progress steps after the cancel"
    );
    // Everyone keeps serving.
    let echoed = client.call("everything__echo", json!({"message": "after cancel"}));
    assert_eq!(text(&echoed), "Echo: after cancel");
    let echoed = client.call("echo__echo", json!({"message": "after cancel"}));
    assert_eq!(text(&echoed), "after cancel");
}

/// A scripted Streamable HTTP upstream: `tools/list` comes in three pages (cursors `page-2`,
/// `page-3`); `tools/call` of `slow` is never answered (the connection is held open); any
/// other call is answered with `{name}: {upstream's label}`. After a call of `forget` it
/// answers every POST with 404, as a server does that ended the session. It records every
/// message it was sent (and `{"http": "GET" | "DELETE", "session": ...}` for the other
/// requests: its GET stream ends as soon as it is opened), in the order the connections came (each request is read whole before
/// the next connection is accepted; each connection carries one request).
fn scripted_upstream(label: &'static str) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let forgotten = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some((method, session, body)) = read_http_request(&stream) else {
                continue;
            };
            if method != "POST" {
                // Logged as `{"http": METHOD}`. A GET stream is offered, and ends at once.
                log.lock()
                    .unwrap()
                    .push(json!({"http": method, "session": session}));
                let answer: &[u8] = if method == "GET" {
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = stream.write_all(answer);
                continue;
            }
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            log.lock().unwrap().push(request.clone());
            let forgotten = forgotten.clone();
            std::thread::spawn(move || {
                scripted_exchange(stream, label, request, session, &forgotten)
            });
        }
    });
    (url, seen)
}

/// One HTTP request's method, `mcp-session-id` and body.
fn read_http_request(stream: &std::net::TcpStream) -> Option<(String, Option<String>, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    let mut method = String::new();
    let mut session = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if method.is_empty() {
            method = line.split_whitespace().next().unwrap_or("").to_owned();
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("mcp-session-id") {
                session = Some(v.trim().to_owned());
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, session, body))
}

fn scripted_exchange(
    mut stream: std::net::TcpStream,
    label: &str,
    request: Value,
    session: Option<String>,
    forgotten: &std::sync::atomic::AtomicBool,
) {
    if forgotten.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    let is_initialize = request["method"] == "initialize";
    // Like the SDKs' servers: the session id comes with the `initialize` reply only, and
    // every later message must carry it.
    if !is_initialize && session.as_deref() != Some(&format!("session-of-{label}")) {
        let _ = stream.write_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        return;
    }
    let id = request["id"].clone();
    let tool = |n: &str| json!({"name": n, "inputSchema": {"type": "object"}});
    let result = match request["method"].as_str() {
        _ if id.is_null() => None,
        Some("initialize") => Some(json!({"protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}}, "serverInfo": {"name": label, "version": "1"}})),
        Some("tools/list") => Some(match request["params"]["cursor"].as_str() {
            None => {
                json!({"tools": [tool("p1a"), tool("p1b"), tool("slow")], "nextCursor": "page-2"})
            }
            Some("page-2") => json!({"tools": [tool("p2a")], "nextCursor": "page-3"}),
            Some("page-3") => json!({"tools": [tool("p3a"), tool("p3b"), tool("forget")]}),
            Some(_) => json!({"tools": []}),
        }),
        Some("tools/call") if request["params"]["name"] == "slow" => {
            // Held open, never answered: the test ends first.
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        Some("tools/call") => {
            let name = request["params"]["name"].as_str().unwrap_or("?");
            if name == "forget" {
                forgotten.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some(json!({"content": [{"type": "text", "text": format!("{name}: {label}")}]}))
        }
        _ => Some(json!({})),
    };
    let response = match result {
        None => {
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
        }
        Some(result) => {
            let body = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
            let session = if is_initialize {
                format!("mcp-session-id: session-of-{label}\r\n")
            } else {
                String::new()
            };
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{session}\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    let _ = stream.write_all(response.as_bytes());
}

/// The `cursor` of each `tools/list` an upstream was sent.
fn cursors_asked(seen: &Mutex<Vec<Value>>) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|m| m["method"] == "tools/list")
        .map(|m| m["params"]["cursor"].clone())
        .collect()
}

#[test]
fn a_cancellation_goes_to_the_server_running_the_call_under_its_id_and_nowhere_else() {
    let (url_a, seen_a) = scripted_upstream("a");
    let (url_b, seen_b) = scripted_upstream("b");
    let mut client = run(
        ALLOW_ALL,
        &[
            format!("a={url_a}"),
            format!("b={url_b}"),
            flag("echo", &echo()),
        ],
    );
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    // b's tool answers under b's own name: calls reach the right one.
    assert_eq!(text(&client.call("b__p2a", json!({}))), "p2a: b");
    client.send(
        &json!({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
        "params": {"name": "a__slow", "arguments": {}}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let call_id = loop {
        let call = seen_a
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["method"] == "tools/call" && m["params"]["name"] == "slow")
            .cloned();
        if let Some(call) = call {
            break call["id"].clone();
        }
        assert!(Instant::now() < deadline, "a never got the call");
        std::thread::sleep(Duration::from_millis(20));
    };
    client.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": "slow-1", "reason": "changed my mind"}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let cancel = loop {
        let cancel = seen_a
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["method"] == "notifications/cancelled")
            .cloned();
        if let Some(cancel) = cancel {
            break cancel;
        }
        assert!(Instant::now() < deadline, "a never got the cancellation");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Under the id a saw on the call (not the client's), with the reason kept.
    assert_eq!(cancel["params"]["requestId"], call_id, "{cancel}");
    assert_eq!(cancel["params"]["reason"], "changed my mind", "{cancel}");
    // Nothing reached b, and the gateway goes on serving both and echo.
    std::thread::sleep(Duration::from_millis(300));
    let to_b: Vec<Value> = seen_b
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["method"] == "notifications/cancelled")
        .cloned()
        .collect();
    assert!(to_b.is_empty(), "{to_b:?}");
    assert_eq!(text(&client.call("a__p1a", json!({}))), "p1a: a");
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "e"}))),
        "e"
    );
}

#[test]
fn tools_list_pages_across_servers_with_one_cursor() {
    let (url, seen) = scripted_upstream("pager");
    let mut client = run(ALLOW_ALL, &[format!("pager={url}"), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    let mut pages = Vec::new();
    let mut params = json!({});
    loop {
        let reply = client.request("tools/list", params);
        let result = reply["result"].clone();
        assert!(result.is_object(), "{reply}");
        let names: Vec<String> = result["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        pages.push(names);
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) => {
                assert!(cursor.starts_with("tgc1."), "{cursor}");
                assert!(!cursor.contains("page-"), "the cursor is opaque: {cursor}");
                params = json!({"cursor": cursor});
            }
            None => break,
        }
        assert!(pages.len() < 10, "{pages:?}");
    }
    let all: Vec<&String> = pages.iter().flatten().collect();
    let set: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), set.len(), "a tool came twice: {pages:?}");
    let want: BTreeSet<String> = ["p1a", "p1b", "slow", "p2a", "p3a", "p3b", "forget"]
        .iter()
        .map(|t| format!("pager__{t}"))
        .chain(ECHO_TOOLS.iter().map(|t| format!("echo__{t}")))
        .collect();
    assert_eq!(set, want.iter().collect(), "{pages:?}");
    assert_eq!(pages.len(), 3, "{pages:?}");
    // The upstream got its own cursors back, in order.
    assert_eq!(
        cursors_asked(&seen),
        vec![Value::Null, json!("page-2"), json!("page-3")]
    );
    // A cursor the gateway did not write is refused.
    for bad in [json!("garbage"), json!("tgc1.garbage"), json!("page-2")] {
        let reply = client.request("tools/list", json!({"cursor": bad}));
        assert_eq!(reply["error"]["code"], -32602, "{bad}: {reply}");
    }
    // The gateway still serves after the bad cursors.
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "ok"}))),
        "ok"
    );
}

#[test]
fn with_the_three_real_upstreams_a_bad_cursor_is_invalid_params() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({}));
    let first = all_tools(&mut client);
    let unique: BTreeSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), first.len(), "a tool came twice: {first:?}");
    assert_eq!(
        first.iter().filter(|n| n.starts_with("llmgw__")).count(),
        46
    );
    assert_eq!(first.iter().filter(|n| n.starts_with("echo__")).count(), 3);
    assert!(
        first.contains(&"everything__get-sum".to_owned()),
        "{first:?}"
    );
    for bad in [json!("garbage"), json!("tgc1."), json!(17)] {
        let reply = client.request("tools/list", json!({"cursor": bad}));
        assert_eq!(reply["error"]["code"], -32602, "{bad}: {reply}");
    }
}

// --- toolgate serve with three [[upstreams]] --------------------------------------------------

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// server-everything serving Streamable HTTP on a free port.
struct EverythingHttp {
    child: Child,
    url: String,
}

impl EverythingHttp {
    fn start() -> Option<Self> {
        let bin =
            crate::support::workspace().join("tests/peers/node_modules/.bin/mcp-server-everything");
        if !bin.exists() {
            crate::support::missing_peer("server-everything", "cd tests/peers && npm ci");
            return None;
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        })
    }
}

impl Drop for EverythingHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_three(everything: &EverythingHttp, policy: &str) -> Serve {
    let config = format!(
        "[[upstreams]]\nname = \"llmgw\"\ncommand = {}\n\n\
         [[upstreams]]\nname = \"everything\"\nurl = \"{}\"\n\n\
         [[upstreams]]\nname = \"echo\"\ncommand = {}\n\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"a.json\"\n",
        serde_json::to_string(&standin()).unwrap(),
        everything.url,
        serde_json::to_string(&echo()).unwrap(),
        sha256_hex("token-a"),
    );
    Serve::start(&config, &[("a.json", policy)])
}

async fn all_tools_http(client: &mut Mcp) -> Vec<String> {
    let mut names = Vec::new();
    let mut params = json!({});
    for _ in 0..100 {
        let reply = client.request("tools/list", params).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.messages);
        let result = reply.result().clone();
        for tool in result["tools"].as_array().unwrap() {
            names.push(tool["name"].as_str().unwrap().to_owned());
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) => params = json!({"cursor": cursor}),
            None => return names,
        }
    }
    panic!("tools/list did not end within 100 pages");
}

async fn wait_for_status(serve: &Serve, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = serve.status().await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_merges_three_upstreams_and_survives_losing_one() {
    let Some(everything) = EverythingHttp::start() else {
        return;
    };
    let policy = r#"{"version": "1", "default": "allow",
        "hide": ["llmgw__session_*", "everything__get-env", "echo__fail"]}"#;
    let serve = serve_three(&everything, policy);
    let mut client = Mcp::new(&serve.url, Some("token-a"));
    let init = client.initialize().await;
    assert!(
        init.result()["capabilities"]["tools"].is_object(),
        "{:?}",
        init.messages
    );
    let names = all_tools_http(&mut client).await;
    let set: BTreeSet<&String> = names.iter().collect();
    assert_eq!(set.len(), names.len(), "a tool came twice: {names:?}");
    let llmgw: Vec<&String> = names.iter().filter(|n| n.starts_with("llmgw__")).collect();
    assert_eq!(llmgw.len(), 46 - 6, "{llmgw:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("llmgw__session_")),
        "{names:?}"
    );
    let echo_tools: BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("echo__"))
        .collect();
    assert_eq!(echo_tools, BTreeSet::from(["echo", "crash"]));
    let everything_tools: BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("everything__"))
        .collect();
    assert!(everything_tools.contains("echo"), "{everything_tools:?}");
    assert!(
        everything_tools.contains("trigger-long-running-operation"),
        "{everything_tools:?}"
    );
    assert!(
        !everything_tools.contains("get-env"),
        "{everything_tools:?}"
    );
    assert_eq!(
        names.len(),
        llmgw.len() + echo_tools.len() + everything_tools.len(),
        "every tool is under one of the three prefixes: {names:?}"
    );

    // Each call reaches its own server.
    let echoed = client
        .call("echo__echo", json!({"message": "to echo"}))
        .await;
    assert_eq!(echoed["content"][0]["text"], "to echo", "{echoed}");
    let echoed = client
        .call("everything__echo", json!({"message": "to everything"}))
        .await;
    assert_eq!(
        echoed["content"][0]["text"], "Echo: to everything",
        "{echoed}"
    );
    let listed = client.call("llmgw__workspace_list", json!({})).await;
    assert_ne!(listed["isError"], true, "{listed}");
    let hidden = client
        .call("llmgw__session_create", json!({"cli": "claude"}))
        .await;
    assert_eq!(
        hidden["content"][0]["text"], "[toolgate] deny: unknown tool",
        "{hidden}"
    );

    let status = wait_for_status(&serve, |s| {
        ["llmgw", "everything", "echo"]
            .iter()
            .all(|n| s["upstreams"][n]["ready"] == 1)
    })
    .await;
    assert_eq!(status["upstreams"]["echo"]["down"], 0, "{status}");

    // The echo server exits mid-call.
    let crashed = client
        .request(
            "tools/call",
            json!({"name": "echo__crash", "arguments": {}}),
        )
        .await;
    assert_eq!(crashed.status, StatusCode::OK);
    let reply = crashed
        .messages
        .iter()
        .find(|m| m.get("method").is_none())
        .unwrap_or_else(|| panic!("no reply: {:?}", crashed.messages));
    assert_eq!(reply["error"]["code"], -32000, "{reply}");

    let status = wait_for_status(&serve, |s| s["upstreams"]["echo"]["down"] == 1).await;
    let echo_health = &status["upstreams"]["echo"];
    assert_eq!(echo_health["ready"], 0, "{status}");
    let why = echo_health["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}"));
    assert!(why.contains("exit"), "{why}");
    assert_eq!(status["upstreams"]["llmgw"]["ready"], 1, "{status}");
    assert_eq!(status["upstreams"]["everything"]["ready"], 1, "{status}");
    assert_eq!(status["upstreams"]["llmgw"]["down"], 0, "{status}");

    // Its tools are gone and refused; the others keep serving.
    let dead = client
        .request(
            "tools/call",
            json!({"name": "echo__echo", "arguments": {"message": "x"}}),
        )
        .await;
    let error = &dead.messages[0]["error"];
    assert_eq!(error["code"], -32602, "{:?}", dead.messages);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("upstream server `echo` is not available"),
        "{error}"
    );
    let echoed = client
        .call("everything__echo", json!({"message": "still"}))
        .await;
    assert_eq!(echoed["content"][0]["text"], "Echo: still", "{echoed}");
    let listed = client.call("llmgw__workspace_list", json!({})).await;
    assert_ne!(listed["isError"], true, "{listed}");
    let after = all_tools_http(&mut client).await;
    assert!(!after.iter().any(|n| n.starts_with("echo__")), "{after:?}");
    assert_eq!(after.len(), names.len() - 2, "{after:?}");

    // A new session gets all three again.
    let mut fresh = Mcp::new(&serve.url, Some("token-a"));
    fresh.initialize().await;
    let again = all_tools_http(&mut fresh).await;
    assert_eq!(again.len(), names.len(), "{again:?}");
}

/// Waits (at most 10 s) for `notifications/tools/list_changed`.
fn wait_for_list_changed(client: &mut Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = client
            .recv_within(left)
            .unwrap_or_else(|| panic!("no notifications/tools/list_changed after {what}"));
        if message["method"] == "notifications/tools/list_changed" {
            return;
        }
    }
}

#[test]
fn an_http_upstream_that_goes_away_takes_only_its_own_tools() {
    let Some(mut everything) = EverythingHttp::start() else {
        return;
    };
    let mut client = run(
        ALLOW_ALL,
        &[
            format!("everything={}", everything.url),
            flag("echo", &echo()),
        ],
    );
    initialize_with(&mut client, json!({}));
    let before = all_tools(&mut client);
    assert!(
        before.contains(&"everything__echo".to_owned()),
        "{before:?}"
    );
    let echoed = client.call("everything__echo", json!({"message": "up"}));
    assert_eq!(text(&echoed), "Echo: up");
    everything.child.kill().unwrap();
    everything.child.wait().unwrap();
    wait_for_list_changed(&mut client, "server-everything went away");
    let dead = client.request(
        "tools/call",
        json!({"name": "everything__echo", "arguments": {"message": "x"}}),
    );
    assert_eq!(dead["error"]["code"], -32602, "{dead}");
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream server `everything` is not available"),
        "{dead}"
    );
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "e"}))),
        "e"
    );
    let after: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let echo_only: BTreeSet<String> = ECHO_TOOLS.iter().map(|t| format!("echo__{t}")).collect();
    assert_eq!(after, echo_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_an_http_upstream_that_went_away_as_down_and_keeps_the_others() {
    let Some(mut everything) = EverythingHttp::start() else {
        return;
    };
    let serve = serve_three(&everything, ALLOW_ALL);
    let mut client = Mcp::new(&serve.url, Some("token-a"));
    client.initialize().await;
    let echoed = client
        .call("everything__echo", json!({"message": "up"}))
        .await;
    assert_eq!(echoed["content"][0]["text"], "Echo: up", "{echoed}");
    wait_for_status(&serve, |s| s["upstreams"]["everything"]["ready"] == 1).await;
    everything.child.kill().unwrap();
    everything.child.wait().unwrap();
    let status = wait_for_status(&serve, |s| s["upstreams"]["everything"]["down"] == 1).await;
    assert_eq!(status["upstreams"]["everything"]["ready"], 0, "{status}");
    assert!(
        status["upstreams"]["everything"]["last_error"].is_string(),
        "{status}"
    );
    assert_eq!(status["upstreams"]["llmgw"]["ready"], 1, "{status}");
    assert_eq!(status["upstreams"]["echo"]["ready"], 1, "{status}");
    let dead = client
        .request(
            "tools/call",
            json!({"name": "everything__echo", "arguments": {"message": "x"}}),
        )
        .await;
    assert_eq!(
        dead.messages[0]["error"]["code"], -32602,
        "{:?}",
        dead.messages
    );
    let echoed = client.call("echo__echo", json!({"message": "e"})).await;
    assert_eq!(echoed["content"][0]["text"], "e", "{echoed}");
    let listed = client.call("llmgw__workspace_list", json!({})).await;
    assert_ne!(listed["isError"], true, "{listed}");
}

/// A request whose reply is awaited while `roots/list` requests from upstreams are answered
/// with one root, `file:///tmp/toolgate-root`; returns the reply and how many were answered.
fn request_answering_roots(
    client: &mut Client,
    id: i64,
    method: &str,
    params: Value,
) -> (Value, usize) {
    client.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    let mut answered = 0;
    let (reply, _) = serve_requests_until(client, &json!(id), |request| {
        assert_eq!(request["method"], "roots/list", "{request}");
        answered += 1;
        json!({"roots": [{"uri": "file:///tmp/toolgate-root", "name": "gateway-root"}]})
    });
    (reply, answered)
}

#[test]
fn resources_prompts_and_roots_are_namespaced_and_reach_their_server() {
    let Some(upstreams) = three_upstreams() else {
        return;
    };
    let mut client = run(ALLOW_ALL, &upstreams);
    initialize_with(&mut client, json!({"roots": {"listChanged": true}}));
    // server-everything asks for the roots shortly after `initialized`.
    let mut roots_asked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 100;
    while roots_asked == 0 && Instant::now() < deadline {
        id += 1;
        let (_, n) = request_answering_roots(&mut client, id, "ping", json!({}));
        roots_asked += n;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        roots_asked, 1,
        "server-everything never asked for the roots"
    );
    let (roots, _) = request_answering_roots(
        &mut client,
        200,
        "tools/call",
        json!({"name": "everything__get-roots-list", "arguments": {}}),
    );
    assert!(
        text(&roots["result"]).contains("file:///tmp/toolgate-root"),
        "{roots}"
    );

    let (resources, _) = request_answering_roots(&mut client, 201, "resources/list", json!({}));
    let resources = resources["result"]["resources"].as_array().unwrap().clone();
    assert!(!resources.is_empty());
    for resource in &resources {
        let uri = resource["uri"].as_str().unwrap();
        assert!(uri.starts_with("everything+"), "{uri}");
    }
    let uri = resources[0]["uri"].clone();
    let (read, _) =
        request_answering_roots(&mut client, 202, "resources/read", json!({"uri": uri}));
    let contents = &read["result"]["contents"];
    assert_eq!(contents[0]["uri"], uri, "{read}");
    assert!(
        contents[0]["text"].as_str().is_some_and(|t| !t.is_empty())
            || contents[0]["blob"].is_string(),
        "{read}"
    );
    let (templates, _) =
        request_answering_roots(&mut client, 203, "resources/templates/list", json!({}));
    for template in templates["result"]["resourceTemplates"].as_array().unwrap() {
        let uri = template["uriTemplate"].as_str().unwrap();
        assert!(uri.starts_with("everything+"), "{uri}");
    }

    let (prompts, _) = request_answering_roots(&mut client, 204, "prompts/list", json!({}));
    let names: Vec<&str> = prompts["result"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"everything__simple-prompt"), "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("everything__")),
        "{names:?}"
    );
    let (prompt, _) = request_answering_roots(
        &mut client,
        205,
        "prompts/get",
        json!({"name": "everything__simple-prompt", "arguments": {}}),
    );
    assert_eq!(
        prompt["result"]["messages"][0]["content"]["text"],
        "This is a simple prompt without arguments.",
        "{prompt}"
    );
    // A URI under no upstream's name is refused.
    let (unknown, _) = request_answering_roots(
        &mut client,
        206,
        "resources/read",
        json!({"uri": "demo://resource/static/document/architecture.md"}),
    );
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

#[test]
fn upstreams_that_fail_to_start_take_only_their_own_tools() {
    let mut client = run(
        ALLOW_ALL,
        &[
            "missing=/nonexistent/toolgate-test-server".to_owned(),
            "unreachable=http://127.0.0.1:1/mcp".to_owned(),
            flag("echo", &echo()),
        ],
    );
    let init = initialize_with(&mut client, json!({}));
    let servers = &init["result"]["_meta"]["toolgate"]["upstreams"];
    assert!(servers.get("echo").is_some(), "{init}");
    // Calls to their tools (before any listing: the router answers) get a clear error.
    for (name, why) in [("missing", "failed to start"), ("unreachable", "")] {
        let reply = client.request(
            "tools/call",
            json!({"name": format!("{name}__anything"), "arguments": {}}),
        );
        assert_eq!(reply["error"]["code"], -32602, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("upstream server `{name}` is not available"))
                && message.contains(why),
            "{message}"
        );
    }
    let names: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let echo_only: BTreeSet<String> = ECHO_TOOLS.iter().map(|t| format!("echo__{t}")).collect();
    assert_eq!(names, echo_only);
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "ok"}))),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_a_prefix_and_a_separator_and_shows_an_upstream_that_failed_to_start() {
    let config = format!(
        "namespace_separator = \"_x_\"\n\
         [[upstreams]]\nname = \"llmgw\"\nprefix = \"gw\"\ncommand = {}\n\n\
         [[upstreams]]\nname = \"missing\"\ncommand = [\"/nonexistent/toolgate-test-server\"]\n\n\
         [[upstreams]]\nname = \"echo\"\ncommand = {}\n\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"a.json\"\n",
        serde_json::to_string(&standin()).unwrap(),
        serde_json::to_string(&echo()).unwrap(),
        sha256_hex("token-a"),
    );
    let policy = r#"{"version": "1", "default": "allow", "hide": ["gw_x_session_*"],
        "tools": {"echo_x_echo": {"action": "deny", "reason": "not today"}}}"#;
    let serve = Serve::start(&config, &[("a.json", policy)]);
    let mut client = Mcp::new(&serve.url, Some("token-a"));
    client.initialize().await;
    let names = all_tools_http(&mut client).await;
    let want: BTreeSet<String> = standin_tools()
        .iter()
        .filter(|t| !t.starts_with("session_"))
        .map(|t| format!("gw_x_{t}"))
        .chain(ECHO_TOOLS.iter().map(|t| format!("echo_x_{t}")))
        .collect();
    assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), want);
    let listed = client.call("gw_x_workspace_list", json!({})).await;
    assert_ne!(listed["isError"], true, "{listed}");
    let denied = client.call("echo_x_echo", json!({"message": "x"})).await;
    assert_eq!(
        denied["content"][0]["text"], "[toolgate] deny: not today",
        "{denied}"
    );
    let status = wait_for_status(&serve, |s| s["upstreams"]["missing"]["down"] == 1).await;
    let why = status["upstreams"]["missing"]["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}"));
    assert!(why.contains("failed to start"), "{why}");
    assert_eq!(status["upstreams"]["llmgw"]["ready"], 1, "{status}");
    assert_eq!(status["upstreams"]["echo"]["ready"], 1, "{status}");
}

#[test]
fn an_http_upstream_that_ends_the_session_takes_only_its_own_tools() {
    let (url_a, seen_a) = scripted_upstream("a");
    let mut client = run(ALLOW_ALL, &[format!("a={url_a}"), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    assert_eq!(text(&client.call("a__forget", json!({}))), "forget: a");
    // The next request gets the 404 as an error, and a's tools go down.
    let refused = client.request("tools/call", json!({"name": "a__p1a", "arguments": {}}));
    assert_eq!(refused["error"]["code"], -32000, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{refused}"
    );
    wait_for_list_changed(&mut client, "the upstream ended the session");
    let dead = client.request("tools/call", json!({"name": "a__p1a", "arguments": {}}));
    assert_eq!(dead["error"]["code"], -32602, "{dead}");
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream server `a` is not available"),
        "{dead}"
    );
    // Every request after initialize carried a's session id (the 404 was for it).
    assert!(seen_a.lock().unwrap().len() >= 3);
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "e"}))),
        "e"
    );
    let names: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let echo_only: BTreeSet<String> = ECHO_TOOLS.iter().map(|t| format!("echo__{t}")).collect();
    assert_eq!(names, echo_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_hidden_tool_with_bad_arguments_as_unknown() {
    let config = format!(
        "[[upstreams]]\nname = \"llmgw\"\ncommand = {}\n\n\
         [[upstreams]]\nname = \"echo\"\ncommand = {}\n\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"a.json\"\n",
        serde_json::to_string(&standin()).unwrap(),
        serde_json::to_string(&echo()).unwrap(),
        sha256_hex("token-a"),
    );
    let policy = r#"{"version": "1", "default": "allow", "hide": ["llmgw__session_*"]}"#;
    let serve = Serve::start(&config, &[("a.json", policy)]);
    let mut client = Mcp::new(&serve.url, Some("token-a"));
    client.initialize().await;
    all_tools_http(&mut client).await;
    // `cli` is required by session_create's inputSchema: a hidden tool must not say so.
    let hidden = client.call("llmgw__session_create", json!({})).await;
    let missing = client.call("llmgw__no_such_tool", json!({})).await;
    assert_eq!(
        missing["content"][0]["text"],
        "[toolgate] deny: unknown tool"
    );
    assert_eq!(hidden, missing);
}

#[test]
fn run_refuses_a_hidden_tool_with_bad_arguments_as_unknown() {
    let policy = r#"{"version": "1", "default": "allow", "hide": ["llmgw__session_*"]}"#;
    let mut client = run(policy, &[flag("llmgw", &standin()), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    // `cli` is required by session_create's inputSchema: a hidden tool must not say so.
    let hidden = client.call("llmgw__session_create", json!({}));
    let missing = client.call("llmgw__no_such_tool", json!({}));
    assert_eq!(text(&missing), "[toolgate] deny: unknown tool");
    assert_eq!(hidden, missing);
}

#[test]
fn initialize_answers_for_the_whole_set() {
    let Some(everything) = everything() else {
        return;
    };
    // server-everything on its own, for its own instructions.
    let mut direct = Command::new(&everything[0])
        .args(&everything[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "1"}}});
    writeln!(direct.stdin.as_mut().unwrap(), "{init}").unwrap();
    let mut line = String::new();
    BufReader::new(direct.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = direct.kill();
    let _ = direct.wait();
    let own: Value = serde_json::from_str(&line).unwrap();
    let own_instructions = own["result"]["instructions"].as_str().unwrap().to_owned();
    assert!(!own_instructions.is_empty());

    let mut client = run(
        ALLOW_ALL,
        &[
            flag("llmgw", &standin()),
            flag("echo", &echo()),
            flag("everything", &everything),
        ],
    );
    let reply = initialize_with(&mut client, json!({}));
    let result = &reply["result"];
    assert_eq!(result["protocolVersion"], "2025-11-25", "{reply}");
    let instructions = result["instructions"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(instructions.contains("## everything"), "{instructions}");
    assert!(
        instructions.contains(own_instructions.trim()),
        "{instructions}"
    );
    // Every capability of each server is offered (tasks cannot be routed by name, so they
    // may be left out).
    let capabilities = &result["capabilities"];
    for capability in ["tools", "prompts", "resources", "logging"] {
        assert!(
            capabilities[capability].is_object(),
            "{capability}: {reply}"
        );
    }
    let servers = &result["_meta"]["toolgate"]["upstreams"];
    assert_eq!(servers["echo"]["name"], "mcp-echo", "{reply}");
    assert_eq!(
        servers["everything"]["name"], "mcp-servers/everything",
        "{reply}"
    );
    assert!(servers["llmgw"].is_object(), "{reply}");
}

/// The HTTP leg must know `initialize` by its method, not by the word anywhere in the line:
/// a call whose arguments say "initialize" must not reset the upstream session.
#[test]
fn a_call_that_mentions_initialize_keeps_the_http_upstream_session() {
    let (url, seen) = scripted_upstream("a");
    let mut client = run(ALLOW_ALL, &[format!("a={url}"), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    for note in ["initialize", "still there"] {
        let result = client.call("a__p1a", json!({"note": note}));
        assert_eq!(text(&result), "p1a: a", "{result}");
    }
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|m| m["method"] == "initialize")
            .count(),
        1
    );
}

/// The same with server-everything, which sends its session id on every reply.
#[test]
fn a_call_that_mentions_initialize_keeps_server_everythings_session() {
    let Some(everything) = EverythingHttp::start() else {
        return;
    };
    let mut client = run(
        ALLOW_ALL,
        &[
            format!("everything={}", everything.url),
            flag("echo", &echo()),
        ],
    );
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    for message in ["initialize", "after \"initialize\"", "still there"] {
        let echoed = client.call("everything__echo", json!({"message": message}));
        assert_eq!(text(&echoed), format!("Echo: {message}"), "{echoed}");
    }
}

/// server-everything over Streamable HTTP asks for the roots on its GET stream (the request
/// belongs to no call); the client's answer is POSTed back to it.
#[test]
fn a_roots_request_on_an_http_upstreams_get_stream_is_answered() {
    let Some(everything) = EverythingHttp::start() else {
        return;
    };
    let mut client = run(
        ALLOW_ALL,
        &[
            format!("everything={}", everything.url),
            flag("echo", &echo()),
        ],
    );
    initialize_with(&mut client, json!({"roots": {"listChanged": true}}));
    let mut roots_asked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 100;
    while roots_asked == 0 && Instant::now() < deadline {
        id += 1;
        let (_, n) = request_answering_roots(&mut client, id, "ping", json!({}));
        roots_asked += n;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        roots_asked, 1,
        "server-everything never asked for the roots"
    );
    let (roots, _) = request_answering_roots(
        &mut client,
        200,
        "tools/call",
        json!({"name": "everything__get-roots-list", "arguments": {}}),
    );
    assert!(
        text(&roots["result"]).contains("file:///tmp/toolgate-root"),
        "{roots}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ends_every_upstream_of_a_deleted_session() {
    let Some(everything) = EverythingHttp::start() else {
        return;
    };
    let serve = serve_three(&everything, ALLOW_ALL);
    let mut client = Mcp::new(&serve.url, Some("token-a"));
    client.initialize().await;
    all_tools_http(&mut client).await;
    let standins = || {
        children_of(serve.pid())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("standin"))
            .count()
    };
    assert_eq!(standins(), 2, "{:?}", children_of(serve.pid()));
    wait_for_status(&serve, |s| {
        ["llmgw", "everything", "echo"]
            .iter()
            .all(|n| s["upstreams"][n]["ready"] == 1)
    })
    .await;
    let deleted = client
        .http
        .delete(&serve.url)
        .bearer_auth("token-a")
        .header("mcp-session-id", client.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let status = wait_for_status(&serve, |s| {
        ["llmgw", "everything", "echo"].iter().all(|n| {
            let h = &s["upstreams"][n];
            h["ready"] == 0 && h["starting"] == 0
        })
    })
    .await;
    // Ending a session is not an upstream going down.
    for name in ["llmgw", "everything", "echo"] {
        assert_eq!(status["upstreams"][name]["down"], 0, "{status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while standins() > 0 {
        assert!(Instant::now() < deadline, "{:?}", children_of(serve.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that never answers `initialize` (here: a process that reads nothing) holds the
/// set's `initialize` for the fan-out timeout (30 s) at most; then the others serve without it.
#[test]
fn an_upstream_that_never_answers_initialize_is_left_out_after_the_timeout() {
    let mut client = run(
        ALLOW_ALL,
        // Reads everything, says nothing, and ends with its stdin (with the gateway).
        &[
            "silent=sh -c 'cat >/dev/null'".to_owned(),
            flag("echo", &echo()),
        ],
    );
    client.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "e2e", "version": "1"}}}),
    );
    let started = Instant::now();
    let init = loop {
        let message = client
            .recv_within(Duration::from_secs(45))
            .expect("initialize was not answered within 45 s");
        if message["id"] == 1 {
            break message;
        }
    };
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(25), "{waited:?}");
    let servers = &init["result"]["_meta"]["toolgate"]["upstreams"];
    assert!(servers.get("echo").is_some(), "{init}");
    client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let silent = client.request(
        "tools/call",
        json!({"name": "silent__anything", "arguments": {}}),
    );
    assert_eq!(silent["error"]["code"], -32602, "{silent}");
    assert!(
        silent["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream server `silent` is not available"),
        "{silent}"
    );
    let names: BTreeSet<String> = all_tools(&mut client).into_iter().collect();
    let echo_only: BTreeSet<String> = ECHO_TOOLS.iter().map(|t| format!("echo__{t}")).collect();
    assert_eq!(names, echo_only);
    assert_eq!(
        text(&client.call("echo__echo", json!({"message": "ok"}))),
        "ok"
    );
}

/// A cancellation sent right behind its call reaches an HTTP upstream after the call, never
/// before it (the upstream would not know the id, and the call would run on).
#[test]
fn a_cancellation_right_behind_its_call_reaches_the_http_upstream_after_the_call() {
    let (url, seen) = scripted_upstream("a");
    let mut client = run(ALLOW_ALL, &[format!("a={url}"), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    for round in 0..20 {
        let id = format!("slow-{round}");
        client.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "a__slow", "arguments": {"round": round}}}));
        client.send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id}}),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = seen.lock().unwrap().clone();
        let calls: Vec<&Value> = log
            .iter()
            .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == "slow")
            .collect();
        let cancels: Vec<&Value> = log
            .iter()
            .filter(|m| m["method"] == "notifications/cancelled")
            .collect();
        if calls.len() == 20 && cancels.len() == 20 {
            for cancel in cancels {
                let target = &cancel["params"]["requestId"];
                let call_at = log
                    .iter()
                    .position(|m| m["method"] == "tools/call" && &m["id"] == target);
                let cancel_at = log.iter().position(|m| std::ptr::eq(m, cancel)).unwrap();
                let call_at = call_at.unwrap_or_else(|| panic!("{cancel} names no call"));
                assert!(
                    call_at < cancel_at,
                    "a cancellation came before its call: {log:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} calls, {} cancellations arrived",
            calls.len(),
            cancels.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP leg opens the GET stream again when it ends, and stops when the session ends: the
/// upstream session is deleted, and no GET comes after.
#[test]
fn the_get_stream_is_reopened_while_the_session_lasts_and_the_session_is_deleted_after() {
    let (url, seen) = scripted_upstream("a");
    let mut client = run(ALLOW_ALL, &[format!("a={url}"), flag("echo", &echo())]);
    initialize_with(&mut client, json!({}));
    let gets = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|m| m["http"] == "GET")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while gets() < 2 {
        assert!(Instant::now() < deadline, "the GET stream was not reopened");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(text(&client.call("a__p1a", json!({}))), "p1a: a");
    let (status, stderr) = client.finish();
    assert!(status.success(), "{status}: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let deleted_at = loop {
        let at = seen
            .lock()
            .unwrap()
            .iter()
            .position(|m| m["http"] == "DELETE");
        if let Some(at) = at {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream session was not deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = seen.lock().unwrap().clone();
    assert_eq!(log[deleted_at]["session"], "session-of-a", "{log:?}");
    for m in log.iter().filter(|m| m["http"] == "GET") {
        assert_eq!(m["session"], "session-of-a", "{log:?}");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let after = seen.lock().unwrap()[deleted_at + 1..].to_vec();
    assert!(after.is_empty(), "after the DELETE: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_each_session_its_own_set_and_a_crash_stays_in_its_session() {
    let Some(everything) = EverythingHttp::start() else {
        return;
    };
    let serve = serve_three(&everything, ALLOW_ALL);
    let (mut one, mut two) = (
        Mcp::new(&serve.url, Some("token-a")),
        Mcp::new(&serve.url, Some("token-a")),
    );
    one.initialize().await;
    two.initialize().await;
    let status = wait_for_status(&serve, |s| {
        ["llmgw", "everything", "echo"]
            .iter()
            .all(|n| s["upstreams"][n]["ready"] == 2)
    })
    .await;
    assert_eq!(status["upstreams"]["echo"]["down"], 0, "{status}");
    let crashed = one
        .request(
            "tools/call",
            json!({"name": "echo__crash", "arguments": {}}),
        )
        .await;
    assert_eq!(
        crashed.messages[0]["error"]["code"], -32000,
        "{:?}",
        crashed.messages
    );
    let status = wait_for_status(&serve, |s| s["upstreams"]["echo"]["down"] == 1).await;
    assert_eq!(status["upstreams"]["echo"]["ready"], 1, "{status}");
    // The other session's echo server is its own, and still serves.
    let echoed = two.call("echo__echo", json!({"message": "mine"})).await;
    assert_eq!(echoed["content"][0]["text"], "mine", "{echoed}");
    let dead = one
        .request(
            "tools/call",
            json!({"name": "echo__echo", "arguments": {"message": "x"}}),
        )
        .await;
    assert_eq!(
        dead.messages[0]["error"]["code"], -32602,
        "{:?}",
        dead.messages
    );
}

/// Issue 20: "the decision log, metrics and `_meta.toolgate` name the upstream": a refusal's
/// `_meta.toolgate.upstream`, and the decision's log line (`server`, as a single upstream's
/// `serverInfo.name` is named there).
#[test]
fn a_decision_names_the_upstream() {
    let policy = r#"{"version": "1", "default": "allow",
        "tools": {"echo__echo": {"action": "deny", "reason": "no"}}}"#;
    let (llmgw, echo) = (flag("llmgw", &standin()), flag("echo", &echo()));
    let extra = [
        "--upstream",
        &llmgw,
        "--upstream",
        &echo,
        "--decision-log",
        "-",
    ];
    let mut client = Client::start_with(policy, &[], &extra);
    initialize_with(&mut client, json!({}));
    all_tools(&mut client);
    let (_, meta) = refusal(&client.call("echo__echo", json!({"message": "x"})));
    assert_eq!(meta["upstream"], "echo", "{meta}");
    let (_, stderr) = client.finish();
    // The decision log's line, on stderr with `-`.
    let decision: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "decision" && e["tool"] == "echo__echo")
        .unwrap_or_else(|| panic!("no decision logged: {stderr}"));
    assert_eq!(decision["server"], "echo", "{decision}");
}
