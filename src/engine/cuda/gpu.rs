//! The device: context, stream, loaded kernels, launches and event timing.
//!
//! Everything runs on one stream, so cudarc's per-buffer event tracking is switched off (it would
//! add event records between launches and into the timings) and kernels take device addresses
//! (`kernels::DevPtr`) inside their argument structs.

use super::kernels::{DevPtr, FillArgs, Kernel, Module, KERNELS};
use super::loader;
use crate::engine::step::{KernelTiming, Stage};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// One kernel argument, by the C type the kernel declares.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (0 for a null pointer).
    Ptr(u64),
    U64(u64),
    I32(i32),
    F32(f32),
    F64(f64),
}

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
    /// Kernels not yet in the registry, by name.
    funcs: HashMap<&'static str, CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
}

/// Launch geometry: blocks, threads per block, dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: (u32, u32, u32),
    pub threads: u32,
    pub shared_bytes: u32,
}

impl Grid {
    pub fn x(blocks: u32, threads: u32) -> Grid {
        Grid {
            blocks: (blocks, 1, 1),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn xy(x: u32, y: u32, threads: u32) -> Grid {
        Grid {
            blocks: (x, y, 1),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn xyz(x: u32, y: u32, z: u32, threads: u32) -> Grid {
        Grid {
            blocks: (x, y, z),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn with_shared(self, bytes: u32) -> Grid {
        Grid {
            shared_bytes: bytes,
            ..self
        }
    }
    fn is_empty(&self) -> bool {
        self.blocks.0 == 0 || self.blocks.1 == 0 || self.blocks.2 == 0
    }
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
        let arch = format!("sm_{major}{minor}");
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("reading the multiprocessor count"))? as u32;
        let mut funcs = HashMap::new();
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
            for k in KERNELS.iter().filter(|k| k.module == m) {
                let func = module
                    .load_function(k.function)
                    .map_err(cuda_err(&format!("loading kernel {}", k.function)))?;
                typed[k.id as usize] = Some(func);
            }
            for &f in loader::legacy_functions(m) {
                let func = module
                    .load_function(f)
                    .map_err(cuda_err(&format!("loading kernel {f}")))?;
                funcs.insert(f, func);
            }
            modules.push(module);
        }
        let kernels = typed
            .into_iter()
            .zip(KERNELS)
            .map(|(f, k)| f.ok_or_else(|| anyhow!("kernel {} was not loaded", k.function)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpu {
            ctx,
            stream,
            name,
            arch,
            sms,
            kernels,
            funcs,
            _modules: modules,
        })
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// Launches a registered kernel with its argument struct.
    pub fn launch<K: Kernel>(&self, grid: Grid, args: K) -> Result<()> {
        if grid.is_empty() {
            return Ok(());
        }
        let f = &self.kernels[K::INFO.id as usize];
        let mut b = self.stream.launch_builder(f);
        b.arg(&args);
        let cfg = LaunchConfig {
            grid_dim: grid.blocks,
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: grid.shared_bytes,
        };
        // SAFETY: the kernel takes exactly one `K` (the C struct is generated from it, and
        // kernels.rs's test checks the signature); every address in it refers to a live
        // allocation of the size the kernel indexes.
        unsafe { b.launch(cfg) }.map_err(cuda_err(&format!("launching {}", K::INFO.function)))?;
        Ok(())
    }

    /// Lets a registered kernel take `bytes` of dynamic shared memory (above 48 KB a kernel
    /// must be allowed explicitly).
    pub fn allow_shared<K: Kernel>(&self, bytes: u32) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        self.kernels[K::INFO.id as usize]
            .set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(cuda_err(&format!(
                "allowing {} {bytes} bytes of shared memory",
                K::INFO.function
            )))
    }

    /// A typed address of `buf` on this device's stream.
    pub fn ptr<T>(&self, buf: &CudaSlice<T>) -> DevPtr<T> {
        DevPtr::of(&self.stream, buf)
    }

    /// Grid of a grid-stride kernel over `n` items: enough blocks to fill the device.
    pub fn stride(&self, n: usize, threads: u32) -> Grid {
        let (x, _) = self.stride_grid(n, threads);
        Grid::x(x, threads)
    }

    /// Launches kernel `name` (not yet in the registry) on the stream.
    pub fn launch_raw(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        self.launch_raw3(name, (grid.0, grid.1, 1), block, shared, args)
    }

    /// Launches kernel `name` (not yet in the registry) on a 3-D grid.
    pub fn launch_raw3(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| anyhow!("kernel {name} is not loaded"))?;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: every kernel's argument list is built to match its C signature at the call
        // site, and every pointer refers to a live allocation of the size the kernel indexes.
        unsafe { b.launch(cfg) }.map_err(cuda_err(&format!("launching {name}")))?;
        Ok(())
    }

    /// Grid of a grid-stride kernel over `n` items: enough blocks to fill the device.
    pub fn stride_grid(&self, n: usize, block: u32) -> (u32, u32) {
        let want = n.div_ceil(block as usize).max(1);
        (want.min(self.sms as usize * 16) as u32, 1)
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
        let out = p.cast::<u32>();
        self.launch(
            self.stride(n, 256),
            FillArgs {
                out,
                n: n as u64,
                value,
            },
        )
    }

    /// A timing event recorded now on the stream.
    pub fn event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("recording an event"))
    }
}

/// The raw device address of a buffer (one stream, no tracking: nothing to synchronize).
pub fn ptr<T>(gpu: &Gpu, s: &CudaSlice<T>) -> u64 {
    let (p, _sync) = s.device_ptr(&gpu.stream);
    p
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
    /// Launches one kernel (256 threads a block, no dynamic shared memory) as a timed stage
    /// of the same name.
    pub fn launch(
        &mut self,
        gpu: &Gpu,
        stage: Stage,
        grid: (u32, u32),
        args: &[Arg],
        bytes: Option<u64>,
    ) -> Result<()> {
        self.start(gpu)?;
        gpu.launch_raw(stage.name(), grid, 256, 0, args)?;
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
