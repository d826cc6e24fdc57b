//! hb-bridge's integration tests: the bridge binary against private Mosquitto and Kafka-protocol (tansu) brokers.
//!
//! One test binary per crate, with a module per area, so that the crate and its
//! heavy dependencies are linked once. Run one area with
//! `./scripts/test.sh --test it -- <module>::`.

mod common;
mod delivery;
mod mqtt_security;
mod overload;
mod quarantine;
