//! `moescope inspect DIR`: a checkpoint's MoE config, which layers are MoE, and one layer's
//! tensors with shape, dtype, bytes and file; exit 1 when that MoE layer does not load.

use crate::engine::weights::checkpoint::{self, Listing};
use anyhow::{bail, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// Checkpoint directory (config.json plus safetensors).
    pub dir: PathBuf,
    /// MoE layer to list (default: the first MoE layer).
    #[arg(long)]
    pub layer: Option<usize>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let listing = checkpoint::list_layer(&args.dir, args.layer)?;
    print!("{}", render(&args.dir, &listing));
    if let Some(Err(why)) = &listing.loads {
        bail!(
            "layer {} of {} does not load: {why}",
            listing.layer,
            args.dir.display()
        );
    }
    Ok(())
}

/// The report `inspect` prints.
pub fn report(dir: &Path, layer: Option<usize>) -> Result<String> {
    Ok(render(dir, &checkpoint::list_layer(dir, layer)?))
}

fn render(dir: &Path, l: &Listing) -> String {
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "checkpoint {} ({})", dir.display(), l.source);
    let _ = writeln!(w, "MoE config:");
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&l.config) {
        for (k, v) in map {
            let _ = writeln!(w, "  {k}: {v}");
        }
    }
    let _ = writeln!(
        w,
        "layers: {}; MoE: {} ({} layer{}); dense: {} ({})",
        l.num_layers,
        checkpoint::ranges(&l.moe_layers),
        l.moe_layers.len(),
        if l.moe_layers.len() == 1 { "" } else { "s" },
        checkpoint::ranges(&l.dense_layers),
        l.rule
    );
    let kind = if l.layer_is_moe { "MoE" } else { "dense" };
    let total: usize = l.tensors.iter().map(|t| t.bytes).sum();
    let _ = writeln!(
        w,
        "layer {} ({kind}): {} tensors, {total} bytes",
        l.layer,
        l.tensors.len()
    );
    let header = ["name", "shape", "dtype", "bytes", "file"].map(String::from);
    let rows: Vec<[String; 5]> = l
        .tensors
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                format!("{:?}", t.shape),
                t.dtype.clone(),
                t.bytes.to_string(),
                t.file.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        let _ = writeln!(w, "{}", line.trim_end());
    }
    match &l.loads {
        Some(Ok(layout)) => {
            let _ = writeln!(w, "layer {} loads as an MoE layer ({layout})", l.layer);
        }
        Some(Err(why)) => {
            let _ = writeln!(w, "layer {} does not load: {why}", l.layer);
        }
        None => {}
    }
    out
}
