//! Making a [`Session`]: its policy, counters and identity, and the optional parts (the
//! observers it reports to, the approvals it holds calls on, trace injection, shadow
//! decisions, which schemas it checks).

use super::{Audit, Identity, SchemaChecks, Session, State};
use crate::counters::CounterStore;
use crate::policy::Policy;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

impl Session {
    /// A session for `identity` under `policy`, counting in `counters`.
    pub fn new(policy: Arc<Policy>, counters: Arc<dyn CounterStore>, identity: Identity) -> Self {
        Self::live(Arc::new(ArcSwap::new(policy)), counters, identity)
    }

    /// A session that follows the policy in `policy`, swapped by [`crate::reload`].
    pub fn live(
        policy: Arc<ArcSwap<Policy>>,
        counters: Arc<dyn CounterStore>,
        identity: Identity,
    ) -> Self {
        Self {
            policy,
            counters,
            identity,
            schemas: SchemaChecks::default(),
            state: Mutex::new(State::default()),
            approvals: None,
            operator_channel: false,
            client_channel: false,
            audit: None,
            shadow_policy: None,
            inject_trace: false,
        }
    }

    /// Forwards each allowed call with `params._meta.traceparent` set to its span (so the
    /// upstream's spans join the trace): the forwarded bytes then differ from the client's.
    pub fn with_trace_injection(mut self, inject: bool) -> Self {
        self.inject_trace = inject;
        self
    }

    /// Decides every call in shadow by `policy` too (logged, never enforced; needs an audit).
    pub fn with_shadow_policy(mut self, policy: Option<Arc<ArcSwap<Policy>>>) -> Self {
        self.shadow_policy = policy;
        self
    }

    /// Reports every decision and every forwarded call's outcome to `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<Audit>>) -> Self {
        self.audit = audit.map(|a| a.for_session(&self.identity));
        self
    }

    /// Calls that need approval are held on `approvals` when someone can decide: an operator
    /// (`operator_channel`: an admin socket, approvers) or the client's user (`client_channel`:
    /// the transport can ask, and the client declared elicitation). Otherwise they are
    /// refused at once.
    pub fn with_approvals(
        mut self,
        approvals: Arc<crate::approvals::Approvals>,
        operator_channel: bool,
        client_channel: bool,
    ) -> Self {
        self.approvals = Some(approvals);
        self.operator_channel = operator_channel;
        self.client_channel = client_channel;
        self
    }

    /// A session another gateway replica opened (its id sealed what it knew, see
    /// `http/sealed.rs`): whether its client declared elicitation in the `initialize` this
    /// core never saw. The upstream's tool catalogue is re-learned by a `tools/list` through
    /// [`Session::from_client`] and [`Session::from_upstream`], like any other.
    pub fn resumed(self, client_elicits: bool) -> Self {
        self.state().client_elicits = client_elicits;
        self
    }

    /// Whether the client declared `capabilities.elicitation` in its `initialize`.
    pub fn client_elicits(&self) -> bool {
        self.state().client_elicits
    }

    /// The approvals calls are held on, if any.
    pub fn approvals(&self) -> Option<&Arc<crate::approvals::Approvals>> {
        self.approvals.as_ref()
    }

    /// Which tools' arguments are checked against their `inputSchema` (all, by default).
    pub fn with_schema_checks(mut self, schemas: SchemaChecks) -> Self {
        self.schemas = schemas;
        self
    }
}
