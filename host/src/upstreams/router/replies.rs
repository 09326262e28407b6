//! The upstream side of the router: replies, server→client requests and notifications, an
//! upstream's loss, and merged requests that waited too long.

use super::{key, member, raw, replace_member, Out, Router, UpState};
use crate::jsonrpc::{self, Envelope, UPSTREAM_GONE};
use crate::upstreams::merge::Answer;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Instant;

impl Router {
    /// A line from upstream `upstream`.
    pub fn from_upstream(&mut self, upstream: usize, line: &[u8]) -> Vec<Out> {
        let Ok(envelope) = Envelope::parse(line) else {
            tracing::warn!(
                upstream = self.names.name(upstream),
                "unreadable line from an upstream dropped"
            );
            return Vec::new();
        };
        match (envelope.method.as_deref(), envelope.id) {
            (Some(_), Some(id)) => {
                self.next_server += 1;
                let ours = self.next_server;
                self.server_requests
                    .insert(ours, (upstream, raw(id.get().to_owned())));
                jsonrpc::splice(line, id, ours.to_string().as_bytes())
                    .map(|l| vec![Out::Client(l)])
                    .unwrap_or_default()
            }
            (Some(method), None) => {
                self.server_notification(upstream, line, method, envelope.params)
            }
            (None, Some(id)) => self.reply(upstream, line, id, &envelope),
            (None, None) => Vec::new(),
        }
    }

    fn reply(
        &mut self,
        upstream: usize,
        line: &[u8],
        id: &RawValue,
        envelope: &Envelope,
    ) -> Vec<Out> {
        if let Some(&(number, from)) = self.subs.get(id.get()) {
            if from != upstream {
                return Vec::new();
            }
            self.subs.remove(id.get());
            let answer = Answer::of(envelope);
            if let Some(fanout) = self.fanouts.get_mut(&number) {
                fanout.waiting.remove(&upstream);
                fanout.answers.push((upstream, answer));
            }
            return self.finish_if_done(number);
        }
        let request = key(id);
        if self
            .routed
            .get(&request)
            .is_none_or(|r| r.upstream != upstream)
        {
            tracing::debug!(
                upstream = self.names.name(upstream),
                "reply to no pending request dropped"
            );
            return Vec::new();
        }
        let routed = self.routed.remove(&request).expect("checked above");
        if routed.resource && envelope.result.is_some() {
            if let Some(line) = self.prefix_contents(upstream, line, envelope) {
                return vec![Out::Client(line)];
            }
        }
        vec![Out::Client(line.to_vec())]
    }

    /// A `resources/read` result with each content's URI under the upstream's prefix.
    fn prefix_contents(
        &self,
        upstream: usize,
        line: &[u8],
        envelope: &Envelope,
    ) -> Option<Vec<u8>> {
        let raw_result = envelope.result?;
        let mut result: Value = serde_json::from_str(raw_result.get()).ok()?;
        for content in result.get_mut("contents")?.as_array_mut()? {
            if let Some(uri) = content.get("uri").and_then(Value::as_str) {
                content["uri"] = Value::String(self.names.uri(upstream, uri));
            }
        }
        jsonrpc::splice(line, raw_result, result.to_string().as_bytes())
    }

    fn server_notification(
        &mut self,
        upstream: usize,
        line: &[u8],
        method: &str,
        params: Option<&RawValue>,
    ) -> Vec<Out> {
        let rewritten = match method {
            "notifications/cancelled" => params.and_then(|p| {
                let parsed: Value = serde_json::from_str(p.get()).ok()?;
                let theirs = parsed.get("requestId")?.to_string();
                let ours = self.server_requests.iter().find_map(|(ours, (u, id))| {
                    (*u == upstream && jsonrpc::id_key(id.get()) == jsonrpc::id_key(&theirs))
                        .then_some(*ours)
                })?;
                self.server_requests.remove(&ours);
                let new = replace_member(p.get(), &["requestId"], &ours.to_string())?;
                jsonrpc::splice(line, p, new.as_bytes())
            }),
            "notifications/resources/updated" => params.and_then(|p| {
                let parsed: Value = serde_json::from_str(p.get()).ok()?;
                let uri = self.names.uri(upstream, member(&parsed, &["uri"])?);
                let new = replace_member(p.get(), &["uri"], &serde_json::to_string(&uri).ok()?)?;
                jsonrpc::splice(line, p, new.as_bytes())
            }),
            _ => return vec![Out::Client(line.to_vec())],
        };
        // A cancellation of nothing we know, or an update we cannot read, goes nowhere.
        rewritten.map(|l| vec![Out::Client(l)]).unwrap_or_default()
    }

    /// Upstream `upstream` is gone (exited, unreachable): its pending requests are answered,
    /// merged requests go on without it, and the client re-lists.
    pub fn upstream_gone(&mut self, upstream: usize, why: &str) -> Vec<Out> {
        if matches!(self.states[upstream], UpState::Down(_)) {
            return Vec::new();
        }
        let was_ready = self.states[upstream] == UpState::Ready;
        self.states[upstream] = UpState::Down(why.to_owned());
        self.generation += 1;
        let name = self.names.name(upstream).to_owned();
        tracing::warn!(upstream = %name, why, "upstream server gone");
        let mut out = Vec::new();
        let lost: Vec<String> = self
            .routed
            .iter()
            .filter(|(_, r)| r.upstream == upstream)
            .map(|(k, _)| k.clone())
            .collect();
        for request in lost {
            self.routed.remove(&request);
            if let Ok(id) = RawValue::from_string(request) {
                out.push(Out::Client(jsonrpc::error_line(
                    Some(&id),
                    UPSTREAM_GONE,
                    &format!("upstream server `{name}` went away before answering ({why})"),
                )));
            }
        }
        self.server_requests.retain(|_, (u, _)| *u != upstream);
        let waiting: Vec<u64> = self
            .fanouts
            .iter()
            .filter(|(_, f)| f.waiting.contains_key(&upstream))
            .map(|(n, _)| *n)
            .collect();
        for number in waiting {
            let fanout = self.fanouts.get_mut(&number).expect("listed above");
            if let Some(sub) = fanout.waiting.remove(&upstream) {
                self.subs.remove(&sub);
            }
            fanout
                .answers
                .push((upstream, Answer::Error(why.to_owned())));
            out.extend(self.finish_if_done(number));
        }
        if was_ready && self.initialized {
            out.push(Out::Client(
                b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n".to_vec(),
            ));
        }
        out
    }

    /// Answers merged requests whose slow upstreams have had `fanout_timeout`.
    pub fn expire(&mut self, now: Instant) -> Vec<Out> {
        let late: Vec<u64> = self
            .fanouts
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for number in late {
            let fanout = self.fanouts.get_mut(&number).expect("listed above");
            let seconds = self.fanout_timeout.as_secs();
            for (upstream, sub) in std::mem::take(&mut fanout.waiting) {
                self.subs.remove(&sub);
                fanout.answers.push((
                    upstream,
                    Answer::Error(format!("no answer within {seconds} s")),
                ));
            }
            out.extend(self.finish_if_done(number));
        }
        out
    }
}
