//! The least a gateway must do to decide a `tools/call` with toolgate's guarantees, on
//! toolgate's stack: `hyper-parse` (`hyper_proxy.rs`) plus the steps that "what the gateway
//! decides is exactly what the upstream runs" makes necessary, each in its plainest form:
//! - the bearer token compared;
//! - the session found by `Mcp-Session-Id`;
//! - the request parsed once, refusing duplicate and case-folded keys at any depth in the
//!   same pass (folded as toolgate folds them, `toolgate::jsonrpc::fold_key`), and read as
//!   the most lenient upstream reads it: a member is found under any key that folds to its
//!   name (`METHOD`, `Message`), since some stack will take that key for it;
//! - a message outside a session refused, unless it is `initialize`;
//! - every `tools/call` decided, with an id or without (one without is dropped, as toolgate
//!   drops it): the rule found by the tool's name, its condition evaluated on the arguments,
//!   its counter counted (one minute, per grant);
//! - the gateway's own id in place of the client's, the pair kept until the reply, and the
//!   message written again from what was decided;
//! - the reply parsed (a JSON body, or each SSE event's `data`) and the client's id put back.
//!
//! None of toolgate's other work is done: no observers, no catalogue, visibility or schema
//! checks, no approvals, no routing headers, no tracing, no limits on sizes or times. It
//! answers the bench policy's one rule only. `http_overhead` runs it as `hyper-gate`: what a
//! gateway with the same guarantees and nothing else measures beside toolgate.

use super::hyper_proxy::{accept_loop, handshake, Sender};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use toolgate::jsonrpc::fold_key;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SESSION_ID: &str = "mcp-session-id";

/// A session: the upstream's id for it, and the client's ids of the calls in flight, by the
/// gateway's id.
struct Session {
    upstream: Option<HeaderValue>,
    pending: Mutex<HashMap<u64, Value>>,
}

/// What every connection shares: the sessions, the gateway's next id, the grant's counter.
struct Gate {
    token: HeaderValue,
    /// By the gateway's own session id.
    sessions: Mutex<HashMap<Box<str>, Arc<Session>>>,
    /// The gateway's next request id, and session id.
    next_id: AtomicU64,
    /// The grant's `echo_rate` counter: the start of its minute, and the calls counted in it.
    counter: Mutex<(Instant, u64)>,
}

/// Parses a JSON value, refusing an object with two keys equal as written or after case
/// folding.
struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Checked)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let folded = fold_key(&key);
            if object.keys().any(|k| fold_key(k) == folded) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(Checked)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The key of `value`'s member `name` (a lowercase ASCII name), as written: the one key that
/// folds to `name` (the parse refused two).
fn key_of<'v>(value: &'v Value, name: &str) -> Option<&'v String> {
    value.as_object()?.keys().find(|k| fold_key(k) == name)
}

/// `value`'s member `name`, under whichever key folds to it.
fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    value.get(key_of(value, name)?)
}

/// A reply from the upstream, with the client's id in place of the gateway's `id`.
fn restore(data: &[u8], id: u64, client_id: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut reply: Value = serde_json::from_slice(data)?;
    if reply.get("id").and_then(Value::as_u64) == Some(id) {
        reply["id"] = client_id.clone();
    }
    serde_json::to_vec(&reply)
}

/// [`restore`] on each event's `data` of an SSE body.
fn restore_events(body: &[u8], id: u64, client_id: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_inclusive(|&b| b == b'\n') {
        match line.strip_prefix(b"data:") {
            Some(data) if !data.trim_ascii().is_empty() => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&restore(data.trim_ascii(), id, client_id)?);
                out.push(b'\n');
            }
            _ => out.extend_from_slice(line),
        }
    }
    Ok(out)
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON-RPC reply to `id` with a tool result that says `text` (a refusal).
fn refusal(id: &Value, text: &str) -> Response<Full<Bytes>> {
    let result = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
        "content": [{"type": "text", "text": text}], "isError": true}});
    respond(StatusCode::OK, result.to_string().into_bytes())
}

impl Gate {
    /// The bench policy's decision on a `tools/call`: `Err` with the refusal's text.
    fn decide(&self, params: Option<&Value>) -> Result<(), &'static str> {
        let tool = params
            .and_then(|p| field(p, "name"))
            .and_then(Value::as_str);
        if tool != Some("echo") {
            return Err("denied: no rule for this tool");
        }
        let message = params
            .and_then(|p| field(p, "arguments"))
            .and_then(|a| field(a, "message"))
            .and_then(Value::as_str);
        if message.is_some_and(|m| m.contains("forbidden")) {
            return Err("denied: args.message contains `forbidden`");
        }
        let mut counter = self.counter.lock().unwrap();
        if counter.0.elapsed().as_secs() >= 60 {
            *counter = (Instant::now(), 0);
        }
        if counter.1 >= 100_000_000 {
            return Err("rate limited: echo_rate");
        }
        counter.1 += 1;
        Ok(())
    }

    async fn exchange(
        self: Arc<Self>,
        sender: Arc<Sender<Full<Bytes>>>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, BoxError> {
        let (mut parts, body) = request.into_parts();
        if parts.headers.get(AUTHORIZATION) != Some(&self.token) {
            return Ok(respond(StatusCode::UNAUTHORIZED, Vec::new()));
        }
        let session = match parts.headers.get(SESSION_ID) {
            Some(id) => match self.sessions.lock().unwrap().get(id.to_str()?) {
                Some(session) => Some(session.clone()),
                None => return Ok(respond(StatusCode::NOT_FOUND, Vec::new())),
            },
            None => None,
        };
        // The upstream's session id in place of the gateway's.
        match session.as_ref().and_then(|s| s.upstream.clone()) {
            Some(upstream) => parts.headers.insert(SESSION_ID, upstream),
            None => parts.headers.remove(SESSION_ID),
        };
        let body = body.collect().await?.to_bytes();
        let mut de = serde_json::Deserializer::from_slice(&body);
        let mut message = match Checked
            .deserialize(&mut de)
            .and_then(|m| de.end().map(|()| m))
        {
            Ok(message @ Value::Object(_)) => message,
            _ => return Ok(respond(StatusCode::BAD_REQUEST, Vec::new())),
        };
        let id_key = key_of(&message, "id").cloned();
        let client_id = id_key.as_ref().map(|k| message[k].clone());
        let method = field(&message, "method").and_then(Value::as_str);
        let opening = session.is_none() && method == Some("initialize");
        if session.is_none() && !opening {
            return Ok(respond(StatusCode::BAD_REQUEST, Vec::new()));
        }
        if method == Some("tools/call") {
            let decided = self.decide(field(&message, "params"));
            match (decided, &client_id) {
                (Err(refused), Some(client_id)) => return Ok(refusal(client_id, refused)),
                // A call with no id would run with no one to answer: dropped either way.
                (_, None) => return Ok(respond(StatusCode::ACCEPTED, Vec::new())),
                (Ok(()), Some(_)) => {}
            }
        }
        let mut gateway_id = None;
        if let (Some(key), Some(client_id), Some(session)) = (id_key, &client_id, &session) {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            session
                .pending
                .lock()
                .unwrap()
                .insert(id, client_id.clone());
            // Under the key the client wrote: the message keeps one id.
            message[&key] = Value::from(id);
            gateway_id = Some(id);
        }
        let forwarded = Bytes::from(serde_json::to_vec(&message)?);
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.remove(AUTHORIZATION);
        let reply = sender
            .lock()
            .await
            .send_request(Request::from_parts(parts, Full::new(forwarded)))
            .await?;
        let (mut parts, body) = reply.into_parts();
        let body = body.collect().await?.to_bytes();
        if opening && parts.status.is_success() {
            // `initialize`: the session opens under an id of the gateway's.
            let id = format!("gate-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
            let session = Session {
                upstream: parts.headers.remove(SESSION_ID),
                pending: Mutex::default(),
            };
            self.sessions
                .lock()
                .unwrap()
                .insert(id.as_str().into(), Arc::new(session));
            parts
                .headers
                .insert(SESSION_ID, HeaderValue::from_str(&id)?);
        }
        let (Some(session), Some(id), Some(client_id)) = (session, gateway_id, client_id) else {
            return Ok(Response::from_parts(parts, Full::new(body)));
        };
        session.pending.lock().unwrap().remove(&id);
        let event_stream = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
        if body.is_empty() {
            // No reply in the body (202: the upstream took it for a notification).
            return Ok(Response::from_parts(parts, Full::new(body)));
        }
        let restored = if event_stream {
            restore_events(&body, id, &client_id)
        } else {
            restore(&body, id, &client_id)
        };
        // A reply that cannot be read is not passed on.
        let Ok(body) = restored else {
            return Ok(respond(StatusCode::BAD_GATEWAY, Vec::new()));
        };
        parts.headers.remove(CONTENT_LENGTH);
        parts.headers.remove(hyper::header::TRANSFER_ENCODING);
        Ok(Response::from_parts(parts, Full::new(Bytes::from(body))))
    }
}

/// Listens on 127.0.0.1:`listen` and decides for 127.0.0.1:`upstream` until killed; clients
/// present `Bearer {token}`.
pub fn run(listen: u16, upstream: u16, token: &str) -> ! {
    let gate = Arc::new(Gate {
        token: HeaderValue::from_str(&format!("Bearer {token}")).expect("a token"),
        sessions: Mutex::default(),
        next_id: AtomicU64::new(1),
        counter: Mutex::new((Instant::now(), 0)),
    });
    accept_loop(listen, upstream, move |client, up| {
        let gate = gate.clone();
        async move {
            let Some(sender) = handshake(up).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                gate.clone().exchange(sender.clone(), request)
            });
            let server = hyper::server::conn::http1::Builder::new();
            let _ = server.serve_connection(TokioIo::new(client), service).await;
        }
    })
}
