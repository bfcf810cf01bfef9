#!/usr/bin/env python3
"""PyTorch peers for moescope's `bench`: the same DeepSeek-V3 router and expert GEMMs, done the
way a PyTorch MoE layer does them, timed the way moescope times its own kernels, so the two
reports can be set side by side.

What is measured (all on one CUDA device, in one run):

* Copy bandwidth: `dst.copy_(src)` of 1 GiB, bytes read + written, median of 7 event-timed
  calls, GB/s. This is the ceiling the router's and the GEMMs' floors are taken against.
* Dense bf16 rate: `torch.mm` of [8192 x 7168] x [7168 x 4096] bf16, several calls per event
  pair, median of 7, TFLOP/s (2*M*N*K).
* Router, op by op: DeepSeek-V3's grouped top-k (sigmoid scores, a correction bias for the
  choice, top-2 sum per group of 32, top-4 of 8 groups, top-8 experts of those, weights from the
  uncorrected scores normalised and scaled by 2.5, the shared expert appended as slot 256 with
  weight 1.0) in plain torch ops, as the HF and vLLM reference layers write it, for f32 and bf16
  logits. Outputs: ids int32 [T, 9], weights f32 [T, 9].
* Expert GEMMs: `torch._grouped_mm` (bf16 in and out, f32 accumulation inside the op) for the up
  [7168 -> 4096] and down [2048 -> 7168] projections over 257 groups (256 routed experts, each
  token on 8 distinct random experts, plus the shared expert as the last group with every
  token), and where the op exists, `torch._scaled_grouped_mm` on e4m3 codes with row-wise f32
  scales.

How it is timed (moescope's `bench` does the same): `calls` calls, call i reading input set
i % sets, are captured into one CUDA graph (after a warm-up on a side stream, as PyTorch's graph
docs ask); one timing is `replays` replays of the graph between two CUDA events; the figure is
the median of 7 timings (after one untimed) over replays * calls, in µs per call. Router inputs
are rotated over enough sets to exceed 256 MiB (2 to 64 sets) so that L2 (50-60 MB) does not
serve them; the GEMMs' weights are far larger than L2 already, so they use one set.

    python3 benches/torch_peers.py --json OUT.json [--device cuda] [--router-tokens 1,8,...]
        [--gemm-tokens 1,64,...] [--skip-gemm] [--force]
    python3 benches/torch_peers.py --self-test     # CPU only: checks the router and the writer

Exit codes: 0 done; 1 no CUDA device or a failure before any measurement; 2 OUT exists and
--force was not given.
"""

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:  # say what is missing rather than a bare traceback
    sys.exit("torch_peers: PyTorch is not installed for this python3 (import torch failed)")

# DeepSeek-V3's MoE layer.
LAYER = "deepseek-v3"
E = 256  # routed experts
N_GROUP = 8
TOPK_GROUP = 4
TOP_K = 8
N_SHARED = 1
SLOTS = TOP_K + N_SHARED  # slots per token in the router's output
SHARED_ID = E  # the shared expert's slot id, after the routed ones
RSF = 2.5  # routed_scaling_factor
HIDDEN = 7168
INTER = 2048
GROUPS = E + N_SHARED  # GEMM groups: the routed experts, then the shared expert

# (name, K, N) of each expert projection: up is gate and up fused (2 * INTER outputs).
PROJECTIONS = (("up", HIDDEN, 2 * INTER), ("down", INTER, HIDDEN))

ROUTER_TOKENS = [1, 8, 64, 512, 2048, 8192, 40000, 131072]
GEMM_TOKENS = [1, 64, 512, 2048, 16384]

REPEATS = 7  # timings per figure; the median is kept
ROTATE_BYTES = 256 << 20  # rotated inputs together exceed L2 by this much
MAX_SETS = 64
COPY_BYTES = 1 << 30
DENSE_MNK = (8192, 4096, 7168)  # the dense bf16 GEMM: M, N, K
DENSE_CALLS = 10  # dense GEMMs per event pair
FP8_MAX = 448.0  # largest finite e4m3 value


def progress(msg):
    """One line per measurement to stderr, so stdout keeps only the tables."""
    print(f"[torch_peers] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The router
# ---------------------------------------------------------------------------------------------


def shared_slot(t, device):
    """The shared expert's column of ids and weights, made once per token count so that the
    timed router only concatenates them (what a layer that keeps them around does)."""
    ids = torch.full((t, N_SHARED), SHARED_ID, dtype=torch.int32, device=device)
    weights = torch.ones((t, N_SHARED), dtype=torch.float32, device=device)
    return ids, weights


def grouped_topk_router(logits, bias, shared_ids, shared_weights):
    """DeepSeek-V3's router in plain torch ops: logits [T, E] (f32 or bf16), bias [E] f32 ->
    (ids int32 [T, 9], weights f32 [T, 9])."""
    t = logits.shape[0]
    scores = logits.float().sigmoid()
    choice = scores + bias  # the bias steers the choice only, not the weights
    by_group = choice.view(t, N_GROUP, E // N_GROUP)
    group_scores = by_group.topk(2, dim=-1).values.sum(dim=-1)
    kept_groups = group_scores.topk(TOPK_GROUP, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool)
    group_mask.scatter_(1, kept_groups, True)
    expert_mask = group_mask.unsqueeze(-1).expand(t, N_GROUP, E // N_GROUP).reshape(t, E)
    # -inf (as vLLM does) rather than HF's 0.0: choice can be slightly negative (sigmoid near 0
    # plus a negative bias), and 0.0 would then let a masked-out expert win.
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    topk_ids = masked.topk(TOP_K, dim=-1, sorted=False).indices
    weights = scores.gather(1, topk_ids)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * RSF
    ids = torch.cat([topk_ids.to(torch.int32), shared_ids], dim=1)
    return ids, torch.cat([weights, shared_weights], dim=1)


def reference_router(logits_row, bias):
    """The same router for one token in plain Python (doubles): the self-test's oracle.
    Returns ({expert id: weight} over 9 slots)."""
    scores = [1.0 / (1.0 + math.exp(-x)) for x in logits_row]
    choice = [s + b for s, b in zip(scores, bias)]
    size = E // N_GROUP
    group_scores = []
    for g in range(N_GROUP):
        best = sorted(choice[g * size:(g + 1) * size], reverse=True)
        group_scores.append(best[0] + best[1])
    kept = sorted(range(N_GROUP), key=lambda g: group_scores[g], reverse=True)[:TOPK_GROUP]
    candidates = [e for g in kept for e in range(g * size, (g + 1) * size)]
    top = sorted(candidates, key=lambda e: choice[e], reverse=True)[:TOP_K]
    total = sum(scores[e] for e in top)
    slots = {e: scores[e] / total * RSF for e in top}
    slots[SHARED_ID] = 1.0
    return slots


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def median_us(fn):
    """Median device time of fn() in µs over REPEATS event pairs, after one untimed call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def graph_us(call, calls, replays):
    """µs per call of call(i), i = 0..calls-1 captured into one CUDA graph, replayed `replays`
    times per timing. Graph replay takes the launch cost of the op-by-op code off the clock,
    as moescope's bench does for its own kernels."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as the graph docs ask
        for i in range(min(calls, 3)):
            call(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            call(i)

    def replay():
        for _ in range(replays):
            graph.replay()

    return median_us(replay) / (replays * calls)


def eager_us(call, n):
    """µs per call of n back-to-back eager calls under one event pair: the fallback where an op
    cannot be captured into a graph."""

    def calls():
        for _ in range(n):
            call()

    return median_us(calls) / n


GEMM_CALLS, GEMM_REPLAYS = 4, 3


def replay_plan(tokens, sets):
    """(calls, replays) for one token count: enough calls per graph to cycle the input sets;
    fewer, longer replays at large T (moescope's bench uses the same numbers)."""
    calls = max(sets, 50 if tokens <= 2048 else 10)
    replays = 20 if tokens <= 2048 else 4
    return calls, replays


def rotation_sets(bytes_per_set):
    return max(2, min(MAX_SETS, ROTATE_BYTES // max(1, bytes_per_set)))


# ---------------------------------------------------------------------------------------------
# Ceilings
# ---------------------------------------------------------------------------------------------


def copy_bandwidth(device):
    """GB/s of a 1 GiB device-to-device copy, bytes read + written."""
    src = torch.ones(COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    return 2 * COPY_BYTES / us / 1e3


def dense_bf16_tflops(device):
    m, n, k = DENSE_MNK
    a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    b = torch.randn(k, n, dtype=torch.bfloat16, device=device)
    c = torch.empty(m, n, dtype=torch.bfloat16, device=device)

    def calls():
        for _ in range(DENSE_CALLS):
            torch.mm(a, b, out=c)

    us = median_us(calls) / DENSE_CALLS
    return 2 * m * n * k / us / 1e6


# ---------------------------------------------------------------------------------------------
# Router benchmark
# ---------------------------------------------------------------------------------------------

LOGITS_DTYPES = (("f32", torch.float32), ("bf16", torch.bfloat16))


def bench_router(tokens, name, dtype, device, copy_gbs, gen):
    logits_bytes = tokens * E * torch.empty((), dtype=dtype).element_size()
    sets = rotation_sets(logits_bytes)
    # uniform [-4, 4) logits and [-0.05, 0.05) bias, as moescope's bench draws them
    inputs = [
        (torch.rand(tokens, E, generator=gen) * 8.0 - 4.0).to(dtype).to(device)
        for _ in range(sets)
    ]
    bias = (torch.rand(E, generator=gen) * 0.1 - 0.05).to(device)
    shared_ids, shared_weights = shared_slot(tokens, device)
    calls, replays = replay_plan(tokens, sets)
    us = graph_us(
        lambda i: grouped_topk_router(inputs[i % sets], bias, shared_ids, shared_weights),
        calls,
        replays,
    )
    bytes_moved = logits_bytes + tokens * SLOTS * 8  # logits read; ids and weights written
    gb_s = bytes_moved / us / 1e3
    return {
        "tokens": tokens,
        "logits": name,
        "kernel": "torch",
        "us": us,
        "gb_s": gb_s,
        "of_copy": gb_s / copy_gbs,
    }


def bench_routers(token_counts, device, copy_gbs):
    print()
    print(f"router, {LAYER}, PyTorch op by op (grouped top-{TOP_K} + {N_SHARED} shared slot); "
          "graph replay over rotated inputs; GB/s of logits read + slots written")
    print(f"{'tokens':>7}  {'logits':>6}  {'µs':>10}  {'GB/s':>8}  {'of copy':>8}")
    gen = torch.Generator().manual_seed(1)
    rows = []
    for t in token_counts:
        for name, dtype in LOGITS_DTYPES:
            progress(f"router T={t} logits={name}")
            try:
                row = bench_router(t, name, dtype, device, copy_gbs, gen)
            except Exception as err:  # keep going: one failed size must not lose the rest
                progress(f"router T={t} logits={name} failed: {describe(err)}")
                torch.cuda.empty_cache()
                continue
            rows.append(row)
            print(f"{t:>7}  {name:>6}  {row['us']:>10.2f}  {row['gb_s']:>8.1f}  "
                  f"{100 * row['of_copy']:>7.2f}%", flush=True)
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Expert GEMM benchmark
# ---------------------------------------------------------------------------------------------


def route_counts(tokens, gen):
    """Rows per group: each token on TOP_K distinct routed experts drawn uniformly at random,
    and on the shared expert (the last group). Returns a list of GROUPS ints."""
    picks = torch.rand(tokens, E, generator=gen).topk(TOP_K, dim=-1).indices
    counts = torch.bincount(picks.flatten(), minlength=E).tolist()
    return counts + [tokens] * N_SHARED


def offsets(counts, device):
    """`offs` for torch._grouped_mm: the end row of each group, int32 on the device."""
    return torch.tensor(counts, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)


def k_major(stack):
    """[G, N, K] contiguous -> the [G, K, N] view with K as the unit-stride dimension. Both
    grouped ops take B as [G, K, N]; the scaled one requires it column-major (stride(-2) == 1),
    and a K-major B is also how expert weights are stored ([out, in] per expert)."""
    return stack.transpose(-2, -1)


def quantize_rows_fp8(x):
    """e4m3 codes and one f32 scale per row (over the last dimension) of x [..., R, C]."""
    amax = x.abs().amax(dim=-1).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    codes = (x.float() / scale.unsqueeze(-1)).to(torch.float8_e4m3fn)
    return codes, scale


def quantize_stack_fp8(stack):
    """Row-wise e4m3 of a [G, N, K] bf16 stack, a group at a time so the f32 temporaries stay
    one group big. Returns (codes [G, N, K], scales f32 [G, N])."""
    g, n, k = stack.shape
    codes = torch.empty((g, n, k), dtype=torch.float8_e4m3fn, device=stack.device)
    scales = torch.empty((g, n), dtype=torch.float32, device=stack.device)
    for i in range(g):
        codes[i], scales[i] = quantize_rows_fp8(stack[i])
    return codes, scales


class Projection:
    """One projection's weights for every group: bf16, and e4m3 where it could be made."""

    def __init__(self, name, k, n, device, want_fp8):
        self.name, self.k, self.n = name, k, n
        # [G, N, K] as stored, scaled so outputs stay O(1); values do not change the timing
        self.bf16 = torch.empty((GROUPS, n, k), dtype=torch.bfloat16, device=device)
        self.bf16.normal_(0.0, k ** -0.5)
        self.fp8 = self.fp8_scales = None
        self.fp8_error = None
        if want_fp8:
            try:
                self.fp8, self.fp8_scales = quantize_stack_fp8(self.bf16)
            except Exception as err:
                self.fp8_error = f"making e4m3 weights failed: {describe(err)}"


def grouped_mm_bf16():
    return getattr(torch, "_grouped_mm", None)


def scaled_grouped_mm():
    return getattr(torch, "_scaled_grouped_mm", None)


def gemm_row(tokens, proj, experts, kernel, counts, weight_bytes, copy_gbs):
    """A GEMM row before timing: everything that does not depend on the time."""
    active = sum(1 for c in counts if c > 0)
    floor_us = active * proj.k * proj.n * weight_bytes / (copy_gbs * 1e3)
    return {
        "tokens": tokens, "proj": proj.name, "experts": experts, "kernel": kernel,
        "us": None, "active_groups": active, "rows": sum(counts), "floor_us": floor_us,
        "of_floor": None, "tflops": None, "of_dense": None, "error": None,
    }


def finish_gemm_row(row, us, proj, dense):
    row["us"] = us
    row["of_floor"] = row["floor_us"] / us
    row["tflops"] = 2 * row["rows"] * proj.n * proj.k / us / 1e6
    # the dense rate is bf16: an FP8 row's share of it would not be a like-for-like ratio
    if row["experts"] == "bf16" and dense:
        row["of_dense"] = row["tflops"] / dense
    return row


def time_gemm(row, call, tokens, proj, dense):
    """Time call() by graph replay; where the op will not be captured, time it without a graph
    (launch gaps then count) and say so in the row's error, rather than lose the figure."""
    # A grouped GEMM call runs 60 µs or more: a few calls per graph make launch costs vanish,
    # and the router's 50 x 20 would take minutes per row.
    calls, replays = GEMM_CALLS, GEMM_REPLAYS
    try:
        us = graph_us(lambda i: call(), calls, replays)
        return finish_gemm_row(row, us, proj, dense)
    except Exception as capture_err:
        torch.cuda.synchronize()
        why = describe(capture_err)
    try:
        call()  # does the op run at all, outside a capture?
        us = eager_us(call, calls * replays)
    except Exception as err:
        row["error"] = describe(err)
        return row
    row = finish_gemm_row(row, us, proj, dense)
    row["error"] = f"timed without a CUDA graph; the capture failed: {why}"
    return row


def bench_gemm_tokens(tokens, projections, device, copy_gbs, dense, gen):
    counts = route_counts(tokens, gen)
    offs = offsets(counts, device)
    rows = sum(counts)
    out = []
    for proj in projections:
        # activations already sorted by group, as the op's offsets imply
        a = torch.randn(rows, proj.k, dtype=torch.bfloat16, device=device)

        progress(f"gemm T={tokens} {proj.name} bf16")
        row = gemm_row(tokens, proj, "bf16", "torch_grouped_mm", counts, 2, copy_gbs)
        op = grouped_mm_bf16()
        if op is None:
            row["error"] = "torch._grouped_mm is missing from this PyTorch"
        else:
            b = k_major(proj.bf16)
            row = time_gemm(row, lambda: op(a, b, offs=offs, out_dtype=torch.bfloat16),
                            tokens, proj, dense)
        out.append(report_gemm(row))

        progress(f"gemm T={tokens} {proj.name} fp8")
        row = gemm_row(tokens, proj, "fp8", "torch_scaled_grouped_mm", counts, 1, copy_gbs)
        op = scaled_grouped_mm()
        if op is None:
            row["error"] = "torch._scaled_grouped_mm is missing from this PyTorch"
        elif proj.fp8 is None:
            row["error"] = proj.fp8_error or "no e4m3 weights"
        else:
            try:
                # quantized outside the timed call: only the GEMM is on the clock, as for bf16
                a8, a_scale = quantize_rows_fp8(a)
                b8 = k_major(proj.fp8)
                row = time_gemm(
                    row,
                    lambda: op(a8, b8, a_scale, proj.fp8_scales, offs=offs,
                               out_dtype=torch.bfloat16),
                    tokens, proj, dense)
                del a8, a_scale
            except Exception as err:
                row["error"] = describe(err)
        out.append(report_gemm(row))
    return out


def report_gemm(row):
    if row["error"]:
        progress(f"gemm T={row['tokens']} {row['proj']} {row['experts']}: {row['error']}")

    # a figure with an error was timed without a graph; no figure means the op failed
    flag = "" if not row["error"] else ("  no graph" if row["us"] is not None else "  error")

    def f(key, fmt, scale=1.0):
        v = row[key]
        return "-" if v is None else format(v * scale, fmt)

    print(f"{row['tokens']:>6}  {row['proj']:>4}  {row['experts']:>5}  "
          f"{row['active_groups']:>6}  {row['rows']:>7}  {f('us', '.1f'):>10}  "
          f"{f('floor_us', '.1f'):>9}  {f('of_floor', '.1f', 100):>7}  "
          f"{f('tflops', '.1f'):>8}  {f('of_dense', '.1f', 100):>7}"
          + flag, flush=True)
    return row


def bench_gemms(token_counts, device, copy_gbs, dense):
    print()
    print(f"expert GEMMs, {LAYER}: {GROUPS} groups (256 routed, top-{TOP_K} at random, + the "
          "shared expert); bf16 = torch._grouped_mm, fp8 = torch._scaled_grouped_mm (e4m3, "
          "row-wise scales); graph replay; floor = active weights / copy bandwidth; "
          "% dense against dense bf16")
    print(f"{'T':>6}  {'proj':>4}  {'exp':>5}  {'groups':>6}  {'rows':>7}  {'µs':>10}  "
          f"{'floor µs':>9}  {'% floor':>7}  {'TFLOP/s':>8}  {'% dense':>7}")
    want_fp8 = scaled_grouped_mm() is not None and hasattr(torch, "float8_e4m3fn")
    projections = []
    for name, k, n in PROJECTIONS:
        progress(f"making {name} weights ({GROUPS} x {n} x {k} bf16"
                 + (", and e4m3)" if want_fp8 else ")"))
        projections.append(Projection(name, k, n, device, want_fp8))
    gen = torch.Generator().manual_seed(2)
    rows = []
    for t in token_counts:
        try:
            rows.extend(bench_gemm_tokens(t, projections, device, copy_gbs, dense, gen))
        except Exception as err:  # e.g. out of memory for the activations
            progress(f"gemm T={t} failed: {describe(err)}")
            torch.cuda.empty_cache()
    del projections
    torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def describe(err):
    """An exception as one short line (torch's messages can run to pages)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


def driver_version():
    """The driver's CUDA version as nvidia-smi prints it (e.g. "13.0"), else the CUDA version
    this PyTorch was built with, else None."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
        found = re.search(r"CUDA Version:\s*([0-9.]+)", out)
        if found:
            return found.group(1)
    except (OSError, subprocess.SubprocessError):
        pass
    return torch.version.cuda


def finite_or_none(value):
    """JSON has no NaN or infinity (serde refuses them): such figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def refuse_overwrite(path, force):
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")


def write_json(path, report, force):
    """Write report to path through a temporary file in the same folder and a rename, so a
    reader never sees half a file; refuse an existing path unless force."""
    refuse_overwrite(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".torch_peers.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite_or_none(report), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Self-test (CPU)
# ---------------------------------------------------------------------------------------------


def check_router():
    gen = torch.Generator().manual_seed(7)
    t = 12
    bias = torch.rand(E, generator=gen) * 0.1 - 0.05
    for name, dtype in LOGITS_DTYPES:
        logits = (torch.rand(t, E, generator=gen) * 8.0 - 4.0).to(dtype)
        ids, weights = grouped_topk_router(logits, bias, *shared_slot(t, "cpu"))
        assert ids.dtype == torch.int32 and weights.dtype == torch.float32, (ids.dtype,
                                                                             weights.dtype)
        assert tuple(ids.shape) == (t, SLOTS) and tuple(weights.shape) == (t, SLOTS)
        rows = logits.float().tolist()  # the bf16 values exactly, as doubles
        for i in range(t):
            want = reference_router(rows[i], bias.tolist())
            got = dict(zip(ids[i].tolist(), weights[i].tolist()))
            assert len(got) == SLOTS, f"{name} token {i}: repeated ids {ids[i].tolist()}"
            assert set(got) == set(want), f"{name} token {i}: ids {sorted(got)} != {sorted(want)}"
            for e, w in want.items():
                assert abs(got[e] - w) <= 1e-6, f"{name} token {i} expert {e}: {got[e]} != {w}"
            assert ids[i, TOP_K:].tolist() == [SHARED_ID] * N_SHARED
    return f"router matches the reference loop on {t} tokens, f32 and bf16 logits"


def check_writer():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "out.json")
        write_json(path, {"a": 1.0, "b": float("nan")}, force=False)
        with open(path) as f:
            assert json.load(f) == {"a": 1.0, "b": None}
        try:
            write_json(path, {"a": 2.0}, force=False)
        except FileExistsError:
            pass
        else:
            raise AssertionError("the writer overwrote an existing file without force")
        with open(path) as f:
            assert json.load(f)["a"] == 1.0, "a refused write changed the file"
        write_json(path, {"a": 3.0}, force=True)
        with open(path) as f:
            assert json.load(f)["a"] == 3.0
        assert os.listdir(folder) == ["out.json"], f"left behind: {os.listdir(folder)}"
        # the command line too: refused before any measurement, exit code 2
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--json", path],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, f"exit {run.returncode}: {run.stderr}"
        assert "--force" in run.stderr, run.stderr
    return "writer: atomic, NaN -> null, refuses to overwrite (exit 2 from the command line)"


def check_routing_counts():
    counts = route_counts(100, torch.Generator().manual_seed(3))
    assert len(counts) == GROUPS and sum(counts[:E]) == 100 * TOP_K and counts[E] == 100
    offs = offsets(counts, "cpu")
    assert offs.dtype == torch.int32 and offs[-1].item() == 100 * SLOTS
    return "routing: 8 distinct experts a token + the shared group, int32 end offsets"


def check_grouped_mm_layout():
    """The op's layout checks, run on meta tensors of the real shapes (no memory), and its
    result on tiny CPU tensors against a loop of per-group matmuls, an empty group included."""
    notes = []
    op = grouped_mm_bf16()
    if op is None:
        return "torch._grouped_mm missing here: layout not checked"
    for name, k, n in PROJECTIONS:
        rows = 40 * SLOTS
        a = torch.empty(rows, k, dtype=torch.bfloat16, device="meta")
        b = k_major(torch.empty(GROUPS, n, k, dtype=torch.bfloat16, device="meta"))
        offs = torch.empty(GROUPS, dtype=torch.int32, device="meta")
        out = op(a, b, offs=offs, out_dtype=torch.bfloat16)
        assert tuple(out.shape) == (rows, n), out.shape
        scaled = scaled_grouped_mm()
        if scaled is not None:
            a8 = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device="meta")
            b8 = k_major(torch.empty(GROUPS, n, k, dtype=torch.float8_e4m3fn, device="meta"))
            sa = torch.empty(rows, dtype=torch.float32, device="meta")
            sb = torch.empty(GROUPS, n, dtype=torch.float32, device="meta")
            out = scaled(a8, b8, sa, sb, offs=offs, out_dtype=torch.bfloat16)
            assert tuple(out.shape) == (rows, n), out.shape
    notes.append("meta shapes pass the ops' checks" + ("" if scaled_grouped_mm() else
                                                       " (bf16 only: no _scaled_grouped_mm)"))
    gen = torch.Generator().manual_seed(4)
    counts = [3, 0, 5, 1]
    a = torch.randn(sum(counts), 32, generator=gen).to(torch.bfloat16)
    w = torch.randn(len(counts), 16, 32, generator=gen).to(torch.bfloat16)  # [G, N, K]
    try:
        got = op(a, k_major(w), offs=offsets(counts, "cpu"), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as err:
        notes.append(f"no CPU kernel to check values ({describe(err)[:80]})")
        return "; ".join(notes)
    start = 0
    for g, c in enumerate(counts):
        want = a[start:start + c].float() @ w[g].float().T
        assert torch.allclose(got[start:start + c].float(), want, rtol=2e-2, atol=2e-2), g
        start += c
    notes.append("CPU values match per-group matmuls")
    return "; ".join(notes)


def check_fp8_quantize():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    codes, scale = quantize_rows_fp8(x)
    back = codes.float() * scale.unsqueeze(-1)
    assert codes.dtype == torch.float8_e4m3fn and tuple(scale.shape) == (5,)
    assert (back - x.float()).abs().max().item() <= 0.07 * x.float().abs().max().item()
    return "row-wise e4m3 quantization round-trips within e4m3's precision"


def self_test():
    checks = (check_router, check_routing_counts, check_fp8_quantize, check_grouped_mm_layout,
              check_writer)
    failed = 0
    for check in checks:
        try:
            print(f"ok    {check.__name__}: {check()}")
        except Exception as err:
            failed += 1
            print(f"FAIL  {check.__name__}: {describe(err)}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def token_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"token counts must be positive: {text!r}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="OUT", help="where to write the report")
    p.add_argument("--device", default="cuda", help="a CUDA device (default: cuda)")
    p.add_argument("--router-tokens", type=token_list, default=ROUTER_TOKENS,
                   help="comma-separated token counts for the router")
    p.add_argument("--gemm-tokens", type=token_list, default=GEMM_TOKENS,
                   help="comma-separated token counts for the expert GEMMs")
    p.add_argument("--skip-gemm", action="store_true", help="routers and ceilings only")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--self-test", action="store_true",
                   help="check the router and the writer on the CPU, then exit")
    args = p.parse_args(argv)
    if not args.self_test and not args.json:
        p.error("--json OUT is required (or --self-test)")
    return args


def cuda_device(name):
    """The torch.device to measure on, or exit 1 saying why there is none."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        sys.exit(f"torch_peers: bad --device {name!r}: {err}")
    if device.type != "cuda":
        sys.exit(f"torch_peers: the benchmarks need a CUDA device (CUDA graphs and events time "
                 f"them), not {name!r}; on the CPU only --self-test runs")
    if not torch.cuda.is_available():
        sys.exit("torch_peers: no CUDA device: torch.cuda.is_available() is False (this PyTorch "
                 f"built for CUDA {torch.version.cuda}); on the CPU only --self-test runs")
    if device.index is not None:
        torch.cuda.set_device(device)
    return torch.device("cuda", torch.cuda.current_device())


def main(argv):
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    try:  # refuse before the minutes of measuring, not after
        refuse_overwrite(args.json, args.force)
    except FileExistsError as err:
        print(f"torch_peers: {err}", file=sys.stderr)
        return 2
    device = cuda_device(args.device)
    major, minor = torch.cuda.get_device_capability(device)
    report = {
        "tool": "torch_peers",
        "torch_version": torch.__version__,
        "date": now_rfc3339(),
        "device": torch.cuda.get_device_name(device),
        "arch": f"sm_{major}{minor}",
        "driver": driver_version(),
        "layer": LAYER,
        "copy_gbs": None,
        "dense_bf16_tflops": None,
        "routers": [],
        "gemms": [],
    }
    print(f"device: {report['device']} ({report['arch']}), torch {torch.__version__}, "
          f"CUDA {report['driver']}")
    progress("copy bandwidth")
    copy_gbs = copy_bandwidth(device)
    report["copy_gbs"] = copy_gbs
    print(f"device copy bandwidth: {copy_gbs:.0f} GB/s (bytes read + written)")
    progress("dense bf16 GEMM")
    dense = dense_bf16_tflops(device)
    report["dense_bf16_tflops"] = dense
    m, n, k = DENSE_MNK
    print(f"dense bf16 (torch.mm {m} x {n} x {k}): {dense:.0f} TFLOP/s")

    report["routers"] = bench_routers(args.router_tokens, device, copy_gbs)
    if not args.skip_gemm:
        report["gemms"] = bench_gemms(args.gemm_tokens, device, copy_gbs, dense)

    try:
        write_json(args.json, report, args.force)
    except FileExistsError as err:  # appeared while we measured
        print(f"torch_peers: {err}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
