//! The fuzz targets' oracles (`fuzz/harness.rs`), run without nightly or libFuzzer: over the
//! seed corpora in `fuzz/corpus/` and a few thousand deterministic pseudo-random inputs each.
//! The long runs are `cargo +nightly fuzz run <target>` (TESTING.md).

#[allow(dead_code)]
#[path = "../../fuzz/harness.rs"]
mod harness;

use harness::{Bytes, KNOWN};
use std::path::PathBuf;
use toolgate::session::ClientLine;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// The seeds, then `n` inputs: mutated seeds (bytes overwritten, cut, spliced) and noise.
fn inputs(target: &str, n: usize, max_len: usize) -> Vec<Vec<u8>> {
    let seeds = seeds(target);
    let mut bytes = Bytes(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut out = seeds.clone();
    for i in 0..n {
        let pick = bytes.fill(4);
        let len = 1 + usize::from(u16::from_le_bytes([pick[0], pick[1]])) % max_len;
        let mut input = if i % 3 == 0 {
            bytes.fill(len)
        } else {
            seeds[usize::from(pick[2]) % seeds.len()].clone()
        };
        if i % 3 != 0 {
            for _ in 0..=(pick[3] % 4) {
                let at = bytes.fill(2);
                let noise = bytes.fill(3);
                if input.is_empty() {
                    break;
                }
                let at = usize::from(u16::from_le_bytes([at[0], at[1]])) % input.len();
                match noise[0] % 3 {
                    0 => input[at] = noise[1],
                    1 => input.truncate(at),
                    _ => input.insert(
                        at,
                        *b"\"{}[]:,\\uAN".get(usize::from(noise[2] % 11)).unwrap(),
                    ),
                }
            }
        }
        out.push(input);
    }
    out
}

fn run(target: &str, n: usize, max_len: usize, check: impl Fn(&[u8]) -> Result<(), String>) {
    for input in inputs(target, n, max_len) {
        if let Err(failure) = check(&input) {
            panic!(
                "{target}: {failure}\ninput (hex): {}",
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
    }
}

#[test]
fn envelope_oracle_holds_on_seeds_and_noise() {
    run("envelope", 4000, 200, |d| harness::check_envelope(d, KNOWN));
}

#[test]
fn session_oracles_hold_on_seeds_and_noise() {
    run("session", 1500, 1024, |d| harness::check_session(d, KNOWN));
}

#[test]
fn policy_loader_holds_on_seeds_and_noise() {
    run("policy", 1500, 600, harness::check_policy);
}

#[test]
fn list_filter_oracle_holds_on_seeds_and_noise() {
    run("list_filter", 3000, 200, |d| {
        harness::check_list_filter(d, KNOWN)
    });
}

// ---------------------------------------------------------------------------------------------
// Reproducers of what the fuzz oracles found (TESTING.md, "Findings"). Each fails until the
// gateway is fixed; `harness::KNOWN` lets the fuzz runs step over them meanwhile.

mod known_bugs {
    use super::harness::{self, listed_names, Message, Reading, HIDDEN, POLICY};
    use std::sync::Arc;
    use toolgate::clock::ManualClock;
    use toolgate::counters::MemoryCounterStore;
    use toolgate::policy::Policy;
    use toolgate::session::{ClientLine, Identity, Session};

    fn session() -> Session {
        Session::new(
            Arc::new(Policy::from_json(POLICY, "fuzz.json").unwrap()),
            Arc::new(MemoryCounterStore::new(ManualClock::starting_at(1_000_000))),
            Identity {
                grant: "g".into(),
                session: "s".into(),
            },
        )
    }

    /// What a Go (case-folding, last-wins) upstream reads from what the session forwards.
    fn forwarded(out: ClientLine<'_>) -> Option<Message> {
        match out {
            ClientLine::Forward(f) => {
                Message::read(std::str::from_utf8(&f.line).unwrap(), Reading::Folded)
            }
            _ => None,
        }
    }

    fn create(id: u32) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"create","arguments":{{}}}}}}"#
        )
    }

    /// Bug 1a: a client line whose only method key is `Method` is routed as a reply to a pending
    /// server→client request and forwarded; a Go server reads a `tools/call` request and runs
    /// it, without any decision: here, a call to the hidden tool.
    #[test]
    fn was_bug_case_variant_method_in_a_reply_runs_an_undecided_call() {
        let s = session();
        let request = s
            .from_upstream(br#"{"jsonrpc":"2.0","id":"s1","method":"roots/list"}"#)
            .expect("a server request reaches the client");
        let ours = Message::read(std::str::from_utf8(&request).unwrap(), Reading::Exact)
            .unwrap()
            .id
            .unwrap();
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{ours},"result":{{}},"Method":"tools/call","params":{{"name":"{HIDDEN}"}}}}"#
        );
        let read = forwarded(s.from_client(line.as_bytes()));
        assert!(
            !read.as_ref().is_some_and(Message::is_request),
            "a Go server reads an undecided request: {read:?}"
        );
    }

    /// Bug 1b: a notification with `ID` instead of `id` is forwarded as a notification; a Go
    /// server reads a request with that id and answers it, and the gateway takes the answer
    /// for its own pending request of the same number: a `-32601` refunds a `create` that
    /// runs, and the cap of 2 admits a third.
    #[test]
    fn was_bug_case_variant_id_in_a_notification_refunds_a_running_call() {
        let s = session();
        for id in [1, 2] {
            assert!(matches!(
                s.from_client(create(id).as_bytes()),
                ClientLine::Forward(_)
            ));
        }
        // Was forwarded: the gateway saw a notification, a Go server a request with id 1. Now
        // refused, and never forwarded.
        let fake = forwarded(s.from_client(br#"{"jsonrpc":"2.0","method":"nope","ID":1}"#));
        assert!(fake.is_none(), "{fake:?}");
        // With nothing forwarded the Go server has no request 1 of its own to answer, and
        // the third `create` meets the cap.
        let third = forwarded(s.from_client(create(3).as_bytes()));
        assert!(
            !third.is_some_and(|m| m.is_request()),
            "a third `create` went upstream while the first two still run (cap 2)"
        );
    }

    fn listed_after_list(reply: &[u8]) -> Vec<String> {
        let s = session();
        let ClientLine::Forward(f) =
            s.from_client(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        else {
            panic!("tools/list not forwarded")
        };
        assert_eq!(f.upstream_id, Some(1));
        match s.from_upstream(reply) {
            Some(out) => listed_names(std::str::from_utf8(&out).unwrap(), Reading::Folded),
            None => Vec::new(),
        }
    }

    /// Bug 2a: a reply whose result key is `Result` is not seen as a tool list and passes
    /// unfiltered; a Go client reads `Result` as the result, and the hidden tool in it.
    #[test]
    fn was_bug_case_variant_result_key_passes_a_list_unfiltered() {
        let listed = listed_after_list(
            br#"{"jsonrpc":"2.0","id":1,"Result":{"tools":[{"name":"secret"}]}}"#,
        );
        assert!(
            !listed.iter().any(|n| n == HIDDEN),
            "a Go client sees {listed:?}"
        );
    }

    /// Bug 2b: a tool with both `name` and `Name` is kept by its `name`; a Go client reads the
    /// last match, `Name`: the hidden tool.
    #[test]
    fn was_bug_tool_with_name_and_case_variant_name_passes_the_filter() {
        let listed = listed_after_list(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","Name":"secret"}]}}"#,
        );
        assert!(
            !listed.iter().any(|n| n == HIDDEN),
            "a Go client sees {listed:?}"
        );
    }

    /// The root of 1a and 1b, at the parser: `check_keys` accepts a line in which the gateway
    /// and a case-folding reader see different routing fields.
    #[test]
    fn was_bug_envelope_reads_a_lone_case_variant_key_differently() {
        let strict = harness::Known::default();
        for line in [
            &br#"{"jsonrpc":"2.0","Method":"tools/call","id":1}"#[..],
            br#"{"jsonrpc":"2.0","method":"ping","ID":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"secret"}}"#,
        ] {
            assert_eq!(harness::check_envelope(line, strict), Ok(()));
        }
    }
}

/// Bug 3: an upstream reply with invalid UTF-8 in a member the gateway skips reaches the
/// client as it is, which is not JSON (a strict client drops the reply, or the session).
#[test]
fn was_bug_invalid_utf8_from_the_upstream_is_forwarded() {
    let s = known_bugs_session();
    let ClientLine::Forward(_) = s.from_client(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
    else {
        panic!("ping not forwarded")
    };
    if let Some(out) =
        s.from_upstream(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{},\"x\":\"\xff\"}")
    {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
            "not JSON: {}",
            String::from_utf8_lossy(&out)
        );
    }
}

fn known_bugs_session() -> toolgate::session::Session {
    toolgate::session::Session::new(
        std::sync::Arc::new(
            toolgate::policy::Policy::from_json(harness::POLICY, "fuzz.json").unwrap(),
        ),
        std::sync::Arc::new(toolgate::counters::MemoryCounterStore::new(
            toolgate::clock::ManualClock::starting_at(1_000_000),
        )),
        toolgate::session::Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
}
