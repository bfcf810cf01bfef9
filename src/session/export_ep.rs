//! Expert-parallel exports of a session recorded with `--ep`: the per-rank load matrix
//! [steps × ranks] as CSV (one row per step and placement), and the last step's EPLB placement in
//! the shape DeepSeek's EPLB returns (`phy2log` [layers, replicas], `log2phy` [layers, experts,
//! max copies] padded with −1, `logcnt` [layers, experts]; one layer), so it can be fed back to a
//! serving engine.

use super::SessionHeader;
use crate::engine::ep::{EpRecord, PlacementKind};
use crate::engine::step::StepRecord;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::Write;

pub const EP_PLACEMENT_FORMAT: &str = "moescope-ep-placement";
pub const EP_PLACEMENT_VERSION: u32 = 1;

fn ep_of(r: &StepRecord) -> Result<&EpRecord> {
    r.ep.as_ref().with_context(|| {
        format!(
            "step {} has no expert-parallel figures; expected a session recorded with --ep N",
            r.step
        )
    })
}

/// `step,placement,r0,…,r{N-1}`: tokens per rank, a row per step and placement.
pub fn load_csv(
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut ranks = None;
    let mut text = String::new();
    for step in steps {
        let r = step?;
        let ep = ep_of(&r)?;
        let n = ep.spec.ranks;
        match ranks {
            None => {
                ranks = Some(n);
                let cols: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
                text.push_str(&format!("step,placement,{}\n", cols.join(",")));
            }
            Some(m) if m != n => bail!("step {} has {n} ranks, earlier steps {m}", r.step),
            _ => {}
        }
        for p in &ep.placements {
            let cells: Vec<String> = p.tokens_per_rank.iter().map(u64::to_string).collect();
            text.push_str(&format!(
                "{},{},{}\n",
                r.step,
                p.placement.kind.name(),
                cells.join(",")
            ));
        }
    }
    if ranks.is_none() {
        bail!("the session has no steps to export");
    }
    out.write_all(text.as_bytes()).context("writing the export")
}

/// The last step's EPLB placement as one JSON document.
pub fn placement_json(
    header: &SessionHeader,
    steps: impl Iterator<Item = Result<StepRecord>>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut last = None;
    for step in steps {
        let r = step?;
        ep_of(&r)?;
        last = Some(r);
    }
    let Some(r) = last else {
        bail!("the session has no steps to export");
    };
    let ep = ep_of(&r)?;
    let Some(p) = ep.get(PlacementKind::Eplb) else {
        bail!("step {} has no EPLB placement", r.step);
    };
    let experts = header.config.n_routed_experts;
    let doc = json!({
        "format": EP_PLACEMENT_FORMAT,
        "version": EP_PLACEMENT_VERSION,
        "layer": header.config.name,
        "step": r.step,
        "window_steps": ep.window_steps,
        "num_logical_experts": experts,
        "num_replicas": p.placement.phy2log().len(),
        "num_groups": header.config.n_group,
        "num_nodes": ep.spec.nodes(),
        "num_gpus": ep.spec.ranks,
        "phy2log": [p.placement.phy2log()],
        "log2phy": [p.placement.log2phy(experts)],
        "logcnt": [p.placement.logcnt(experts)],
        "tokens_per_rank": p.tokens_per_rank,
    });
    let mut text = serde_json::to_string(&doc).context("encoding the placement")?;
    text.push('\n');
    out.write_all(text.as_bytes()).context("writing the export")
}
