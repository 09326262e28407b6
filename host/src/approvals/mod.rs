//! Approvals: calls held until a person decides. One registry per gateway process; the
//! transports hold calls on it, the operator channels (CLI, HTTP API, page) and the agent's
//! own client decide on it.
//!
//! A request's life: `pending → approved | denied | expired | cancelled`, and an approved one
//! then `consumed` once it has let its call through. An approval is **bound**: to the grant,
//! the tool, the call's canonical arguments (unless the rule says `bind: tool`) and the digest
//! of the policy that asked, so approving one call never lets another through, and a changed
//! policy asks again. It reaches as far as the rule's `reuse` says: the one call, once (the
//! default); identical calls in the same session; or identical calls of the grant for a while.
//!
//! Every new request and change of state is told on a feed (`feed.rs`) for approvers'
//! screens to watch.
//!
//! Nothing here runs a call: it says whether one may run. A restart loses pending requests
//! (their calls are answered with an error by the transport that held them), so a held call
//! is never run by a process that did not hold it.

mod feed;
mod request_state;
mod settings;

pub use feed::{Change, Watch, FEED_CAPACITY};
pub use request_state::{StateError, STATE_PREFIX};
pub use settings::{ApprovalSettings, ApprovalSpec, Bind, Reuse, Via, MAX_REUSE};

use crate::call::{Approval, ToolCall};
use crate::clock::Clock;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Argument keys whose values are never shown to an approver, a log or a webhook (compared
/// without case, `-` and `_`: `apiKey`, `api_key` and `API-KEY` are one).
pub const MASKED_KEYS: [&str; 9] = [
    "token",
    "apikey",
    "password",
    "secret",
    "authorization",
    "accesstoken",
    "refreshtoken",
    "privatekey",
    "clientsecret",
];

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for a person.
    Pending,
    /// Approved: the call (or, with reuse, identical calls) may run.
    Approved,
    /// Denied, with the approver's reason.
    Denied,
    /// Nobody decided within the rule's `timeout`.
    Expired,
    /// The client withdrew the call.
    Cancelled,
    /// Approved, and its one call has gone upstream.
    Consumed,
}

impl State {
    /// Its name, as the CLI and the API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Consumed => "consumed",
        }
    }
}

/// One approval request, as approvers see it (arguments masked).
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// A random id (a UUID): the handle every channel decides by.
    pub id: String,
    /// The grant (agent identity) that made the call.
    pub grant: String,
    /// The MCP session it arrived on.
    pub session: String,
    /// The tool.
    pub tool: String,
    /// The rule that asked for approval.
    pub rule: String,
    /// Why it asked.
    pub reason: String,
    /// The arguments, with [`MASKED_KEYS`] masked at every depth.
    pub arguments: Value,
    /// When it was made and when it expires (ms since the epoch).
    pub created_ms: u64,
    /// See `created_ms`.
    pub expires_ms: u64,
    /// Where it is in its life.
    pub state: State,
    /// Who decided, through which channel, and why (for a deny).
    pub decided_by: Option<String>,
    /// See `decided_by`.
    pub channel: Option<String>,
    /// See `decided_by`.
    pub note: Option<String>,
    /// The digest of the policy that asked: a held call released under another policy is
    /// decided again, not let through on this approval.
    pub policy_digest: String,
    /// What the approval is bound to (sha256 hex), and how far it reaches.
    #[serde(skip)]
    binding: String,
    #[serde(skip)]
    reuse: Reuse,
    /// Until when an approval with reuse keeps letting identical calls through.
    #[serde(skip)]
    reusable_until_ms: u64,
}

impl Request {
    /// The approval it records: its id, who decided it and through which channel.
    fn approval(&self) -> Approval {
        Approval {
            id: self.id.clone(),
            approver: self.decided_by.clone().unwrap_or_default(),
            channel: self.channel.clone().unwrap_or_default(),
        }
    }
}

/// What a call that needs approval gets from [`Approvals::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ticket {
    /// An approval already covers it (and was consumed, for `once`): decide it again as
    /// approved by this (the request, who approved it and through which channel).
    Approved(Approval),
    /// A request is pending for it (a new one, or the one an identical call already opened).
    Pending {
        /// The request's id.
        id: String,
        /// When it expires (ms since the epoch).
        expires_ms: u64,
    },
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Approved: the call may run (the approval was consumed, for `once`), decided again as
    /// approved by this.
    Approved(Approval),
    /// Denied: the agent gets a deny with the approver's name and reason.
    Denied {
        /// Who denied it.
        by: String,
        /// Why.
        reason: String,
    },
    /// The hold ended with the request still pending (the agent may retry it), or it expired
    /// or was cancelled.
    Undecided {
        /// The request's state.
        state: State,
        /// When it expires.
        expires_ms: u64,
    },
}

/// Why a decision could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No request has this id.
    #[error("no approval request `{0}`")]
    Unknown(String),
    /// The grant has [`MAX_PENDING_PER_GRANT`] requests open already.
    #[error("grant `{grant}` has {MAX_PENDING_PER_GRANT} approval requests open already; wait for them to be decided")]
    TooMany {
        /// The grant.
        grant: String,
    },
    /// The arguments hold a number an approver could not be shown exactly.
    #[error("the arguments hold the number {0}, which cannot be shown to an approver exactly (past 2^53): send it as a string")]
    InexactNumber(String),
    /// It was already decided otherwise, or it expired.
    #[error("approval request `{id}` is {state}, not pending")]
    NotPending {
        /// The request.
        id: String,
        /// Its state.
        state: &'static str,
    },
}

/// The registry of one process.
pub struct Approvals {
    inner: Mutex<Inner>,
    changed: Condvar,
    clock: Arc<dyn Clock>,
    /// Told of every new request (a webhook), outside the registry's lock.
    announce: Option<Announce>,
    /// The `requestState`s issued to 2026-07-28 clients.
    states: request_state::RequestStates,
    /// Told of every new request and change of state, under the registry's lock.
    feed: feed::Feed,
}

/// What is told of every new request.
type Announce = Box<dyn Fn(&Request) + Send + Sync>;

#[derive(Default)]
struct Inner {
    requests: BTreeMap<String, Request>,
}

impl Approvals {
    /// An empty registry; `clock` stamps requests and decides expiry.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            clock,
            announce: None,
            states: request_state::RequestStates::new(),
            feed: feed::Feed::new(),
        }
    }

    /// `announce` is told of every new request (it must not block: a webhook spawns its POST).
    pub fn with_announce(mut self, announce: impl Fn(&Request) + Send + Sync + 'static) -> Self {
        self.announce = Some(Box::new(announce));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call `rule` says needs approval (`reason`) under the policy whose digest is
    /// `policy_digest`: let through if an approval covers it, else pending on a request (an
    /// identical call already pending shares its request). `extra` is what else of the call
    /// reaches the upstream besides its name and arguments (the other `params` members,
    /// `_meta` but its `progressToken`): bound too, so a retry cannot carry more.
    pub fn request(
        &self,
        call: &ToolCall<'_>,
        extra: &Value,
        rule: &str,
        reason: &str,
        policy_digest: &str,
        settings: &ApprovalSettings,
    ) -> Result<Ticket, ApprovalError> {
        if let Some(number) = inexact_number(call.args) {
            return Err(ApprovalError::InexactNumber(number));
        }
        let binding = binding(call, extra, policy_digest, settings.bind);
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        expire(&mut inner, now, &self.feed);
        // An approval that reaches this call.
        let covering = inner.requests.values_mut().find(|r| {
            r.binding == binding
                && match r.state {
                    State::Approved => match r.reuse {
                        Reuse::Once => now < r.reusable_until_ms,
                        Reuse::Session => r.session == call.session && now < r.reusable_until_ms,
                        Reuse::For(_) => now < r.reusable_until_ms,
                    },
                    _ => false,
                }
        });
        if let Some(r) = covering {
            if r.reuse == Reuse::Once {
                r.state = State::Consumed;
                self.feed.changed(r);
            }
            tracing::info!(approval = %r.id, tool = call.tool, grant = call.grant, "approval: a call covered by an approval goes through");
            return Ok(Ticket::Approved(r.approval()));
        }
        if let Some(r) = inner
            .requests
            .values()
            .find(|r| r.binding == binding && r.state == State::Pending)
        {
            return Ok(Ticket::Pending {
                id: r.id.clone(),
                expires_ms: r.expires_ms,
            });
        }
        let open = inner
            .requests
            .values()
            .filter(|r| r.grant == call.grant && r.state == State::Pending)
            .count();
        if open >= MAX_PENDING_PER_GRANT {
            return Err(ApprovalError::TooMany {
                grant: call.grant.to_owned(),
            });
        }
        prune(&mut inner, now);
        let id = uuid::Uuid::new_v4().to_string();
        let expires_ms = now + settings.timeout.as_millis() as u64;
        let request = Request {
            id: id.clone(),
            grant: call.grant.to_owned(),
            session: call.session.to_owned(),
            tool: call.tool.to_owned(),
            rule: rule.to_owned(),
            reason: reason.to_owned(),
            arguments: mask(call.args),
            created_ms: now,
            expires_ms,
            state: State::Pending,
            decided_by: None,
            channel: None,
            note: None,
            policy_digest: policy_digest.to_owned(),
            binding,
            reuse: settings.reuse,
            reusable_until_ms: 0,
        };
        tracing::info!(approval = %id, tool = call.tool, grant = call.grant, session = call.session, rule, reason, "approval: requested");
        let announced = self.announce.is_some().then(|| request.clone());
        self.feed.requested(&request);
        inner.requests.insert(id.clone(), request);
        drop(inner);
        self.changed.notify_all();
        if let (Some(announce), Some(request)) = (&self.announce, announced) {
            announce(&request);
        }
        Ok(Ticket::Pending { id, expires_ms })
    }

    /// Waits up to `hold` for request `id` to be decided. An approval is consumed here (for
    /// `once`): the caller runs the call exactly once.
    pub fn hold(&self, id: &str, hold: Duration) -> Held {
        let deadline = Instant::now() + hold;
        let mut inner = self.lock();
        loop {
            expire(&mut inner, self.clock.now_ms(), &self.feed);
            let Some(r) = inner.requests.get_mut(id) else {
                return Held::Undecided {
                    state: State::Expired,
                    expires_ms: 0,
                };
            };
            match r.state {
                State::Approved => {
                    if r.reuse == Reuse::Once {
                        r.state = State::Consumed;
                        self.feed.changed(r);
                    }
                    return Held::Approved(r.approval());
                }
                State::Denied => {
                    return Held::Denied {
                        by: r.decided_by.clone().unwrap_or_default(),
                        reason: r.note.clone().unwrap_or_default(),
                    }
                }
                State::Pending => {}
                state => {
                    return Held::Undecided {
                        state,
                        expires_ms: r.expires_ms,
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Held::Undecided {
                    state: State::Pending,
                    expires_ms: r.expires_ms,
                };
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Gives back the approval a [`Approvals::hold`] consumed for a call that then did not
    /// run (its client left first): the identical retry may still use it.
    pub fn give_back(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(r) = inner.requests.get_mut(id) {
            if r.state == State::Consumed && r.reuse == Reuse::Once {
                r.state = State::Approved;
                tracing::info!(
                    approval = id,
                    "approval: given back unused (the held call's client left)"
                );
                self.feed.changed(r);
            }
        }
    }

    /// Approves request `id` (by `by`, through `channel`). Idempotent: approving an approved
    /// request again changes nothing.
    pub fn approve(&self, id: &str, by: &str, channel: &str) -> Result<Request, ApprovalError> {
        self.decide(id, by, channel, None, None)
    }

    /// [`Approvals::approve`], with the approver choosing how far the approval reaches
    /// instead of the rule (`toolgate approvals approve ID --reuse 1h`).
    pub fn approve_reusing(
        &self,
        id: &str,
        by: &str,
        channel: &str,
        reuse: Reuse,
    ) -> Result<Request, ApprovalError> {
        self.decide(id, by, channel, None, Some(reuse))
    }

    /// Denies request `id` with `reason`. Idempotent like [`Approvals::approve`].
    pub fn deny(
        &self,
        id: &str,
        by: &str,
        channel: &str,
        reason: &str,
    ) -> Result<Request, ApprovalError> {
        self.decide(id, by, channel, Some(reason), None)
    }

    fn decide(
        &self,
        id: &str,
        by: &str,
        channel: &str,
        deny: Option<&str>,
        reuse: Option<Reuse>,
    ) -> Result<Request, ApprovalError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        expire(&mut inner, now, &self.feed);
        let r = inner
            .requests
            .get_mut(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))?;
        let wanted = if deny.is_some() {
            State::Denied
        } else {
            State::Approved
        };
        let repeat = r.state == wanted || (wanted == State::Approved && r.state == State::Consumed);
        if repeat {
            return Ok(r.clone());
        }
        // A deny revokes an approval that has not let its call through yet (or whose reuse
        // window still lets identical calls through): a mistake can be taken back.
        let revoking = wanted == State::Denied && r.state == State::Approved;
        if r.state != State::Pending && !revoking {
            return Err(ApprovalError::NotPending {
                id: id.to_owned(),
                state: r.state.as_str(),
            });
        }
        r.state = wanted;
        r.decided_by = Some(by.to_owned());
        r.channel = Some(channel.to_owned());
        r.note = deny.map(str::to_owned);
        if let Some(reuse) = reuse {
            r.reuse = reuse;
        }
        r.reusable_until_ms = match r.reuse {
            // The held call, or its identical retry until the request's timeout.
            Reuse::Once => r.expires_ms,
            Reuse::Session => r.expires_ms,
            Reuse::For(window) => now + window.as_millis() as u64,
        };
        tracing::info!(approval = id, state = r.state.as_str(), by, channel, note = deny.unwrap_or(""), tool = %r.tool, grant = %r.grant, "approval: decided");
        let decided = r.clone();
        self.feed.changed(&decided);
        drop(inner);
        self.changed.notify_all();
        Ok(decided)
    }

    /// The client withdrew the held call: its pending request is cancelled.
    pub fn cancel(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(r) = inner.requests.get_mut(id) {
            if r.state == State::Pending {
                r.state = State::Cancelled;
                tracing::info!(approval = id, "approval: cancelled by the client");
                self.feed.changed(r);
            }
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Every request, newest first.
    pub fn list(&self) -> Vec<Request> {
        let mut inner = self.lock();
        expire(&mut inner, self.clock.now_ms(), &self.feed);
        let mut all: Vec<Request> = inner.requests.values().cloned().collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        all
    }

    /// Request `id`.
    pub fn get(&self, id: &str) -> Option<Request> {
        let mut inner = self.lock();
        expire(&mut inner, self.clock.now_ms(), &self.feed);
        inner.requests.get(id).cloned()
    }
}

/// Pending requests one grant may have at once: past it, a call that needs approval is
/// refused, so that an agent varying its arguments cannot flood approvers and memory.
pub const MAX_PENDING_PER_GRANT: usize = 100;

/// How long a decided request stays listed (and, for reuse, usable) before it is forgotten.
const KEEP_DECIDED_MS: u64 = 24 * 3600 * 1000;

/// Forgets requests decided (or expired) long ago whose reuse window is over.
fn prune(inner: &mut Inner, now: u64) {
    inner.requests.retain(|_, r| {
        r.state == State::Pending
            || r.reusable_until_ms > now
            || now < r.created_ms.saturating_add(KEEP_DECIDED_MS)
    });
}

/// The first number in `args` that a person could not be shown exactly: an integer past
/// 2^53 read as a float (serde_json keeps what overflows u64/i64 only approximately), so the
/// approver would see `1e+20` while the upstream reads every digit.
fn inexact_number(args: &Value) -> Option<String> {
    match args {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() >= 9_007_199_254_740_992.0)
            .map(|_| n.to_string()),
        Value::Array(items) => items.iter().find_map(inexact_number),
        Value::Object(map) => map.values().find_map(inexact_number),
        _ => None,
    }
}

/// Pending requests past their timeout become expired (and `feed` is told).
fn expire(inner: &mut Inner, now: u64, feed: &feed::Feed) {
    for r in inner.requests.values_mut() {
        if r.state == State::Pending && now >= r.expires_ms {
            r.state = State::Expired;
            tracing::info!(approval = %r.id, tool = %r.tool, grant = %r.grant, "approval: expired undecided");
            feed.changed(r);
        }
    }
}

/// What an approval of `call` is bound to: sha256 over the grant, the tool, the canonical
/// arguments (unless `bind` is `tool`) and the policy's digest, each length-prefixed.
fn binding(call: &ToolCall<'_>, extra: &Value, policy_digest: &str, bind: Bind) -> String {
    let args = match bind {
        Bind::Args => crate::canonical::to_vec(call.args),
        Bind::Tool => Vec::new(),
    };
    let extra = crate::canonical::to_vec(extra);
    let mut whole = Vec::new();
    for part in [
        call.grant.as_bytes(),
        call.tool.as_bytes(),
        &args,
        &extra,
        policy_digest.as_bytes(),
    ] {
        whole.extend_from_slice(&(part.len() as u64).to_be_bytes());
        whole.extend_from_slice(part);
    }
    crate::digest::sha256_hex(&whole)
}

/// `args` with the values of [`MASKED_KEYS`] replaced by `"***"`, at every depth.
pub fn mask(args: &Value) -> Value {
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key: String = k
                        .chars()
                        .filter(|c| *c != '_' && *c != '-')
                        .flat_map(char::to_lowercase)
                        .collect();
                    let masked = MASKED_KEYS.contains(&key.as_str());
                    (
                        k.clone(),
                        if masked {
                            Value::String("***".into())
                        } else {
                            mask(v)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests;
