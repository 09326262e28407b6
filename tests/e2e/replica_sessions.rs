//! Sessions any replica can serve: three `toolgate serve` replicas sharing one session key and
//! one Redis, behind a real nginx round robin, in front of one HTTP upstream. Each request of a
//! session may land on any replica; the replica that does not know the session opens its
//! sealed id, adopts it, and learns the upstream's tools before it decides anything.

use crate::http::{EchoUpstream, Mcp, Serve};
use crate::replicas::{hash, Redis};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Grant `a`: `echo` capped at 30 a minute per grant, and `ghost`, allowed but never listed by
/// the upstream. Grant `h`: names no tool, so `echo` is hidden from it.
const POLICY_A: &str = r#"{"version": "1", "default": "deny", "tools": {
  "echo": {"limits": [{"counter": "echo_rate", "window": "minute", "max": 30, "scope": "grant"}]},
  "ghost": {}
}}"#;
const POLICY_H: &str = r#"{"version": "1", "default": "deny"}"#;

/// One replica: grants `a`, `b` (both under [`POLICY_A`]) and `h`, the shared key, Redis.
/// Redis gets a second to answer, not the default 50 ms: these tests count exact caps, and on
/// a loaded 2-core machine a 50 ms miss refuses a call (fail closed) that the cap would admit
/// (`replicas.rs` tests the timeout itself).
fn replica(upstream: &EchoUpstream, redis: &Redis, key: &std::path::Path) -> Serve {
    let config = format!(
        "session_key_file = \"{}\"\n\
         [upstream]\nurl = \"{}\"\n\
         [counters]\nstore = \"redis\"\nurl = \"{}\"\ntimeout_ms = 1000\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"a.json\"\n\
         [[grants]]\nname = \"b\"\ntoken_sha256 = \"{}\"\npolicy = \"a.json\"\n\
         [[grants]]\nname = \"h\"\ntoken_sha256 = \"{}\"\npolicy = \"h.json\"\n",
        key.display(),
        upstream.url,
        redis.url,
        hash("token-a"),
        hash("token-b"),
        hash("token-h"),
    );
    Serve::start(&config, &[("a.json", POLICY_A), ("h.json", POLICY_H)])
}

/// Three replicas sharing one key file (private to the gateway's user, as it must be).
fn replicas(upstream: &EchoUpstream, redis: &Redis) -> (Vec<Serve>, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(&key, "5f".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let replicas = (0..3).map(|_| replica(upstream, redis, &key)).collect();
    (replicas, dir)
}

/// Debian's nginx as a round-robin load balancer over `backends`, in the foreground, with its
/// config, pid and logs in a folder of its own.
struct Nginx {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(backends: &[&Serve]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .map(|s| format!("    server {};\n", s.address()))
            .collect();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream toolgate {{\n{servers}  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://toolgate;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Host $http_host;\n      proxy_set_header Connection \"\";\n\
                 proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx (Debian's nginx; scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn passed(result: &Value) -> bool {
    result.get("isError").is_none()
}

/// The same session, talking to another replica.
fn on(mcp: &Mcp, url: &str) -> Mcp {
    let mut other = Mcp::new(url, mcp.token.as_deref());
    other.session = mcp.session.clone();
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_round_robin_eight_sessions_share_one_exact_cap() {
    let (upstream, redis) = (EchoUpstream::start(), Redis::start());
    let (replicas, _key) = replicas(&upstream, &redis);
    let nginx = Nginx::start(&replicas.iter().collect::<Vec<_>>());
    // Two rounds (a fresh window each: Redis flushed between), two grants, 8 sessions per
    // grant at once: each grant gets exactly its 30 of 64.
    for round in 0..2 {
        let mut tasks = Vec::new();
        for token in ["token-a", "token-b"] {
            for i in 0..8 {
                let url = nginx.url.clone();
                tasks.push(tokio::spawn(async move {
                    let mut mcp = Mcp::new(&url, Some(token));
                    mcp.initialize().await;
                    let mut admitted = 0;
                    for n in 0..8 {
                        let message = format!("{round}-{i}-{n}");
                        let result = mcp.call("echo", json!({"message": message})).await;
                        if passed(&result) {
                            assert_eq!(result["content"][0]["text"], message);
                            admitted += 1;
                        } else {
                            let decision = &result["_meta"]["toolgate"]["decision"];
                            assert_eq!(decision, "rate_limited", "{result}");
                        }
                    }
                    (token, admitted)
                }));
            }
        }
        let mut per_grant = std::collections::HashMap::new();
        for task in tasks {
            let (token, admitted) = task.await.unwrap();
            *per_grant.entry(token).or_insert(0) += admitted;
        }
        assert_eq!(
            per_grant["token-a"], 30,
            "round {round}: 64 calls of grant a, cap 30"
        );
        assert_eq!(
            per_grant["token-b"], 30,
            "round {round}: 64 calls of grant b, cap 30"
        );
        assert_eq!(crate::replicas::redis_flush(&redis.url).await, "OK");
    }
    // Every replica served sessions it had not opened.
    for replica in &replicas {
        let status = replica.status().await;
        assert!(status["sessions_adopted"].as_u64().unwrap() > 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_continues_on_every_replica_with_the_same_decisions() {
    let (upstream, redis) = (EchoUpstream::start(), Redis::start());
    let (replicas, _key) = replicas(&upstream, &redis);
    let mut opened = Mcp::new(&replicas[0].url, Some("token-a"));
    opened.initialize().await;
    let mut hidden = Mcp::new(&replicas[0].url, Some("token-h"));
    hidden.initialize().await;
    assert_eq!(opened.tool_names().await, ["echo"]);
    for (n, replica) in replicas.iter().enumerate() {
        let mut mcp = on(&opened, &replica.url);
        let result = mcp
            .call("echo", json!({"message": format!("on {n}")}))
            .await;
        assert!(passed(&result), "replica {n}: {result}");
        assert_eq!(result["content"][0]["text"], format!("on {n}"));
        // `ghost` is allowed by the policy, but the upstream does not list it: every replica
        // knows the upstream's tools before its first decision, and refuses it as unknown.
        let ghost = mcp.call("ghost", json!({})).await;
        assert!(!passed(&ghost), "replica {n}: {ghost}");
        assert!(
            ghost.to_string().contains("unknown tool"),
            "replica {n}: {ghost}"
        );
        assert_eq!(mcp.tool_names().await, ["echo"], "replica {n}");
        // Grant h's policy hides `echo`, on every replica.
        let mut h = on(&hidden, &replica.url);
        assert!(h.tool_names().await.is_empty(), "replica {n}");
        let refused = h.call("echo", json!({"message": "x"})).await;
        assert!(
            refused.to_string().contains("unknown tool"),
            "replica {n}: {refused}"
        );
    }
    // The upstream kept one session per client: nothing was re-initialized.
    assert_eq!(upstream.stats().await["sessions"], 2);
    // Deleted through one replica, the session is gone on the others too: the upstream says
    // so, and the client hears 404.
    let mut deleting = on(&opened, &replicas[1].url);
    let deleted = deleting
        .http
        .delete(&deleting.url)
        .header("authorization", "Bearer token-a")
        .header("mcp-session-id", deleting.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    for replica in [&replicas[2], &replicas[0], &replicas[1]] {
        let mut mcp = on(&opened, &replica.url);
        let reply = mcp
            .request(
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "late"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.messages);
    }
    let _ = &mut deleting;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_answers_only_its_grant_and_only_unaltered() {
    let (upstream, redis) = (EchoUpstream::start(), Redis::start());
    let (replicas, _key) = replicas(&upstream, &redis);
    let mut a = Mcp::new(&replicas[0].url, Some("token-a"));
    a.initialize().await;
    let id = a.session.clone().unwrap();
    let echo = json!({"name": "echo", "arguments": {"message": "x"}});
    // Grant b's token with grant a's session id: unknown, on the opener and elsewhere.
    for replica in &replicas {
        let mut b = on(&a, &replica.url);
        b.token = Some("token-b".into());
        let reply = b.request("tools/call", echo.clone()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.messages);
    }
    // An altered id: unknown, whichever byte changed.
    let mut tampered = on(&a, &replicas[1].url);
    for at in [6, id.len() / 2, id.len() - 2] {
        let mut bytes = id.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        tampered.session = Some(String::from_utf8(bytes).unwrap());
        let reply = tampered.request("tools/call", echo.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "at {at}: {:?}",
            reply.messages
        );
    }
    // The unaltered id still works there.
    let mut same = on(&a, &replicas[1].url);
    assert!(passed(&same.call("echo", json!({"message": "x"})).await));
}

/// `toolgate serve` with `config` (and `files` beside it) must not start; its stderr.
fn refused_at_start(config: &str, files: &[(&str, &str, u32)]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, text, mode) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let path = dir.path().join("toolgate.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    let out = Command::new(crate::support::TOOLGATE)
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_or_exposed_key_or_a_stdio_upstream_stops_the_gateway_at_start() {
    let upstream = "[upstream]\nurl = \"http://127.0.0.1:9/mcp\"\n";
    let config = format!("session_key_file = \"k\"\n{upstream}");
    let good = "5f".repeat(32);
    let short = refused_at_start(&config, &[("k", &"5f".repeat(16), 0o600)]);
    assert!(short.contains("64 hex characters"), "{short}");
    let exposed = refused_at_start(&config, &[("k", &good, 0o644)]);
    assert!(exposed.contains("mode 644"), "{exposed}");
    let command = serde_json::to_string(&crate::support::standin()).unwrap();
    let stdio = format!("session_key_file = \"k\"\n[upstream]\ncommand = {command}\n");
    let stdio = refused_at_start(&stdio, &[("k", &good, 0o600)]);
    assert!(
        stdio.contains("keeps each session on the replica that opened it")
            && stdio.contains("stick tables"),
        "{stdio}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_leaves_its_sessions_to_the_others() {
    let (upstream, redis) = (EchoUpstream::start(), Redis::start());
    let (mut replicas, _key) = replicas(&upstream, &redis);
    let mut opened = Mcp::new(&replicas[0].url, Some("token-a"));
    opened.initialize().await;
    assert!(passed(
        &opened.call("echo", json!({"message": "before"})).await
    ));
    // Without a key a stopping gateway DELETEs its upstream sessions; with one, they are the
    // other replicas' too, and live on.
    let stopped = replicas[0].terminate(Duration::from_secs(15));
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert_eq!(upstream.stats().await["sessions"], 1);
    let mut after = on(&opened, &replicas[1].url);
    let result = after.call("echo", json!({"message": "after"})).await;
    assert_eq!(result["content"][0]["text"], "after", "{result}");
}
