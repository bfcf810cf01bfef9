//! CUDA backend (cudarc): module loading, buffers, launches, event timing.
//!
//! Kernels live in kernels/*.cu, are compiled at run time by NVRTC for the device's own
//! architecture and cached on disk (`loader`). `gpu` holds the context and launches, `router` the
//! fused and unfused routers, `layer` the weights on the device and the `Backend`.

pub mod fp8;
pub mod gpu;
pub mod kernels;
pub mod layer;
pub mod loader;
pub mod reference;
pub mod router;
pub mod timing;
pub mod user_kernel;

use super::weights::WeightSource;
use super::Backend;
use anyhow::{anyhow, Result};
use std::sync::Arc;

/// Whether a CUDA driver, a device and NVRTC are present, without panicking where they are not.
pub fn probe() -> Result<(), String> {
    // SAFETY: only tries to dlopen the driver library by its names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so) found".to_string());
    }
    // cudarc panics if the driver lacks a symbol it needs (a driver older than CUDA 13).
    let count = std::panic::catch_unwind(cudarc::driver::CudaContext::device_count)
        .map_err(|_| "the CUDA driver is older than CUDA 13.0 needs".to_string())?
        .map_err(|e| format!("the CUDA driver failed to start: {e:?}"))?;
    if count < 1 {
        return Err("no CUDA device".to_string());
    }
    loader::nvrtc_available()?;
    Ok(())
}

/// Total memory of CUDA device 0 (for `memory::limits`); None where it cannot be read.
pub fn device_memory() -> Option<u64> {
    let total = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().ok()?;
        let dev = cudarc::driver::result::device::get(0).ok()?;
        // SAFETY: `dev` was returned by `device::get`.
        unsafe { cudarc::driver::result::device::total_mem(dev) }.ok()
    });
    total.ok().flatten().map(|b| b as u64)
}

/// Opens the CUDA backend on these weights.
pub fn open(weights: Box<dyn WeightSource>) -> Result<Box<dyn Backend>> {
    let gpu = Arc::new(gpu::Gpu::open()?);
    let mut backend = layer::CudaBackend::new(gpu, weights)?;
    backend.device_numerics = true;
    Ok(Box::new(backend))
}

/// Opens the CUDA backend with a user's router kernel for path C (reading `logits`); returns
/// its conventions. Path C is compared on the device like A and B.
pub fn open_with_kernel(
    weights: Box<dyn WeightSource>,
    file: user_kernel::KernelFile,
    logits: user_kernel::LogitsDtype,
) -> Result<(Box<dyn Backend>, user_kernel::Conventions)> {
    let gpu = Arc::new(gpu::Gpu::open()?);
    let (mut backend, conv) =
        layer::CudaBackend::new(gpu, weights)?.with_user_kernel(file, logits)?;
    backend.device_numerics = true;
    Ok((Box::new(backend), conv))
}

/// Routes on the GPU with the fused router. `required`: fail where no GPU is present (for
/// `--backend cuda`) instead of returning None (for `auto`, which then routes on the CPU).
pub fn route_on_gpu(
    cfg: &crate::engine::config::MoeConfig,
    inputs: &crate::engine::inputs::RouterInputs,
    required: bool,
) -> Result<Option<crate::engine::routing::Routing>> {
    if let Err(why) = probe() {
        if required {
            return Err(anyhow!("--backend cuda: no CUDA: {why}"));
        }
        return Ok(None);
    }
    let k = cfg.num_experts_per_tok;
    if let Err(why) = router::RouterShape::new(cfg, k, 0, 1.0, 0.0) {
        if required {
            return Err(why.context("--backend cuda"));
        }
        return Ok(None); // `auto`: the CPU routes what the kernels do not support
    }
    let gpu = gpu::Gpu::open()?;
    let routing = route_logits(
        &gpu,
        cfg,
        &inputs.logits,
        inputs.bias.as_deref(),
        k,
        inputs.tokens,
    )?;
    Ok(Some(routing))
}

/// Routes f32 logits [tokens × E] with the fused router, returning the reference's form (ids best
/// first, probabilities in f64 without rsf).
pub fn route_logits(
    gpu: &gpu::Gpu,
    cfg: &crate::engine::config::MoeConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    tokens: usize,
) -> Result<crate::engine::routing::Routing> {
    let shape = router::RouterShape::new(cfg, k, 0, 1.0, 0.0)?;
    let d_logits = gpu.upload(logits, "router logits")?;
    let d_bias = match bias {
        Some(b) => Some(gpu.upload(b, "router bias")?),
        None => None,
    };
    let ids = gpu.alloc::<u32>(tokens * k, "routed ids")?;
    let weights = gpu.alloc::<f32>(tokens * k, "routed weights")?;
    let probs = gpu.alloc::<f64>(tokens * k, "routed probabilities")?;
    let io = router::RouterIo {
        logits: gpu.ptr(&d_logits).cast(),
        logits_bf16: false,
        bias: gpu.ptr_opt(d_bias.as_ref()),
        gate: kernels::DevPtr::NULL,
        ids: gpu.ptr(&ids),
        weights: gpu.ptr(&weights),
        probs: gpu.ptr(&probs),
    };
    router::fused(gpu, &shape, &io, tokens)?;
    Ok(crate::engine::routing::Routing {
        k,
        ids: gpu.download(&ids, tokens * k, "routed ids")?,
        probs: gpu.download(&probs, tokens * k, "routed probabilities")?,
    })
}
