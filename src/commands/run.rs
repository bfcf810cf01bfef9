//! `moescope run`: the TUI by default, or headless StepRecords as JSON lines. Headless runs can
//! record a session (`--record FILE`) and export directly (`--export FMT`); both end with the
//! step rate on stderr.

use super::driver::{self, Driver, LivePlan};
use super::{named, parse_variant, LayerArgs};
use crate::engine::ep::EpSpec;
use crate::engine::paths::{PathLogits, PathSpec, RsfPlacement, Variant};
use crate::engine::spec::{RunSpec, TraceSpec};
use crate::engine::step::StepRecord;
use crate::engine::trace::{RoutingTrace, TraceFormat};
use crate::session::export::{self, Output};
use crate::session::{print_warnings, ExportFormat, SessionReader};
use crate::ui;
use crate::ui::SignalFlag;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// Steps of a headless run when --steps is not given.
pub const DEFAULT_HEADLESS_STEPS: u64 = 10;

/// `--b-rsf`: where path B applies the routed scaling factor.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RsfArg {
    InRouter,
    OnOutput,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
    /// Tokens per step (a captured batch from --hidden-states sets its own).
    #[arg(long, short = 't', default_value_t = 64, allow_negative_numbers = true,
          value_parser = super::positive_count, conflicts_with = "hidden_states")]
    pub tokens: usize,
    /// Scaling variant of path B (the fused path): correct, shared-inv-rsf, rsf-twice,
    /// hardcoded-2.5, shared-dropped.
    #[arg(long, default_value = "correct", value_parser = parse_variant)]
    pub variant: Variant,
    /// Where path B applies the routed scaling factor.
    #[arg(long, value_enum, default_value_t = RsfArg::OnOutput)]
    pub b_rsf: RsfArg,
    /// Expert weight format: bf16 or fp8 (e4m3, 128×128 block scales) for paths A and B, or
    /// per path, e.g. A=bf16,B=fp8 (a path not named runs bf16).
    #[arg(long, value_name = "FORMATS", default_value = "bf16", value_parser = super::experts::parse)]
    pub experts: super::experts::PathFormats,
    /// The shared experts' format (A's separate shared MLP, B's fused slot), as --experts;
    /// a path not named takes its --experts format.
    #[arg(long, value_name = "FORMATS", value_parser = super::experts::parse)]
    pub shared_experts: Option<super::experts::PathFormats>,
    /// Captured hidden states (safetensors with `hidden_states` [T, H]) instead of synthetic ones.
    #[arg(long)]
    pub hidden_states: Option<PathBuf>,
    /// Your router kernel (.cu for NVRTC or .so; docs/kernel-abi.md) as path C (CUDA only).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Router logits precision: `f32` or `bf16` for every path, or per path as `A=bf16,B=f32`
    /// (C is the --kernel path; a path not named reads f32). The gate GEMM sums in f32 either
    /// way; bf16 rounds its output before the router reads it. The f64 reference routes the
    /// f32 logits, so the numerics view counts the tokens whose experts bf16 changes. Not with
    /// --routing (a trace replaces the router).
    #[arg(long, default_value = "f32", value_name = "f32|bf16|PATH=f32|bf16,...",
          value_parser = PathLogits::parse, conflicts_with = "routing")]
    pub router_logits: PathLogits,
    /// Print StepRecords as JSON lines instead of opening the TUI.
    #[arg(long)]
    pub headless: bool,
    /// Steps to run (headless: default 10; TUI: run until quit).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Record the session to this JSONL file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Overwrite an existing --record or -o file.
    #[arg(long)]
    pub force: bool,
    /// Headless: export the run directly in this format instead of printing JSON lines.
    #[arg(long, requires = "headless", value_parser = named::<ExportFormat>(ExportFormat::NAMES))]
    pub export: Option<ExportFormat>,
    /// Output file of --export.
    #[arg(short = 'o', long = "output", requires = "export")]
    pub output: Option<PathBuf>,
    /// NVML telemetry sampling rate, Hz (0 = off).
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true,
          value_parser = super::finite_non_negative::<f64>)]
    pub telemetry_hz: f64,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Routing traces and expert parallelism (docs/routing-formats.md).
#[derive(Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Routed-expert trace to step through instead of the router (.safetensors, .npy, .json:
    /// ids [T,K], [steps,T,K], [T,layers,K] with --routing-layer, or counts [layers,E]). Its
    /// weights are used where it has them, else 1/K each.
    #[arg(long)]
    pub routing: Option<PathBuf>,
    /// Layer of a [T, layers, K] trace or of [layers, E] counts.
    #[arg(long, requires = "routing")]
    pub routing_layer: Option<usize>,
    /// Headless: save every step's routing (the trace's, or the reference router's) to this
    /// .safetensors, .npy or .json file at the end.
    #[arg(long, requires = "headless")]
    pub save_routing: Option<PathBuf>,
    /// Expert parallelism: place the experts on N ranks (1..512) and report per-rank load,
    /// all-to-all bytes, the straggler's GEMM time and the EP step estimate.
    #[arg(long)]
    pub ep: Option<usize>,
    /// EPLB's redundant expert copies (E + R must divide by --ep).
    #[arg(long, default_value_t = 0, requires = "ep")]
    pub redundant: usize,
    /// Steps of load EPLB places from (this one included).
    #[arg(long, default_value_t = 16, requires = "ep")]
    pub ep_window: usize,
    /// Link bandwidth per rank, Gbit/s (default: NVLink-class 3600 for --ep ≤ 8, InfiniBand-class
    /// 400 above).
    #[arg(long, requires = "ep")]
    pub link_gbps: Option<f64>,
}

impl TraceArgs {
    pub fn spec(&self) -> Result<TraceSpec> {
        let ep = match self.ep {
            Some(n) => Some(EpSpec::new(
                n,
                self.redundant,
                self.ep_window,
                self.link_gbps,
            )?),
            None => None,
        };
        Ok(TraceSpec {
            routing: self.routing.clone(),
            routing_layer: self.routing_layer,
            ep,
            keep_routing: self.save_routing.is_some(),
        })
    }
}

impl RunArgs {
    /// Path A (the unfused baseline) and path B (fused, with the chosen variant), in the
    /// expert formats --experts and --shared-experts give them.
    pub fn paths(&self) -> Result<Vec<PathSpec>> {
        let mut b = PathSpec::fused(self.variant);
        b.rsf = match self.b_rsf {
            RsfArg::InRouter => RsfPlacement::InRouter,
            RsfArg::OnOutput => RsfPlacement::OnOutput,
        };
        let paths = vec![PathSpec::unfused_baseline(), b];
        super::experts::apply(paths, &self.experts, self.shared_experts.as_ref())
    }

    /// The engine's description of the run these options ask for.
    pub fn spec(&self) -> Result<RunSpec> {
        Ok(RunSpec {
            layer: self.layer.spec(),
            tokens: self.tokens,
            paths: self.paths()?,
            hidden_states: self.hidden_states.clone(),
            trace: self.trace.spec()?,
            kernel: self.kernel.clone(),
            router_logits: self.router_logits,
        })
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    if args.headless {
        headless(args)
    } else {
        tui(args)
    }
}

fn tui(args: RunArgs) -> Result<()> {
    ui::require_terminal()?;
    let source = driver::spawn_live(LivePlan {
        spec: args.spec()?,
        telemetry_hz: args.telemetry_hz,
        record: args.record.clone(),
        force: args.force,
        steps: args.steps,
    })?;
    ui::run(ui::Mode::Live, source)
}

fn headless(args: RunArgs) -> Result<()> {
    // Refuse existing outputs before spending time on the engine.
    if let Some(path) = &args.record {
        if path.exists() && !args.force {
            bail!(
                "session file {} already exists; pass --force to overwrite it",
                path.display()
            );
        }
        if args.export.is_some() && args.output.as_ref() == Some(path) {
            bail!(
                "--record and -o name the same file {}; choose two files",
                path.display()
            );
        }
    }
    if let Some(path) = &args.trace.save_routing {
        if path.exists() && !args.force {
            bail!(
                "routing file {} already exists; pass --force to overwrite it",
                path.display()
            );
        }
        TraceFormat::of(path)?;
    }
    let mut plan = ExportPlan::new(&args)?;
    let (engine, notices) = args.spec()?.build_engine()?;
    for n in &notices {
        eprintln!("moescope: {n}");
    }
    let signals = SignalFlag::install()?;
    let mut driver = Driver::new(engine, args.telemetry_hz);
    if let Some(why) = driver.telemetry_unavailable() {
        if driver::telemetry_expected(driver.engine().info().kind) {
            eprintln!("moescope: {why}");
        }
    }
    if let Some(path) = plan.session(&args) {
        // A beside file that exists was refused without --force already.
        let beside = matches!(
            &plan,
            ExportPlan::File {
                beside: Some(_),
                ..
            }
        );
        driver.start_recording(path, args.force || beside)?;
    }
    let header = driver.header();
    let steps = args.steps.unwrap_or(DEFAULT_HEADLESS_STEPS);
    // A signal ends the run after the step in flight; what finished is kept and exported.
    let records = driver
        .records(steps)
        .take_while(|_| signals.get().is_none());
    let ran = match (&mut plan, args.export) {
        (ExportPlan::Stdout(out), Some(format)) => {
            export::write(format, &header, records, out.writer())
        }
        (ExportPlan::File { .. }, _) => drain(records),
        _ => print_lines(records),
    };
    let (done, rate) = driver.rate();
    eprintln!("moescope: {done} steps, {rate:.2} steps/s");
    let recorded = driver.stop_recording();
    if let Err(e) = ran {
        if let (ExportPlan::File { .. }, Some(path)) = (&plan, &recorded) {
            eprintln!(
                "moescope: the finished steps are in {}; `moescope export` it",
                path.display()
            );
        }
        return Err(e);
    }
    if let (Some(path), Some(batches)) = (&args.trace.save_routing, driver.engine().saved_routing())
    {
        RoutingTrace::from_batches(batches)?.write(path)?;
        eprintln!(
            "moescope: routing of {} steps saved to {}",
            batches.len(),
            path.display()
        );
    }
    plan.finish(&args)?;
    match signals.get() {
        Some(signal) => Err(signal.into()),
        None => Ok(()),
    }
}

/// Runs the steps (they are recorded as they finish).
fn drain(records: impl Iterator<Item = Result<StepRecord>>) -> Result<()> {
    for record in records {
        record?;
    }
    Ok(())
}

/// StepRecords as JSON lines on stdout, flushed per step.
fn print_lines(records: impl Iterator<Item = Result<StepRecord>>) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for record in records {
        serde_json::to_writer(&mut out, &record?).context("writing a StepRecord to stdout")?;
        writeln!(out).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}

/// Where `--export` goes. To a file, the run is recorded first (to --record, or to a session
/// beside the output that is removed once exported): a killed run keeps every finished step
/// there, and no temporary file is open while steps run. To stdout, it streams.
enum ExportPlan {
    None,
    Stdout(Output),
    File {
        format: ExportFormat,
        dest: PathBuf,
        /// The session recorded beside `dest` for the export (None: --record's).
        beside: Option<PathBuf>,
    },
}

impl ExportPlan {
    fn new(args: &RunArgs) -> Result<ExportPlan> {
        let Some(format) = args.export else {
            return Ok(ExportPlan::None);
        };
        let Some(dest) = &args.output else {
            return Ok(ExportPlan::Stdout(Output::create(None, false)?));
        };
        if dest.exists() && !args.force {
            bail!(
                "output file {} already exists; pass --force to overwrite it",
                dest.display()
            );
        }
        let beside = match &args.record {
            Some(_) => None,
            None => {
                let mut name = dest.clone().into_os_string();
                name.push(".partial.jsonl");
                let path = PathBuf::from(name);
                if path.exists() && !args.force {
                    bail!(
                        "{} exists (the steps of an earlier interrupted export?); export it \
                         with `moescope export`, remove it, or pass --force",
                        path.display()
                    );
                }
                Some(path)
            }
        };
        Ok(ExportPlan::File {
            format,
            dest: dest.clone(),
            beside,
        })
    }

    /// The session file this run records to, if any.
    fn session<'a>(&'a self, args: &'a RunArgs) -> Option<&'a PathBuf> {
        match self {
            ExportPlan::File {
                beside: Some(p), ..
            } => Some(p),
            _ => args.record.as_ref(),
        }
    }

    /// Commits the export: to a file, from the recorded session (its beside file removed).
    fn finish(self, args: &RunArgs) -> Result<()> {
        match self {
            ExportPlan::None => Ok(()),
            ExportPlan::Stdout(out) => out.commit(),
            ExportPlan::File {
                format,
                dest,
                beside,
            } => {
                let session = beside
                    .as_ref()
                    .or(args.record.as_ref())
                    .context("no session recorded for the export")?;
                let mut output = Output::create(Some(&dest), args.force)?;
                let (mut reader, _) = SessionReader::open(session)?;
                let header = reader.header().clone();
                export::write(format, &header, reader.steps(), output.writer())?;
                print_warnings(&reader.report());
                output.commit()?;
                if let Some(path) = beside {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                }
                Ok(())
            }
        }
    }
}
