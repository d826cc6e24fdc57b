//! The MQTT side: a persistent-session, manual-ack subscription whose event loop
//! runs in its own task and hands each message to the forwarder.
//!
//! rumqttc pitfalls handled here: the event loop is never cancelled mid-poll (it
//! ends by a DISCONNECT we send), subscriptions are renewed on every CONNACK
//! (rumqttc does not resubscribe), an ack for a message received on an earlier
//! connection is dropped instead of acknowledging whatever message now has that
//! packet id, and reading pauses while `--max-inflight` messages are
//! unacknowledged (the vendored rumqttc's incoming window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use hb_shared::{DeviceTopicKind, JSON_MAX_SIZE};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;

use crate::metrics::BridgeMetrics;
use crate::{Config, Error, Result};

/// Start-up connection attempts before the bridge gives up with an error.
const STARTUP_ATTEMPTS: u32 = 15;

/// Largest MQTT packet read whole: a JSON envelope of the largest size the
/// decoders accept under the longest topic MQTT allows. A larger publish is handed
/// out with only its first 4 KiB (the vendored rumqttc reads and discards the
/// rest) and quarantined as `too_large`.
pub const MAX_PACKET_SIZE: usize = JSON_MAX_SIZE + 2 + u16::MAX as usize + 2;

/// One message taken from the broker, not yet acknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// The message as received.
    pub publish: Publish,
    /// Connection generation it was received under (see [`Acker`]).
    pub generation: u64,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: i64,
}

/// Sends PUBACKs from any task.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
    generation: Arc<AtomicU64>,
}

impl Acker {
    /// Whether `d` was received on the current connection.
    pub fn is_current(&self, d: &Delivery) -> bool {
        d.generation == self.generation.load(Ordering::Acquire)
    }

    /// Acknowledges `d` to the broker, unless it came on an earlier connection:
    /// then the broker either redelivers the message or no longer has it, and an
    /// ack by packet id could hit an unrelated message. Returns whether the ack
    /// was queued.
    pub async fn ack(&self, d: &Delivery) -> bool {
        if !self.is_current(d) {
            tracing::debug!(
                pkid = d.publish.pkid,
                "Dropping ack from a previous connection."
            );
            return false;
        }
        if self.client.try_ack(&d.publish).is_ok() {
            return true;
        }
        match self.client.ack(&d.publish).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "Could not queue an MQTT ack; the message will be redelivered.");
                false
            }
        }
    }
}

/// The subscription filters, via the shared group: everything under readings
/// (both content types), status and events, so that a message on a topic below
/// them that the bridge does not route (`…/readings/json/extra`) is quarantined
/// as `unknown_topic` instead of reaching no subscriber.
pub fn filters(config: &Config) -> Vec<String> {
    [
        DeviceTopicKind::Readings,
        DeviceTopicKind::Status,
        DeviceTopicKind::Events,
    ]
    .into_iter()
    .map(|k| format!("{}/#", config.mqtt_topics.shared(&config.share_group, k)))
    .collect()
}

/// The filters of earlier bridges (one per routed topic). A persistent session
/// keeps its subscriptions, so a bridge upgraded in place would get each message
/// once per matching filter: they are unsubscribed after every subscribe.
fn earlier_filters(config: &Config) -> Vec<String> {
    [
        DeviceTopicKind::Readings,
        DeviceTopicKind::ReadingsJson,
        DeviceTopicKind::Status,
        DeviceTopicKind::Events,
    ]
    .into_iter()
    .map(|k| config.mqtt_topics.shared(&config.share_group, k))
    .collect()
}

/// Client options: persistent session under a stable id, manual acks, packets
/// read whole up to [`MAX_PACKET_SIZE`] (a larger publish arrives cut short, to
/// be quarantined: MQTT 3.1.1 cannot tell the broker a limit), and an
/// incoming window of `--max-inflight` messages and `--max-inflight-bytes`: with
/// that much taken and not yet acknowledged the client stops reading, so a broker pushing faster than Kafka
/// confirms queues the excess itself (MQTT 3.1.1 has no receive maximum, and
/// Mosquitto sends QoS 1 messages without waiting for acks).
pub fn options(config: &Config) -> MqttOptions {
    let mut o = MqttOptions::new(
        config.client_id(),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    o.set_keep_alive(config.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_incoming_window(Some(rumqttc::IncomingWindow {
            messages: config.max_inflight,
            bytes: config.max_inflight_bytes,
        }))
        .set_max_packet_size(MAX_PACKET_SIZE, 64 * 1024);
    if let Some((user, password)) = &config.mqtt_credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &config.mqtt_tls {
        o.set_transport(rumqttc::Transport::Tls(tls.clone()));
    }
    o
}

/// Connects the client; the returned future drives the event loop until a
/// DISCONNECT we sent goes out, or fails if the broker was never reachable.
pub fn connect(
    config: &Config,
    tx: mpsc::Sender<Delivery>,
    metrics: Arc<BridgeMetrics>,
) -> (Acker, impl std::future::Future<Output = Result<()>>) {
    // Room for an ack of every message in the incoming window, so that acking never
    // waits on the channel.
    let (client, eventloop) = AsyncClient::new(options(config), config.max_inflight + 64);
    let generation = Arc::new(AtomicU64::new(0));
    let acker = Acker {
        client: client.clone(),
        generation: Arc::clone(&generation),
    };
    let filters = filters(config);
    let earlier = earlier_filters(config);
    let address = config.mqtt.to_string();
    (
        acker,
        drive(
            eventloop,
            client,
            (filters, earlier),
            tx,
            generation,
            address,
            metrics,
        ),
    )
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    (filters, earlier): (Vec<String>, Vec<String>),
    tx: mpsc::Sender<Delivery>,
    generation: Arc<AtomicU64>,
    address: String,
    metrics: Arc<BridgeMetrics>,
) -> Result<()> {
    metrics.health.set("mqtt", Err("not connected yet".into()));
    let new_backoff = || {
        hb_runtime::retry::backoff(Duration::from_millis(100), Duration::from_secs(10), None)
            .build()
    };
    let mut backoff = new_backoff();
    let mut connected_once = false;
    let mut failures = 0u32;
    loop {
        let event = eventloop.poll().await;
        metrics
            .mqtt_unacked
            .set(eventloop.state.incoming_unacked() as i64);
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, %address, "Connected to MQTT broker.");
                connected_once = true;
                metrics.reconnects.inc();
                failures = 0;

                backoff = new_backoff();
                let c = client.clone();
                let f = filters.clone();
                let earlier = earlier.clone();
                tokio::spawn(async move {
                    let subs = f
                        .into_iter()
                        .map(|path| rumqttc::SubscribeFilter::new(path, QoS::AtLeastOnce));
                    if let Err(e) = c.subscribe_many(subs).await {
                        tracing::warn!(error = %e, "Could not queue the MQTT subscription.");
                    }
                    for filter in earlier {
                        let _ = c.unsubscribe(filter).await;
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let d = Delivery {
                    publish,
                    generation: generation.load(Ordering::Acquire),
                    received_at_ms: hb_runtime::clock::now_ms(),
                };
                if tx.send(d).await.is_err() {
                    // The forwarder has stopped; keep polling so our DISCONNECT goes out.
                    tracing::debug!("Forwarder gone; message left for redelivery.");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!("The broker refused the subscription (check the ACL); nothing will be received.");
                    metrics
                        .health
                        .set("mqtt", Err("subscription refused".into()));
                } else {
                    tracing::info!("Subscribed to MQTT topics.");
                    metrics.health.set("mqtt", Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                // Every connection is a generation of its own, over from the moment
                // it fails. Without a session the broker does not have the old
                // messages; with one it redelivers them under the same packet
                // ids, so an ack meant for the first copy could land after that
                // id went to a new message and release it unforwarded. So acks of
                // older generations are dropped, and the messages are forwarded
                // anyway (the broker may no longer have them): at most a window
                // of duplicates in Kafka, which the collector's keys absorb.
                let ended = generation.fetch_add(1, Ordering::AcqRel);
                // Publishes read in the connection's last batch are still in
                // rumqttc's event queue: forwarded under the generation they came on.
                let buffered: Vec<_> = eventloop.state.events.drain(..).collect();
                for event in buffered {
                    if let Event::Incoming(Packet::Publish(publish)) = event {
                        let d = Delivery {
                            publish,
                            generation: ended,
                            received_at_ms: hb_runtime::clock::now_ms(),
                        };
                        let _ = tx.send(d).await;
                    }
                }
                failures += 1;
                metrics
                    .health
                    .set("mqtt", Err(format!("disconnected: {e}")));
                if !connected_once && failures >= STARTUP_ATTEMPTS {
                    return Err(Error::ConnectMqtt {
                        address,
                        reason: e.to_string(),
                    });
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, ?delay, "MQTT connection lost; reconnecting.");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Asks the event loop to end: queued acks go out first, then DISCONNECT.
pub async fn disconnect(acker: &Acker) {
    let _ = acker.client.disconnect().await;
}
