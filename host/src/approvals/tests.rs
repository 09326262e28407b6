use super::*;
use crate::clock::ManualClock;
use serde_json::json;

fn registry() -> (Arc<Approvals>, Arc<ManualClock>) {
    let clock = ManualClock::starting_at(1_700_000_000_000);
    (Arc::new(Approvals::new(clock.clone())), clock)
}

fn call<'a>(args: &'a Value, session: &'a str) -> ToolCall<'a> {
    ToolCall {
        tool: "session_delete",
        args,
        args_text: None,
        grant: "agent",
        session,
        server: "",
        annotations: None,
    }
}

fn pending(ticket: Ticket) -> String {
    match ticket {
        Ticket::Pending { id, .. } => id,
        other => panic!("expected pending, got {other:?}"),
    }
}

const RULE: &str = "tools.session_delete";

#[test]
fn an_approval_lets_its_held_call_through_once() {
    let (approvals, _) = registry();
    let args = json!({"session_id": "s1"});
    let settings = ApprovalSettings::default();
    let id = pending(
        approvals
            .request(
                &call(&args, "c1"),
                &Value::Null,
                RULE,
                "needs a person",
                "p1",
                &settings,
            )
            .unwrap(),
    );
    let waiter = {
        let (approvals, id) = (approvals.clone(), id.clone());
        std::thread::spawn(move || approvals.hold(&id, Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(50));
    approvals.approve(&id, "ops", "cli").unwrap();
    assert_eq!(waiter.join().unwrap(), Held::Approved(by_ops(&id)));
    assert_eq!(approvals.get(&id).unwrap().state, State::Consumed);
    // Once: the identical call asks again, and approving twice changes nothing.
    let again = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    assert_ne!(again, id);
    assert!(approvals.approve(&id, "ops", "cli").is_ok());
}

#[test]
fn a_deny_carries_the_approvers_name_and_reason_and_cannot_be_turned_into_an_approval() {
    let (approvals, _) = registry();
    let args = json!({});
    let id = pending(
        approvals
            .request(
                &call(&args, "c1"),
                &Value::Null,
                RULE,
                "r",
                "p1",
                &ApprovalSettings::default(),
            )
            .unwrap(),
    );
    approvals.deny(&id, "ops", "page", "not today").unwrap();
    assert_eq!(
        approvals.hold(&id, Duration::ZERO),
        Held::Denied {
            by: "ops".into(),
            reason: "not today".into()
        }
    );
    let err = approvals.approve(&id, "other", "cli").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("approval request `{id}` is denied, not pending")
    );
    assert!(matches!(
        approvals.approve("nope", "ops", "cli"),
        Err(ApprovalError::Unknown(_))
    ));
}

#[test]
fn a_hold_that_ends_leaves_the_request_pending_and_the_identical_retry_passes_after_approval() {
    let (approvals, _) = registry();
    let settings = ApprovalSettings::default();
    let args = json!({"session_id": "s1", "force": true});
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    assert!(matches!(
        approvals.hold(&id, Duration::from_millis(20)),
        Held::Undecided {
            state: State::Pending,
            ..
        }
    ));
    // The identical call shares the pending request; once approved, its retry passes once.
    let same = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    assert_eq!(same, id);
    approvals.approve(&id, "ops", "cli").unwrap();
    // Same arguments written in another key order are the same call.
    let reordered: Value = serde_json::from_str(r#"{"force": true, "session_id": "s1"}"#).unwrap();
    assert_eq!(
        approvals
            .request(
                &call(&reordered, "c1"),
                &Value::Null,
                RULE,
                "r",
                "p1",
                &settings
            )
            .unwrap(),
        Ticket::Approved(by_ops(&id))
    );
    assert_ne!(
        approvals
            .request(
                &call(&reordered, "c1"),
                &Value::Null,
                RULE,
                "r",
                "p1",
                &settings
            )
            .unwrap(),
        Ticket::Approved(by_ops(&id)),
        "a once approval let two calls through"
    );
}

#[test]
fn an_approval_is_bound_to_the_arguments_the_grant_and_the_policy() {
    let (approvals, _) = registry();
    let settings = ApprovalSettings {
        reuse: Reuse::For(Duration::from_secs(3600)),
        ..ApprovalSettings::default()
    };
    let args = json!({"session_id": "s1"});
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    assert!(matches!(
        approvals
            .request(&call(&args, "c2"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
        Ticket::Approved { .. }
    ));
    let other = json!({"session_id": "s2"});
    let number = json!({"session_id": "s1", "n": 1});
    let number_float = json!({"session_id": "s1", "n": 1.0});
    for (args, digest) in [
        (&other, "p1"),
        (&args, "p2"),
        (&number, "p1"),
        (&number_float, "p1"),
    ] {
        assert!(matches!(
            approvals
                .request(
                    &call(args, "c1"),
                    &Value::Null,
                    RULE,
                    "r",
                    digest,
                    &settings
                )
                .unwrap(),
            Ticket::Pending { .. }
        ));
    }
    let mut other_grant = call(&args, "c1");
    other_grant.grant = "someone-else";
    assert!(matches!(
        approvals
            .request(&other_grant, &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
        Ticket::Pending { .. }
    ));
}

#[test]
fn reuse_windows_end_and_session_reuse_stays_in_its_session() {
    let (approvals, clock) = registry();
    let args = json!({});
    let session = ApprovalSettings {
        reuse: Reuse::Session,
        ..ApprovalSettings::default()
    };
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &session)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    for _ in 0..3 {
        assert!(matches!(
            approvals
                .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &session)
                .unwrap(),
            Ticket::Approved { .. }
        ));
    }
    assert!(matches!(
        approvals
            .request(&call(&args, "c2"), &Value::Null, RULE, "r", "p1", &session)
            .unwrap(),
        Ticket::Pending { .. }
    ));
    let hour = ApprovalSettings {
        reuse: Reuse::For(Duration::from_secs(3600)),
        bind: Bind::Tool,
        ..ApprovalSettings::default()
    };
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p9", &hour)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    let any = json!({"anything": 1});
    assert!(matches!(
        approvals
            .request(&call(&any, "c3"), &Value::Null, RULE, "r", "p9", &hour)
            .unwrap(),
        Ticket::Approved { .. }
    ));
    clock.advance(Duration::from_millis(3_600_001));
    assert!(matches!(
        approvals
            .request(&call(&any, "c3"), &Value::Null, RULE, "r", "p9", &hour)
            .unwrap(),
        Ticket::Pending { .. }
    ));
}

#[test]
fn undecided_requests_expire_and_cancelled_ones_stay_cancelled() {
    let (approvals, clock) = registry();
    let args = json!({});
    let settings = ApprovalSettings::default();
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    clock.advance(Duration::from_millis(600_000));
    assert_eq!(approvals.get(&id).unwrap().state, State::Expired);
    assert!(matches!(
        approvals.approve(&id, "ops", "cli"),
        Err(ApprovalError::NotPending {
            state: "expired",
            ..
        })
    ));
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    approvals.cancel(&id);
    assert!(matches!(
        approvals.hold(&id, Duration::from_secs(5)),
        Held::Undecided {
            state: State::Cancelled,
            ..
        }
    ));
}

#[test]
fn secrets_are_masked_at_every_depth_whatever_their_spelling() {
    let args = json!({"apiKey": "k", "nested": [{"API-KEY": "k", "password": {"x": 1}}],
        "session_id": "s1", "tokens": "kept"});
    assert_eq!(
        mask(&args),
        json!({"apiKey": "***", "nested": [{"API-KEY": "***", "password": "***"}],
            "session_id": "s1", "tokens": "kept"})
    );
}

/// Held calls decided in random order, from many threads: each gets its own outcome, and an
/// approval lets exactly one call through.
#[test]
fn many_held_calls_decided_in_any_order_get_their_own_outcome_once() {
    let (approvals, _) = registry();
    let settings = ApprovalSettings::default();
    let mut held = Vec::new();
    for i in 0..50 {
        let args = json!({"n": i});
        let session = format!("c{}", i % 5);
        let id = pending(
            approvals
                .request(
                    &call(&args, &session),
                    &Value::Null,
                    RULE,
                    "r",
                    "p1",
                    &settings,
                )
                .unwrap(),
        );
        let approvals = approvals.clone();
        let waiter = {
            let id = id.clone();
            std::thread::spawn(move || approvals.hold(&id, Duration::from_secs(20)))
        };
        held.push((i, id, waiter));
    }
    // A fixed shuffle: odd ones denied, even ones approved, in a scrambled order.
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by_key(|i| (i * 37) % 50);
    for i in order {
        let id = &held[i].1;
        if i % 2 == 0 {
            approvals.approve(id, "ops", "cli").unwrap();
        } else {
            approvals
                .deny(id, "ops", "cli", &format!("no {i}"))
                .unwrap();
        }
    }
    for (i, id, waiter) in held {
        let outcome = waiter.join().unwrap();
        if i % 2 == 0 {
            assert_eq!(outcome, Held::Approved(by_ops(&id)), "{i}");
            assert_eq!(approvals.get(&id).unwrap().state, State::Consumed);
        } else {
            assert_eq!(
                outcome,
                Held::Denied {
                    by: "ops".into(),
                    reason: format!("no {i}")
                },
                "{i}"
            );
        }
    }
}

/// From review: a `once` approval lasts only until the request's timeout; a mistaken
/// approval can be revoked; the other `params` members are bound too; numbers an approver
/// could not see exactly are refused; a grant cannot open requests without bound.
#[test]
fn approvals_expire_can_be_revoked_bind_the_whole_call_and_are_bounded() {
    let (approvals, clock) = registry();
    let settings = ApprovalSettings::default();
    let args = json!({"session_id": "s1"});
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    clock.advance(Duration::from_millis(600_001));
    assert!(matches!(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap(),
        Ticket::Pending { .. }
    ));

    let window = ApprovalSettings {
        reuse: Reuse::For(Duration::from_secs(3600)),
        ..ApprovalSettings::default()
    };
    let id = pending(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p2", &window)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    approvals
        .deny(&id, "ops", "cli", "approved by mistake")
        .unwrap();
    assert!(matches!(
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p2", &window)
            .unwrap(),
        Ticket::Pending { .. }
    ));

    let id = pending(
        approvals
            .request(&call(&args, "c1"), &json!({}), RULE, "r", "p3", &window)
            .unwrap(),
    );
    approvals.approve(&id, "ops", "cli").unwrap();
    let more = json!({"_meta": {"note": "x"}});
    assert!(matches!(
        approvals
            .request(&call(&args, "c1"), &more, RULE, "r", "p3", &window)
            .unwrap(),
        Ticket::Pending { .. }
    ));

    let big: Value = serde_json::from_str(r#"{"amount": 100000000000000000001}"#).unwrap();
    let err = approvals
        .request(&call(&big, "c1"), &Value::Null, RULE, "r", "p1", &settings)
        .unwrap_err();
    assert!(matches!(err, ApprovalError::InexactNumber(_)), "{err}");

    for i in 0..MAX_PENDING_PER_GRANT {
        let args = json!({"n": i});
        let _ = approvals.request(&call(&args, "c1"), &Value::Null, RULE, "r", "p9", &settings);
    }
    let args = json!({"n": "one more"});
    let err = approvals
        .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p9", &settings)
        .unwrap_err();
    assert!(matches!(err, ApprovalError::TooMany { .. }), "{err}");
}

#[test]
fn an_approval_given_back_unused_serves_the_identical_retry_once() {
    let (approvals, _) = registry();
    let args = json!({"session_id": "s1"});
    let settings = ApprovalSettings::default();
    let ask = || {
        approvals
            .request(&call(&args, "c1"), &Value::Null, RULE, "r", "p1", &settings)
            .unwrap()
    };
    let id = pending(ask());
    approvals.approve(&id, "ops", "cli").unwrap();
    assert!(matches!(
        approvals.hold(&id, Duration::ZERO),
        Held::Approved { .. }
    ));
    assert_eq!(approvals.get(&id).unwrap().state, State::Consumed);
    // The held call's client left before it ran: the approval goes back, once.
    approvals.give_back(&id);
    approvals.give_back(&id);
    assert_eq!(approvals.get(&id).unwrap().state, State::Approved);
    assert!(matches!(ask(), Ticket::Approved { .. }));
    assert_eq!(approvals.get(&id).unwrap().state, State::Consumed);
    assert!(matches!(ask(), Ticket::Pending { .. }));
    // A denied request has nothing to give back.
    let denied = pending(
        approvals
            .request(
                &call(&json!({"session_id": "s2"}), "c1"),
                &Value::Null,
                RULE,
                "r",
                "p1",
                &settings,
            )
            .unwrap(),
    );
    approvals.deny(&denied, "ops", "cli", "no").unwrap();
    approvals.give_back(&denied);
    assert_eq!(approvals.get(&denied).unwrap().state, State::Denied);
}

#[test]
fn a_request_state_is_accepted_once_from_its_grant_before_it_expires_and_never_altered() {
    let (approvals, clock) = registry();
    let expires = clock.now_ms() + 60_000;
    let state = approvals.seal_state("req-1", "agent", expires).unwrap();
    assert!(state.starts_with(STATE_PREFIX));
    // Altered anywhere: refused.
    let mut bytes = state.clone().into_bytes();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(bytes).unwrap();
    assert!(matches!(
        approvals.open_state(&altered, "agent"),
        Err(StateError::Tampered | StateError::Malformed)
    ));
    assert_eq!(
        approvals.open_state("tg1.abc", "agent"),
        Err(StateError::Malformed)
    );
    assert_eq!(
        approvals.open_state(&state, "other"),
        Err(StateError::OtherGrant)
    );
    assert_eq!(
        approvals.open_state(&state, "agent").as_deref(),
        Ok("req-1")
    );
    assert_eq!(approvals.open_state(&state, "agent"), Err(StateError::Used));
    // Another gateway process (another key) issued it: refused.
    let (elsewhere, _) = registry();
    let foreign = elsewhere.seal_state("req-1", "agent", expires).unwrap();
    assert_eq!(
        approvals.open_state(&foreign, "agent"),
        Err(StateError::Tampered)
    );
    // Expired: refused.
    let state = approvals.seal_state("req-2", "agent", expires).unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        approvals.open_state(&state, "agent"),
        Err(StateError::Expired)
    );
}

/// What a call approved with `approve(id, "ops", "cli")` is decided again with.
fn by_ops(id: &str) -> crate::call::Approval {
    crate::call::Approval {
        id: id.to_owned(),
        approver: "ops".into(),
        channel: "cli".into(),
    }
}
