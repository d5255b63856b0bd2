//! The push task: takes lines off the queue in batches and pushes each batch to Loki (a
//! snappy-compressed protobuf `PushRequest`, one stream per level), one push at a time, each
//! with a deadline. A failed push is retried after a back-off (0.5 s doubling, at most 30 s);
//! a batch is given up after [`ATTEMPTS`] failed pushes, or at once when Loki refuses it (a 4xx
//! other than 429). At shutdown, what is queued is pushed once more; see [`super::Shipper`].

use std::time::Duration;

use loki_api::logproto::{EntryAdapter, PushRequest, StreamAdapter};
use prost::Message;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::subscriber::NoSubscriber;
use tracing::{warn, Level};

use super::queue::Outlet;
use super::{Counters, Line, SHIPPER_TARGET};

/// Failed pushes after which a batch is given up (its lines counted as dropped).
const ATTEMPTS: u32 = 5;
/// Lines in one push, at most.
const BATCH_LINES: usize = 1000;
/// Bytes of line text in one push, at most (a longer line goes alone).
const BATCH_BYTES: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const LEVELS: [Level; 5] = [
    Level::TRACE,
    Level::DEBUG,
    Level::INFO,
    Level::WARN,
    Level::ERROR,
];

/// Pushes batches to one Loki.
pub(super) struct Pusher {
    client: reqwest::Client,
    endpoint: url::Url,
    environment: String,
    batch_lines: usize,
    counters: Counters,
}

/// Lines taken off the queue and not yet pushed.
#[derive(Default)]
struct Batch {
    lines: Vec<Line>,
    bytes: usize,
    failures: u32,
}

/// Why a push failed; `give_up` when retrying cannot help.
struct Failure {
    reason: String,
    give_up: bool,
}

impl Pusher {
    pub(super) fn new(
        endpoint: url::Url,
        environment: &str,
        queue_lines: usize,
        timeout: Duration,
        counters: Counters,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("refit/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirected POST loses its body: a redirect is a failed push.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the Loki HTTP client: {}", chain(&e)))?;
        Ok(Pusher {
            client,
            endpoint,
            environment: environment.to_owned(),
            batch_lines: queue_lines.clamp(1, BATCH_LINES),
            counters,
        })
    }

    /// Ships lines until `stop`, then flushes.
    pub(super) async fn run(self, mut queue: Outlet, stop: CancellationToken) {
        let mut batch = Batch::default();
        let mut backoff = FIRST_BACKOFF;
        loop {
            if batch.lines.is_empty() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    line = queue.recv() => match line {
                        Some(line) => batch.add(line),
                        None => break,
                    },
                }
            }
            self.fill(&mut batch, &mut queue);
            match self.push(&batch).await {
                Ok(()) => {
                    batch = Batch::default();
                    backoff = FIRST_BACKOFF;
                }
                Err(failure) => {
                    self.failed(&mut batch, failure, backoff);
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.flush(batch, queue).await;
    }

    /// Counts a failed push; gives the batch up when retrying cannot help or it failed too often.
    fn failed(&self, batch: &mut Batch, failure: Failure, backoff: Duration) {
        self.counters.send_errors.inc();
        batch.failures += 1;
        let lines = batch.lines.len();
        if failure.give_up || batch.failures >= ATTEMPTS {
            self.counters.dropped_lines.inc_by(lines as u64);
            warn!(target: SHIPPER_TARGET, error = %failure.reason, attempts = batch.failures,
                dropped_lines = lines, "log lines not shipped to Loki: batch given up");
            *batch = Batch::default();
        } else {
            warn!(target: SHIPPER_TARGET, error = %failure.reason, attempt = batch.failures,
                retry_in_ms = backoff.as_millis() as u64, lines, "push to Loki failed; retrying");
        }
    }

    /// Pushes what is queued, once; what cannot be pushed is counted as dropped.
    async fn flush(self, mut batch: Batch, mut queue: Outlet) {
        loop {
            self.fill(&mut batch, &mut queue);
            if batch.lines.is_empty() {
                return;
            }
            if let Err(failure) = self.push(&batch).await {
                self.counters.send_errors.inc();
                let left = batch.lines.len() + std::iter::from_fn(|| queue.try_recv()).count();
                self.counters.dropped_lines.inc_by(left as u64);
                warn!(target: SHIPPER_TARGET, error = %failure.reason, dropped_lines = left,
                    "log lines not shipped to Loki at shutdown");
                return;
            }
            batch = Batch::default();
        }
    }

    /// Adds queued lines to `batch` up to its bounds.
    fn fill(&self, batch: &mut Batch, queue: &mut Outlet) {
        while batch.lines.len() < self.batch_lines && batch.bytes < BATCH_BYTES {
            match queue.try_recv() {
                Some(line) => batch.add(line),
                None => break,
            }
        }
    }

    /// One POST of `batch`, within the client's timeout. Errors never show the URL.
    async fn push(&self, batch: &Batch) -> Result<(), Failure> {
        let body = self.encode(&batch.lines)?;
        let response = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_ENCODING, "snappy")
            .body(body)
            .send()
            // The HTTP client's own events must not queue lines.
            .with_subscriber(NoSubscriber::default())
            .await
            .map_err(|e| Failure {
                reason: chain(&e.without_url()),
                give_up: false,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            reason: format!("Loki answered {status}"),
            give_up: status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS,
        })
    }

    /// The request body: one stream per level, snappy-compressed (block format, as Loki reads).
    fn encode(&self, lines: &[Line]) -> Result<Vec<u8>, Failure> {
        let streams = LEVELS
            .iter()
            .filter_map(|level| {
                let entries: Vec<EntryAdapter> = lines
                    .iter()
                    .filter(|l| l.level == *level)
                    .map(|l| EntryAdapter {
                        timestamp: Some(l.at.into()),
                        line: l.text.clone(),
                    })
                    .collect();
                (!entries.is_empty()).then(|| StreamAdapter {
                    labels: labels(&self.environment, *level),
                    entries,
                    hash: 0,
                })
            })
            .collect();
        let raw = PushRequest { streams }.encode_to_vec();
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .map_err(|e| Failure {
                reason: format!("cannot compress the batch: {e}"),
                give_up: true,
            })
    }
}

impl Batch {
    fn add(&mut self, line: Line) {
        self.bytes += line.text.len();
        self.lines.push(line);
    }
}

/// The stream's labels, low-cardinality only: `{service="refit",environment="…",level="…"}`.
fn labels(environment: &str, level: Level) -> String {
    let level = level.as_str().to_ascii_lowercase();
    format!("{{service=\"refit\",environment={environment:?},level=\"{level}\"}}")
}

/// `error: cause: cause`, without the request's URL (it may carry credentials).
fn chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::StatusCode;
    use prometheus::IntCounter;

    use super::super::{push_endpoint, queue};
    use super::*;

    /// A loopback Loki answering `statuses` in turn; returns its URL and the lines it received.
    async fn scripted_loki(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        let received = Arc::new(AtomicUsize::new(0));
        let seen = received.clone();
        let push = move |body: Bytes| async move {
            let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
            let request = PushRequest::decode(raw.as_slice()).unwrap();
            let lines: usize = request.streams.iter().map(|s| s.entries.len()).sum();
            seen.fetch_add(lines, Ordering::SeqCst);
            let status = statuses.lock().unwrap().next().unwrap_or(204);
            StatusCode::from_u16(status).unwrap()
        };
        let app = axum::Router::new().route("/loki/api/v1/push", axum::routing::post(push));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, received)
    }

    fn line(text: &str) -> Line {
        Line {
            level: Level::INFO,
            at: std::time::SystemTime::now(),
            text: text.to_owned(),
        }
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_push_is_retried_and_a_refused_batch_is_dropped_and_counted() {
        // 503: retried; then 204; then 400: given up at once.
        let (url, received) = scripted_loki(vec![503, 204, 400]).await;
        let counters = Counters {
            dropped_lines: IntCounter::new("d", "d").unwrap(),
            send_errors: IntCounter::new("e", "e").unwrap(),
        };
        let (inlet, outlet) = queue::bounded(100, counters.dropped_lines.clone());
        let endpoint = push_endpoint(&url).unwrap();
        let timeout = Duration::from_secs(5);
        let pusher = Pusher::new(endpoint, "test", 100, timeout, counters.clone()).unwrap();
        for text in ["a", "b", "c"] {
            inlet.offer(line(text));
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(pusher.run(outlet, stop.clone()));
        until("the batch pushed twice", || {
            received.load(Ordering::SeqCst) == 6
        })
        .await;
        assert_eq!(counters.send_errors.get(), 1);
        assert_eq!(counters.dropped_lines.get(), 0, "the retry delivered them");

        inlet.offer(line("d"));
        until("the refused line counted", || {
            counters.dropped_lines.get() == 1
        })
        .await;
        assert_eq!(counters.send_errors.get(), 2);
        assert_eq!(received.load(Ordering::SeqCst), 7, "a 400 is not retried");

        inlet.offer(line("e"));
        stop.cancel();
        task.await.unwrap();
        assert_eq!(
            received.load(Ordering::SeqCst),
            8,
            "shutdown flushes the queue"
        );
    }

    #[test]
    fn labels_are_service_environment_and_level() {
        assert_eq!(
            labels("prod", Level::WARN),
            r#"{service="refit",environment="prod",level="warn"}"#
        );
        assert_eq!(
            labels("a\"b", Level::INFO),
            r#"{service="refit",environment="a\"b",level="info"}"#
        );
    }
}
