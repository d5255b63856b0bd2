//! The reliability campaign's own fixtures, on top of the test kit (tests/kit):
//! - [`FaultProxy`]: a loopback TCP proxy that can be cut (new connections refused, existing
//!   ones dropped) and resumed — how PostgreSQL, Redis and Kafka outages are simulated without
//!   touching the machine's shared servers;
//! - [`Blackhole`]: a port that accepts connections and never answers (a hung server);
//! - [`Broker`]: a dedicated tansu broker behind its own fault proxy, killable and restartable;
//! - [`spawn_refit`]: a `refit run` process whose log is kept when a test fails;
//! - [`verify`]: the exactly-once accounting every test ends with, and the counts it records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refit::outbox::events::{EventReader, ReadEvent};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, free_port, ingest_all, Process, TestEnv};

pub const BIN: &str = env!("CARGO_BIN_EXE_refit");

/// `postgres://…/<db>` with the host and port replaced by `127.0.0.1:<port>`.
pub fn database_url_via(env: &TestEnv, port: u16) -> String {
    let db = env.database_url.rsplit_once('/').unwrap().1;
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

// ---------------------------------------------------------------------------------------------
// Fault proxy

/// The client→server bytes of each connection a proxy accepted.
type Taps = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A loopback TCP proxy to `upstream`. [`FaultProxy::cut`] closes the listening socket (new
/// connections are refused) and drops every open connection, as a server restart or a network
/// cut does; [`FaultProxy::resume`] listens again on the same port. Runs on its own runtime so a
/// test that blocks (reading Kafka) never stalls it.
pub struct FaultProxy {
    pub port: u16,
    up: watch::Sender<bool>,
    taps: Taps,
    accepted: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    pub fn new(upstream_port: u16) -> FaultProxy {
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .unwrap();
        let (up, up_rx) = watch::channel(true);
        let taps = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        runtime.spawn(serve(
            listener,
            port,
            upstream,
            up_rx,
            taps.clone(),
            accepted.clone(),
        ));
        FaultProxy {
            port,
            up,
            taps,
            accepted,
            runtime: Some(runtime),
        }
    }

    /// Refuse new connections and drop the open ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Listen again (same port).
    pub fn resume(&self) {
        self.up.send_replace(true);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The client→server bytes of every connection so far.
    pub fn client_bytes(&self) -> Vec<Vec<u8>> {
        self.taps
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.lock().unwrap().clone())
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(
    first: StdListener,
    port: u16,
    upstream: SocketAddr,
    mut up: watch::Receiver<bool>,
    taps: Taps,
    accepted: Arc<AtomicUsize>,
) {
    let mut first = Some(first);
    loop {
        while !*up.borrow_and_update() {
            if up.changed().await.is_err() {
                return;
            }
        }
        let listener = match first.take() {
            Some(l) => tokio::net::TcpListener::from_std(l).unwrap(),
            None => loop {
                let socket = TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                match socket
                    .bind(([127, 0, 0, 1], port).into())
                    .and_then(|_| socket.listen(1024))
                {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            },
        };
        let generation = CancellationToken::new();
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    if let Ok((client, _)) = conn {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let tap = Arc::new(Mutex::new(Vec::new()));
                        taps.lock().unwrap().push(tap.clone());
                        tokio::spawn(pipe(client, upstream, generation.clone(), tap));
                    }
                }
                changed = up.changed() => {
                    if changed.is_err() || !*up.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        drop(listener);
        generation.cancel();
    }
}

async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    stop: CancellationToken,
    tap: Arc<Mutex<Vec<u8>>>,
) {
    let server = tokio::select! {
        _ = stop.cancelled() => return,
        s = TcpStream::connect(upstream) => match s { Ok(s) => s, Err(_) => return },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let to_server = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                let _ = sw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            {
                let mut t = tap.lock().unwrap();
                if t.len() < 64 * 1024 {
                    t.extend_from_slice(&buf[..n]);
                }
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let to_client = async {
        tokio::io::copy(&mut sr, &mut cw).await?;
        let _ = cw.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async { let _ = tokio::join!(to_server, to_client); } => {}
    }
}

/// A port that accepts TCP connections and never answers (a hung server).
pub struct Blackhole {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Blackhole { port, stop }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// A dedicated Kafka-compatible broker

fn tansu_bin() -> String {
    std::env::var("REFIT_TANSU")
        .unwrap_or_else(|_| format!("{}/.cache/refit/bin/tansu", std::env::var("HOME").unwrap()))
}

/// A tansu broker of the test's own, reached only through a fault proxy: it listens on
/// `listen_port` and advertises the proxy's port, so every client connection (bootstrap and
/// partition leader alike) crosses the proxy. Storage is in memory (the prebuilt tansu has no
/// postgres storage engine), so [`Broker::kill`] + [`Broker::restart`] lose its topics; the
/// network outage ([`FaultProxy::cut`]) keeps them.
pub struct Broker {
    pub listen_port: u16,
    pub proxy: FaultProxy,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        let listen_port = free_port();
        let proxy = FaultProxy::new(listen_port);
        let mut broker = Broker {
            listen_port,
            proxy,
            child: None,
        };
        broker.restart().await;
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// SIGKILL, as a crashed broker.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        let advertised = format!("tcp://127.0.0.1:{}", self.proxy.port);
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.listen_port),
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (make deps)");
        self.child = Some(child);
        let port = self.listen_port;
        eventually(Duration::from_secs(20), "tansu listening", || async move {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    /// Creates the topic through the proxy (the broker must be reachable).
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.listen_port),
                "--partitions",
                &partitions.to_string(),
                topic,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create {topic}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// refit processes

/// `refit run` with exactly `vars` (see [`Process::refit_run`]); its log is left in
/// `target/tmp/reliability/` when the test fails.
pub fn spawn_refit(vars: &BTreeMap<String, String>) -> Process {
    Process::refit_run(BIN, vars)
        .keep_log_on_panic(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability"))
}

/// The JSON log lines of a process, parsed.
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Accounting

/// What a test's run did, by the database's own bookkeeping and the topic's contents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub test: String,
    pub actuals_inserted: i64,
    pub trained: i64,
    /// Consumed by a version's validation gate (scored, not trained on).
    pub held_out: i64,
    pub set_aside: i64,
    pub still_pending: i64,
    /// Committed after the last ingest's snapshot: the next ingest queues them.
    pub awaiting_ingest: i64,
    /// Neither consumed, pending nor awaiting ingest.
    pub lost: i64,
    pub trained_twice: i64,
    pub versions_ready: i64,
    pub versions_rejected: i64,
    pub versions_failed: i64,
    pub events: usize,
    pub duplicate_events: usize,
    /// Redeliveries of an older event that arrived after a newer version's event.
    pub late_duplicates: usize,
}

/// Actuals committed since the ingest cursor's snapshot (not yet queued).
const AWAITING_INGEST: &str = "SELECT count(*) FROM actual_rentals a, refit_ingest_cursor c
                                WHERE a.refit_xid >= pg_snapshot_xmin(c.snapshot)
                                  AND NOT pg_visible_in_snapshot(a.refit_xid, c.snapshot)";

/// Inserted, trained, set aside, pending, lost and trained-twice counts from the database.
pub async fn db_counts(env: &TestEnv, test: &str) -> Counts {
    let q = |sql: &'static str| env.count(sql);
    let sum_rows_used = q(
        "SELECT coalesce(sum(rows_used), 0)::bigint FROM refit_model_versions WHERE status IN ('ready', 'rejected')",
    )
    .await;
    let trained = q("SELECT count(*) FROM refit_consumed_actuals WHERE outcome = 'trained'").await;
    let both =
        q("SELECT count(*) FROM refit_consumed_actuals c JOIN refit_pending p USING (actual_id)")
            .await;
    Counts {
        test: test.to_owned(),
        actuals_inserted: q("SELECT count(*) FROM actual_rentals").await,
        trained,
        held_out: q("SELECT count(*) FROM refit_consumed_actuals WHERE outcome = 'held_out'").await,
        set_aside: q("SELECT count(*) FROM refit_consumed_actuals WHERE outcome = 'set_aside'")
            .await,
        still_pending: q("SELECT count(*) FROM refit_pending").await,
        awaiting_ingest: q(AWAITING_INGEST).await,
        lost: q("SELECT count(*) FROM actual_rentals a
                  WHERE NOT EXISTS (SELECT 1 FROM refit_consumed_actuals c WHERE c.actual_id = a.id)
                    AND NOT EXISTS (SELECT 1 FROM refit_pending p WHERE p.actual_id = a.id)
                    AND pg_visible_in_snapshot(a.refit_xid,
                                               (SELECT snapshot FROM refit_ingest_cursor))")
        .await,
        // Rows the versions claim beyond the distinct actuals marked trained, plus any actual
        // both consumed and still pending (it would be trained again).
        trained_twice: (sum_rows_used - trained).max(0) + both,
        versions_ready: q("SELECT count(*) FROM refit_model_versions WHERE status = 'ready'").await,
        versions_rejected: q("SELECT count(*) FROM refit_model_versions WHERE status = 'rejected'")
            .await,
        versions_failed: q("SELECT count(*) FROM refit_model_versions WHERE status = 'failed'")
            .await,
        ..Counts::default()
    }
}

/// Writes the counts to `target/tmp/reliability/<test>.json` and prints them.
pub fn record(counts: &Counts) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::to_string(counts).unwrap();
    std::fs::write(dir.join(format!("{}.json", counts.test)), &json).unwrap();
    println!("COUNTS {json}");
}

/// Every invariant (RELIABILITY.md) that the database and the topic can show, once the run is over:
/// no actual lost or trained twice, every due batch trained, versions contiguous with a linear
/// parent chain (one retrain per user at a time), every ready version invalidated and announced
/// (the invalidation first), every version's event on the topic, keyed by user, in version order
/// per user. Returns the counts (also recorded).
pub async fn verify(env: &TestEnv, brokers: &str, threshold: i64, test: &str) -> Counts {
    verify_with(env, brokers, threshold, test, None).await
}

/// [`verify`], expecting on the topic only the events of `only` (e.g. after a broker lost its
/// data) instead of every version's.
pub async fn verify_with(
    env: &TestEnv,
    brokers: &str,
    threshold: i64,
    test: &str,
    only: Option<HashSet<(String, i32)>>,
) -> Counts {
    // What the next refit's first ingest does: an actual committed but not yet ingested when the
    // run ended is not lost (an ingest that skipped one would leave it out here too).
    ingest_all(&env.pool).await;
    let mut counts = db_counts(env, test).await;
    assert_eq!(counts.lost, 0, "actuals lost: {counts:?}");
    assert_eq!(counts.trained_twice, 0, "actuals trained twice: {counts:?}");
    assert_eq!(
        counts.trained + counts.held_out + counts.set_aside + counts.still_pending,
        counts.actuals_inserted,
        "{counts:?}"
    );
    // A full batch may be left only to a user whose last retrain failed (it backs off, then
    // retries); whether its back-off has run out by now depends on how long the check took.
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.user_id, count(*) FROM refit_pending p
          WHERE NOT EXISTS (SELECT 1 FROM refit_models m
                             WHERE m.user_id = p.user_id AND m.failures > 0)
          GROUP BY p.user_id HAVING count(*) >= $1",
    )
    .bind(threshold)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(due.is_empty(), "users left with a full batch: {due:?}");
    let mismatched: Vec<(String, i32, i32, i64)> = sqlx::query_as(
        "SELECT v.user_id, v.version, v.rows_used,
                (SELECT count(*) FROM refit_consumed_actuals c
                  WHERE c.user_id = v.user_id AND c.version = v.version AND c.outcome = 'trained')
           FROM refit_model_versions v
          WHERE v.status IN ('ready', 'rejected')
            AND v.rows_used <> (SELECT count(*) FROM refit_consumed_actuals c
                  WHERE c.user_id = v.user_id AND c.version = v.version AND c.outcome = 'trained')",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        mismatched.is_empty(),
        "rows_used ≠ rows consumed: {mismatched:?}"
    );

    // Versions 1..n per user; each ready version continues the ready version before it.
    let versions: Vec<(String, i32, String, Option<i32>)> = sqlx::query_as(
        "SELECT user_id, version, status, parent_version FROM refit_model_versions ORDER BY user_id, version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    type Version<'a> = (i32, &'a str, Option<i32>);
    let mut by_user: BTreeMap<&str, Vec<Version>> = BTreeMap::new();
    for (u, v, s, p) in &versions {
        by_user.entry(u).or_default().push((*v, s, *p));
    }
    for (user, vs) in &by_user {
        let mut last_ready = None;
        for (i, (v, status, parent)) in vs.iter().enumerate() {
            assert_eq!(
                *v,
                i as i32 + 1,
                "{user:?}: versions not contiguous: {vs:?}"
            );
            assert_eq!(*parent, last_ready, "{user:?}: parent chain broken: {vs:?}");
            if *status == "ready" {
                last_ready = Some(*v);
            }
        }
        let active = env.active_version(user).await;
        assert_eq!(active, last_ready, "{user:?}: active version");
    }

    // The outbox: everything done; each ready version invalidated, then announced.
    assert_eq!(
        env.count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL")
            .await,
        0,
        "undone outbox entries"
    );
    // Delivered entries, where kept (REFIT_OUTBOX_RETENTION_SECS > 0; by default they are
    // deleted, and the topic below shows what was announced).
    if env
        .count("SELECT count(*) FROM refit_outbox WHERE done_at IS NOT NULL")
        .await
        > 0
    {
        delivered_in_order(env).await;
    }

    // The topic.
    let expected: HashSet<(String, i32)> = only.unwrap_or_else(|| {
        versions
            .iter()
            .map(|(u, v, _, _)| (u.clone(), *v))
            .collect()
    });
    let events = collect_events(
        brokers,
        &env.topic,
        expected.clone(),
        Duration::from_secs(60),
    )
    .await;
    let mut seen_ids: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut ids_of_version: HashMap<(String, i32), HashSet<uuid::Uuid>> = HashMap::new();
    // Per user, versions in topic order: first occurrences, and every occurrence.
    let mut first_order: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut late_duplicates = 0;
    for e in &events {
        assert_eq!(
            e.key,
            e.event.user_id.as_bytes(),
            "Kafka key is the user id"
        );
        let version = e.event.model_version.expect("events name their version");
        assert!(
            versions
                .iter()
                .any(|(u, v, _, _)| *u == e.event.user_id && *v == version),
            "event for an unknown version: {:?}",
            e.event
        );
        ids_of_version
            .entry((e.event.user_id.clone(), version))
            .or_default()
            .insert(e.event.event_id);
        let n = seen_ids.entry(e.event.event_id).or_default();
        *n += 1;
        let order = first_order.entry(e.event.user_id.clone()).or_default();
        if *n == 1 {
            order.push(version);
        } else if order.last().is_some_and(|last| *last > version) {
            // A redelivery of an older event after newer ones (consumers dedupe on event_id).
            late_duplicates += 1;
        }
    }
    for ((user, version), ids) in &ids_of_version {
        assert_eq!(
            ids.len(),
            1,
            "{user:?} v{version}: several distinct events for one version"
        );
    }
    for (user, vs) in &first_order {
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "{user:?}: events (first deliveries) out of version order on the topic: {vs:?}"
        );
    }
    counts.late_duplicates = late_duplicates;
    counts.events = events.len();
    counts.duplicate_events = seen_ids.values().map(|n| n - 1).sum();
    record(&counts);
    counts
}

/// Reads the topic from the beginning until an event for every `(user, version)` in `expected`
/// arrived, then one more second for duplicates.
pub async fn collect_events(
    brokers: &str,
    topic: &str,
    expected: HashSet<(String, i32)>,
    timeout: Duration,
) -> Vec<ReadEvent> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let reader = loop {
            match EventReader::new(&brokers, &topic, true) {
                Ok(r) => break r,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot read {topic}: {e:#}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let mut events = Vec::new();
        let mut missing = expected;
        let mut quiet_until = None;
        loop {
            let now = Instant::now();
            if let Some(q) = quiet_until {
                if now >= q {
                    return events;
                }
            }
            assert!(
                now < deadline,
                "timed out waiting for events; missing {} (user, version) pairs, e.g. {:?}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
            if let Ok(Some(e)) = reader.next(Duration::from_millis(250)) {
                crate::support::assert_valid_event(&e);
                if let Some(v) = e.event.model_version {
                    missing.remove(&(e.event.user_id.clone(), v));
                }
                events.push(e);
            }
            if missing.is_empty() && quiet_until.is_none() {
                quiet_until = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    })
    .await
    .unwrap()
}

/// Waits until every committed actual is ingested, no user has a full batch pending and the
/// outbox is empty.
pub async fn settled(env: &TestEnv, threshold: i64, timeout: Duration) {
    eventually(timeout, "every full batch trained and the outbox empty", || async {
        let uningested = env.count(AWAITING_INGEST).await;
        let due: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT user_id FROM refit_pending GROUP BY user_id HAVING count(*) >= $1) d",
        )
        .bind(threshold)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        uningested == 0
            && due == 0
            && env.count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL").await == 0
    })
    .await;
}

/// Each version announced, and each ready version invalidated before its announcement, by the
/// kept outbox entries' done_at.
async fn delivered_in_order(env: &TestEnv) {
    let unannounced: Vec<(String, i32)> = sqlx::query_as(
        "SELECT v.user_id, v.version FROM refit_model_versions v
          WHERE NOT EXISTS (SELECT 1 FROM refit_outbox o
                             WHERE o.kind = 'announce' AND o.user_id = v.user_id
                               AND (o.payload->>'model_version')::int = v.version
                               AND o.done_at IS NOT NULL)",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        unannounced.is_empty(),
        "versions never announced: {unannounced:?}"
    );
    let uninvalidated: Vec<(String, i32)> = sqlx::query_as(
        "SELECT v.user_id, v.version FROM refit_model_versions v
          WHERE v.status = 'ready'
            AND NOT EXISTS (SELECT 1 FROM refit_outbox i JOIN refit_outbox a USING (event_id)
                             WHERE i.kind = 'invalidate' AND a.kind = 'announce'
                               AND i.payload->>'retrain_id' = v.retrain_id::text
                               AND i.done_at IS NOT NULL AND i.done_at <= a.done_at)",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        uninvalidated.is_empty(),
        "ready versions not invalidated before their announcement: {uninvalidated:?}"
    );
}
