//! hb-agent's integration tests: the agent binary against a private Mosquitto.
//!
//! One test binary per crate, with a module per area, so that the crate and its
//! heavy dependencies are linked once. Run one area with
//! `./scripts/test.sh --test it -- <module>::`.

mod common;
mod events_and_status;
mod spool;
mod tls;
