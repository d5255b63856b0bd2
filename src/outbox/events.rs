//! Kafka: the `model-retrained` events. An idempotent producer with `acks=all`; key = user id,
//! so one user's events stay in order on one partition; a JSON value (see [`RetrainEvent`]) and
//! CloudEvents `ce_*` headers. The topic is created at start-up when missing.

use std::time::Duration;

use anyhow::{anyhow, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::domain::RetrainEvent;

/// A producer whose deliveries fail this many times in a row is replaced by a new one.
const REPLACE_AFTER_FAILURES: u32 = 3;

/// How long one delivery may take before the outbox records a failure and retries later.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's default `message.max.bytes` (what refit assumes unless REFIT_KAFKA_PROPERTIES
/// sets it): a larger message is refused by the producer, or by the broker.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Room for the record's framing and the headers' names beside the key, value and header values.
const RECORD_OVERHEAD_BYTES: usize = 512;

/// A message the broker can never accept (too large, invalid): retrying cannot deliver it.
#[derive(Debug, thiserror::Error)]
#[error("undeliverable: {0}")]
pub(crate) struct Undeliverable(pub(crate) String);

/// Whether a failed delivery can never succeed however often it is retried.
fn is_permanent(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Where the last delivery went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) bytes: usize,
}

/// Publishes retrain events.
pub(crate) struct Events {
    /// Replaced when librdkafka reports a fatal error (e.g. a fenced idempotent producer), after
    /// which the old one can never deliver again.
    producer: std::sync::RwLock<FutureProducer>,
    /// How to make a producer (the client settings plus idempotence, acks=all, timeouts).
    producer_config: ClientConfig,
    /// Failed deliveries in a row; a producer that keeps failing is replaced (a restarted broker
    /// can answer UNKNOWN_PRODUCER_ID forever to the old producer id).
    consecutive_failures: std::sync::atomic::AtomicU32,
    client_config: ClientConfig,
    /// Largest message the producer sends (`message.max.bytes`); larger is [`Undeliverable`].
    max_message_bytes: usize,
    topic: String,
    partitions: i32,
    replication: i32,
}

impl Events {
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        let client_config = config.kafka.client_config();
        let mut producer_config = client_config.clone();
        if producer_config.get("linger.ms").is_none() {
            // Each event is one retrain's: waiting to batch it with others only delays it
            // (REFIT_KAFKA_PROPERTIES may still set a linger).
            producer_config.set("linger.ms", "0");
        }
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        let max_message_bytes = producer_config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let producer: FutureProducer = producer_config.create().context(
            "cannot create the Kafka producer (check KAFKA_BROKERS and REFIT_KAFKA_PROPERTIES)",
        )?;
        Ok(Events {
            producer: std::sync::RwLock::new(producer),
            producer_config,
            consecutive_failures: Default::default(),
            client_config,
            max_message_bytes,
            topic: config.kafka.topic.clone(),
            partitions: config.kafka.topic_partitions,
            replication: config.kafka.topic_replication,
        })
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic unless it exists.
    pub(crate) async fn ensure_topic(&self) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config
            .create()
            .context("cannot create the Kafka admin client")?;
        let topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .with_context(|| format!("cannot create topic {}", self.topic))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(anyhow!("cannot create topic {name}: {code}")),
            }
        }
        Ok(())
    }

    /// Publishes one event and waits for the broker's acknowledgement. An event over the
    /// message size limit is [`Undeliverable`] without being sent.
    pub(crate) async fn publish(&self, event: &RetrainEvent) -> anyhow::Result<Delivery> {
        let value = serde_json::to_vec(event)?;
        self.check_size(event, value.len())?;
        let id = event.event_id.to_string();
        let time = event.created_at.to_rfc3339();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("refit"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("io.refit.model.retrained"),
            })
            .insert(Header {
                key: "ce_subject",
                value: Some(event.user_id.as_str()),
            })
            .insert(Header {
                key: "ce_time",
                value: Some(time.as_str()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        let record = FutureRecord::to(&self.topic)
            .key(event.user_id.as_bytes())
            .payload(&value)
            .headers(headers);
        self.send(record, value.len()).await
    }

    /// Refuses, up front, an event whose message would be over the broker's size limit.
    fn check_size(&self, event: &RetrainEvent, value_bytes: usize) -> anyhow::Result<()> {
        // The user id goes as the key and in ce_subject beside the value.
        let bytes = value_bytes + 2 * event.user_id.len() + RECORD_OVERHEAD_BYTES;
        if bytes > self.max_message_bytes {
            return Err(Undeliverable(format!(
                "the event is too large for Kafka: about {bytes} bytes, message.max.bytes is {}",
                self.max_message_bytes
            ))
            .into());
        }
        Ok(())
    }

    /// Publishes a tombstone (a null value) for the user's key: compacted topics forget the
    /// user's earlier events.
    pub(crate) async fn publish_tombstone(&self, user_id: &str) -> anyhow::Result<Delivery> {
        let record = FutureRecord::<[u8], ()>::to(&self.topic).key(user_id.as_bytes());
        self.send(record, 0).await
    }

    /// Sends one message and waits for the broker's acknowledgement.
    async fn send<P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: FutureRecord<'_, [u8], P>,
        bytes: usize,
    ) -> anyhow::Result<Delivery> {
        let producer = self.producer.read().expect("not poisoned").clone();
        let delivery = match producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(delivery) => delivery,
            Err((e, _)) if is_permanent(e.rdkafka_error_code()) => {
                return Err(Undeliverable(format!(
                    "Kafka refused the message to {} (message too large or invalid): {e}",
                    self.topic
                ))
                .into());
            }
            Err((e, _)) => {
                self.replace_if_broken(&producer);
                return Err(anyhow!("Kafka delivery to {} failed: {e}", self.topic));
            }
        };
        self.consecutive_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(Delivery {
            partition: delivery.partition,
            offset: delivery.offset,
            bytes,
        })
    }

    /// Makes a new producer when the failed one is in librdkafka's fatal state (it never delivers
    /// again) or has failed `REPLACE_AFTER_FAILURES` deliveries in a row.
    fn replace_if_broken(&self, failed: &FutureProducer) {
        let failures = 1 + self
            .consecutive_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (code, reason) = match failed.client().fatal_error() {
            Some((code, reason)) => (code.to_string(), reason),
            None if failures >= REPLACE_AFTER_FAILURES => (
                "repeated failures".to_owned(),
                format!("{failures} deliveries failed in a row"),
            ),
            None => return,
        };
        self.consecutive_failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
        match self.producer_config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(error = %code, reason, "Kafka producer hit a fatal error; replaced it");
                *self.producer.write().expect("not poisoned") = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate the Kafka producer"),
        }
    }

    /// Drops messages still queued in the producer (not yet sent): used when the outbox lock was
    /// lost mid-publish, since whoever holds it now re-sends them.
    pub(crate) fn purge_queued(&self) {
        use rdkafka::producer::PurgeConfig;
        let producer = self.producer.read().expect("not poisoned").clone();
        producer.purge(PurgeConfig::default().queue());
    }

    /// Waits for every queued message to be delivered (call before exit).
    pub(crate) fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .read()
            .expect("not poisoned")
            .flush(timeout)
            .map_err(|e| anyhow!("Kafka flush failed: {e}"))
    }
}

/// One event read back from the topic.
#[derive(Debug, Clone)]
pub struct ReadEvent {
    pub event: RetrainEvent,
    /// The message value as sent (what consumers parse; docs/model-retrained.schema.json).
    pub value: serde_json::Value,
    pub key: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub headers: Vec<(String, String)>,
}

/// Reads `model-retrained` events by partition assignment (no consumer group coordination), for
/// the demo and the tests.
pub struct EventReader {
    consumer: rdkafka::consumer::BaseConsumer,
}

impl EventReader {
    /// Assigns every partition of `topic`, from the beginning or from the end.
    pub fn new(brokers: &str, topic: &str, from_beginning: bool) -> anyhow::Result<Self> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "refit-reader")
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .context("cannot create the Kafka consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .context("cannot read topic metadata")?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        anyhow::ensure!(
            partitions > 0,
            "topic {topic} has no partitions (does it exist?)"
        );
        let mut list = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            let offset = if from_beginning {
                Offset::Beginning
            } else {
                Offset::End
            };
            list.add_partition_offset(topic, p, offset)?;
        }
        consumer.assign(&list)?;
        Ok(EventReader { consumer })
    }

    /// The next event, or `None` if none arrives within `timeout`; tombstones are skipped.
    pub fn next(&self, timeout: Duration) -> anyhow::Result<Option<ReadEvent>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_message(left)? {
                None => return Ok(None),
                Some(Message::Event(e)) => return Ok(Some(*e)),
                Some(Message::Tombstone { .. }) => continue,
            }
        }
    }

    /// The next message, event or tombstone, or `None` if none arrives within `timeout`.
    pub fn next_message(&self, timeout: Duration) -> anyhow::Result<Option<Message>> {
        use rdkafka::message::{Headers, Message as _};
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(message) = self.consumer.poll(left) else {
                return Ok(None);
            };
            let message = match message {
                Ok(m) => m,
                // Transient conditions (partition EOF, not yet leader) are retried until the deadline.
                Err(_) if !left.is_zero() => continue,
                Err(e) => return Err(e.into()),
            };
            let key = message.key().unwrap_or_default().to_vec();
            let Some(payload) = message.payload() else {
                return Ok(Some(Message::Tombstone {
                    key,
                    partition: message.partition(),
                }));
            };
            let value: serde_json::Value =
                serde_json::from_slice(payload).context("a message on the topic is not JSON")?;
            let event: RetrainEvent = serde_json::from_value(value.clone())
                .context("a message on the topic is not a retrain event")?;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Some(Message::Event(Box::new(ReadEvent {
                event,
                value,
                key,
                partition: message.partition(),
                offset: message.offset(),
                headers,
            }))));
        }
    }
}

/// A message read back from the topic.
#[derive(Debug, Clone)]
pub enum Message {
    Event(Box<ReadEvent>),
    /// A null value: the key's (user's) earlier events may be forgotten.
    Tombstone {
        key: Vec<u8>,
        partition: i32,
    },
}
