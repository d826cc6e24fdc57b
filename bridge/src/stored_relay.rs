//! The back channel: storage confirmations from Kafka `hb.stored.v1` (written by
//! the collectors after their COMMIT) to each device's retained MQTT topic
//! `{root}/v1/devices/{id}/stored`, QoS 1. The Kafka offsets of a batch are
//! stored only after the broker acknowledged every message made from it, so a
//! confirmation is relayed at least once; a repeat is harmless (it is retained
//! and only ever names more readings).
//!
//! The relay has an MQTT connection of its own (`hb-bridge-{id}-stored`, clean
//! session), so its publishes never queue behind the data path's acks. rumqttc
//! does not say which PUBACK answers which publish, and on a connection loss it
//! moves unacknowledged publishes and unsent requests into `pending`, which it
//! discards when the broker starts a new session. So [`Tracker`] follows packet
//! ids itself (requests in order → `Outgoing::Publish(pkid)` → `PubAck(pkid)`) and
//! the event loop hands it `pending` on every loss: whatever was in it is
//! published again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use hb_shared::{DeviceTopicKind, StoredConfirmation};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, Request};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::BridgeMetrics;
use crate::{Config, Error, Result};

/// Most confirmations (after coalescing per device) in one batch.
const MAX_BATCH: usize = 64;
/// How long a batch waits for more records once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    Requested,
    InFlight,
    Acked,
}

struct Outbound {
    topic: String,
    payload: Vec<u8>,
    state: State,
}

/// Which of the current batch's publishes the broker acknowledged.
#[derive(Default)]
pub struct Tracker {
    batch: Vec<Outbound>,
    requested: VecDeque<usize>,
    in_flight: HashMap<u16, usize>,
}

impl Tracker {
    fn start(&mut self, batch: Vec<(String, Vec<u8>)>) {
        debug_assert!(self.requested.is_empty() && self.in_flight.is_empty());
        self.batch = batch
            .into_iter()
            .map(|(topic, payload)| Outbound {
                topic,
                payload,
                state: State::Unsent,
            })
            .collect();
    }

    /// Hands every unsent message to the client; stops at a full channel.
    fn issue(&mut self, client: &AsyncClient) {
        for (i, m) in self.batch.iter_mut().enumerate() {
            if m.state != State::Unsent {
                continue;
            }
            match client.try_publish(m.topic.clone(), QoS::AtLeastOnce, true, m.payload.clone()) {
                Ok(()) => {
                    m.state = State::Requested;
                    self.requested.push_back(i);
                }
                Err(_) => return,
            }
        }
    }

    /// rumqttc wrote a publish with `pkid`: the oldest request.
    fn on_outgoing(&mut self, pkid: u16) {
        if self.in_flight.contains_key(&pkid) {
            return;
        }
        if let Some(i) = self.requested.pop_front() {
            self.batch[i].state = State::InFlight;
            self.in_flight.insert(pkid, i);
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        if let Some(i) = self.in_flight.remove(&pkid) {
            self.batch[i].state = State::Acked;
        }
    }

    /// The connection dropped; rumqttc's `pending` held `numbered` in-flight and
    /// `unnumbered` not yet written publishes (the oldest requests). All of them
    /// are sent again; newer requests are still in the client's channel.
    fn on_lost(&mut self, unnumbered: usize) {
        for (_, i) in self.in_flight.drain() {
            self.batch[i].state = State::Unsent;
        }
        for _ in 0..unnumbered {
            if let Some(i) = self.requested.pop_front() {
                self.batch[i].state = State::Unsent;
            }
        }
    }

    fn done(&self) -> bool {
        self.batch.iter().all(|m| m.state == State::Acked)
    }
}

/// Runs the relay until `shutdown`. Fails only when it cannot start (Kafka client)
/// or the broker refuses its credentials.
pub async fn run(
    config: Config,
    metrics: Arc<BridgeMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let consumer = create_consumer(&config)?;
    let topic = config.kafka_topics.stored();
    consumer
        .subscribe(&[&topic])
        .map_err(|source| Error::Subscribe {
            topic: topic.clone(),
            source,
        })?;
    let (client, eventloop) = AsyncClient::new(options(&config), 2 * MAX_BATCH + 8);
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let progress = Arc::new(Notify::new());
    let mut events = tokio::spawn(drive(
        eventloop,
        Arc::clone(&tracker),
        Arc::clone(&progress),
        config.mqtt.to_string(),
    ));
    let result = tokio::select! {
        r = relay(&config, &consumer, &client, &tracker, &progress, &metrics, &shutdown) => r,
        r = &mut events => match r {
            Ok(r) => r,
            Err(e) => Err(Error::ConnectMqtt { address: config.mqtt.to_string(), reason: format!("relay event loop failed: {e}") }),
        },
    };
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(5), &mut events)
        .await
        .is_err()
    {
        events.abort();
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "No stored-topic offsets to commit at shutdown.");
    }
    result
}

async fn relay(
    config: &Config,
    consumer: &StreamConsumer,
    client: &AsyncClient,
    tracker: &Mutex<Tracker>,
    progress: &Notify,
    metrics: &BridgeMetrics,
    shutdown: &CancellationToken,
) -> Result<()> {
    loop {
        let Some((batch, offsets)) = collect(config, consumer, metrics, shutdown).await else {
            return Ok(());
        };
        let relayed = batch.len() as u64;
        tracker.lock().expect("tracker lock").start(batch);
        loop {
            {
                let mut t = tracker.lock().expect("tracker lock");
                if t.done() {
                    break;
                }
                t.issue(client);
            }
            tokio::select! {
                _ = progress.notified() => {}
                // Unacknowledged: the offsets stay unstored, Kafka redelivers.
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        metrics.confirmations_relayed.inc_by(relayed);
        for (topic, partition, next) in offsets {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition_offset(&topic, partition, Offset::Offset(next));
            if let Err(e) = consumer.store_offsets(&list) {
                tracing::debug!(error = %e, "Could not store a stored-topic offset (revoked?); it will be relayed again.");
            }
        }
    }
}

type Offsets = Vec<(String, i32, i64)>;

/// Reads a batch of confirmations, newest per device merged with older ones;
/// `None` at shutdown.
async fn collect(
    config: &Config,
    consumer: &StreamConsumer,
    metrics: &BridgeMetrics,
    shutdown: &CancellationToken,
) -> Option<(Vec<(String, Vec<u8>)>, Offsets)> {
    let mut by_device: HashMap<String, StoredConfirmation> = HashMap::new();
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    // Armed by the batch's first record.
    let deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            _ = &mut deadline, if !next.is_empty() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error on the stored topic.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if next.is_empty() {
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + BATCH_WAIT);
        }
        let e = next
            .entry((msg.topic().to_owned(), msg.partition()))
            .or_insert(0);
        *e = (*e).max(msg.offset() + 1);
        match StoredConfirmation::from_json(msg.payload().unwrap_or_default()) {
            Ok(c) if msg.key() == Some(c.device_id.as_str().as_bytes()) => {
                match by_device.get_mut(c.device_id.as_str()) {
                    Some(older) => older.merge(c),
                    None => {
                        by_device.insert(c.device_id.as_str().to_owned(), c);
                    }
                }
            }
            other => {
                // Only the collectors write this topic; count and skip.
                metrics.confirmations_invalid.inc();
                if metrics.confirmations_invalid.get().is_power_of_two() {
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(),
                        error = ?other.err(), "Skipping an invalid storage confirmation.");
                }
            }
        }
        if by_device.len() >= MAX_BATCH {
            break;
        }
    }
    let batch = by_device
        .into_values()
        .map(|c| {
            let topic = config
                .mqtt_topics
                .device(&c.device_id, DeviceTopicKind::Stored);
            (topic, c.to_json())
        })
        .collect();
    let offsets = next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    Some((batch, offsets))
}

/// Drives the relay's MQTT connection until our DISCONNECT went out.
async fn drive(
    mut eventloop: EventLoop,
    tracker: Arc<Mutex<Tracker>>,
    progress: Arc<Notify>,
    address: String,
) -> Result<()> {
    let new_backoff = || {
        hb_runtime::retry::backoff(Duration::from_millis(100), Duration::from_secs(10), None)
            .build()
    };
    let mut backoff = new_backoff();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = new_backoff();
                tracing::debug!(%address, "Stored-topic relay connected.");
            }
            Ok(event) => {
                if handle(&mut tracker.lock().expect("tracker lock"), event) {
                    progress.notify_one();
                }
            }
            Err(e) => {
                {
                    // Settle the events rumqttc queued before the failure (a
                    // publish numbered just before its write failed), then take
                    // what it would resend or discard itself.
                    let mut t = tracker.lock().expect("tracker lock");
                    for event in eventloop.state.events.drain(..) {
                        handle(&mut t, event);
                    }
                    let taken = std::mem::take(&mut eventloop.pending);
                    eventloop.state.collision = None;
                    let unnumbered = taken
                        .iter()
                        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                        .count();
                    t.on_lost(unnumbered);
                }
                progress.notify_one();
                if let Some(why) = hb_runtime::mqtt_auth::refused_credentials(&e) {
                    return Err(Error::ConnectMqtt {
                        address,
                        reason: format!("the broker refused the relay's credentials ({why})"),
                    });
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::debug!(error = %e, ?delay, "Stored-topic relay disconnected; reconnecting.");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Applies one event to the tracker; true when it may have completed the batch.
fn handle(tracker: &mut Tracker, event: Event) -> bool {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            tracker.on_outgoing(pkid);
            false
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            tracker.on_puback(ack.pkid);
            true
        }
        _ => false,
    }
}

fn options(config: &Config) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(
        format!("{}-stored", config.client_id()),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    o.set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(2 * MAX_BATCH as u16);
    if let Some((user, password)) = &config.mqtt_credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &config.mqtt_tls {
        o.set_transport(rumqttc::Transport::Tls(tls.clone()));
    }
    o
}

fn create_consumer(config: &Config) -> Result<StreamConsumer> {
    let mut cc = ClientConfig::new();
    for (k, v) in &config.kafka_options {
        // Security and connection settings apply; producer tuning does not.
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cc.set(k, v);
        }
    }
    cc.set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.relay_kafka_group)
        .set("client.id", config.client_id())
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // See the collector's consumer: tansu holds a fetch for the whole wait.
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(|e| Error::CreateKafkaClient(hb_runtime::kafka_args::without_values(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    fn batch(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n).map(|i| (format!("t/{i}"), vec![i as u8])).collect()
    }

    fn client() -> (AsyncClient, EventLoop) {
        AsyncClient::new(MqttOptions::new("t", "localhost", 1883), 64)
    }

    #[test]
    fn a_batch_is_done_when_every_publish_is_acknowledged() {
        let (c, _el) = client();
        let mut t = Tracker::default();
        t.start(batch(3));
        t.issue(&c);
        for pkid in 1..=3 {
            t.on_outgoing(pkid);
        }
        t.on_puback(1);
        t.on_puback(3);
        assert!(!t.done());
        t.on_puback(2);
        assert!(t.done());
    }

    #[test]
    fn publishes_lost_with_the_connection_are_sent_again() {
        let (c, _el) = client();
        let mut t = Tracker::default();
        t.start(batch(3));
        t.issue(&c);
        t.on_outgoing(1); // 0 in flight; 1 and 2 still requested
        t.on_puback(1);
        t.on_outgoing(2); // 1 in flight
                          // rumqttc's pending: publish 1 (numbered) and the request of 2 (unnumbered).
        t.on_lost(1);
        assert_eq!(
            t.batch.iter().map(|m| m.state).collect::<Vec<_>>(),
            [State::Acked, State::Unsent, State::Unsent]
        );
        t.issue(&c);
        t.on_outgoing(1);
        t.on_outgoing(2);
        assert_eq!(t.in_flight[&1], 1);
        t.on_puback(1);
        t.on_puback(2);
        assert!(t.done());
    }

    #[test]
    fn an_ack_for_an_unknown_packet_id_acknowledges_nothing() {
        let (c, _el) = client();
        let mut t = Tracker::default();
        t.start(batch(1));
        t.issue(&c);
        t.on_puback(7);
        assert!(!t.done());
    }
}
