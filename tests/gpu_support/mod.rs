//! Shared by the GPU tests: the device, or a printed reason to skip (CI has no GPU).

use moescope::engine::cuda;
use moescope::engine::cuda::gpu::Gpu;

/// The GPU if there is one; without, says so and returns None (the test then passes as skipped).
pub fn gpu() -> Option<Gpu> {
    match cuda::probe() {
        Ok(()) => Some(Gpu::open().expect("a probed GPU opens")),
        Err(why) => {
            println!("skipped: no CUDA: {why}");
            None
        }
    }
}
