//! Reading back what reached Kafka, and private tansu brokers for tests that stop
//! and restart the broker.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::{free_port, unique, Process, Services};

/// One Kafka record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Key (the device id).
    pub key: Option<String>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers, by name.
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `done(records)` holds or `timeout`
/// passes; returns what was read either way.
pub async fn read_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    // `done` may look at every record: ask it only when the topic goes quiet or
    // every 500 records, not after each one.
    let mut check = true;
    while Instant::now() < deadline {
        if check && done(&records) {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: m.partition(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                check = records.len() % 500 == 0;
            }
            Ok(Err(_)) | Err(_) => check = true,
        }
    }
    records
}

/// A tansu broker of one test, storing in SQLite under its own directory so that
/// it keeps its data when killed and restarted.
pub struct Tansu {
    /// `127.0.0.1:PORT`.
    pub brokers: String,
    port: u16,
    dir: PathBuf,
    work: PathBuf,
    process: Option<Process>,
}

impl Tansu {
    /// Starts a broker.
    pub fn start(s: &Services) -> Self {
        let port = free_port();
        let dir = s.work_dir.join(unique("tansu-"));
        std::fs::create_dir_all(&dir).expect("tansu dir");
        let mut t = Self {
            brokers: format!("127.0.0.1:{port}"),
            port,
            work: s.work_dir.clone(),
            dir,
            process: None,
        };
        t.resume();
        t
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let bin = std::env::var("HB_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let args: Vec<String> = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut p = Process::start_in("tansu", Path::new(&bin), &args, &[], &self.work, &self.dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = p.try_wait() {
                panic!("tansu exited ({status}):\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not start:\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(p);
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, an
    /// outage without the restart (tansu's SQLite storage can panic on an
    /// idempotent producer's retry after a restart).
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal("STOP");
        }
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn unpause(&self) {
        if let Some(p) = &self.process {
            p.signal("CONT");
        }
    }

    /// Kills the broker (SIGKILL: no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal("KILL");
            let _ = p.wait(Duration::from_secs(10));
        }
    }
}

/// Creates a topic with `partitions` partitions (tansu does not auto-create).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

/// Produces `(key, payload, content-type)` records (idempotent, lz4, as the
/// bridge does), waits for every delivery, and returns where each landed:
/// `(partition, offset)` in record order.
pub async fn produce(
    brokers: &str,
    topic: &str,
    records: &[(String, Vec<u8>, &str)],
) -> Vec<(i32, i64)> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("test producer");
    // send_result enqueues at once; the delivery futures are awaited afterwards.
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload, content_type) in records {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(*content_type),
        });
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r; // let deliveries drain
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    let mut landed = Vec::with_capacity(pending.len());
    for delivery in pending {
        let d = delivery
            .await
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("delivery to {topic} failed: {e}"));
        landed.push((d.partition, d.offset));
    }
    landed
}
