//! NVML sampler thread: GPU telemetry attached to each StepRecord. Absent NVML or GPU is a
//! notice, never a failure.

use super::step::TelemetrySample;

/// A running sampler, or the reason there is none.
pub struct Telemetry {
    unavailable: Option<String>,
}

impl Telemetry {
    /// Starts sampling device `index` at `hz` (0 = off) on its own thread.
    pub fn start(_index: u32, hz: f64) -> Telemetry {
        let why = if hz <= 0.0 {
            "telemetry off (--telemetry-hz 0)"
        } else {
            "NVML sampler not built yet"
        };
        Telemetry {
            unavailable: Some(why.to_string()),
        }
    }
    /// The newest sample, if any.
    pub fn latest(&self) -> Option<TelemetrySample> {
        None
    }
    /// Why there is no telemetry, where there is none.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }
}
