//! The device: context, stream, loaded kernels, launches and event timing.
//!
//! Everything runs on one stream, so cudarc's per-buffer event tracking is switched off (it would
//! add event records between launches and into the timings) and kernels take device addresses
//! (`kernels::DevPtr`) inside their argument structs.

pub use super::kernels::Grid;
use super::kernels::{DevPtr, FillArgs, Kernel, KernelId, Module, Tile, KERNELS};
use super::loader;
use crate::engine::step::{KernelTiming, Stage};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::sync::Arc;

/// The opened device with every kernel loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// e.g. "sm_90".
    pub arch: String,
    pub sms: u32,
    /// The registry's kernels, indexed by `KernelId`.
    kernels: Vec<CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
}

/// Turns a cudarc driver error into one naming what was being done.
pub fn cuda_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("CUDA error while {what}: {e:?}")
}

impl Gpu {
    /// Opens device 0 and loads every kernel (compiled for its architecture, cached on disk).
    pub fn open() -> Result<Gpu> {
        super::probe().map_err(|why| anyhow!("no CUDA: {why}"))?;
        let ctx = CudaContext::new(0).map_err(cuda_err("opening device 0"))?;
        // SAFETY: the backend uses a single stream, so no cross-stream tracking is needed.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        let name = ctx.name().map_err(cuda_err("reading the device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("reading the compute capability"))?;
        // Hopper's wgmma needs the architecture-specific target (the 64- and 128-row GEMM tiles use it).
        let arch = if (major, minor) == (9, 0) {
            "sm_90a".to_string()
        } else {
            format!("sm_{major}{minor}")
        };
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("reading the multiprocessor count"))? as u32;
        let mut typed: Vec<Option<CudaFunction>> = vec![None; KERNELS.len()];
        let mut modules = Vec::new();
        for &m in Module::ALL {
            let cubin = loader::cubin_cached(m, &arch)?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(cuda_err(&format!(
                    "loading kernels/{}.cu for {arch}",
                    m.name()
                )))?;
            for k in m.kernels() {
                let func = module
                    .load_function(k.function)
                    .map_err(cuda_err(&format!("loading kernel {}", k.function)))?;
                typed[k.id as usize] = Some(func);
            }
            modules.push(module);
        }
        let kernels = typed
            .into_iter()
            .zip(KERNELS)
            .map(|(f, k)| f.ok_or_else(|| anyhow!("kernel {} was not loaded", k.function)))
            .collect::<Result<Vec<_>>>()?;
        let gpu = Gpu {
            ctx,
            stream,
            name,
            arch,
            sms,
            kernels,
            _modules: modules,
        };
        // The grouped GEMMs' pipelines take more than the default 48 KiB of shared memory.
        for (id, bytes) in Tile::large_shared() {
            gpu.allow_shared(id, bytes)?;
        }
        Ok(gpu)
    }

    /// The driver's CUDA version, e.g. "13.0"; None where the driver does not say.
    pub fn driver_version(&self) -> Option<String> {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: writes one int; the driver is loaded (the context is open).
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
            .then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// Launches a registered kernel with its argument struct, on the geometry the registry gives
    /// it (the first function of a struct several take: see `launch_fn`).
    pub fn launch<K: Kernel>(&self, args: K) -> Result<()> {
        self.launch_fn(K::FUNCTIONS[0], args)
    }

    /// Launches kernel `id`, which must take `K`.
    pub fn launch_fn<K: Kernel>(&self, id: KernelId, args: K) -> Result<()> {
        let info = &KERNELS[id as usize];
        if !K::FUNCTIONS.contains(&id) {
            bail!(
                "kernel {} takes {}, not {}",
                info.function,
                info.args.name,
                K::ARGS.name
            );
        }
        let grid = args.grid(self.sms);
        if grid.is_empty() {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.kernels[id as usize]);
        b.arg(&args);
        let cfg = LaunchConfig {
            grid_dim: grid.blocks,
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: grid.shared_bytes,
        };
        // SAFETY: the kernel takes exactly one `K` (the C struct is generated from it with its
        // layout asserted, and kernels' tests check the signature); every address in it refers
        // to a live allocation of the size the kernel indexes.
        unsafe { b.launch(cfg) }.map_err(cuda_err(&format!("launching {}", info.function)))?;
        Ok(())
    }

    /// Lets a registered kernel take `bytes` of dynamic shared memory (above 48 KB a kernel
    /// must be allowed explicitly).
    fn allow_shared(&self, id: KernelId, bytes: u32) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        self.kernels[id as usize]
            .set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(cuda_err(&format!(
                "allowing {} {bytes} bytes of shared memory",
                KERNELS[id as usize].function
            )))
    }

    /// A typed address of `buf` on this device's stream.
    pub fn ptr<T>(&self, buf: &CudaSlice<T>) -> DevPtr<T> {
        DevPtr::of(&self.stream, buf)
    }

    /// `ptr`, or NULL for `None`.
    pub fn ptr_opt<T>(&self, buf: Option<&CudaSlice<T>>) -> DevPtr<T> {
        DevPtr::of_opt(&self.stream, buf)
    }

    /// Allocates `n` elements (at least one), zeroed.
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            let bytes = n * std::mem::size_of::<T>();
            anyhow!(
                "out of GPU memory or CUDA error allocating {what} ({:.2} GiB): {e:?}",
                bytes as f64 / (1u64 << 30) as f64
            )
        })
    }

    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        host: &[T],
        what: &str,
    ) -> Result<CudaSlice<T>> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        self.stream
            .memcpy_htod(host, &mut d)
            .map_err(cuda_err(&format!("uploading {what}")))?;
        Ok(d)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        d: &CudaSlice<T>,
        len: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        self.download_at(d, 0, len, what)
    }

    /// Copies `len` elements starting at element `start` of `d` to the host.
    pub fn download_at<T: DeviceRepr + Default + Clone>(
        &self,
        d: &CudaSlice<T>,
        start: usize,
        len: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        if start + len > d.len() {
            bail!(
                "downloading {what}: {start}+{len} past the buffer's {}",
                d.len()
            );
        }
        let mut host = vec![T::default(); len];
        if len > 0 {
            self.stream
                .memcpy_dtoh(&d.slice(start..start + len), &mut host)
                .map_err(cuda_err(&format!("downloading {what}")))?;
        }
        self.sync(what)?;
        Ok(host)
    }

    /// Waits for the stream; a kernel fault shows here.
    pub fn sync(&self, what: &str) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err(&format!("running {what}")))
    }

    /// Fills `n` elements of 4 bytes at `p` with the bit pattern `value` (zeroing, ones, NaN
    /// poison).
    pub fn fill<T>(&self, p: DevPtr<T>, n: usize, value: u32) -> Result<()> {
        if std::mem::size_of::<T>() != 4 {
            bail!(
                "fill writes 32-bit words; the buffer's elements are {} bytes",
                std::mem::size_of::<T>()
            );
        }
        self.launch(FillArgs {
            out: p.cast::<u32>(),
            n: n as u64,
            value,
        })
    }

    /// A timing event recorded now on the stream.
    pub fn event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("recording an event"))
    }
}

/// Per-kernel event timings; `on == false` records nothing (the clean run).
pub struct Timer {
    on: bool,
    marks: Vec<(Stage, Option<u64>, CudaEvent, CudaEvent)>,
    open: Option<CudaEvent>,
}

impl Timer {
    pub fn new(on: bool) -> Timer {
        Timer {
            on,
            marks: Vec::new(),
            open: None,
        }
    }
    /// Starts a stage.
    pub fn start(&mut self, gpu: &Gpu) -> Result<()> {
        if self.on {
            self.open = Some(gpu.event()?);
        }
        Ok(())
    }
    /// Ends the stage started last.
    pub fn stop(&mut self, gpu: &Gpu, stage: Stage, bytes: Option<u64>) -> Result<()> {
        if let Some(start) = self.open.take() {
            let end = gpu.event()?;
            self.marks.push((stage, bytes, start, end));
        }
        Ok(())
    }
    /// Launches one kernel as a timed stage.
    pub fn launch<K: Kernel>(
        &mut self,
        gpu: &Gpu,
        stage: Stage,
        args: K,
        bytes: Option<u64>,
    ) -> Result<()> {
        self.start(gpu)?;
        gpu.launch(args)?;
        self.stop(gpu, stage, bytes)
    }
    /// Synchronizes and returns the stage times.
    pub fn finish(self, gpu: &Gpu) -> Result<Vec<KernelTiming>> {
        gpu.sync("the timed kernels")?;
        self.marks
            .into_iter()
            .map(|(stage, bytes, a, b)| {
                let ms = a
                    .elapsed_ms(&b)
                    .map_err(cuda_err(&format!("reading the time of {stage}")))?;
                Ok(KernelTiming {
                    stage,
                    us: ms as f64 * 1e3,
                    bytes,
                })
            })
            .collect::<Result<Vec<_>>>()
            .context("kernel timings")
    }
}
