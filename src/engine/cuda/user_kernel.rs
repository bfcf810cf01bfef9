//! A router kernel the user brings (docs/kernel-abi.md): a `.cu` file compiled by
//! NVRTC with the config as macros, or a `.so` with the two C entry points of
//! include/moescope_router.h. This module compiles or loads it (compiling needs no GPU), runs it
//! on the device with guard bands around its outputs and a timeout, and hands back what it wrote.
//!
//! Isolation: a fault inside the user's kernel poisons the CUDA context, so nothing of the
//! context is trusted after an error. `check --kernel` is its own process; in a live run the
//! failed step yields an error and no StepRecord, so a recorded session keeps every finished
//! step and nothing of the faulted one.
//!
//! Longer than most files: the ABI mirror, NVRTC with headers, the `.so` entry points and the
//! guarded run are one contract with include/moescope_router.h and change together.

use super::gpu::{cuda_err, Gpu};
use crate::engine::config::{MoeConfig, ScoringFunc};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The ABI version this moescope speaks (`MOESCOPE_ROUTER_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// The ABI header, given to NVRTC as `moescope_router.h`.
pub const HEADER: &str = include_str!("../../../include/moescope_router.h");
/// The `.cu` kernel's entry point and its declaration's symbol.
pub const CU_ENTRY: &str = "moescope_router";
const CU_INFO: &str = "moescope_router_info";
/// The `.so` entry points.
pub const SO_INFO: &str = "moescope_router_get_info";
pub const SO_LAUNCH: &str = "moescope_router_launch";
/// Elements of guard band before and after each output buffer.
pub const GUARD: usize = 4096;
/// Poison of the id buffer (as i32: negative, out of every range).
pub const POISON_ID: u32 = 0xDEAD_BEEF;
/// Poison of the weight buffer (a NaN with a payload no arithmetic produces).
pub const POISON_WEIGHT: u32 = 0x7FA5_A5A5;

/// `MoescopeRouterArgs`, field for field (a test checks the C layout through NVRTC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterArgs {
    pub abi_version: u32,
    pub struct_size: u32,
    pub logits: u64,
    pub bias: u64,
    pub shared_gate: u64,
    pub ids: u64,
    pub weights: u64,
    pub tokens: i64,
    pub logits_dtype: i32,
    pub n_experts: i32,
    pub n_group: i32,
    pub topk_group: i32,
    pub top_k: i32,
    pub n_shared: i32,
    pub out_stride: i32,
    pub scoring: i32,
    pub renormalize: i32,
    pub group_score: i32,
    pub routed_scaling_factor: f64,
}

// SAFETY: #[repr(C)] of integers, a float and device addresses, identical to the C struct.
unsafe impl cudarc::driver::DeviceRepr for RouterArgs {}

/// `MoescopeRouterInfo`: what the kernel declares about itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterInfo {
    pub abi_version: u32,
    pub conventions: u32,
    pub threads_per_block: u32,
    pub tokens_per_block: u32,
}

/// Logits as the kernel reads them: a path's router logits precision.
pub use crate::engine::paths::LogitsDtype;

/// The ABI's code of a logits precision (`MOESCOPE_DTYPE_*`).
fn dtype_code(dtype: LogitsDtype) -> i32 {
    match dtype {
        LogitsDtype::F32 => 0,
        LogitsDtype::Bf16 => 1,
    }
}

/// The conventions a kernel declares (`MOESCOPE_APPENDS_SHARED`, `MOESCOPE_RSF_IN_ROUTER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conventions {
    /// The kernel writes the S shared slots itself; else moescope appends them.
    pub appends_shared: bool,
    /// The routed weights include rsf and the shared slot carries 1; else the output is scaled
    /// by rsf afterwards and the shared slot carries 1/rsf.
    pub rsf_in_router: bool,
}

impl Conventions {
    const APPENDS_SHARED: u32 = 1;
    const RSF_IN_ROUTER: u32 = 2;

    /// The declared bit set; unknown bits are an error naming them.
    pub fn from_bits(bits: u32) -> Result<Conventions> {
        let unknown = bits & !(Self::APPENDS_SHARED | Self::RSF_IN_ROUTER);
        if unknown != 0 {
            bail!("unknown convention bits {unknown:#x} (ABI version {ABI_VERSION} knows 0x1 appends-shared and 0x2 rsf-in-router)");
        }
        Ok(Conventions {
            appends_shared: bits & Self::APPENDS_SHARED != 0,
            rsf_in_router: bits & Self::RSF_IN_ROUTER != 0,
        })
    }

    pub fn bits(self) -> u32 {
        (self.appends_shared as u32) * Self::APPENDS_SHARED
            + (self.rsf_in_router as u32) * Self::RSF_IN_ROUTER
    }

    /// Factor moescope applies to the summed slots afterwards.
    pub fn out_scale(self, rsf: f64) -> f64 {
        if self.rsf_in_router {
            1.0
        } else {
            rsf
        }
    }

    /// Weight the shared slot carries per unit of gate, before `out_scale`.
    pub fn shared_slot_weight(self, rsf: f64) -> f64 {
        1.0 / self.out_scale(rsf)
    }
}

/// The arguments of one launch, device pointers left 0 (the runner fills them).
pub fn args_for(cfg: &MoeConfig, tokens: usize, dtype: LogitsDtype) -> RouterArgs {
    RouterArgs {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<RouterArgs>() as u32,
        tokens: tokens as i64,
        logits_dtype: dtype_code(dtype),
        n_experts: cfg.n_routed_experts as i32,
        n_group: cfg.n_group as i32,
        topk_group: cfg.topk_group as i32,
        top_k: cfg.num_experts_per_tok as i32,
        n_shared: cfg.n_shared_experts as i32,
        out_stride: (cfg.num_experts_per_tok + cfg.n_shared_experts) as i32,
        scoring: (cfg.scoring_func == ScoringFunc::Softmax) as i32,
        renormalize: cfg.norm_topk_prob as i32,
        group_score: cfg.has_bias as i32,
        routed_scaling_factor: cfg.routed_scaling_factor,
        ..RouterArgs::default()
    }
}

/// The config as the macros a `.cu` is compiled with (docs/kernel-abi.md).
pub fn config_macros(cfg: &MoeConfig, dtype: LogitsDtype) -> Vec<(&'static str, String)> {
    let a = args_for(cfg, 0, dtype);
    vec![
        ("MOESCOPE_E", a.n_experts.to_string()),
        ("MOESCOPE_N_GROUP", a.n_group.to_string()),
        ("MOESCOPE_TOPK_GROUP", a.topk_group.to_string()),
        ("MOESCOPE_TOP_K", a.top_k.to_string()),
        ("MOESCOPE_N_SHARED", a.n_shared.to_string()),
        ("MOESCOPE_SCORING", a.scoring.to_string()),
        ("MOESCOPE_RENORMALIZE", a.renormalize.to_string()),
        ("MOESCOPE_GROUP_SCORE", a.group_score.to_string()),
        ("MOESCOPE_HAS_BIAS", (cfg.has_bias as i32).to_string()),
        ("MOESCOPE_LOGITS_DTYPE", a.logits_dtype.to_string()),
        ("MOESCOPE_RSF", format!("{:?}", cfg.routed_scaling_factor)),
    ]
}

/// Which way the kernel comes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelFile {
    Cu(PathBuf),
    So(PathBuf),
}

impl KernelFile {
    /// A `.cu` or `.so` path that exists; anything else is an error naming it.
    pub fn new(path: &Path) -> Result<KernelFile> {
        if !path.is_file() {
            bail!("kernel {}: no such file", path.display());
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => Ok(KernelFile::Cu(path.to_path_buf())),
            Some("so") => Ok(KernelFile::So(path.to_path_buf())),
            _ => bail!(
                "kernel {}: expected a .cu file (compiled by NVRTC) or a .so library",
                path.display()
            ),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            KernelFile::Cu(p) | KernelFile::So(p) => p,
        }
    }

    /// The file's name, as the views and reports show the path.
    pub fn name(&self) -> String {
        self.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path().display().to_string())
    }
}

/// A `.cu` compiled by NVRTC: the CUBIN to load and the declaration read from its PTX.
pub struct CompiledCu {
    pub cubin: Vec<u8>,
    pub info: RouterInfo,
}

/// Compiles a user's `.cu` for `arch` with the config as macros. No GPU is needed; a compile
/// error comes back as `FILE:LINE: error: ...` lines under one heading naming the kernel.
pub fn compile_cu(
    path: &Path,
    cfg: &MoeConfig,
    dtype: LogitsDtype,
    arch: &str,
) -> Result<CompiledCu> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("kernel {}: cannot read it", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        format!("--include-path={}", dir.display()),
    ];
    options.extend(
        config_macros(cfg, dtype)
            .into_iter()
            .map(|(k, v)| format!("-D{k}={v}")),
    );
    let (ptx, cubin) = nvrtc(&text, &path.display().to_string(), &options)
        .with_context(|| format!("kernel {}", path.display()))?;
    let info = info_from_ptx(&ptx).ok_or_else(|| {
        anyhow!(
            "kernel {}: no MOESCOPE_DECLARE_ROUTER(conventions, threads, tokens_per_block) declaration",
            path.display()
        )
    })?;
    check_info(&info, true).with_context(|| format!("kernel {}", path.display()))?;
    if !ptx.contains(&format!(".entry {CU_ENTRY}(")) {
        bail!(
            "kernel {}: no entry point `extern \"C\" __global__ void {CU_ENTRY}(const MoescopeRouterArgs a)`",
            path.display()
        );
    }
    Ok(CompiledCu { cubin, info })
}

/// Checks a declaration: the ABI version, known conventions and, for a `.cu`, a usable geometry.
pub fn check_info(info: &RouterInfo, launched_by_moescope: bool) -> Result<()> {
    if info.abi_version != ABI_VERSION {
        bail!(
            "written against router ABI version {}, moescope speaks version {ABI_VERSION}",
            info.abi_version
        );
    }
    Conventions::from_bits(info.conventions)?;
    if launched_by_moescope {
        let (threads, tpb) = (info.threads_per_block, info.tokens_per_block);
        if threads == 0 || threads > 1024 || tpb == 0 {
            bail!("launch geometry {threads} threads for {tpb} tokens per block: expected 1..=1024 threads and at least 1 token per block");
        }
    }
    Ok(())
}

/// `moescope_router_info`'s initializer in the PTX (`.b8 moescope_router_info[16] = {1, 0, ..}`;
/// trailing zero bytes are left out by NVRTC).
fn info_from_ptx(ptx: &str) -> Option<RouterInfo> {
    let line = ptx
        .lines()
        .find(|l| l.contains(&format!("{CU_INFO}[16]")))?;
    let init = line.split('{').nth(1)?.split('}').next()?;
    let mut bytes = [0u8; 16];
    for (i, b) in init.split(',').enumerate() {
        *bytes.get_mut(i)? = b.trim().parse().ok()?;
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    Some(RouterInfo {
        abi_version: word(0),
        conventions: word(1),
        threads_per_block: word(2),
        tokens_per_block: word(3),
    })
}

/// NVRTC `text` (named `name` in messages) with the ABI header available as
/// `moescope_router.h`; returns (PTX, CUBIN).
pub fn nvrtc(text: &str, name: &str, options: &[String]) -> Result<(String, Vec<u8>)> {
    super::loader::nvrtc_available().map_err(|e| anyhow!(e))?;
    use cudarc::nvrtc::sys;
    let src = CString::new(text).map_err(|_| anyhow!("the source holds a NUL byte"))?;
    let cname = CString::new(name).map_err(|_| anyhow!("bad file name"))?;
    let header = CString::new(HEADER).map_err(|_| anyhow!("header holds a NUL byte"))?;
    let header_name = c"moescope_router.h";
    let headers = [header.as_ptr()];
    let names = [header_name.as_ptr()];
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a live NUL-terminated string for the call; NVRTC copies them.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            cname.as_ptr(),
            1,
            headers.as_ptr(),
            names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| anyhow!("NVRTC could not create the program: {e:?}"))?;
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| anyhow!("bad NVRTC option {o}")))
        .collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: prog was created above; the options outlive the call.
    let compiled =
        unsafe { sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let out = if compiled == sys::nvrtcResult::NVRTC_SUCCESS {
        outputs(prog)
    } else {
        Err(anyhow!(
            "does not compile (NVRTC):\n{}",
            file_line_log(&program_log(prog))
        ))
    };
    // SAFETY: created above and destroyed once.
    let _ = unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    return out;

    fn program_log(prog: sys::nvrtcProgram) -> String {
        let mut size = 0usize;
        // SAFETY: prog is live; the buffer has the size NVRTC reports.
        if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        let mut buf = vec![0u8; size.max(1)];
        unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut std::ffi::c_char) };
        CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn outputs(prog: sys::nvrtcProgram) -> Result<(String, Vec<u8>)> {
        let (mut ptx_size, mut cubin_size) = (0usize, 0usize);
        // SAFETY: prog compiled; the buffers have the sizes NVRTC reports.
        unsafe {
            sys::nvrtcGetPTXSize(prog, &mut ptx_size).result()?;
            sys::nvrtcGetCUBINSize(prog, &mut cubin_size).result()?;
        }
        let mut ptx = vec![0u8; ptx_size.max(1)];
        let mut cubin = vec![0u8; cubin_size];
        unsafe {
            sys::nvrtcGetPTX(prog, ptx.as_mut_ptr() as *mut std::ffi::c_char).result()?;
            sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut std::ffi::c_char).result()?;
        }
        let ptx = CStr::from_bytes_until_nul(&ptx)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cubin.is_empty() {
            bail!("NVRTC returned an empty CUBIN");
        }
        Ok((ptx, cubin))
    }
}

/// NVRTC writes `file(12): error: ..`; compilers and editors read `file:12: error: ..`.
pub fn file_line_log(log: &str) -> String {
    log.lines()
        .map(|l| match l.find("): ") {
            Some(close) => match l[..close].rfind('(') {
                Some(open)
                    if l[open + 1..close].chars().all(|c| c.is_ascii_digit())
                        && close > open + 1 =>
                {
                    format!("{}:{}:{}", &l[..open], &l[open + 1..close], &l[close + 2..])
                }
                _ => l.to_string(),
            },
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type SoInfoFn = unsafe extern "C" fn() -> *const RouterInfo;
type SoLaunchFn = unsafe extern "C" fn(*const RouterArgs, *mut std::ffi::c_void) -> i32;

/// A `.so` kernel, loaded and its declaration checked.
pub struct SoKernel {
    lib: libloading::Library,
    pub info: RouterInfo,
}

impl SoKernel {
    pub fn open(path: &Path) -> Result<SoKernel> {
        let shown = path.display();
        // A bare file name would be looked up on the loader path, not here.
        let full = path
            .canonicalize()
            .with_context(|| format!("kernel {shown}: cannot resolve the path"))?;
        // SAFETY: loading a library runs its initialisers; the user asked for this library.
        let lib = unsafe { libloading::Library::new(&full) }
            .map_err(|e| anyhow!("kernel {shown}: cannot load the library: {e}"))?;
        // SAFETY: the symbol's type is the one the ABI header declares.
        let info_fn: libloading::Symbol<SoInfoFn> = unsafe { lib.get(SO_INFO.as_bytes()) }
            .map_err(|_| {
                anyhow!(
                    "kernel {shown}: no entry point `const MoescopeRouterInfo* {SO_INFO}(void)`"
                )
            })?;
        let p = unsafe { info_fn() };
        if p.is_null() {
            bail!("kernel {shown}: {SO_INFO} returned NULL");
        }
        // SAFETY: a non-null pointer to the library's static declaration.
        let info = unsafe { *p };
        unsafe { lib.get::<SoLaunchFn>(SO_LAUNCH.as_bytes()) }.map_err(|_| {
            anyhow!("kernel {shown}: no entry point `int {SO_LAUNCH}(const MoescopeRouterArgs*, void* stream)`")
        })?;
        check_info(&info, false).with_context(|| format!("kernel {shown}"))?;
        Ok(SoKernel { lib, info })
    }

    fn launch(&self, gpu: &Gpu, args: &RouterArgs) -> Result<i32> {
        // SAFETY: checked to exist in `open`, with the ABI's type.
        let f: libloading::Symbol<SoLaunchFn> = unsafe { self.lib.get(SO_LAUNCH.as_bytes()) }?;
        gpu.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the context"))?;
        // SAFETY: args lives across the call; the stream is moescope's, on the primary context.
        Ok(unsafe { f(args, gpu.stream.cu_stream() as *mut std::ffi::c_void) })
    }
}

/// A user's kernel ready to launch on one device.
pub struct UserKernel {
    pub file: KernelFile,
    pub conventions: Conventions,
    pub timeout: Duration,
    launch: Launch,
}

enum Launch {
    Cu {
        func: cudarc::driver::CudaFunction,
        info: RouterInfo,
        _module: std::sync::Arc<cudarc::driver::CudaModule>,
    },
    So(SoKernel),
}

/// The router's inputs on the device (addresses; 0 = none).
#[derive(Clone, Copy, Debug)]
pub struct DeviceInputs {
    pub tokens: usize,
    pub dtype: LogitsDtype,
    /// [T × E] in `dtype`.
    pub logits: u64,
    /// [E] f32, or 0.
    pub bias: u64,
    /// [T] f32 shared gate, or 0.
    pub gate: u64,
}

/// What one run of the kernel left in its outputs.
#[derive(Clone, Debug, Default)]
pub struct RawOutput {
    /// [T × (K+S)] as written (a kernel that leaves the shared columns to moescope: see
    /// [`append_shared`]).
    pub ids: Vec<i32>,
    pub weights: Vec<f32>,
    /// Guard-band elements the kernel overwrote: (buffer, offset from the buffer's start; negative
    /// before it).
    pub guard_hits: Vec<(&'static str, i64)>,
}

impl UserKernel {
    /// Compiles (`.cu`) or loads (`.so`) the kernel for this device and config.
    pub fn open(
        gpu: &Gpu,
        file: KernelFile,
        cfg: &MoeConfig,
        dtype: LogitsDtype,
    ) -> Result<UserKernel> {
        let (launch, info) = match &file {
            KernelFile::Cu(path) => {
                let c = compile_cu(path, cfg, dtype, &gpu.arch)?;
                let module = gpu
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin))
                    .map_err(cuda_err(&format!("loading kernel {}", path.display())))?;
                let func = module.load_function(CU_ENTRY).map_err(cuda_err(&format!(
                    "loading {CU_ENTRY} of {}",
                    path.display()
                )))?;
                (
                    Launch::Cu {
                        func,
                        info: c.info,
                        _module: module,
                    },
                    c.info,
                )
            }
            KernelFile::So(path) => {
                let so = SoKernel::open(path)?;
                let info = so.info;
                (Launch::So(so), info)
            }
        };
        Ok(UserKernel {
            conventions: Conventions::from_bits(info.conventions)?,
            file,
            timeout: Duration::from_secs(10),
            launch,
        })
    }

    /// Launches once on the stream (no wait). `args` carries every pointer.
    pub fn launch(&self, gpu: &Gpu, args: &RouterArgs) -> Result<()> {
        let name = self.file.name();
        match &self.launch {
            Launch::Cu { func, info, .. } => {
                let blocks = (args.tokens as u64).div_ceil(info.tokens_per_block as u64);
                if blocks == 0 {
                    return Ok(());
                }
                let cfg = cudarc::driver::LaunchConfig {
                    grid_dim: (blocks as u32, 1, 1),
                    block_dim: (info.threads_per_block, 1, 1),
                    shared_mem_bytes: 0,
                };
                use cudarc::driver::PushKernelArg;
                let mut b = gpu.stream.launch_builder(func);
                b.arg(args);
                // SAFETY: the entry point takes one MoescopeRouterArgs by value (the ABI); every
                // address in it is a live allocation of the size the ABI states.
                unsafe { b.launch(cfg) }.map_err(cuda_err(&format!("launching kernel {name}")))?;
            }
            Launch::So(so) => {
                let rc = so.launch(gpu, args)?;
                if rc != 0 {
                    bail!("kernel {name}: {SO_LAUNCH} returned {rc}");
                }
            }
        }
        Ok(())
    }

    /// Waits for the stream at most `timeout`; a fault or a hang names the kernel.
    pub fn wait(&self, gpu: &Gpu) -> Result<()> {
        let name = self.file.name();
        let done = gpu.event()?;
        let start = Instant::now();
        loop {
            match done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) if start.elapsed() < self.timeout => std::thread::sleep(Duration::from_micros(200)),
                Ok(false) => bail!(
                    "kernel {name} did not finish within {} s (the device stays busy until it does; moescope stops here)",
                    self.timeout.as_secs()
                ),
                Err(e) => bail!("kernel {name} raised a CUDA error: {e:?} (the CUDA context is lost; nothing after it was recorded)"),
            }
        }
    }

    /// Runs the kernel once on device logits with guard bands around poisoned outputs, waits
    /// (with the timeout), and returns what it wrote.
    pub fn run_guarded(
        &self,
        gpu: &Gpu,
        cfg: &MoeConfig,
        input: &DeviceInputs,
    ) -> Result<RawOutput> {
        let (tokens, dtype) = (input.tokens, input.dtype);
        let stride = cfg.num_experts_per_tok + cfg.n_shared_experts;
        let n = tokens * stride;
        let ids = gpu.alloc::<u32>(n + 2 * GUARD, "user kernel ids")?;
        let weights = gpu.alloc::<f32>(n + 2 * GUARD, "user kernel weights")?;
        let (pi, pw) = (gpu.ptr(&ids), gpu.ptr(&weights));
        gpu.fill(pi, n + 2 * GUARD, POISON_ID)?;
        gpu.fill(pw, n + 2 * GUARD, POISON_WEIGHT)?;
        let args = RouterArgs {
            logits: input.logits,
            bias: input.bias,
            shared_gate: input.gate,
            ids: pi.at(GUARD).addr(),
            weights: pw.at(GUARD).addr(),
            ..args_for(cfg, tokens, dtype)
        };
        gpu.sync("poisoning the user kernel's outputs")?;
        self.launch(gpu, &args)?;
        self.wait(gpu)?;
        let ids_all: Vec<u32> = gpu.download(&ids, n + 2 * GUARD, "user kernel ids")?;
        let w_all: Vec<f32> = gpu.download(&weights, n + 2 * GUARD, "user kernel weights")?;
        let mut out = RawOutput {
            ids: ids_all[GUARD..GUARD + n]
                .iter()
                .map(|&v| v as i32)
                .collect(),
            weights: w_all[GUARD..GUARD + n].to_vec(),
            guard_hits: Vec::new(),
        };
        guard_hits(&ids_all, n, |v| v == POISON_ID, "ids", &mut out.guard_hits);
        guard_hits(
            &w_all,
            n,
            |v| v.to_bits() == POISON_WEIGHT,
            "weights",
            &mut out.guard_hits,
        );
        Ok(out)
    }
}

impl UserKernel {
    /// After a launch into the layer's own slot buffers (path C): waits (timeout, faults named),
    /// then checks every id is a slot before moescope's align reads it, and appends the shared
    /// slots where the kernel leaves them. `gate`: the step's shared gate on the host, if any.
    pub fn finish_in_layer(
        &self,
        gpu: &Gpu,
        cfg: &MoeConfig,
        tokens: usize,
        ids: &cudarc::driver::CudaSlice<u32>,
        weights: &cudarc::driver::CudaSlice<f32>,
        gate: Option<&[f32]>,
    ) -> Result<()> {
        self.wait(gpu)?;
        let stride = cfg.num_experts_per_tok + cfg.n_shared_experts;
        let n = tokens * stride;
        let slots = cfg.n_routed_experts + cfg.n_shared_experts;
        let host_ids: Vec<u32> = gpu.download(ids, n, "path C slot ids")?;
        if let Some(i) = host_ids.iter().position(|&id| id as usize >= slots) {
            bail!(
                "kernel {} wrote slot id {} for token {} (column {}), outside [0, {slots}): path C stops before moescope's align reads it",
                self.file.name(),
                host_ids[i] as i32,
                i / stride,
                i % stride
            );
        }
        if self.conventions.appends_shared || cfg.n_shared_experts == 0 {
            return Ok(());
        }
        let mut out = RawOutput {
            ids: host_ids.iter().map(|&v| v as i32).collect(),
            weights: gpu.download(weights, n, "path C slot weights")?,
            guard_hits: Vec::new(),
        };
        append_shared(cfg, self.conventions, tokens, gate, &mut out);
        let back: Vec<u32> = out.ids.iter().map(|&v| v as u32).collect();
        // SAFETY: both buffers hold at least `n` elements (checked by the downloads above); the
        // copies are ordered on the stream and waited for before the host vectors drop.
        unsafe {
            let s = gpu.stream.cu_stream();
            cudarc::driver::result::memcpy_htod_async(gpu.ptr(ids).addr(), &back, s)
                .map_err(cuda_err("writing path C's shared slots"))?;
            cudarc::driver::result::memcpy_htod_async(gpu.ptr(weights).addr(), &out.weights, s)
                .map_err(cuda_err("writing path C's shared weights"))?;
        }
        gpu.sync("path C's shared slots")
    }
}

/// Offsets of overwritten guard elements (first and last of each side, at most).
fn guard_hits<T: Copy>(
    all: &[T],
    n: usize,
    poisoned: impl Fn(T) -> bool,
    buf: &'static str,
    hits: &mut Vec<(&'static str, i64)>,
) {
    let before = (0..GUARD)
        .filter(|&i| !poisoned(all[i]))
        .map(|i| i as i64 - GUARD as i64);
    let after = (0..GUARD)
        .filter(|&i| !poisoned(all[GUARD + n + i]))
        .map(|i| (n + i) as i64);
    for side in [before.collect::<Vec<_>>(), after.collect::<Vec<_>>()] {
        if let (Some(&first), Some(&last)) = (side.first(), side.last()) {
            hits.push((buf, first));
            if last != first {
                hits.push((buf, last));
            }
        }
    }
}

/// moescope's own shared-slot append for a kernel that leaves it (columns K..K+S-1: id E+j,
/// weight per the declared rsf placement, × gate).
pub fn append_shared(
    cfg: &MoeConfig,
    conv: Conventions,
    tokens: usize,
    gate: Option<&[f32]>,
    out: &mut RawOutput,
) {
    let (k, s, e) = (
        cfg.num_experts_per_tok,
        cfg.n_shared_experts,
        cfg.n_routed_experts,
    );
    let w = conv.shared_slot_weight(cfg.routed_scaling_factor);
    for t in 0..tokens {
        let g = gate.and_then(|g| g.get(t)).copied().unwrap_or(1.0) as f64;
        for j in 0..s {
            let i = t * (k + s) + k + j;
            out.ids[i] = (e + j) as i32;
            out.weights[i] = (w * g) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_args_struct_has_the_c_layout() {
        assert_eq!(std::mem::size_of::<RouterArgs>(), 104);
        assert_eq!(std::mem::offset_of!(RouterArgs, tokens), 48);
        assert_eq!(std::mem::offset_of!(RouterArgs, routed_scaling_factor), 96);
        assert_eq!(std::mem::size_of::<RouterInfo>(), 16);
    }

    #[test]
    fn nvrtc_lines_become_file_colon_line() {
        let log = "k/a.cu(12): error: identifier \"x\" is undefined\n    x;\nplain (1) line";
        let out = file_line_log(log);
        assert!(out.starts_with("k/a.cu:12: error: identifier"), "{out}");
        assert!(out.ends_with("plain (1) line"));
    }

    #[test]
    fn the_declaration_is_read_from_ptx() {
        let ptx = ".global .align 4 .b8 moescope_router_info[16] = {1, 0, 0, 0, 3, 0, 0, 0, 128, 0, 0, 0, 4};";
        let info = info_from_ptx(ptx).unwrap();
        assert_eq!(
            info,
            RouterInfo {
                abi_version: 1,
                conventions: 3,
                threads_per_block: 128,
                tokens_per_block: 4
            }
        );
        assert!(info_from_ptx(".global .b8 other[16] = {1};").is_none());
    }

    #[test]
    fn conventions_round_trip_and_reject_unknown_bits() {
        for bits in 0..4 {
            assert_eq!(Conventions::from_bits(bits).unwrap().bits(), bits);
        }
        assert!(Conventions::from_bits(4).is_err());
        let c = Conventions::from_bits(0).unwrap();
        assert_eq!(c.out_scale(2.5), 2.5);
        assert!((c.shared_slot_weight(2.5) - 0.4).abs() < 1e-12);
    }
}
