//! The tool label, bounded: a client can send any tool name, and each distinct value would
//! be a new series in every family that carries it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The rule the session reports for a tool the upstream does not list.
const UNKNOWN_TOOL: &str = "unknown_tool";
/// The label of a grant's tools beyond the cap.
const OTHER: &str = "other";

/// The tool names each grant has been seen with, up to a cap.
pub(super) struct ToolLabels {
    cap: usize,
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl ToolLabels {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::default(),
        }
    }

    /// The label for `tool`, called by `grant` and decided by `rule`: `unknown_tool` when the
    /// upstream does not list it, the name while the grant has fewer than `cap` names, the
    /// name again once it has one, else `other`.
    pub(super) fn label(&self, grant: &str, rule: &str, tool: &str) -> String {
        if rule == UNKNOWN_TOOL {
            return UNKNOWN_TOOL.to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let tools = match seen.get_mut(grant) {
            Some(tools) => tools,
            None => seen.entry(grant.to_owned()).or_default(),
        };
        if tools.contains(tool) {
            return tool.to_owned();
        }
        if tools.len() < self.cap {
            tools.insert(tool.to_owned());
            return tool.to_owned();
        }
        OTHER.to_owned()
    }
}
