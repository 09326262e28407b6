//! The catalogue on the two LLM CLI Gateway catalogues: the starter policy loads and has the
//! seed's limit; drift between them is exactly what the files differ by.

use super::*;
use crate::counters::{CounterStore, MemoryCounterStore};
use crate::decision::Verdict;
use crate::policy::{Policy, RecordedCatalog};
use crate::upstreams::Target;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

const V2_10: &str = include_str!("../../../standin/fixtures/llm-cli-gateway-2.10.0.tools.json");
const V3_1: &str = include_str!("../../../standin/fixtures/llm-cli-gateway-3.1.0-rc.8.tools.json");

fn catalog(text: &str) -> Catalog {
    Catalog::from_tools_json(text, "fixture".into()).unwrap()
}

/// The starter policy as `toolgate check` would load it, and its recorded catalogue.
fn init(text: &str) -> (Policy, RecordedCatalog, Value) {
    let doc = starter_policy(&catalog(text));
    let text = format!("{doc:#}");
    let policy = Policy::from_json(&text, "init.json")
        .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)));
    let recorded = serde_json::from_value(doc["catalog"].clone()).unwrap();
    (policy, recorded, doc)
}

fn decide(policy: &Policy, counters: &Arc<dyn CounterStore>, tool: &str) -> Verdict {
    let args = json!({"cli": "codex"});
    let call = crate::call::ToolCall {
        tool,
        args: &args,
        args_text: None,
        grant: "g1",
        session: "s1",
        server: "",
        annotations: None,
    };
    policy.decide(&call, counters).decision.verdict
}

fn counters() -> Arc<dyn CounterStore> {
    let clock = crate::clock::ManualClock::starting_at(1_700_000_000_000);
    Arc::new(MemoryCounterStore::new(clock))
}

#[rstest::rstest]
#[case::v2_10(V2_10, 46)]
#[case::v3_1(V3_1, 64)]
fn init_loads_and_keeps_the_seed_rule(#[case] fixture: &str, #[case] tools: usize) {
    let (policy, recorded, doc) = init(fixture);
    assert_eq!(recorded.tools.len(), tools);
    assert_eq!(doc["default"], "deny");
    assert_eq!(doc["tools"].as_object().unwrap().len(), tools);
    assert_eq!(
        doc["tools"]["session_create"]["limits"],
        json!([{"counter": "session_create_rate", "window": "minute", "max": 30, "scope": "grant"}])
    );
    assert_eq!(recorded.tools["session_create"].class, RiskClass::Write);
    assert!(doc["tools"]["session_create"]["description"]
        .as_str()
        .unwrap()
        .starts_with("write: readOnlyHint false, destructiveHint false (declared)"));
    for tool in ["session_delete", "session_clear_all"] {
        assert_eq!(doc["tools"][tool]["action"], "require_approval", "{tool}");
    }
    assert_eq!(
        doc["tools"]["session_get"],
        json!({"description": "read: readOnlyHint true (declared); openWorldHint false (declared)"})
    );

    let counters = counters();
    for i in 0..30 {
        assert_eq!(
            decide(&policy, &counters, "session_create"),
            Verdict::Allow,
            "{i}"
        );
    }
    assert_eq!(
        decide(&policy, &counters, "session_create"),
        Verdict::RateLimited
    );
    // Its own counter: the other write tools are not spent by it, and reads have none.
    assert_eq!(
        decide(&policy, &counters, "workspace_register_existing_repo"),
        Verdict::Allow
    );
    assert_eq!(decide(&policy, &counters, "session_get"), Verdict::Allow);
    assert_eq!(
        decide(&policy, &counters, "session_delete"),
        Verdict::RequireApproval
    );
    assert_eq!(
        decide(&policy, &counters, "no_such_tool"),
        Verdict::Deny,
        "default deny"
    );
    let clean = drift(&policy, Some(&recorded), &catalog(fixture));
    assert!(clean.is_empty(), "{}", clean.report());
}

/// A tool's class by the spec, written out again here rather than taken from `classify`.
fn classes_by_hand(text: &str) -> std::collections::BTreeMap<String, &'static str> {
    let doc: Value = serde_json::from_str(text).unwrap();
    doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let a = &t["annotations"];
            let class = if a["readOnlyHint"] == json!(true) {
                "read"
            } else if a["destructiveHint"] == json!(false) {
                "write"
            } else {
                "destructive"
            };
            (t["name"].as_str().unwrap().to_owned(), class)
        })
        .collect()
}

#[test]
fn drift_from_2_10_to_3_1_is_exactly_the_difference_of_the_files() {
    let (was, now) = (classes_by_hand(V2_10), classes_by_hand(V3_1));
    let names = |m: &std::collections::BTreeMap<String, &str>| -> BTreeSet<String> {
        m.keys().cloned().collect()
    };
    let added: Vec<String> = names(&now).difference(&names(&was)).cloned().collect();
    let removed: Vec<String> = names(&was).difference(&names(&now)).cloned().collect();
    let reclassified: Vec<String> = was
        .iter()
        .filter(|(n, c)| now.get(*n).is_some_and(|c2| c2 != *c))
        .map(|(n, _)| n.clone())
        .collect();
    // Counted once by hand from the files, so that a bug shared by both sides cannot agree.
    assert_eq!((added.len(), removed.len(), reclassified.len()), (19, 1, 0));

    let (policy, recorded, _) = init(V2_10);
    let d = drift(&policy, Some(&recorded), &catalog(V3_1));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(d.added.clone()), added);
    assert_eq!(d.removed, removed);
    assert_eq!(
        d.reclassified
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
        reclassified
    );
    // The removed tool's rule decides nothing now, and every added tool falls to the default.
    assert_eq!(d.rules_without_tools, removed);
    assert_eq!(sorted(d.tools_on_default.clone()), added);
    assert_eq!(d.default, "deny");
    assert!(d.open_world_changed.is_empty());
    assert!(!d.is_empty());
}

#[test]
fn a_changed_hint_is_reported_as_reclassified() {
    let (policy, recorded, _) = init(V2_10);
    let mut doc: Value = serde_json::from_str(V2_10).unwrap();
    for tool in doc["tools"].as_array_mut().unwrap() {
        match tool["name"].as_str().unwrap() {
            // Annotations dropped: the spec's defaults make it destructive and open-world.
            "session_create" => {
                tool.as_object_mut().unwrap().remove("annotations");
            }
            "session_get" => tool["annotations"]["readOnlyHint"] = json!(false),
            _ => {}
        }
    }
    let d = drift(&policy, Some(&recorded), &catalog(&doc.to_string()));
    let got: Vec<(String, RiskClass, RiskClass)> = d
        .reclassified
        .iter()
        .map(|r| (r.name.clone(), r.was, r.now))
        .collect();
    assert_eq!(
        got,
        [
            (
                "session_create".into(),
                RiskClass::Write,
                RiskClass::Destructive
            ),
            ("session_get".into(), RiskClass::Read, RiskClass::Write),
        ]
    );
    assert_eq!(d.open_world_changed, ["session_create"]);
    assert!(d.reclassified[0].why.contains("(absent: spec default)"));
    assert!(d.added.is_empty() && d.removed.is_empty());
}

#[test]
fn globs_are_matched_as_the_gateway_matches_them() {
    let policy = Policy::from_json(
        r#"{"version": "1", "default": "allow", "hide": ["session_clear_all"], "tools": {
            "codex_*": {}, "cursor_*": {}, "session_*": {}, "session_get": {}, "session_g*": {}}}"#,
        "p.json",
    )
    .unwrap();
    let d = drift(&policy, None, &catalog(V2_10));
    // `cursor_*` matches nothing in 2.10.0; `session_g*` matches only `session_get`, which
    // its exact rule decides.
    assert_eq!(d.rules_without_tools, ["cursor_*", "session_g*"]);
    assert!(d.tools_on_default.contains(&"claude_request".to_owned()));
    assert!(!d.tools_on_default.contains(&"session_clear_all".to_owned()));
    assert!(!d.tools_on_default.iter().any(|t| t.starts_with("codex_")));
    assert_eq!(d.default, "allow");
    assert!(!d.recorded);
    assert!(d.report().contains("no `catalog`"));
}

#[test]
fn saved_lists_are_read_in_either_shape_and_bad_ones_say_why() {
    let reply = format!(r#"{{"jsonrpc": "2.0", "id": 1, "result": {V2_10}}}"#);
    assert_eq!(
        Catalog::from_tools_json(&reply, "r".into())
            .unwrap()
            .tools
            .len(),
        46
    );
    for (text, error) in [
        ("nope", "not JSON"),
        (r#"{"result": {}}"#, "no `tools` array"),
        (r#"{"tools": [{"title": "x"}]}"#, "tool 0 has no `name`"),
        (
            r#"{"tools": [{"name": "a"}, {"name": "a"}]}"#,
            "tool `a` is listed twice",
        ),
    ] {
        let e = Catalog::from_tools_json(text, "t".into()).unwrap_err();
        assert!(e.to_string().starts_with(error), "{e}");
    }
}

#[test]
fn several_upstreams_are_prefixed_and_one_is_not() {
    let listing = |name: &str, tool: &str| crate::upstreams::Listing {
        upstream: name.into(),
        server_info: Some(json!({"name": name, "version": "1", "icons": []})),
        tools: vec![json!({"name": tool, "annotations": {"readOnlyHint": true}})],
    };
    let spec = |name: &str, prefix: Option<&str>| crate::upstreams::UpstreamSpec {
        name: name.into(),
        prefix: prefix.map(str::to_owned),
        target: Target::Command(vec!["x".into()]),
    };
    let one = Catalog::from_listings(&[listing("llmgw", "t")], &[spec("llmgw", None)], "c".into())
        .unwrap();
    assert_eq!(one.tools[0].name, "t");
    let two = Catalog::from_listings(
        &[listing("llmgw", "t"), listing("everything", "t")],
        &[spec("llmgw", Some("gw")), spec("everything", None)],
        "c".into(),
    )
    .unwrap();
    let names: Vec<&str> = two.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["gw__t", "everything__t"]);
    assert_eq!(
        two.servers["llmgw"],
        json!({"name": "llmgw", "version": "1"})
    );
    let doc = starter_policy(&two);
    assert_eq!(doc["name"], "starter policy for everything 1, llmgw 1");
}

#[test]
fn the_table_names_every_tool_with_its_class_and_why() {
    let table = catalog(V2_10).table();
    let line = table
        .lines()
        .find(|l| l.starts_with("session_create "))
        .unwrap();
    assert!(line.contains(" write "), "{line}");
    assert!(line.ends_with(
        "readOnlyHint false, destructiveHint false (declared); openWorldHint false (declared)"
    ));
    assert!(
        table.ends_with("46 tools: 20 read, 4 write, 22 destructive; 19 open-world\n"),
        "{table}"
    );
}

#[test]
fn the_recorded_catalog_is_as_strict_as_the_rest_of_the_policy() {
    let with = |catalog: &str| {
        Policy::from_json(
            &format!(r#"{{"version": "1", "catalog": {catalog}}}"#),
            "p.json",
        )
    };
    assert!(with(r#"{"tools": {"t": {"class": "write", "open_world": false}}}"#).is_ok());
    for bad in [
        r#"{"tools": {"t": {"class": "wrte", "open_world": false}}}"#,
        r#"{"tools": {"t": {"class": "write"}}}"#,
        r#"{"tool": {}}"#,
        r#"{"tools": {"t": {"class": "read", "open_world": true, "annotation": {}}}}"#,
    ] {
        assert!(with(bad).is_err(), "{bad}");
    }
}
