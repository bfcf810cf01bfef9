//! moescope: run one MoE layer through an unfused and a fused path side by side and show load,
//! the shared-slot scaling contract, timings, numerics and telemetry.
//!
//! Layers, each importing only those before it (ARCHITECTURE.md; `tests/architecture.rs` holds
//! it): `engine` computes, `session` stores and reads StepRecords, `ui` draws them, `commands`
//! reads the CLI and wires the others. Only `StepRecord`s cross from the engine to the rest.

pub mod commands;
pub mod engine;
pub mod session;
pub mod ui;
