//! The benchmark's data: readings of many devices in postcard envelopes, the
//! topic they are pre-filled into as the bridge writes them, and the rows the
//! collector makes of them (its own decoder and rules), for the phases without
//! Kafka.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure};
use hb_collector::records::{self, ReadingRow, Rules, Source};
use hb_shared::{
    codec, Contact, ContentType, DeviceId, Envelope, KafkaTopics, Reading, Readings, RrIntervals,
    Status,
};
use rdkafka::ClientConfig;

use crate::Args;

/// One Kafka record of the benchmark.
struct Message {
    key: String,
    payload: Vec<u8>,
}

/// The pre-filled topic and the same readings as rows.
pub struct Fixture {
    /// The readings topic, pre-filled.
    pub topic: String,
    /// Kafka records in it.
    pub records: usize,
    /// Their payloads' bytes.
    pub payload_bytes: usize,
    /// How long producing them took.
    pub prefill_time: Duration,
    /// The rows the collector makes of them, in the order produced.
    pub rows: Vec<ReadingRow>,
    /// How long decoding them took.
    pub decode_time: Duration,
}

/// Creates the readings and stored topics of `prefix` (`--partitions` each),
/// pre-fills the readings topic and decodes the same records into rows (timed,
/// outside every phase).
pub async fn prepare(args: &Args, prefix: &str) -> anyhow::Result<Fixture> {
    let topic = KafkaTopics::new(prefix).readings();
    create_topic(&args.kafka_brokers, &topic, args.partitions).await?;
    // Storage confirmations go out as in production (their cost is the collector's).
    let stored = KafkaTopics::new(prefix).stored();
    create_topic(&args.kafka_brokers, &stored, args.partitions).await?;
    let messages = messages(args.readings, args.devices, args.per_envelope);
    let payload_bytes = messages.iter().map(|m| m.payload.len()).sum();
    let started = Instant::now();
    let delivered = prefill(&args.kafka_brokers, &topic, &messages).await;
    let prefill_time = started.elapsed();
    let started = Instant::now();
    let rows = decode(&topic, &messages, &delivered)?;
    let decode_time = started.elapsed();
    ensure!(
        rows.len() == args.readings,
        "decoded {} rows, expected {}",
        rows.len(),
        args.readings
    );
    Ok(Fixture {
        topic,
        records: messages.len(),
        payload_bytes,
        prefill_time,
        rows,
        decode_time,
    })
}

/// `n` readings of `devices` devices (round-robin, one reading per device and
/// second, ending a minute ago) in envelopes of `per_envelope`, in the order the
/// devices would send them.
fn messages(n: usize, devices: usize, per_envelope: usize) -> Vec<Message> {
    let per_device = |d: usize| n / devices + usize::from(d < n % devices);
    let most = per_device(0);
    let base_ms = hb_runtime::clock::now_ms() - 60_000 - most as i64 * 1000;
    let ids: Vec<DeviceId> = (0..devices)
        .map(|d| DeviceId::new(&format!("bench-{d:05}")).expect("a valid device id"))
        .collect();
    let mut out = Vec::with_capacity(n.div_ceil(per_envelope));
    for round in 0..most.div_ceil(per_envelope) {
        for (d, id) in ids.iter().enumerate() {
            let first = round * per_envelope;
            let end = (first + per_envelope).min(per_device(d));
            if first >= end {
                continue;
            }
            let mut readings = Readings::new();
            for seq in first..end {
                readings
                    .push(reading(seq as u32, base_ms))
                    .expect("at most MAX_READINGS_PER_ENVELOPE");
            }
            let payload = codec::encode_postcard(&Envelope::new(id.clone(), readings))
                .expect("a valid envelope encodes");
            out.push(Message {
                key: id.as_str().to_owned(),
                payload,
            });
        }
    }
    out
}

/// A plausible reading: 60–100 BPM with two matching RR intervals.
fn reading(seq: u32, base_ms: i64) -> Reading {
    let bpm = 60 + (seq * 7 % 41) as u16;
    let rr = (60 * 1024 / u32::from(bpm)) as u16;
    let mut rr_1024 = RrIntervals::new();
    let _ = rr_1024.push(rr);
    let _ = rr_1024.push(rr + 8);
    Reading {
        mono_ms: u64::from(seq) * 1000,
        rr_1024,
        local_flag: Some(Status::Normal),
        ..Reading::new(
            1,
            seq,
            base_ms + i64::from(seq) * 1000,
            bpm,
            Contact::Detected,
        )
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces every message (enqueued at once, deliveries awaited afterwards) and
/// returns where each landed.
async fn prefill(brokers: &str, topic: &str, messages: &[Message]) -> Vec<(i32, i64)> {
    let records: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                m.key.clone(),
                m.payload.clone(),
                ContentType::Postcard.as_str(),
            )
        })
        .collect();
    hb_testkit::kafka::produce(brokers, topic, &records).await
}

/// The rows the collector makes of these records (its own decoder and rules).
fn decode(
    topic: &str,
    messages: &[Message],
    delivered: &[(i32, i64)],
) -> anyhow::Result<Vec<ReadingRow>> {
    let rules = Rules::default();
    let received_at = SystemTime::now();
    let mut rows = Vec::new();
    for (m, &(partition, offset)) in messages.iter().zip(delivered) {
        let source = Source {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        let outcome = records::accept(
            &source,
            Some(ContentType::Postcard.as_str().as_bytes()),
            Some(m.key.as_bytes()),
            &m.payload,
            &rules,
            received_at,
        );
        if let Some(q) = outcome.quarantine.first() {
            bail!(
                "a benchmark reading was refused: {} ({})",
                q.reason,
                q.detail
            );
        }
        rows.extend(outcome.rows);
    }
    Ok(rows)
}
