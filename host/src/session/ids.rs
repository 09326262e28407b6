//! The gateway's own ids, both ways.
//!
//! A client request goes upstream under a fresh id of the gateway's and its reply comes back
//! under the client's id, restored byte for byte; a server→client request is renumbered the
//! same way in the other direction. This file keeps the maps that make that work (the pending
//! requests, the client's ids, the server's requests), translates cancellations through them,
//! and answers what is still pending when the transport gives up on a request
//! ([`Session::abandon`]), when it times out ([`Session::expire`]) or when the upstream goes
//! away ([`Session::upstream_gone`]). Refunds happen here only for a request never written.

use super::{ClientLine, Forward, Session};
use crate::audit::Fate;
use crate::counters::Reservation;
use crate::jsonrpc;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// What the session remembers about a request until its reply passes.
#[derive(Debug)]
pub(super) struct Pending {
    /// The client's id, as the client wrote it: the reply goes back under it.
    pub(super) client_id: Box<RawValue>,
    /// The client's id, canonical: reuse of a pending id is refused.
    client_key: String,
    pub(super) kind: Kind,
    pub(super) sent: Instant,
}

/// What a pending request was, for what its reply needs.
#[derive(Debug)]
pub(super) enum Kind {
    /// `first_page`: the request had no `cursor`, so its reply starts a fresh catalogue.
    ToolsList {
        first_page: bool,
    },
    /// A call: the units it took, its decision as the log knows it, and what the plugins that
    /// see its result need.
    ToolsCall(
        Vec<Reservation>,
        Option<Box<super::audited::Audited>>,
        Option<Box<super::results::HookedCall>>,
    ),
    /// `initialize`: its reply names the server (`serverInfo.name`), which plugins see.
    Initialize,
    Other,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: &'a RawValue,
}

impl Session {
    /// Whether a request under the client's canonical id `client_key` awaits its reply.
    pub(super) fn is_pending(&self, client_key: &str) -> bool {
        let state = self.state();
        state.client_ids.contains_key(client_key) || state.held.contains_key(client_key)
    }

    /// Sends a decided request upstream under a fresh id of the gateway's, and remembers it
    /// until its reply. A call's units are refunded if it cannot go after all.
    pub(super) fn admit<'l>(
        &self,
        line: &'l [u8],
        id: &RawValue,
        client_key: String,
        kind: Kind,
    ) -> ClientLine<'l> {
        let mut state = self.state();
        let refused = if state.upstream_gone {
            Some(jsonrpc::error_line(
                Some(id),
                jsonrpc::UPSTREAM_GONE,
                "upstream MCP server has exited",
            ))
        } else if state.client_ids.contains_key(&client_key) {
            Some(reused(id)) // the same id, sent twice at once over HTTP
        } else {
            None
        };
        if let Some(answer) = refused {
            drop(state);
            if let Kind::ToolsCall(reservations, audited, _) = kind {
                self.counters.refund(&reservations);
                self.audit_outcome(audited.as_deref(), Instant::now(), (Fate::Gone, None), None);
            }
            return ClientLine::Answer(answer);
        }
        state.last_id += 1;
        let upstream_id = state.last_id;
        let mut digits = itoa::Buffer::new();
        let Some(forwarded) = jsonrpc::splice(line, id, digits.format(upstream_id).as_bytes())
        else {
            unreachable!("the envelope was parsed from this line")
        };
        // Remembered before it is forwarded, so that its reply can never arrive first.
        state.client_ids.insert(client_key.clone(), upstream_id);
        state.pending.insert(
            upstream_id,
            Pending {
                client_id: id.to_owned(),
                client_key,
                kind,
                sent: Instant::now(),
            },
        );
        ClientLine::Forward(Forward {
            line: Cow::Owned(forwarded),
            upstream_id: Some(upstream_id),
        })
    }

    /// Forgets the request the gateway sent under `upstream_id`, if it is pending: its reply
    /// (or the error that stands for it) is on its way to the client.
    pub(super) fn take_pending(&self, upstream_id: u64) -> Option<Pending> {
        let mut state = self.state();
        let pending = state.pending.remove(&upstream_id)?;
        state.client_ids.remove(&pending.client_key);
        Some(pending)
    }

    /// The client's `notifications/cancelled`: forwarded under the gateway's id for the
    /// request it names, or dropped if that request is not pending.
    pub(super) fn cancelled_by_client<'l>(
        &self,
        line: &'l [u8],
        params: Option<&RawValue>,
    ) -> ClientLine<'l> {
        let Some(params) =
            params.and_then(|p| serde_json::from_str::<CancelledParams>(p.get()).ok())
        else {
            return ClientLine::Drop;
        };
        let key = jsonrpc::id_key(params.request_id.get());
        // A call held for approval: its request is withdrawn, and the call never runs.
        if let Some(approval) = self.state().held.remove(&key) {
            if let Some(approvals) = &self.approvals {
                approvals.cancel(&approval);
            }
            return ClientLine::Drop;
        }
        // The request will get no reply: forget it. Its counter units stay spent,
        // because the tool may already have run. A late reply is dropped.
        let (upstream_id, pending) = {
            let mut state = self.state();
            let upstream_id = state.client_ids.remove(&key);
            let pending = upstream_id.and_then(|id| state.pending.remove(&id));
            (upstream_id, pending)
        };
        if let Some(Pending {
            kind: Kind::ToolsCall(_, audited, _),
            sent,
            ..
        }) = &pending
        {
            self.audit_outcome(audited.as_deref(), *sent, (Fate::Cancelled, None), None);
        }
        match upstream_id {
            Some(upstream_id) => ClientLine::Forward(Forward {
                line: Cow::Owned(
                    jsonrpc::splice(line, params.request_id, upstream_id.to_string().as_bytes())
                        .unwrap_or_default(),
                ),
                upstream_id: None,
            }),
            None => ClientLine::Drop,
        }
    }

    /// The client's reply to a server→client request goes back under the upstream's id.
    pub(super) fn reply_to_server<'l>(&self, line: &'l [u8], id: &RawValue) -> ClientLine<'l> {
        let upstream =
            jsonrpc::gateway_id(id).and_then(|n| self.state().server_requests.remove(&n));
        match upstream.and_then(|upstream| jsonrpc::splice(line, id, upstream.get().as_bytes())) {
            Some(forwarded) => ClientLine::Forward(Forward {
                line: Cow::Owned(forwarded),
                upstream_id: None,
            }),
            None => {
                tracing::warn!(id = %truncated(id.get()), "dropped a reply from the client to no pending server request");
                ClientLine::Drop
            }
        }
    }

    /// A server→client request: under an id of the gateway's, like the client's.
    pub(super) fn server_request<'l>(
        &self,
        line: &'l [u8],
        id: &RawValue,
    ) -> Option<Cow<'l, [u8]>> {
        let ours = {
            let mut state = self.state();
            state.last_server_id += 1;
            let ours = state.last_server_id;
            state.server_requests.insert(ours, id.to_owned());
            ours
        };
        jsonrpc::splice(line, id, ours.to_string().as_bytes()).map(Cow::Owned)
    }

    /// The server's `notifications/cancelled`: it gave up on one of its requests, so name
    /// it by the id the client knows; dropped if that request is not pending.
    pub(super) fn cancelled_by_server<'l>(
        &self,
        line: &'l [u8],
        params: Option<&RawValue>,
    ) -> Option<Cow<'l, [u8]>> {
        let params = params.and_then(|p| serde_json::from_str::<CancelledParams>(p.get()).ok())?;
        let key = jsonrpc::id_key(params.request_id.get());
        let ours = {
            let mut state = self.state();
            let ours = state
                .server_requests
                .iter()
                .find(|(_, upstream)| jsonrpc::id_key(upstream.get()) == key)
                .map(|(ours, _)| *ours)?;
            state.server_requests.remove(&ours);
            ours
        };
        jsonrpc::splice(line, params.request_id, ours.to_string().as_bytes()).map(Cow::Owned)
    }

    /// The transport could not deliver the request it was given under `upstream_id`:
    /// forgets it and returns the error reply for the client. `written` says whether any of
    /// it may have reached the upstream: only if not are a call's counter units refunded.
    pub fn abandon(&self, upstream_id: u64, written: bool, why: &str) -> Option<Vec<u8>> {
        let pending = self.take_pending(upstream_id)?;
        if let Kind::ToolsCall(reservations, audited, _) = &pending.kind {
            if !written {
                self.counters.refund(reservations);
            }
            self.audit_outcome(audited.as_deref(), pending.sent, (Fate::Gone, None), None);
        }
        Some(jsonrpc::error_line(
            Some(&pending.client_id),
            jsonrpc::UPSTREAM_GONE,
            why,
        ))
    }

    /// Requests sent more than `timeout` ago: forgotten, each answered with an error. Their
    /// counter units stay spent (the tool may be running); a late reply is dropped.
    pub fn expire(&self, timeout: Duration) -> Vec<Vec<u8>> {
        let expired: Vec<Pending> = {
            let mut state = self.state();
            let old: Vec<u64> = state
                .pending
                .iter()
                .filter(|(_, p)| p.sent.elapsed() >= timeout)
                .map(|(id, _)| *id)
                .collect();
            let state = &mut *state;
            old.into_iter()
                .filter_map(|id| state.pending.remove(&id))
                .inspect(|p| {
                    state.client_ids.remove(&p.client_key);
                })
                .collect()
        };
        let message = format!(
            "[toolgate] the upstream MCP server did not answer within {} s",
            timeout.as_secs_f64()
        );
        expired
            .iter()
            .map(|p| {
                tracing::warn!(id = %truncated(p.client_id.get()), "request timed out upstream");
                if let Kind::ToolsCall(_, audited, _) = &p.kind {
                    self.audit_outcome(audited.as_deref(), p.sent, (Fate::Timeout, None), None);
                }
                jsonrpc::error_line(Some(&p.client_id), jsonrpc::UPSTREAM_GONE, &message)
            })
            .collect()
    }

    /// The upstream is gone: returns an error reply for every request still waiting. Their
    /// counter units stay spent: the upstream may have run them before it went. Requests that
    /// arrive later are answered with an error at once.
    pub fn upstream_gone(&self, why: &str) -> Vec<Vec<u8>> {
        let drained: Vec<Pending> = {
            let mut state = self.state();
            state.upstream_gone = true;
            state.client_ids.clear();
            state.server_requests.clear();
            state.pending.drain().map(|(_, p)| p).collect()
        };
        drained
            .iter()
            .map(|p| {
                if let Kind::ToolsCall(_, audited, _) = &p.kind {
                    self.audit_outcome(audited.as_deref(), p.sent, (Fate::Gone, None), None);
                }
                jsonrpc::error_line(Some(&p.client_id), jsonrpc::UPSTREAM_GONE, why)
            })
            .collect()
    }

    /// How many requests are waiting for the upstream.
    pub fn pending_requests(&self) -> usize {
        self.state().pending.len()
    }
}

/// The answer to a request whose id is already pending.
pub(super) fn reused(id: &RawValue) -> Vec<u8> {
    jsonrpc::error_line(
        Some(id),
        jsonrpc::INVALID_REQUEST,
        &format!(
            "invalid request: id `{}` is already used by a request that awaits its reply",
            truncated(id.get())
        ),
    )
}

/// An id or other client text, shortened for a message or log.
pub(super) fn truncated(text: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return Cow::Borrowed(text);
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}
