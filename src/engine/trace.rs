//! Routing traces: the routed experts of real tokens (from a serving engine, or saved by moescope
//! itself with `--save-routing`), stepped through by a run instead of the router.
//!
//! Shapes (docs/routing-formats.md): ids `[T, K]` (one step), `[steps, T, K]`, or `[T, layers, K]`
//! with a layer chosen; optional weights of the same shape; or aggregate counts `[layers, E]`
//! (each layer's row becomes one step of tokens with exactly that distribution). Files are
//! safetensors (`topk_ids`, `topk_weights`, `expert_counts`), `.npy` (one array) or JSON (the same
//! keys, or a bare nested array of ids). Every check names the file, the position and what was
//! expected.

mod json;
mod npy;
mod st;

use super::config::MoeConfig;
use super::paths::Contract;
use super::routing::Routing;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The tensor names the formats use.
pub const IDS: &str = "topk_ids";
pub const WEIGHTS: &str = "topk_weights";
pub const COUNTS: &str = "expert_counts";

/// An array as a file holds it, before validation: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct RawArray {
    pub shape: Vec<usize>,
    pub values: RawValues,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RawValues {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

impl RawArray {
    fn len(&self) -> usize {
        match &self.values {
            RawValues::Int(v) => v.len(),
            RawValues::Float(v) => v.len(),
        }
    }
}

/// What one file holds, by role.
#[derive(Clone, Debug, Default)]
pub struct TraceArrays {
    pub ids: Option<RawArray>,
    pub weights: Option<RawArray>,
    pub counts: Option<RawArray>,
}

/// The file formats, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    Safetensors,
    Npy,
    Json,
}

impl TraceFormat {
    pub fn of(path: &Path) -> Result<TraceFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(TraceFormat::Safetensors),
            Some("npy") => Ok(TraceFormat::Npy),
            Some("json") => Ok(TraceFormat::Json),
            _ => bail!(
                "routing file {}: unknown format; expected a name ending in .safetensors, .npy or .json",
                path.display()
            ),
        }
    }
}

/// How a trace was given: ids per token, or counts per expert turned into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    Ids,
    Counts,
}

/// A validated trace: `steps` batches of `tokens` tokens routed to `k` distinct experts each.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingTrace {
    pub source: PathBuf,
    pub kind: TraceKind,
    pub steps: usize,
    pub tokens: usize,
    pub k: usize,
    /// [steps × tokens × k]
    pub ids: Vec<u32>,
    /// [steps × tokens × k] the router's probabilities (rsf not included), where the file has them.
    pub weights: Option<Vec<f32>>,
}

/// One step's routing as a backend applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedBatch {
    pub k: usize,
    /// [tokens × k]
    pub ids: Vec<u32>,
    /// [tokens × k] probabilities, rsf not included: the trace's, or 1/k each where it has none.
    pub probs: Vec<f32>,
}

impl RoutedBatch {
    pub fn tokens(&self) -> usize {
        self.ids.len() / self.k.max(1)
    }
    /// The slots a path applies: per token the ids with the path's routed weight on their
    /// probabilities, then `s` shared slots E.. with the shared weight × the token's gate, as
    /// the routers write them ([tokens × (k + s)] ids and weights).
    pub fn slots(
        &self,
        e: usize,
        contract: &Contract,
        s: usize,
        gates: &[f32],
    ) -> (Vec<u32>, Vec<f32>) {
        let (t, k) = (self.tokens(), self.k);
        let mut ids = Vec::with_capacity(t * (k + s));
        let mut weights = Vec::with_capacity(t * (k + s));
        for tok in 0..t {
            for i in tok * k..(tok + 1) * k {
                ids.push(self.ids[i]);
                weights.push(contract.routed_slot_weight(self.probs[i] as f64) as f32);
            }
            let gate = gates.get(tok).copied().unwrap_or(1.0) as f64;
            for j in 0..s {
                ids.push((e + j) as u32);
                weights.push((contract.shared_slot_weight * gate) as f32);
            }
        }
        (ids, weights)
    }

    /// As the reference router's result (probabilities in f64).
    pub fn to_routing(&self) -> Routing {
        Routing {
            k: self.k,
            ids: self.ids.clone(),
            probs: self.probs.iter().map(|&p| p as f64).collect(),
        }
    }
}

impl RoutingTrace {
    /// Reads and checks a trace against the layer's config; `layer` picks one layer of a
    /// `[T, layers, K]` trace or one row of `[layers, E]` counts.
    pub fn read(path: &Path, cfg: &MoeConfig, layer: Option<usize>) -> Result<RoutingTrace> {
        let format = TraceFormat::of(path)?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read routing file {}", path.display()))?;
        Self::parse(&bytes, format, path, cfg, layer)
    }

    /// The same from a file's bytes (`path` only names it).
    pub fn parse(
        bytes: &[u8],
        format: TraceFormat,
        path: &Path,
        cfg: &MoeConfig,
        layer: Option<usize>,
    ) -> Result<RoutingTrace> {
        Self::parse_arrays(bytes, format, cfg, layer)
            .map(|trace| RoutingTrace {
                source: path.to_path_buf(),
                ..trace
            })
            .with_context(|| format!("routing file {}", path.display()))
    }

    fn parse_arrays(
        bytes: &[u8],
        format: TraceFormat,
        cfg: &MoeConfig,
        layer: Option<usize>,
    ) -> Result<RoutingTrace> {
        let arrays = match format {
            TraceFormat::Safetensors => st::read(bytes)?,
            TraceFormat::Npy => npy::read(bytes, cfg)?,
            TraceFormat::Json => json::read(bytes)?,
        };
        let shape = Shape {
            e: cfg.n_routed_experts,
            k: cfg.num_experts_per_tok,
            model: &cfg.name,
            layer,
        };
        match (arrays.ids, arrays.counts) {
            (Some(ids), None) => shape.ids(&ids, arrays.weights.as_ref()),
            (None, Some(counts)) => {
                if arrays.weights.is_some() {
                    bail!("`{WEIGHTS}` goes with `{IDS}`, not with `{COUNTS}`");
                }
                shape.counts(&counts)
            }
            (Some(_), Some(_)) => bail!("holds both `{IDS}` and `{COUNTS}`; expected one of them"),
            (None, None) => bail!("holds neither `{IDS}` [T, K] nor `{COUNTS}` [layers, E]"),
        }
    }

    /// Step `step`'s batch (the trace repeats when the run is longer).
    pub fn batch(&self, step: u64) -> RoutedBatch {
        let per_step = self.tokens * self.k;
        let s = (step % self.steps.max(1) as u64) as usize;
        let range = s * per_step..(s + 1) * per_step;
        let probs = match &self.weights {
            Some(w) => w[range.clone()].to_vec(),
            None => vec![1.0 / self.k as f32; per_step],
        };
        RoutedBatch {
            k: self.k,
            ids: self.ids[range].to_vec(),
            probs,
        }
    }

    /// A trace of routed batches (what `--save-routing` writes).
    pub fn from_batches(batches: &[RoutedBatch]) -> Result<RoutingTrace> {
        let first = batches.first().context("no steps to save")?;
        let (tokens, k) = (first.tokens(), first.k);
        if let Some(i) = batches
            .iter()
            .position(|b| b.k != k || b.tokens() != tokens)
        {
            bail!("step {i} has a different batch shape than step 0 ({tokens} tokens × {k})");
        }
        Ok(RoutingTrace {
            source: PathBuf::new(),
            kind: TraceKind::Ids,
            steps: batches.len(),
            tokens,
            k,
            ids: batches.iter().flat_map(|b| b.ids.iter().copied()).collect(),
            weights: Some(
                batches
                    .iter()
                    .flat_map(|b| b.probs.iter().copied())
                    .collect(),
            ),
        })
    }

    /// Writes the trace as `[steps, T, K]` ids (and weights, except in `.npy`, which holds one
    /// array) through a temporary file, so nothing is half-written.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = match TraceFormat::of(path)? {
            TraceFormat::Safetensors => st::write(self)?,
            TraceFormat::Npy => npy::write(self)?,
            TraceFormat::Json => json::write(self)?,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write routing file {}", path.display()))?;
        std::io::Write::write_all(&mut tmp, &bytes)
            .with_context(|| format!("cannot write routing file {}", path.display()))?;
        // A temporary file is private; the trace is an ordinary output file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        tmp.persist(path)
            .with_context(|| format!("cannot write routing file {}", path.display()))?;
        Ok(())
    }
}

/// What the config expects of a trace.
struct Shape<'a> {
    e: usize,
    k: usize,
    model: &'a str,
    layer: Option<usize>,
}

/// `[a, b, c]` of a flat index into `shape`.
fn position(shape: &[usize], mut flat: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = flat % n.max(1);
        flat /= n.max(1);
    }
    let parts: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn ints<'v>(name: &str, a: &'v RawArray) -> Result<&'v [i64]> {
    match &a.values {
        RawValues::Int(v) => Ok(v),
        RawValues::Float(_) => bail!("`{name}` holds floats; expected integer expert ids"),
    }
}

impl Shape<'_> {
    /// Ids [T, K], [steps, T, K] or [T, layers, K] (with `layer`) as [steps × T × K].
    fn ids(&self, ids: &RawArray, weights: Option<&RawArray>) -> Result<RoutingTrace> {
        let values = ints(IDS, ids)?;
        let sh = &ids.shape;
        check_len(IDS, ids)?;
        let (steps, tokens, k) = match (sh.as_slice(), self.layer) {
            ([t, k], None) => (1, *t, *k),
            ([s, t, k], None) => (*s, *t, *k),
            ([_, layers, _], Some(l)) if l >= *layers => {
                bail!("--routing-layer {l} is out of range: `{IDS}` {sh:?} holds layers 0..{layers}")
            }
            ([t, _, k], Some(_)) => (1, *t, *k),
            ([_, _], Some(l)) => bail!(
                "--routing-layer {l} needs ids [T, layers, K]; `{IDS}` has shape {sh:?} ([T, K])"
            ),
            _ => bail!(
                "`{IDS}` has shape {sh:?}; expected [T, K], [steps, T, K], or [T, layers, K] with --routing-layer"
            ),
        };
        if k != self.k {
            bail!(
                "`{IDS}` {sh:?} routes {k} experts per token (last dimension); the config ({}) has num_experts_per_tok {}",
                self.model,
                self.k
            );
        }
        if tokens == 0 || steps == 0 {
            bail!("`{IDS}` has shape {sh:?}; expected at least one token");
        }
        // The flat indices of the chosen elements, in [step, token, slot] order.
        let picked: Vec<usize> = match self.layer {
            None => (0..values.len()).collect(),
            Some(l) => {
                let layers = sh[1];
                (0..tokens)
                    .flat_map(|t| (0..k).map(move |i| (t * layers + l) * k + i))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(picked.len());
        for (n, &f) in picked.iter().enumerate() {
            let v = values[f];
            if v < 0 || v >= self.e as i64 {
                bail!(
                    "`{IDS}`{} = {v}; expected an expert id in 0..{} ({})",
                    position(sh, f),
                    self.e,
                    self.model
                );
            }
            let token_start = n - n % k;
            if out[token_start..].contains(&(v as u32)) {
                bail!(
                    "`{IDS}`{} = {v} repeats an expert of the same token; expected {k} distinct experts",
                    position(sh, f)
                );
            }
            out.push(v as u32);
        }
        let weights = match weights {
            None => None,
            Some(w) => Some(self.weights(w, sh, &picked)?),
        };
        Ok(RoutingTrace {
            source: PathBuf::new(),
            kind: TraceKind::Ids,
            steps,
            tokens,
            k,
            ids: out,
            weights,
        })
    }

    fn weights(&self, w: &RawArray, ids_shape: &[usize], picked: &[usize]) -> Result<Vec<f32>> {
        if w.shape != ids_shape {
            bail!(
                "`{WEIGHTS}` has shape {:?}; expected the shape of `{IDS}`, {ids_shape:?}",
                w.shape
            );
        }
        check_len(WEIGHTS, w)?;
        let values: Vec<f64> = match &w.values {
            RawValues::Float(v) => v.clone(),
            RawValues::Int(v) => v.iter().map(|&x| x as f64).collect(),
        };
        picked
            .iter()
            .map(|&f| {
                let v = values[f];
                if !v.is_finite() || v < 0.0 {
                    bail!(
                        "`{WEIGHTS}`{} = {v}; expected a finite weight ≥ 0",
                        position(&w.shape, f)
                    );
                }
                Ok(v as f32)
            })
            .collect()
    }

    /// Counts [layers, E] (or [E]): each chosen row becomes one step of T = sum / K tokens.
    fn counts(&self, counts: &RawArray) -> Result<RoutingTrace> {
        let values = ints(COUNTS, counts)?;
        let sh = &counts.shape;
        check_len(COUNTS, counts)?;
        let (layers, e) = match sh.as_slice() {
            [e] => (1, *e),
            [l, e] => (*l, *e),
            _ => bail!("`{COUNTS}` has shape {sh:?}; expected [layers, E] or [E]"),
        };
        if e != self.e {
            bail!(
                "`{COUNTS}` {sh:?} counts {e} experts (last dimension); the config ({}) has n_routed_experts {}",
                self.model,
                self.e
            );
        }
        let rows: Vec<usize> = match self.layer {
            None => (0..layers).collect(),
            Some(l) if l < layers => vec![l],
            Some(l) => bail!(
                "--routing-layer {l} is out of range: `{COUNTS}` {sh:?} holds layers 0..{layers}"
            ),
        };
        if let Some(f) = values.iter().position(|&c| c < 0) {
            bail!(
                "`{COUNTS}`{} = {}; expected a count ≥ 0",
                position(sh, f),
                values[f]
            );
        }
        let mut tokens = None;
        let mut ids = Vec::new();
        for &r in &rows {
            let row: Vec<usize> = values[r * e..(r + 1) * e]
                .iter()
                .map(|&c| c as usize)
                .collect();
            let sum: usize = row.iter().sum();
            if sum == 0 || !sum.is_multiple_of(self.k) {
                bail!(
                    "`{COUNTS}` row {r} sums to {sum}; expected a positive multiple of num_experts_per_tok {} (T tokens × K)",
                    self.k
                );
            }
            let t = sum / self.k;
            match tokens {
                None => tokens = Some(t),
                Some(t0) if t0 != t => bail!(
                    "`{COUNTS}` row {r} holds {t} tokens (sum / K), row {} holds {t0}; expected the same T in every row",
                    rows[0]
                ),
                _ => {}
            }
            if let Some(x) = row.iter().position(|&c| c > t) {
                bail!(
                    "`{COUNTS}`{} = {}; a token routes to an expert once, so a count is at most T = {t}",
                    position(sh, r * e + x),
                    row[x]
                );
            }
            ids.extend(tokens_of_counts(&row, t, self.k));
        }
        Ok(RoutingTrace {
            source: PathBuf::new(),
            kind: TraceKind::Counts,
            steps: rows.len(),
            tokens: tokens.unwrap_or(0),
            k: self.k,
            ids,
            weights: None,
        })
    }
}

fn check_len(name: &str, a: &RawArray) -> Result<()> {
    let want: usize = a.shape.iter().product();
    if a.len() != want {
        bail!(
            "`{name}` holds {} values; its shape {:?} needs {want}",
            a.len(),
            a.shape
        );
    }
    Ok(())
}

/// Token ids [T × K] whose per-expert counts are `counts` (each ≤ T, summing to T·K): the
/// experts in order, repeated by count, dealt slot by slot over the tokens, so a run of one
/// expert's copies (at most T long) lands on distinct tokens.
pub fn tokens_of_counts(counts: &[usize], t: usize, k: usize) -> Vec<u32> {
    let list: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(e, &c)| std::iter::repeat_n(e as u32, c))
        .collect();
    let mut ids = vec![0u32; t * k];
    for (a, &e) in list.iter().enumerate() {
        let (slot, tok) = (a / t, a % t);
        ids[tok * k + slot] = e;
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_tokens_with_distinct_experts_and_the_same_counts() {
        let counts = [3, 0, 2, 3, 1, 3];
        let (t, k) = (4, 3);
        let ids = tokens_of_counts(&counts, t, k);
        for tok in ids.chunks(k) {
            let mut s = tok.to_vec();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), k, "{tok:?}");
        }
        let mut back = [0usize; 6];
        ids.iter().for_each(|&e| back[e as usize] += 1);
        assert_eq!(back, counts);
    }

    #[test]
    fn positions_name_every_dimension() {
        assert_eq!(position(&[2, 3, 4], 0), "[0, 0, 0]");
        assert_eq!(position(&[2, 3, 4], 23), "[1, 2, 3]");
        assert_eq!(position(&[5, 8], 17), "[2, 1]");
    }
}
