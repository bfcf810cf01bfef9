//! moescope: run one MoE layer through an unfused and a fused path side by side and show load,
//! the shared-slot scaling contract, timings, numerics and telemetry.
//!
//! `engine` computes, `session` stores, `ui` draws; only `StepRecord`s cross between them.

pub mod cli;
pub mod engine;
pub mod route;
pub mod run;
pub mod session;
pub mod ui;
