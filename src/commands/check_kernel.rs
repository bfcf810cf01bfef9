//! `moescope check --kernel FILE`: a user's router kernel as a CI gate (docs/kernel-abi.md).
//!
//! A `.cu` is compiled first, before any GPU is opened, so a compile error shows with file:line
//! on any machine. Then per config (the preset, or every preset and a 512-expert shape with
//! `--all`): the golden files, random and adversarial cases (engine::kernel_check), each run with
//! guard bands and a timeout and judged on the CPU; the contract verdict; and the kernel's time
//! against moescope's fused router. Exit status non-zero on any failure (near ties only with
//! `--strict`). A fault inside the kernel ends this process with a message naming it; nothing
//! else shares its CUDA context.

use crate::engine::config::{MoeConfig, PRESET_NAMES};
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::kernels::DevPtr;
use crate::engine::cuda::router::{self, RouterIo, RouterShape};
use crate::engine::cuda::user_kernel::{
    self, append_shared, Conventions, DeviceInputs, KernelFile, LogitsDtype, UserKernel,
};
use crate::engine::inputs::tensor_to_f32;
use crate::engine::kernel_check::{self, Case, CaseReport, FailClass, FailStage, Finding};
use crate::engine::spec::{LayerSource, LayerSpec};
use anyhow::{anyhow, bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Token counts of the timing, and calls per timed batch.
const TIMING_TOKENS: &[usize] = &[1, 512, 8192, 40000];
const TIMED_CALLS: usize = 50;

/// What `check --kernel` was asked (built by `check` from its flags).
pub struct KernelCheck {
    pub kernel: PathBuf,
    /// The layer of `--preset`/`--config` (ignored with `all`).
    pub layer: LayerSpec,
    pub all: bool,
    pub golden: PathBuf,
    pub json: Option<PathBuf>,
    pub force: bool,
    pub strict: bool,
}

/// One config's results.
#[derive(Serialize)]
struct ConfigReport {
    config: String,
    cases: Vec<CaseReport>,
    timing: Vec<Timing>,
}

/// The kernel's time per call against moescope's fused router, same method, same inputs.
#[derive(Serialize)]
struct Timing {
    tokens: usize,
    kernel_us: f64,
    moescope_fused_us: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    device: String,
    conventions: Conventions,
    strict: bool,
    configs: Vec<ConfigReport>,
    failed_cases: usize,
}

/// The configs `check --kernel` runs: one, or every preset and a 512-expert DeepSeek-V3 shape.
fn configs(args: &KernelCheck) -> Result<Vec<MoeConfig>> {
    if !args.all {
        return Ok(vec![args.layer.base_config()?]);
    }
    let mut v = PRESET_NAMES
        .iter()
        .map(|p| {
            LayerSpec {
                source: LayerSource::Preset(p.to_string()),
                ..args.layer.clone()
            }
            .base_config()
        })
        .collect::<Result<Vec<_>>>()?;
    let e512 = MoeConfig {
        name: "deepseek-v3-e512".to_string(),
        n_routed_experts: 512,
        ..MoeConfig::preset("deepseek-v3")?
    };
    e512.validate()?;
    v.push(e512);
    Ok(v)
}

pub fn run(args: &KernelCheck) -> Result<()> {
    let file = KernelFile::new(&args.kernel)?;
    let configs = configs(args)?;
    // A .cu compiles and a .so's entry points are checked before any GPU is needed, so those
    // errors show on any machine.
    match &file {
        KernelFile::Cu(path) => {
            user_kernel::compile_cu(path, &configs[0], LogitsDtype::F32, "sm_90")?;
        }
        KernelFile::So(path) => {
            user_kernel::SoKernel::open(path)?;
        }
    }
    let gpu = Gpu::open().with_context(|| {
        format!(
            "check --kernel {}: running the kernel needs a CUDA device",
            file.name()
        )
    })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::rng().random());
    let mut reports = Vec::new();
    let mut conventions = Conventions::default();
    println!("check --kernel {} on {}", file.name(), gpu.describe());
    for cfg in &configs {
        let r = check_config(&gpu, &file, cfg, args, &mut rng)?;
        conventions = r.1;
        reports.push(r.0);
    }
    let failed: usize = reports
        .iter()
        .flat_map(|r| &r.cases)
        .filter(|c| c.failed(args.strict))
        .count();
    let total: usize = reports.iter().map(|r| r.cases.len()).sum();
    let report = Report {
        kernel: file.path().display().to_string(),
        device: gpu.describe(),
        conventions,
        strict: args.strict,
        configs: reports,
        failed_cases: failed,
    };
    if let Some(out) = &args.json {
        write_json(out, &report, args.force)?;
    }
    println!("{total} cases, {failed} failed");
    if failed > 0 {
        bail!("kernel {} failed {failed} of {total} cases", file.name());
    }
    Ok(())
}

/// Every case of one config, judged and printed, and the timing.
fn check_config(
    gpu: &Gpu,
    file: &KernelFile,
    cfg: &MoeConfig,
    args: &KernelCheck,
    rng: &mut impl Rng,
) -> Result<(ConfigReport, Conventions)> {
    let f32_kernel = UserKernel::open(gpu, file.clone(), cfg, LogitsDtype::F32)?;
    let bf16_kernel = UserKernel::open(gpu, file.clone(), cfg, LogitsDtype::Bf16)?;
    let conv = f32_kernel.conventions;
    println!(
        "\n{}: E={} groups {}/{} top-{} + {} shared, rsf {}; the kernel declares {}",
        cfg.name,
        cfg.n_routed_experts,
        cfg.topk_group,
        cfg.n_group,
        cfg.num_experts_per_tok,
        cfg.n_shared_experts,
        cfg.routed_scaling_factor,
        describe_conventions(conv)
    );
    let mut cases = golden_cases(&args.golden, cfg)?;
    cases.extend(kernel_check::cases(cfg, rng, true));
    let mut reports = Vec::new();
    for case in &cases {
        let k = match case.dtype {
            LogitsDtype::F32 => &f32_kernel,
            LogitsDtype::Bf16 => &bf16_kernel,
        };
        let out = run_case(gpu, k, cfg, case)?;
        let rep = kernel_check::judge(cfg, conv, case, &out);
        print_case(&rep, args.strict);
        reports.push(rep);
    }
    let timing = time_kernel(gpu, &f32_kernel, cfg, rng)?;
    Ok((
        ConfigReport {
            config: cfg.name.clone(),
            cases: reports,
            timing,
        },
        conv,
    ))
}

fn describe_conventions(c: Conventions) -> String {
    format!(
        "{}, {}",
        if c.appends_shared {
            "appends the shared slots"
        } else {
            "leaves the shared slots to moescope"
        },
        if c.rsf_in_router {
            "rsf in the router weights"
        } else {
            "rsf on the output"
        }
    )
}

/// Uploads a case's inputs, runs the kernel guarded, and completes the shared columns where the
/// kernel leaves them.
fn run_case(
    gpu: &Gpu,
    k: &UserKernel,
    cfg: &MoeConfig,
    case: &Case,
) -> Result<user_kernel::RawOutput> {
    let logits = DeviceLogits::upload(gpu, case)?;
    let bias = case
        .bias
        .as_ref()
        .map(|b| gpu.upload(b, "check bias"))
        .transpose()?;
    let gate = case
        .gate
        .as_ref()
        .map(|g| gpu.upload(g, "check gate"))
        .transpose()?;
    let input = DeviceInputs {
        tokens: case.tokens,
        dtype: case.dtype,
        logits: logits.addr(gpu),
        bias: bias.as_ref().map_or(0, |b| gpu.ptr(b).addr()),
        gate: gate.as_ref().map_or(0, |g| gpu.ptr(g).addr()),
    };
    let mut out = k
        .run_guarded(gpu, cfg, &input)
        .with_context(|| format!("{} case {}", cfg.name, case.name))?;
    if !k.conventions.appends_shared {
        append_shared(
            cfg,
            k.conventions,
            case.tokens,
            case.gate.as_deref(),
            &mut out,
        );
    }
    Ok(out)
}

/// A case's logits on the device, in the kernel's dtype.
enum DeviceLogits {
    F32(cudarc::driver::CudaSlice<f32>),
    Bf16(cudarc::driver::CudaSlice<u16>),
}

impl DeviceLogits {
    fn upload(gpu: &Gpu, case: &Case) -> Result<DeviceLogits> {
        Ok(match case.dtype {
            LogitsDtype::F32 => DeviceLogits::F32(gpu.upload(&case.logits, "check logits")?),
            LogitsDtype::Bf16 => {
                let bits: Vec<u16> = case
                    .logits
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                DeviceLogits::Bf16(gpu.upload(&bits, "check logits")?)
            }
        })
    }
    fn addr(&self, gpu: &Gpu) -> u64 {
        match self {
            DeviceLogits::F32(b) => gpu.ptr(b).addr(),
            DeviceLogits::Bf16(b) => gpu.ptr(b).addr(),
        }
    }
}

/// The golden routing files of this config's preset, as cases.
fn golden_cases(dir: &Path, cfg: &MoeConfig) -> Result<Vec<Case>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        println!("golden files: {} not found; skipped", dir.display());
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
            n.starts_with(&format!("{}-", cfg.name)).then_some(n)
        })
        .collect();
    names.sort();
    let mut cases = Vec::new();
    for name in names {
        let json_path = dir.join(format!("{name}.json"));
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&json_path)
                .with_context(|| format!("cannot read {}", json_path.display()))?,
        )
        .with_context(|| format!("golden file {}", json_path.display()))?;
        if meta["preset"].as_str() != Some(cfg.name.as_str()) {
            continue;
        }
        let st_path = dir.join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&st_path)
            .with_context(|| format!("cannot read {}", st_path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("golden file {}", st_path.display()))?;
        let logits = tensor_to_f32("router_logits", &st.tensor("router_logits")?)?;
        let bias = match st.tensor("e_score_correction_bias") {
            Ok(v) if cfg.has_bias => Some(tensor_to_f32("e_score_correction_bias", &v)?),
            _ => None,
        };
        let dtype = if meta["logits_dtype"].as_str() == Some("BF16") {
            LogitsDtype::Bf16
        } else {
            LogitsDtype::F32
        };
        let label = format!("golden {name}");
        cases.push(Case::given(cfg, &label, logits, bias, dtype));
    }
    Ok(cases)
}

fn stage_name(s: FailStage) -> &'static str {
    match s {
        FailStage::Outputs => "outputs",
        FailStage::GroupSelection => "group selection",
        FailStage::ExpertSelection => "expert selection",
        FailStage::Weights => "weights",
        FailStage::SharedSlot => "shared slot",
        FailStage::Scaling => "scaling",
    }
}

fn class_name(c: FailClass) -> &'static str {
    match c {
        FailClass::TieRule => "tie-rule difference",
        FailClass::NearTie => "near tie (rounding)",
        FailClass::RealError => "real error",
    }
}

/// One finding in words.
fn describe(f: &Finding) -> String {
    match f {
        Finding::GuardWritten { buffer, offset } => {
            format!("wrote {buffer}[{offset}], outside its output buffer")
        }
        Finding::Unwritten { column } => format!("column {column} left unwritten"),
        Finding::IdOutOfRange { column, id, limit } => {
            format!("column {column} holds id {id}, outside [0, {limit})")
        }
        Finding::Duplicate { id } => format!("id {id} twice"),
        Finding::SharedIdInRoutedColumn { column, id } => {
            format!("routed column {column} holds the shared slot id {id}")
        }
        Finding::WrongSharedColumn {
            column,
            id,
            expected,
        } => format!("shared column {column} holds {id}, expected the shared slot {expected}"),
        Finding::Groups { expected, got } => format!("groups {got:?}, expected {expected:?}"),
        Finding::Experts { expected, got } => format!("experts {got:?}, expected {expected:?}"),
        Finding::RoutedWeight { id, got, expected } => {
            format!("expert {id} weight {got:.6}, expected {expected:.6}")
        }
        Finding::RoutedSum { got, expected } => {
            format!("routed weight sum {got:.3}, expected {expected:.3}")
        }
        Finding::SharedWeight {
            slot,
            got,
            expected,
        } => format!("shared weight (slot {slot}) {got:.3}, expected {expected:.3}"),
    }
}

fn print_case(r: &CaseReport, strict: bool) {
    let verdict = if r.failed(strict) { "FAIL" } else { "ok" };
    let shared = r
        .contract
        .shared
        .map(|s| format!(", shared {:.3}", s.mean))
        .unwrap_or_default();
    println!(
        "  {:<44} {:<4}  ids agree {:>6.2}%  weights {:>8.1e}  contract {} (routed sum {:.3}{shared})",
        r.case,
        verdict,
        100.0 * r.agreement,
        r.weight_max_rel,
        if r.contract.ok { "ok" } else { "VIOLATED" },
        r.contract.routed_sum.mean,
    );
    for f in &r.failures {
        let token = f.token.map(|t| format!("token {t}: ")).unwrap_or_default();
        println!(
            "      {} · {} · {} token(s); e.g. {token}{}",
            stage_name(f.stage),
            class_name(f.class),
            f.tokens,
            describe(&f.example)
        );
    }
}

/// The kernel against moescope's fused router (shared slots fused, rsf on the output) per
/// token count: device time per call over TIMED_CALLS calls, inputs rotated past L2.
fn time_kernel(
    gpu: &Gpu,
    k: &UserKernel,
    cfg: &MoeConfig,
    rng: &mut impl Rng,
) -> Result<Vec<Timing>> {
    let (e, kk, s) = (
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        cfg.n_shared_experts,
    );
    let shape = RouterShape::new(cfg, kk, s, 1.0, 1.0 / cfg.routed_scaling_factor).ok();
    let bias: Vec<f32> = (0..e).map(|_| rng.random_range(-0.05f32..0.05)).collect();
    let d_bias = gpu.upload(&bias, "timing bias")?;
    let bias_ptr = if cfg.has_bias {
        gpu.ptr(&d_bias)
    } else {
        DevPtr::NULL
    };
    let mut out = Vec::new();
    println!("  time per call (device, {TIMED_CALLS} calls, rotated inputs):");
    for &t in TIMING_TOKENS {
        let sets = ((256usize << 20) / (t * e * 4)).clamp(1, 16);
        let mut logits = Vec::with_capacity(sets);
        for _ in 0..sets {
            let host: Vec<f32> = (0..t * e).map(|_| rng.random_range(-4.0f32..4.0)).collect();
            logits.push(gpu.upload(&host, "timing logits")?);
        }
        let ids = gpu.alloc::<u32>(t * (kk + s), "timing ids")?;
        let weights = gpu.alloc::<f32>(t * (kk + s), "timing weights")?;
        let logits_ptr = |i: usize| gpu.ptr(&logits[i % sets]);
        let args = |i: usize| user_kernel::RouterArgs {
            logits: logits_ptr(i).addr(),
            bias: bias_ptr.addr(),
            ids: gpu.ptr(&ids).addr(),
            weights: gpu.ptr(&weights).addr(),
            ..user_kernel::args_for(cfg, t, LogitsDtype::F32)
        };
        let kernel_us = timed(gpu, |i| k.launch(gpu, &args(i)))?;
        k.wait(gpu)?;
        let fused_us = match &shape {
            Some(sh) => {
                let io = |i: usize| RouterIo {
                    logits: logits_ptr(i).cast(),
                    logits_bf16: false,
                    bias: bias_ptr,
                    gate: DevPtr::NULL,
                    ids: gpu.ptr(&ids),
                    weights: gpu.ptr(&weights),
                    probs: DevPtr::NULL,
                };
                Some(timed(gpu, |i| router::fused(gpu, sh, &io(i), t))?)
            }
            None => None,
        };
        let ratio = fused_us
            .map(|f| format!("{:.2}x moescope's fused ({f:.2} µs)", kernel_us / f))
            .unwrap_or_else(|| "moescope's fused router does not cover this shape".to_string());
        println!("    T={t:<6} {kernel_us:>9.2} µs  {ratio}");
        out.push(Timing {
            tokens: t,
            kernel_us,
            moescope_fused_us: fused_us,
        });
    }
    Ok(out)
}

/// Device µs per call: one warm-up, then TIMED_CALLS calls between two events.
fn timed(gpu: &Gpu, mut call: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    call(0)?;
    gpu.sync("timing warm-up")?;
    let a = gpu.event()?;
    for i in 0..TIMED_CALLS {
        call(i + 1)?;
    }
    let b = gpu.event()?;
    gpu.sync("timed calls")?;
    let ms = a
        .elapsed_ms(&b)
        .map_err(|e| anyhow!("reading an event time: {e:?}"))?;
    Ok(ms as f64 * 1e3 / TIMED_CALLS as f64)
}

/// Writes the JSON report through a temporary file (nothing half-written).
fn write_json(path: &PathBuf, report: &Report, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let text = serde_json::to_string_pretty(report)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    use std::io::Write;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}
