//! NVML sampler thread: GPU telemetry attached to each StepRecord.
