# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Mechanism: which component turns the maps around?
#
# **Question.** Raw CLIP's similarity maps are often *opposite*: brighter on the background than on
# the object (notebook 01). CLIP Surgery's architecture surgery changes three things at once: v-v
# attention instead of q-k, the FFN skipped, and a second ("dual") path that carries these changes
# while the original path keeps CLIP's class token. Which of them turns the maps around?
#
# **Reproduces.** The paper's architecture-surgery ablation (arXiv 2304.05653 v2: v-v attention on a
# dual path over the last 6 of ViT-B/16's 12 blocks, FFN skipped on the new path; it credits the v-v
# attention for the *opposite* maps and skips the FFNs because they add noise), as a full factorial:
# attention {q-k, v-v, identity} × FFN {kept, skipped} × path {single, dual} × depth, each cell scored with
# mIoU and mSC (the paper's measures) and zero-shot top-1, each with a 95 % bootstrap interval over
# images. Feature surgery is off in every cell, so only the architecture is compared. Then this
# project's own measures: v-v in one block at a time (per-block patching), the per-image correlation of
# attention locality with the score contrast, and the single path's "collapse" shown as the class
# token's drift.
#
# **What the toy model can and cannot show.** `toy-vit-v2` is a small ViT (8 blocks, 14 × 14 tokens)
# trained on synthetic composites: it has every component the question is about, so the factorial is
# well defined on it and its answer is *this model's* answer. It cannot say which component matters on
# ViT-B/16 trained on 400 M image-text pairs: the conclusion below is printed from the numbers, and it
# may differ on another model (run `SURGERY_MODEL=...`). On a ModifiedResNet (`toy-rn`) the only
# attention is the attention pool: there the factorial reduces to the pool's attention kind, and the
# ViT-only parts are skipped with a printed reason.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")
LIMIT = int(os.environ.get("SURGERY_LIMIT", "40"))
RESAMPLES = 1000  # bootstrap resamples of every interval

# %%
import pandas as pd
import torch

from surgery_lib import SurgeryConfig, dual_path_decomposition, load_clip, max_depth, tower_info
from surgery_lib.analysis import (
    attention_locality,
    bootstrap_ci,
    default_source,
    example_images,
    null_records,
    summarise,
)
from surgery_lib.analysis import mechanism as mech
from surgery_lib.figures import (
    Claim,
    check_claims,
    dual_path_diagram,
    exercise,
    interval_lines,
    line_chart,
    save_figure,
    scatter,
    skip_without_class_token,
)

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
items = [it for it in items if it.masks]
is_vit = tower_info(loaded.model).residual_stream
n_blocks = max_depth(loaded.model)
half = max(1, n_blocks // 2)  # the paper's fraction: 6 of 12 blocks
print(f"{loaded.name}: {f'ViT, {n_blocks} blocks' if is_vit else 'ModifiedResNet'}; {len(items)} images")

# %%
# A tower without a class token in its residual stream (SigLIP) cannot run this analysis: it shows its
# attention pool instead, and `make figures` skips the cells below, saying why.
skipped = skip_without_class_token(
    loaded,
    items[0].image,
    "This notebook's factorial reads the class token of the original path and decomposes the stream",
)

# %% [markdown]
# ## How the dual path works
# The original path runs every block unchanged. At the input of the first surgery block `s = L − depth`
# the new path starts as a copy `y = x_s`; each surgery block `i` adds to it the v-v attention output
# computed from the *original* stream's `LN1(x_i)`, and the new path has no FFN. So
# `y_L = x_s + Σ_{i ≥ s} vv(LN1(x_i))`: the FFN outputs of the surgery blocks never enter the dense
# tokens directly (they still shape the later `x_i`, hence the attention inputs). The class token is read
# from the original path, so the image-level prediction is vanilla CLIP's. On a *single* path the same
# changes act on the one stream, the class token included.
#
# The paper applies 6 of ViT-B/16's 12 blocks (half the tower); the diagram shows the same fraction of
# this model's blocks.

# %%
paper = SurgeryConfig.paper().replace(depth=half if is_vit else 1)
fig = dual_path_diagram(n_blocks if is_vit else 12, half if is_vit else 6)
save_figure(fig, "03_dual_path_diagram")

# %% [markdown]
# The same statement checked on this model's forward (its named hook points `blocks.{i}.input`,
# `new_path.{i}.attn_out`, `blocks.{i}.ffn_out`, `final`; `surgery_lib.model.surgery.HOOK_POINTS`), on two
# images. These are checks (true by construction), not findings.

# %%
decomposition = pd.DataFrame(columns=["check", "max_abs_error", "scale"])
if is_vit:
    batch = torch.stack([loaded.reference_preprocess(it.image) for it in items[:2]])
    decomposition = pd.DataFrame(dual_path_decomposition(loaded, batch, paper))
else:
    print(f"{loaded.name} is a ModifiedResNet: no dual path to decompose (its only attention is the pool)")
decomposition

# %% [markdown]
# ## The factorial
# Every cell on the same images; maps over the source's whole class list, each class present scored
# against its mask. Depths are fractions of the tower: 1 block, a quarter, half (the paper's fraction)
# and all blocks. Cells that coincide *by construction* are computed once and marked in `maps_as` /
# `class_token_as`: q-k attention with the FFN kept is raw CLIP on either path (the new path then
# repeats the original one), a dual path of depth 1 has the single path's patch tokens, and the dual
# path's class token is raw CLIP's.

# %%
result = mech.factorial(loaded, items, classes, resamples=RESAMPLES)
table = pd.DataFrame(result.rows).set_index("label")
columns = ["mSC", "mSC_low", "mSC_high", "mIoU", "mIoU_low", "mIoU_high", "zero_shot_top1", "same_top1"]
print(f"{result.forwards} distinct forwards for {len(result.rows)} cells")
table[[*columns, "maps_as", "class_token_as"]].round(1)

# %% [markdown]
# The random-map null (a map with no information, this project's baseline) beside raw CLIP:

# %%
null = summarise(null_records(items, classes, "random", samples=20), intervals=True, resamples=200)[0]
raw = result.row(mech.RAW)
print(
    f"random-map null: mSC {null['mSC']:+.1f} [{null['mSC_low']:+.1f}, {null['mSC_high']:+.1f}], "
    f"mIoU {null['mIoU']:.1f}; raw CLIP: mSC {raw['mSC']:+.1f} "
    f"[{raw['mSC_low']:+.1f}, {raw['mSC_high']:+.1f}]"
)

# %%
if is_vit:
    depths = mech.mechanism_depths(n_blocks)
    for dual in (True, False):
        series = {}
        for attention in mech.MECHANISM_ATTENTIONS:
            for skip in (False, True):
                rows = [result.row(mech.Cell(attention, skip, dual, d)) for d in depths]
                shown = {"qk": "q-k", "vv": "v-v"}.get(attention, attention)
                name = f"{shown}, FFN {'skipped' if skip else 'kept'}"
                series[name] = [(raw["mSC"], raw["mSC_low"], raw["mSC_high"])] + [
                    (r["mSC"], r["mSC_low"], r["mSC_high"]) for r in rows
                ]
        path = "dual" if dual else "single"
        fig = interval_lines(
            [0, *depths],
            series,
            f"depth (surgery blocks of {n_blocks}; 0 = raw CLIP)",
            "mSC (×100)",
            f"{loaded.name}: {path} path",
            reference={"random-map null": null["mSC"]},
        )
        save_figure(fig, f"03_factorial_mSC_{path}_path")
else:
    fig = interval_lines(
        list(range(len(result.rows))),
        {"mSC": [(r["mSC"], r["mSC_low"], r["mSC_high"]) for r in result.rows]},
        "cell: " + ", ".join(f"{i}={r['label']}" for i, r in enumerate(result.rows)),
        "mSC (×100)",
        f"{loaded.name}: attention pool",
        reference={"random-map null": null["mSC"]},
    )
    save_figure(fig, "03_factorial_mSC_attention_pool")

# %% [markdown]
# ## Which component turns the maps around?
# Each component alone and on top of the other, as paired differences on the same images (a bootstrap
# interval over images and a sign-flip test over per-image mean SC), at the paper's fraction (half the
# blocks) and at all blocks. The sentences are computed from the intervals.

# %%
check_depths = sorted({half, n_blocks}) if is_vit else [1]
effects = pd.DataFrame(
    [row for d in check_depths for row in mech.component_effects(result, d, resamples=RESAMPLES)]
)
for d in check_depths:
    print(mech.verdict(result, d, n_blocks, loaded.name), "\n")
effects.set_index(["depth", "comparison"])[["a", "b", "difference", "low", "high", "p"]].round(3)

# %% [markdown]
# ## Per-block patching: v-v attention in ONE block at a time
# Two variants: on the single path with the FFN kept (vanilla CLIP except one block's attention; the
# baseline is raw CLIP), and on a dual path that runs from block 0 with the FFN skipped and q-k attention
# in every other block (the baseline is the factorial's cell "q-k, FFN skipped, dual path, all blocks").
# Which block's attention change moves the maps? (ViT only.)

# %%
if is_vit:
    patch_rows, patch_records = mech.block_patching(
        loaded, items, classes, ("single path, FFN kept", "dual path, FFN skipped"), resamples=RESAMPLES
    )
    patching = pd.DataFrame(patch_rows)
    base = patching[patching.block < 0].set_index("variant")
    fig = interval_lines(
        list(range(n_blocks)),
        {
            v: [(r.mSC, r.mSC_low, r.mSC_high) for r in g[g.block >= 0].itertuples()]
            for v, g in patching.groupby("variant", sort=False)
        },
        "block given v-v attention",
        "mSC (×100)",
        f"{loaded.name}: one block at a time",
        reference={f"baseline: {v}": float(base.loc[v, "mSC"]) for v in base.index},
    )
    save_figure(fig, "03_block_patching")
    best = {}
    for variant, g in patching[patching.block >= 0].groupby("variant", sort=False):
        top = g.loc[g.mSC.idxmax()]
        gain = mech.paired_difference(
            patch_records[(variant, int(top.block))], patch_records[(variant, -1)], resamples=RESAMPLES
        )
        best[variant] = (int(top.block), gain)
        print(
            f"{variant}: the largest mSC with v-v in block {int(top.block)}: {top.mSC:+.1f} "
            f"[{top.mSC_low:+.1f}, {top.mSC_high:+.1f}]; Δ over the baseline (no block patched) "
            f"{gain['difference']:+.1f} "
            f"[{gain['low']:+.1f}, {gain['high']:+.1f}], p = {gain['p']:.3f}"
        )
    display_patching = patching.pivot(index="block", columns="variant", values="mSC").round(1)
else:
    print(
        f"skipped: {loaded.name} is a ModifiedResNet, whose only attention is the attention pool (one layer)"
    )
    display_patching = pd.DataFrame()
display_patching

# %% [markdown]
# ## Attention locality and the score contrast, per image
# The attention mass a query patch keeps in its own region (object queries), with the query's own patch
# *and its 3 × 3 neighbourhood* excluded (self-self attention peaks on the diagonal; identity attention,
# the reference line, then scores chance), in the surgery blocks. Per image, the locality gain of v-v over
# q-k is set against the score-contrast gain of the v-v cell over the q-k cell (dual path, FFN skipped,
# half the blocks). Does the image whose v-v attention is more local also gain more contrast?
# (This project's measure; the paper shows the attention maps only.)

# %%
locality_blocks = list(range(n_blocks - half, n_blocks)) if is_vit else [0]
exclude = "3x3" if is_vit else "self"  # a ModifiedResNet's 7 × 7 grid: a 3 × 3 hole covers most objects
locality = pd.DataFrame(
    attention_locality(loaded, items, locality_blocks, kinds=("qk", "vv", "identity"), exclude=exclude)
)
kinds_mean = locality[locality.region == "object"].groupby("kind")[["own_mass", "chance"]].mean()
print(f"object queries, query's {'3 × 3 neighbourhood' if exclude == '3x3' else 'own patch'} excluded:")
print(kinds_mean.round(3))
if is_vit:
    cell_vv, cell_qk = mech.Cell("vv", True, True, half), mech.Cell("qk", True, True, half)
else:
    cell_vv, cell_qk = mech.Cell("vv", False, False, 1), mech.RAW
pairs = pd.DataFrame(
    mech.locality_contrast(locality.to_dict("records"), result.records[cell_vv], result.records[cell_qk])
)
correlation = None
if len(pairs) >= 3:
    correlation = mech.bootstrap_correlation(pairs.locality_gain, pairs.contrast_gain)
    print(
        f"per-image correlation over {correlation['n']} images: r = {correlation['r']:+.2f} "
        f"[{correlation['low']:+.2f}, {correlation['high']:+.2f}], permutation p = {correlation['p']:.3f}"
    )
    fig = scatter(
        pairs.locality_gain,
        pairs.contrast_gain,
        "own-region mass, v-v − q-k",
        "per-image SC, v-v cell − q-k cell",
        f"{loaded.name}: r = {correlation['r']:+.2f}",
    )
    save_figure(fig, "03_locality_vs_contrast")
else:
    print(f"skipped: only {len(pairs)} images have object queries with patches of their region left")

# %% [markdown]
# ## The single path's "collapse", shown
# The paper says v-v attention on a single path makes the result collapse. Per block: the class token's
# cosine to vanilla CLIP's class token at the same point, and the mean norm of the patch tokens that are
# read (the new path's in dual surgery blocks), v-v with the FFN skipped over half the blocks; block `L`
# is the final stream, `L + 1` the projected output the zero-shot prediction reads. (ViT only.)

# %%
if is_vit:
    batch = torch.stack([loaded.reference_preprocess(it.image) for it in items[:8]])
    collapse = pd.DataFrame(mech.collapse_records(loaded, batch, depth=half))
    stages = list(range(n_blocks + 2))
    for metric, label in (
        ("class_cosine", "class token: cosine to vanilla"),
        ("patch_norm", "mean patch-token norm"),
    ):
        data = {p: g.sort_values("block")[metric].tolist() for p, g in collapse.groupby("path", sort=False)}
        if metric == "patch_norm":
            data = {p: v[: n_blocks + 1] for p, v in data.items()}
        x = stages if metric == "class_cosine" else stages[:-1]
        fig = line_chart(x, data, f"block input (L = {n_blocks}: final, L+1: output)", label, loaded.name)
        save_figure(fig, f"03_collapse_{metric}")
    collapse_table = collapse.pivot(
        index="block", columns="path", values=["class_cosine", "patch_norm"]
    ).round(3)
else:
    print(f"skipped: {loaded.name} has no residual stream of blocks; its class token comes from the pool")
    collapse_table = pd.DataFrame()
collapse_table

# %% [markdown]
# ## What you should see
# - Whether raw CLIP's maps are opposite on average on this model: its mSC against the random-map null
#   (the paper shows opposite maps for ViT-B/16).
# - The factorial separates the components: the printed verdict above says, from the intervals, whether
#   skipping the FFN, v-v attention, or only both together turn the mSC above 0 on this model. The claims
#   test each component alone against raw CLIP and one against the other; a ✗ says this model differs
#   from the paper's reading (which credits the attention).
# - v-v against identity attention: if v-v's self-similarity mattered beyond "no q-k mixing", it should
#   beat identity attention; the claim says whether it does here.
# - Locality: with the 3 × 3 neighbourhood excluded, identity attention scores chance (a check of the
#   measure); the table shows where q-k and v-v sit against it, and the claim tests whether images with
#   a larger locality gain gain more contrast.
# - Collapse: the figure shows where the single path's class token leaves vanilla CLIP's; the claim tests
#   whether zero-shot top-1 falls. The dual path keeps the class token exactly (a check, not a claim).

# %%
if is_vit:
    effect = {r["comparison"]: r for r in mech.component_effects(result, n_blocks, resamples=RESAMPLES)}
    effect_half = {r["comparison"]: r for r in mech.component_effects(result, half, resamples=RESAMPLES)}

    def diff_claim(row: dict, sign: int = 1) -> Claim:
        holds = row["low"] > 0 if sign > 0 else row["high"] < 0
        return Claim(
            holds,
            f"Δ mSC {row['difference']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}] (p = {row['p']:.3f})",
            f"{row['baseline']} (mSC {row['b']:+.1f}); no difference = 0",
        )

    single_all = result.row(mech.Cell("vv", True, False, n_blocks))
    hits = result.hits[mech.Cell("vv", True, False, n_blocks)] - result.hits[mech.RAW]
    drop = bootstrap_ci(100.0 * hits, resamples=RESAMPLES)
    duals = [r for r in result.rows if r["dual_path"] and r["depth"] > 0]
    exact = decomposition[~decomposition.check.str.contains("should differ")]
    claims = {
        "raw CLIP's maps are opposite on average (mSC below the random-map null)": Claim(
            raw["mSC_high"] < null["mSC_low"],
            f"raw mSC {raw['mSC']:+.1f} [{raw['mSC_low']:+.1f}, {raw['mSC_high']:+.1f}]",
            f"random-map null {null['mSC']:+.1f} [{null['mSC_low']:+.1f}, {null['mSC_high']:+.1f}]",
        ),
        f"skipping the FFN alone (q-k attention, dual path, all {n_blocks} blocks) raises mSC": diff_claim(
            effect["FFN skipped alone (q-k attention) vs raw"]
        ),
        f"v-v attention alone (FFN kept, dual path, all {n_blocks} blocks) raises mSC": diff_claim(
            effect["v-v attention alone (FFN kept) vs raw"]
        ),
        f"with the FFN skipped, v-v beats q-k attention (dual path, {half} of {n_blocks} blocks)": diff_claim(
            effect_half["v-v vs q-k attention, FFN skipped"]
        ),
        f"v-v beats identity attention (FFN skipped, dual path, {half} of {n_blocks} blocks)": diff_claim(
            effect_half["v-v vs identity attention, FFN skipped"]
        ),
        f"v-v on a single path over all {n_blocks} blocks lowers zero-shot top-1 (collapse)": Claim(
            drop[2] < 0,
            f"top-1 {single_all['zero_shot_top1']:.0f} % "
            f"(Δ {drop[0]:+.0f} [{drop[1]:+.0f}, {drop[2]:+.0f}] points)",
            f"raw CLIP {raw['zero_shot_top1']:.0f} % (same images)",
        ),
    }
    checks = {
        f"the dual path's zero-shot prediction is raw CLIP's in every dual cell ({len(duals)} cells)": all(
            r["same_top1"] == 100.0 for r in duals
        ),
        f"the dual path is the sum it is drawn as (largest error {exact.max_abs_error.max():.1e})": bool(
            (exact.max_abs_error <= 1e-4 * exact.scale).all()
        ),
        "q-k attention with the FFN kept is raw CLIP on either path (computed once)": all(
            result.row(mech.Cell("qk", False, p, d))["maps_as"] == "raw CLIP"
            for p in (False, True)
            for d in mech.mechanism_depths(n_blocks)
        ),
    }
    checks["the dual path's class token stays vanilla CLIP's in every block (cosine 1)"] = bool(
        (collapse[collapse.path == "dual"].class_cosine > 1 - 1e-5).all()
    )
else:
    effect = {r["comparison"]: r for r in mech.component_effects(result, 1, resamples=RESAMPLES)}
    vv = effect["v-v attention pool vs raw"]
    claims = {
        "raw CLIP's maps are opposite on average (mSC below the random-map null)": Claim(
            raw["mSC_high"] < null["mSC_low"],
            f"raw mSC {raw['mSC']:+.1f} [{raw['mSC_low']:+.1f}, {raw['mSC_high']:+.1f}]",
            f"random-map null {null['mSC']:+.1f} [{null['mSC_low']:+.1f}, {null['mSC_high']:+.1f}]",
        ),
        "v-v attention in the attention pool raises mSC": Claim(
            vv["low"] > 0,
            f"Δ mSC {vv['difference']:+.1f} [{vv['low']:+.1f}, {vv['high']:+.1f}] (p = {vv['p']:.3f})",
            f"raw CLIP (mSC {vv['b']:+.1f}); no difference = 0",
        ),
    }
    checks = {}
if correlation is not None:
    claims["images whose v-v attention is more local than q-k gain more contrast"] = Claim(
        correlation["low"] > 0,
        f"Pearson r {correlation['r']:+.2f} [{correlation['low']:+.2f}, {correlation['high']:+.2f}] over "
        f"{correlation['n']} images (permutation p = {correlation['p']:.3f})",
        "no correlation (r = 0)",
    )
print(check_claims(claims, checks=checks))

# %% [markdown]
# ## Exercises
# **1.** Predict: on the dual path with the FFN skipped over *all* blocks, which attention gives the
# highest mSC: q-k, v-v or identity? Write it down, then run the cell.

# %%
PREDICTION = None  # e.g. "vv"
depth = n_blocks if is_vit else 1
cells = {a: mech.Cell(a, is_vit, is_vit, depth) for a in mech.MECHANISM_ATTENTIONS}
scores = {a: round(result.row(c)["mSC"], 1) for a, c in cells.items()}
print(exercise(PREDICTION, scores, "Which attention gives the highest mSC with the FFN skipped, all blocks?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** On `toy-vit-v2` v-v and identity attention come out close, both well above q-k: once the
# FFN is skipped, removing q-k's mixing across regions matters more than the form of the self-similarity.
# The exact numbers are printed above; another model may order v-v and identity differently.

# %% [markdown]
# **2.** Predict: how many percentage points of zero-shot top-1 does the *single* path lose with v-v
# attention and the FFN kept over half the blocks, and how many does the dual path lose?

# %%
PREDICTION = None  # e.g. (-30, 0)
if is_vit:
    lost = tuple(
        round(result.row(mech.Cell("vv", False, p, half))["zero_shot_top1"] - raw["zero_shot_top1"], 1)
        for p in (False, True)
    )
else:
    lost = "no dual path on a ModifiedResNet"
print(exercise(PREDICTION, lost, "Zero-shot top-1 change (single path, dual path)?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** The dual path loses nothing, by construction (its class token is read from the original
# path). The single path's class token passes through the surgery blocks and drifts (the collapse figure):
# on `toy-vit-v2` it loses tens of points.

# %% [markdown]
# **3.** Predict: with the query's 3 × 3 neighbourhood excluded, what own-region mass does identity
# attention keep for object queries, compared with chance?

# %%
PREDICTION = None  # e.g. "the same as chance"
identity = kinds_mean.loc["identity"] if "identity" in kinds_mean.index else None
measured = (
    None if identity is None else (round(float(identity.own_mass), 3), round(float(identity.chance), 3))
)
print(exercise(PREDICTION, measured, "Identity attention's own-region mass vs chance (object queries)?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** Exactly chance: identity attention puts all its mass on the query itself, which is
# excluded; `attention_locality` then scores the region's share of the remaining patches. That is why the
# exclusion makes locality a measure that can fail: with the query counted, identity would score 1.
