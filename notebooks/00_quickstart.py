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
# # 00 · Quickstart: where does CLIP look?
#
# **Question.** For an image and a few class names, which pixels does CLIP match to each name — and
# does CLIP Surgery change the answer?
#
# **Reproduces.** The idea of the paper's opening figure (raw CLIP similarity maps vs CLIP Surgery's),
# on the model and images set below, and the reference demo's higher-resolution setting (the demo runs
# CLIP Surgery on 512 px inputs as well as 224 px).
#
# Everything runs offline on the project's own small CLIP (`toy-vit-v2`, trained on composites of real
# photo cut-outs). For real weights set `SURGERY_MODEL=ViT-B-16 SURGERY_PRETRAINED=openai` (with the
# weights in the Hugging Face cache or a local file: see the README).
#
# **Model.** The shipped default, `toy-vit-v2` (a ViT with ViT-B/16's 14 × 14 token grid, at 112 px;
# model card: `surgery_lib/model/weights/README.md`). `SURGERY_MODEL` picks another (`toy-rn`, or
# `ViT-B-16` with `SURGERY_PRETRAINED=openai`).
#
# **What the toy model can and cannot show.** It can show what the maps look like before and after
# surgery on real photo cut-outs, and measure, against exact masks, whether surgery moves the maps onto
# the objects on these images. It cannot show the paper's numbers: the shipped toy ViT is small (8 blocks, 31
# classes, a few dozen training composites per class), maps of eight images are an illustration with
# wide intervals, and it was trained at one input size, so the reference demo's 512 px setting is a
# test of that model, not of ViT-B/16.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")  # "composites", "composites-new", "real" or a folder
LIMIT = int(os.environ.get("SURGERY_LIMIT", "8"))

# %%
import matplotlib
import pandas as pd

from surgery_lib import SurgeryConfig, explain, load_clip, tower_info
from surgery_lib.analysis import (
    default_source,
    example_images,
    map_records,
    maps_for,
    paired_difference,
    summarise,
)
from surgery_lib.figures import (
    DEFAULT_CMAP,
    Claim,
    Explorer,
    check_claims,
    exercise,
    method_comparison,
    save_figure,
)

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
tower = tower_info(loaded.model)
blocks = tower.num_blocks
print(f"model {loaded.name} ({loaded.pretrained}), input {loaded.image_size} px; {len(items)} images")
tower_class = tower.name.rsplit(".", 1)[-1]
print(f"image tower: {tower_class}, {blocks} block(s); surgery depth {SurgeryConfig.paper().depth}")

# %% [markdown]
# ## One image, raw CLIP vs CLIP Surgery
# The labels are the classes in the image plus one that is not there. Maps are min-max normalised per
# label and drawn with the `inferno` colormap (the figures' default): black and dark purple = least
# similar, through red and orange, to pale yellow = most similar. Bright means high.
#
# "CLIP Surgery" is the paper's preset: *architecture surgery* (v-v self-attention in a second, dual
# path beside the original one, the FFN skipped in that path) in the last 6 blocks, and *feature
# surgery* (below). The paper sets depth 6 on ViT-B/16, i.e. the last 6 of its 12 blocks; the preset
# keeps depth 6 on every model, so on the 8-block toy ViT it covers 6 of 8 blocks — three quarters of
# the tower instead of half (the cell above prints this model's count; a ModifiedResNet has one
# attention pool, which the preset changes).
#
# Feature surgery subtracts the (weighted) mean over a *class list*. That list is the source's whole
# vocabulary (`vocabulary=classes`); only the chosen labels are displayed. Passing just the displayed
# labels would make the mean depend on what is shown — with exactly two labels the two maps would be
# exact complements (`S₂ = −S₁`), each "where the other is not".

# %%
item = max(items, key=lambda it: len(it.masks))
absent = next(c for c in classes if c not in item.masks) if classes else "dog"
labels = [*item.labels[:3], absent] if item.labels else ["dog", "person", absent]
vocabulary = classes or None  # a folder of images has no class list: then the labels are the list
batch = loaded.reference_preprocess(item.image).unsqueeze(0)
methods = {"raw CLIP": SurgeryConfig.off(), "CLIP Surgery": SurgeryConfig.paper()}
results = {
    name: explain(
        loaded.model,
        loaded.tokenizer,
        batch,
        labels,
        cfg,
        (item.image.height, item.image.width),
        vocabulary=vocabulary,
    )
    for name, cfg in methods.items()
}
fig = method_comparison(item.image, {name: r.maps[0] for name, r in results.items()}, labels)
save_figure(fig, "00_quickstart_raw_vs_surgery")
print("in the image:", item.labels)
print(
    "zero-shot probabilities (softmax over the whole class list):",
    {k: round(v, 4) for k, v in zip(labels, results["raw CLIP"].image_scores[0].tolist(), strict=True)},
)

# %% [markdown]
# ## Input size: the reference demo's higher resolution
# The reference demo also runs CLIP Surgery at 512 px instead of ViT-B/16's native 224 px (the positional
# embedding is interpolated; no training). The same ratio here: the native size and about 512/224 times
# it, one image shown, and the map scores (mIoU, mSC: the paper's measures; pointing game: this project's)
# on every image with masks. A larger input gives a finer token grid; whether the scores rise is a
# property of the model (the toy models were trained at one size), so it is measured, image by image,
# against the native size in the claims below.

# %%
native = loaded.image_size
large = 32 * round(native * 512 / 224 / 32)
sizes = {f"{native} px (native)": native, f"{large} px": large}
fig = method_comparison(
    item.image,
    {name: maps_for(loaded, item, labels, SurgeryConfig.paper(), vocabulary, n) for name, n in sizes.items()},
    labels,
)
save_figure(fig, "00_input_size")
scored = [it for it in items if it.masks]  # a folder of images has no masks: nothing to score
records = map_records(loaded, scored, classes, methods)  # raw CLIP and CLIP Surgery at the native size
records += [
    {**r, "method": name}
    for name, n in list(sizes.items())[1:]
    for r in map_records(loaded, scored, classes, {name: SurgeryConfig.paper()}, n)
]
size_names = {f"{native} px (native)": "CLIP Surgery", f"{large} px": f"{large} px"}
by_size = pd.DataFrame(
    [
        {**row, "method": shown}
        for shown, name in size_names.items()
        for row in summarise(records)
        if row["method"] == name
    ],
    columns=["method", "mIoU", "mSC", "pointing_game", "pairs"],
).set_index("method")
by_size.round(1)

# %% [markdown]
# ## The explorer
# Every modification of the surgery config is a control: tick `feature_surgery` off and on, change the
# attention kind or the depth, pick images and labels. Results are cached per (image, config), so
# toggling back is instant; "export figure" writes PNG + PDF to `figures/`. Like the figure above, the
# explorer runs feature surgery over a vocabulary (by default the images' class list, editable in its
# box) and draws only the labels.

# %%
explorer = Explorer(loaded, items, labels[:3], selected=[item.name, items[0].name])
explorer

# %% [markdown]
# ## What you should see
# - Raw CLIP's maps are noisy and often light up the background rather than the object (the paper's
#   "opposite visualization"); CLIP Surgery's maps concentrate on the objects named. Measured below as
#   the per-image difference of the score contrast (SC: mean map inside the mask − outside, ×100; the
#   paper's measure), with a 95 % bootstrap interval over images — with eight images, an illustration;
#   notebook 01 measures it on more images against a map with no information. A paired claim holds
#   when the interval excludes 0 and a sign-flip test gives p < 0.05.
# - Every map is min-max normalised, so even the absent label's map has a "hottest" (pale yellow) spot:
#   whether a class is present is told by the image-level probabilities, not by the map.
# - On a ViT, CLIP Surgery's dual path leaves the class token, hence the image-level probabilities,
#   exactly as in vanilla CLIP: a property of the construction, verified below as a *check*, not a
#   claim. On a ModifiedResNet it does not hold: its class token is the attention pool's output, which
#   the surgery changes (notebook 09 measures the effect on multi-label scores).
# - The toy model has ViT-B/16's 14 × 14 token grid (patch 8 at 112 px instead of patch 16 at 224 px),
#   but far fewer features: some classes are confused.
# - The larger input's effect is measured against the native size; the reference demo's use of 512 px on
#   ViT-B/16 says nothing about a model trained at one size.

# %%
gap = float((results["CLIP Surgery"].image_scores[0] - results["raw CLIP"].image_scores[0]).abs().max())
vit = tower.residual_stream
checks = {}
if vit:
    checks[
        f"dual path: CLIP Surgery keeps vanilla CLIP's image-level probabilities (largest gap {gap:.1e})"
    ] = gap < 1e-4
else:
    print(
        f"ModifiedResNet: the class token comes from the changed attention pool (probability gap {gap:.1e})"
    )
claims = {}
if scored:
    d = paired_difference(records, "CLIP Surgery", "raw CLIP")
    claims["CLIP Surgery raises the score contrast over raw CLIP on these images"] = Claim(
        d["low"] > 0 and d["p"] < 0.05,
        f"mean per-image SC difference {d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}], "
        f"sign-flip p = {d['p']:.3g} ({int(d['units'])} images)",
        f"raw CLIP, mean SC {d['b']:.1f} (no difference: 0)",
    )
    z = paired_difference(records, f"{large} px", "CLIP Surgery")
    zi = paired_difference(records, f"{large} px", "CLIP Surgery", "iou")
    claims[
        f"the reference demo's larger input ({large} px) raises the score contrast over the native size"
    ] = Claim(
        z["low"] > 0 and z["p"] < 0.05,
        f"mean per-image SC difference {z['difference']:+.1f} [{z['low']:+.1f}, {z['high']:+.1f}], "
        f"p = {z['p']:.3g}; IoU difference {zi['difference']:+.1f} [{zi['low']:+.1f}, {zi['high']:+.1f}]",
        f"the native {native} px, mean SC {z['b']:.1f} (no difference: 0)",
    )
print(check_claims(claims, checks=checks) if claims else "no masks: nothing to score")

# %% [markdown]
# ## Exercises
# **1.** In the figure, which colour marks the *most* similar pixel of a map, and which the least?
# Write it down, then run the cell (it prints the colormap's two ends).

# %%
PREDICTION = None  # e.g. "most similar: red"
ends = {v: tuple(round(float(c), 2) for c in matplotlib.colormaps[DEFAULT_CMAP](v)[:3]) for v in (0.0, 1.0)}
print(
    exercise(
        PREDICTION, f"{DEFAULT_CMAP}: 0 → RGB {ends[0.0]}, 1 → RGB {ends[1.0]}", "colour of the maximum?"
    )
)

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** `inferno` runs from black (0, least similar) through purple, red and orange to pale
# yellow (1, most similar): the brightest pixels are the most similar. Red is the middle of the scale.

# %% [markdown]
# **2.** The absent label's map has a maximum of 1 like every other map (min-max). Predict its
# zero-shot probability next to those of the labels in the image.

# %%
PREDICTION = None  # e.g. "absent label below 0.01"
probabilities = dict(zip(labels, results["raw CLIP"].image_scores[0].tolist(), strict=True))
measured = ", ".join(f"{k}: {v:.3f}" for k, v in probabilities.items())
print(exercise(PREDICTION, measured, f"probability of the absent label {absent!r}?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** Usually far below the present labels' (on a small model a confusable class can come
# close): presence is read from the image-level scores, never from a min-max normalised map, which
# always has a hottest spot.
