//! One device's MQTT connection: the rumqttc event loop in its own task, feeding
//! the [`Outbox`] its packet-id events and, when the connection drops, the
//! requests rumqttc would otherwise have retransmitted or silently discarded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use hb_shared::Presence;
use rumqttc::{Event, EventLoop, Outgoing, Packet};
use tokio::sync::Notify;

use crate::outbox::Outbox;
use crate::{Error, Result};

/// Drives the event loop until our DISCONNECT went out. An unreachable broker is
/// retried forever (with backoff and jitter) while readings keep being stored: the
/// agent's job is to keep recording. Only a broker that refuses our credentials is
/// an error, since retrying cannot fix it.
pub async fn drive(
    mut eventloop: EventLoop,
    outbox: Arc<Mutex<Outbox>>,
    progress: Arc<Notify>,
    address: String,
) -> Result<()> {
    let new_backoff = || {
        hb_runtime::retry::backoff(Duration::from_millis(200), Duration::from_secs(30), None)
            .build()
    };
    let mut backoff = new_backoff();
    let mut warned = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(_)) = &event {
                    tracing::debug!(%address, "Connected.");
                    backoff = new_backoff();
                    warned = false;
                }
                if handle(&outbox, event) {
                    progress.notify_one();
                }
            }
            Err(e) => {
                // Settle every event rumqttc queued before the failure, then take
                // what it holds unacknowledged so that nothing depends on its
                // session surviving.
                let mut progressed = false;
                let queued: Vec<Event> = eventloop.state.events.drain(..).collect();
                for event in queued {
                    progressed |= handle(&outbox, event);
                }
                let taken = std::mem::take(&mut eventloop.pending);
                eventloop.state.collision = None;
                {
                    let mut o = outbox.lock().expect("outbox lock");
                    o.on_connection_lost(taken);
                    o.pump();
                }
                if progressed {
                    progress.notify_one();
                }
                if let Some(why) = hb_runtime::mqtt_auth::refused_credentials(&e) {
                    return Err(Error::ConnectMqtt {
                        address,
                        reason: format!("the broker refused our credentials ({why})"),
                    });
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                if warned {
                    tracing::debug!(error = %e, ?delay, "MQTT connection still down; retrying.");
                } else {
                    // Once per outage: a fleet must not flood the log.
                    tracing::warn!(%address, error = %e, "MQTT connection lost; readings are kept and sent after reconnecting.");
                    warned = true;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Applies one event to the outbox; true when it may have emptied it (a PUBACK
/// or a new connection), so that waiters look again.
fn handle(outbox: &Mutex<Outbox>, event: Event) -> bool {
    let mut o = outbox.lock().expect("outbox lock");
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            o.on_outgoing_publish(pkid);
            false
        }
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
            o.on_await_ack(pkid);
            false
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            o.on_puback(ack.pkid);
            o.pump();
            true
        }
        Event::Incoming(Packet::ConnAck(_)) => {
            o.on_connected();
            o.queue_status(Presence::Online);
            o.pump();
            true
        }
        Event::Incoming(Packet::Publish(p)) if o.is_confirmation_topic(&p.topic) => {
            o.on_stored(&p.payload);
            o.pump();
            true
        }
        Event::Incoming(Packet::SubAck(ack)) => {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
            {
                o.on_subscription_refused();
            }
            false
        }
        _ => false,
    }
}
