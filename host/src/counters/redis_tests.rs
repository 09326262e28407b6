//! The Redis store's own tests, and the `redis-server` every Redis test runs against.

use super::super::conformance::{self, Counting};
use super::*;
use crate::clock::ManualClock;
use std::process::{Child, Command, Stdio};

/// A `redis-server` of the test's own: a unix socket in a temp folder, no persistence;
/// killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; scripts/test installs it)");
        let url = format!("redis+unix://{}", socket.display());
        // Wait for PONG.
        let client = redis::Client::open(url.as_str()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.as_deref() == Ok("PONG") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store and the server it lives on.
struct OnServer {
    store: RedisCounterStore,
    _server: Server,
}

impl CounterStore for OnServer {
    fn consume(&self, r: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal> {
        self.store.consume(r)
    }
    fn refund(&self, r: &[Reservation]) {
        self.store.refund(r)
    }
    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }
    fn state_get(&self, space: StateSpace<'_>, key: &str) -> Result<Option<String>, StateError> {
        self.store.state_get(space, key)
    }
    fn state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        self.store.state_set(space, key, value, ttl, limits)
    }
    fn state_delete(&self, space: StateSpace<'_>, key: &str) -> Result<(), StateError> {
        self.store.state_delete(space, key)
    }
}

impl Counting for OnServer {
    fn counted(&self, key: &CounterKey, window: Window) -> u64 {
        let key = self.store.key(key);
        let now = self.store.clock.now_ms();
        let client = redis::Client::open(self.store.url.as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        let min = format!("({}", now as i64 - window.length_ms as i64);
        redis::cmd("ZCOUNT")
            .arg(key)
            .arg(min)
            .arg("+inf")
            .query(&mut c)
            .unwrap()
    }
}

/// A store on the manual clock (the gateway-clock mode), on a server of its own.
fn store(clock: Arc<ManualClock>) -> Box<dyn Counting> {
    let server = Server::start();
    let options = RedisOptions {
        clock: ClockSource::Gateway,
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    Box::new(OnServer {
        store: RedisCounterStore::connect(&server.url, options, clock).unwrap(),
        _server: server,
    })
}

conformance::suite!(store);
conformance::state_suite!(store);

fn key(name: &str) -> CounterKey {
    CounterKey::new(name, crate::counters::Scope::Grant, "g", "s")
}

fn connect(server: &Server, options: RedisOptions, clock: Arc<dyn Clock>) -> RedisCounterStore {
    RedisCounterStore::connect(&server.url, options, clock).unwrap()
}

fn redis_cmd(server: &Server, args: &[&str]) {
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut c).unwrap();
}

#[test]
fn replicas_with_skewed_clocks_share_one_exact_window_on_redis_time() {
    let server = Server::start();
    let w = Window {
        max: 5,
        length_ms: 60_000,
    };
    // Two replicas an hour apart: on Redis's clock they still count one window.
    let patient = || RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let a = connect(&server, patient(), ManualClock::starting_at(1_000));
    let b = connect(&server, patient(), ManualClock::starting_at(3_600_000));
    let admitted = (0..20)
        .filter(|i| {
            let replica = if i % 2 == 0 { &a } else { &b };
            replica.consume(&[(key("c"), w)]).is_ok()
        })
        .count();
    assert_eq!(admitted, 5);
    let refused = a.consume(&[(key("c"), w)]).unwrap_err();
    let retry = refused.exhausted().unwrap().retry_after_ms;
    assert!(retry > 59_000 && retry <= 60_000, "{retry}");
}

#[test]
fn a_lost_script_is_sent_again() {
    let server = Server::start();
    let store = connect(
        &server,
        RedisOptions::default(),
        Arc::new(crate::clock::SystemClock::new()),
    );
    let w = Window {
        max: 2,
        length_ms: 60_000,
    };
    store.consume(&[(key("c"), w)]).unwrap();
    redis_cmd(&server, &["SCRIPT", "FLUSH"]);
    store.consume(&[(key("c"), w)]).unwrap();
    assert!(
        store.consume(&[(key("c"), w)]).is_err(),
        "the count survived the flush"
    );
}

#[test]
fn a_frozen_redis_refuses_within_the_timeout_then_counting_resumes_exactly() {
    let server = Server::start();
    let options = RedisOptions {
        timeout: Duration::from_millis(50),
        ..RedisOptions::default()
    };
    let clock = ManualClock::starting_at(1_000_000);
    let store = connect(&server, options, clock.clone());
    let w = Window {
        max: 3,
        length_ms: 60_000,
    };
    store.consume(&[(key("c"), w)]).unwrap();
    let pid = server.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let refused = store.consume(&[(key("c"), w)]);
    let waited = started.elapsed();
    signal("-CONT");
    match refused {
        Err(Refusal::Unavailable(why)) => assert!(why.contains("Redis"), "{why}"),
        other => panic!("not refused as unavailable: {other:?}"),
    }
    assert!(waited < Duration::from_millis(500), "waited {waited:?}");
    assert_eq!(store.status()["state"], "degraded");
    // The breaker: refused at once, without asking.
    let started = std::time::Instant::now();
    assert!(store.consume(&[(key("c"), w)]).is_err());
    assert!(started.elapsed() < Duration::from_millis(20));
    // After the breaker's second, Redis is asked again (the connection may take a call or
    // two to come back): nothing was over-admitted.
    let mut admitted = 0;
    for _ in 0..100 {
        clock.advance(Duration::from_secs(2));
        match store.consume(&[(key("c"), w)]) {
            Ok(_) => admitted += 1,
            Err(Refusal::Exhausted(_)) => break,
            Err(Refusal::Unavailable(_)) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // The call refused during the freeze is taken back once Redis catches up (its refund
    // is queued behind it); where a reconnect lets the refund overtake it, its unit stays
    // counted: fewer admitted, never more.
    assert!(
        (1..=2).contains(&admitted),
        "at most 3 in all (one before the freeze): {admitted} after"
    );
    assert_eq!(store.status()["state"], "ok");
}

#[test]
fn on_error_open_admits_and_local_counts_in_memory() {
    let server = Server::start();
    let w = Window {
        max: 2,
        length_ms: 60_000,
    };
    let clock: Arc<dyn Clock> = ManualClock::starting_at(0);
    let open = connect(
        &server,
        RedisOptions {
            on_error: OnError::Open,
            ..RedisOptions::default()
        },
        clock.clone(),
    );
    let local = connect(
        &server,
        RedisOptions {
            on_error: OnError::Local,
            ..RedisOptions::default()
        },
        clock,
    );
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let opened = (0..5)
        .filter(|_| open.consume(&[(key("o"), w)]).is_ok())
        .count();
    let counted = (0..5)
        .filter(|_| local.consume(&[(key("l"), w)]).is_ok())
        .count();
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(opened, 5, "open admits without counting");
    assert_eq!(counted, 2, "local counts in this replica's memory");
}

const SPACE: StateSpace<'static> = StateSpace {
    plugin: "session-ids",
    grant: "g",
};

fn redis_keys(server: &Server, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    keys.sort();
    keys
}

#[test]
fn state_keys_carry_the_prefix_and_the_hash_tag_and_go_with_the_last_entry() {
    let server = Server::start();
    let clock = ManualClock::starting_at(1_000);
    let options = RedisOptions {
        key_prefix: "tg1:".into(),
        clock: ClockSource::Gateway,
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let store = connect(&server, options, clock.clone());
    let limits = StateLimits::default();
    store
        .state_set(SPACE, "a", "1", Duration::from_secs(1), &limits)
        .unwrap();
    assert_eq!(
        redis_keys(&server, "*"),
        [
            "tg1:{counters}:state:[\"session-ids\",\"g\"]:bytes",
            "tg1:{counters}:state:[\"session-ids\",\"g\"]:expiries",
            "tg1:{counters}:state:[\"session-ids\",\"g\"]:values",
        ]
    );
    store.state_delete(SPACE, "a").unwrap();
    assert!(
        redis_keys(&server, "*").is_empty(),
        "an empty space leaves no keys"
    );
    store
        .state_set(SPACE, "a", "1", Duration::from_secs(1), &limits)
        .unwrap();
    clock.advance(Duration::from_secs(2));
    store
        .state_set(SPACE, "b", "22", Duration::from_secs(1), &limits)
        .unwrap();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let key = "tg1:{counters}:state:[\"session-ids\",\"g\"]";
    let entries: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{key}:values"))
        .query(&mut c)
        .unwrap();
    assert_eq!(entries, ["b"], "the set removed the expired entry");
    let bytes: u64 = redis::cmd("GET")
        .arg(format!("{key}:bytes"))
        .query(&mut c)
        .unwrap();
    assert_eq!(bytes, 3);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{key}:values"))
        .query(&mut c)
        .unwrap();
    assert!((60_000..=61_000).contains(&ttl), "{ttl}");
}

#[test]
fn state_on_redis_time_is_shared_by_replicas_with_skewed_clocks() {
    let server = Server::start();
    let patient = || RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let a = connect(&server, patient(), ManualClock::starting_at(1_000));
    let b = connect(&server, patient(), ManualClock::starting_at(3_600_000_000));
    let limits = StateLimits {
        max_entries: 4,
        ..StateLimits::default()
    };
    a.state_set(SPACE, "k", "from a", Duration::from_secs(60), &limits)
        .unwrap();
    assert_eq!(b.state_get(SPACE, "k"), Ok(Some("from a".into())));
    // Replicas racing for the last entries: exactly the bound, across both.
    let won: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let store = if t % 2 == 0 { &a } else { &b };
                let limits = &limits;
                scope.spawn(move || {
                    (0..3)
                        .filter(|i| {
                            store
                                .state_set(
                                    SPACE,
                                    &format!("{t}-{i}"),
                                    "v",
                                    Duration::from_secs(60),
                                    limits,
                                )
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(won, 3, "4 entries, one of them \"k\"");
    a.state_set(SPACE, "short", "v", Duration::from_millis(20), &limits)
        .unwrap_err();
    b.state_delete(SPACE, "k").unwrap();
    a.state_set(SPACE, "short", "v", Duration::from_millis(20), &limits)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        b.state_get(SPACE, "short"),
        Ok(None),
        "expired on Redis's clock"
    );
}

#[test]
fn state_fails_closed_unless_on_error_is_local() {
    let server = Server::start();
    let clock: Arc<dyn Clock> = ManualClock::starting_at(0);
    let store = |on_error| {
        connect(
            &server,
            RedisOptions {
                on_error,
                ..RedisOptions::default()
            },
            clock.clone(),
        )
    };
    let (closed, open, local) = (
        store(OnError::Closed),
        store(OnError::Open),
        store(OnError::Local),
    );
    let limits = StateLimits {
        max_entries: 1,
        ..StateLimits::default()
    };
    let ttl = Duration::from_secs(60);
    local
        .state_set(SPACE, "k", "in redis", ttl, &limits)
        .unwrap();
    let pid = server.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let unavailable = |r: Result<(), StateError>| matches!(r, Err(StateError::Unavailable(why)) if why.contains("Redis"));
    for store in [&closed, &open] {
        assert!(unavailable(store.state_set(SPACE, "k", "v", ttl, &limits)));
        assert!(matches!(
            store.state_get(SPACE, "k"),
            Err(StateError::Unavailable(_))
        ));
        assert!(unavailable(store.state_delete(SPACE, "k")));
    }
    // Local: this replica's memory, bounded the same.
    let local_answers = (
        local.state_get(SPACE, "k"),
        local.state_set(SPACE, "k", "local", ttl, &limits),
        local.state_get(SPACE, "k"),
        local.state_set(SPACE, "other", "v", ttl, &limits),
    );
    signal("-CONT");
    assert_eq!(local_answers.0, Ok(None));
    assert_eq!(local_answers.1, Ok(()));
    assert_eq!(local_answers.2, Ok(Some("local".into())));
    assert!(matches!(local_answers.3, Err(StateError::Refused(_))));
}

#[test]
fn a_lost_state_script_is_sent_again() {
    let server = Server::start();
    let store = connect(
        &server,
        RedisOptions::default(),
        Arc::new(crate::clock::SystemClock::new()),
    );
    let limits = StateLimits::default();
    store
        .state_set(SPACE, "k", "v", Duration::from_secs(60), &limits)
        .unwrap();
    redis_cmd(&server, &["SCRIPT", "FLUSH"]);
    assert_eq!(store.state_get(SPACE, "k"), Ok(Some("v".into())));
}
