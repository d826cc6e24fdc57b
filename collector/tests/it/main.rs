//! hb-collector's integration tests: the collector (and the whole pipeline) against private PostgreSQL, Mosquitto and tansu.
//!
//! One test binary per crate, with a module per area, so that the crate and its
//! heavy dependencies are linked once. Run one area with
//! `./scripts/test.sh --test it -- <module>::`.

mod alerts;
mod common;
mod confirmations;
mod dashboard;
mod end_to_end;
mod exactly_once;
mod quarantine;
mod retention;
mod security;
