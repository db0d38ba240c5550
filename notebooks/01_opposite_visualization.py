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
# # 01 · Opposite visualization: raw CLIP prefers the background
#
# **Question.** Do raw CLIP similarity maps highlight the object a label names, or its surroundings?
#
# **Reproduces.** The paper's "opposite visualization" observation (its figures of raw CLIP maps that
# are brighter on the background than on the object) and the spirit of its explainability table (mIoU
# and mSC of raw CLIP vs CLIP Surgery across backbones), measured against ground-truth masks: the score
# contrast SC = mean map value inside the mask − mean outside (×100); SC < 0 means the map points at
# the background.
#
# Measures: mIoU and mSC are the paper's; the pointing game (is the map's hottest pixel on the object?)
# and the "opposite" share (the share of (image, class) pairs with SC < 0) are this project's own, and
# so are the nulls every number is set against (the paper reports none): a *random map* (noise on the
# model's token grid, upsampled as CLIP's maps are), a *centre prior* (a Gaussian at the image centre)
# and the pointing game's chance (the object's share of the image; for a token-grid map the share of
# token-cell centres inside the object).
#
# **What the toy models can and cannot show.** They can show the *direction* of the effect on real
# photo cut-outs scored against exact masks, and whether it stands out from a map with no information.
# They cannot show the paper's magnitudes: they are small models trained on 31 classes of composites
# (toy-rn has only a 4 × 4 token grid), and a few dozen images give wide intervals.
#
# **Model.** Both shipped models, `toy-vit-v2` (ViT) and `toy-rn` (ModifiedResNet): the paper finds
# the opposite visualization in CNNs and ViTs alike. `SURGERY_BACKBONES` picks others.

# %% tags=["parameters"]
import os

# SURGERY_BACKBONES, else SURGERY_MODEL, else both shipped toy models # e.g. "ViT-B-16,RN50"
DEFAULT_BACKBONES = "toy-vit-v2,toy-rn"
BACKBONES = os.environ.get("SURGERY_BACKBONES", os.environ.get("SURGERY_MODEL", DEFAULT_BACKBONES)).split(",")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")  # for every backbone but the toy models
IMAGES = os.environ.get("SURGERY_IMAGES", "")  # "composites", "composites-new", "real"; "" = per model
LIMIT = int(os.environ.get("SURGERY_LIMIT", "40"))

# %%
import pandas as pd
import seaborn as sns
import torch

from surgery_lib import SurgeryConfig, load_clip, pretrained_for
from surgery_lib.analysis import (
    area_chance,
    cell_centre_chance,
    compare_interval,
    default_source,
    example_images,
    map_records,
    maps_for,
    null_meter,
    null_records,
    paired_difference,
    pointing_chance,
    summarise,
    token_grid,
    with_intervals,
)
from surgery_lib.figures import Claim, check_claims, exercise, figure_style, panel_grid, save_figure

METHODS = {"raw CLIP": SurgeryConfig.off(), "CLIP Surgery": SurgeryConfig.paper()}

# %% [markdown]
# ## Raw maps of each image's own object
# One row per image, the map of the class it contains: raw CLIP next to CLIP Surgery (feature surgery
# over the source's whole class list, as in the table below).

# %%
loaded = load_clip(BACKBONES[0], pretrained=pretrained_for(BACKBONES[0], PRETRAINED))
classes, items = example_images(IMAGES or default_source(BACKBONES[0]), limit=LIMIT)
shown = [it for it in items if it.masks][:4]
columns = {name: [] for name in METHODS}
for it in shown:
    for name, config in METHODS.items():
        columns[name].append(maps_for(loaded, it, [it.labels[0]], config, vocabulary=classes)[:, :, 0])
fig = panel_grid([it.image for it in shown], columns, [f"{it.name}: {it.labels[0]}" for it in shown])
save_figure(fig, "01_opposite_examples")
# %% [markdown]
# ## Measured on every image with masks, for every backbone, beside the nulls
# Maps over the source's whole class list; each class present in an image is scored against its mask.
# This is this project's protocol: the paper does not publish its own (threshold, class list per image;
# see notebook 08). mIoU, mSC and pointing game are averaged per class, then over classes; "opposite %"
# is the share of (image, class) pairs with SC < 0. The null rows score maps with no information on
# the same pairs: `null:random` (20 noise maps per pair, drawn on the backbone's token grid) and
# `null:centre` (the centre prior). A map with no information has SC < 0 about half the time, so the
# opposite share is a finding only where it differs from the random map's.

# %%
records, chance = [], {}
for backbone in BACKBONES:
    loaded = load_clip(backbone, pretrained=pretrained_for(backbone, PRETRAINED))
    classes, items = example_images(IMAGES or default_source(backbone), limit=LIMIT)
    grid = token_grid(loaded)
    for r in map_records(loaded, items, classes, METHODS):
        records.append({"backbone": backbone, **r})
    for kind in ("random", "centre"):
        for r in null_records(items, classes, kind, samples=20, grid=grid):
            records.append({"backbone": backbone, **r})
    chance[backbone] = {
        "grid": grid,
        "area": pointing_chance(items, classes),
        "cells": pointing_chance(items, classes, grid),
    }
rows = summarise(records, by=("backbone", "method"), intervals=True, resamples=500)
table = pd.DataFrame(rows).set_index(["backbone", "method"])
metrics = ["mIoU", "mSC", "pointing_game", "opposite_rate"]
pd.DataFrame(with_intervals(rows, metrics))[
    ["backbone", "method", *[f"{m} (95 % CI)" for m in metrics], "pairs"]
]

# %% [markdown]
# The brackets: 95 % bootstrap intervals over images (this project's addition; 500 resamples of the
# images, each summary recomputed). With a few images they are wide. For `null:random` the pairs count
# the noise draws. The pointing game's chance, per backbone:

# %%
for backbone, c in chance.items():
    print(
        f"{backbone}: token grid {c['grid'][0]} × {c['grid'][1]}; pointing chance {c['area']:.1f} % (object "
        f"area), {c['cells']:.1f} % (share of token-cell centres in the object)"
    )

# %%
frame = pd.DataFrame([r for r in records if r["method"] in METHODS])
with figure_style():
    grid = sns.catplot(
        data=frame, x="method", y="score_contrast", col="backbone", kind="box", height=2.6, aspect=0.9
    )
    grid.refline(y=0.0, color="black", linewidth=0.8)
    grid.set_axis_labels("", "score contrast SC (×100)")
save_figure(grid.figure, "01_score_contrast_distribution")

# %% [markdown]
# ## Raw CLIP vs CLIP Surgery, image by image
# The same images scored by both methods: per image the mean SC (and IoU) over its classes, then the
# mean difference with a 95 % bootstrap interval over images and a paired sign-flip test (this
# project's test; the paper compares means). A paired comparison removes what the two share (how hard
# each image is), so it is tighter than comparing the two intervals of the table. A paired claim holds
# when the interval excludes 0 *and* p < 0.05 (with six images the smallest possible p is 1/32).

# %%
paired = {
    (b, metric): paired_difference(
        [r for r in records if r["backbone"] == b], "CLIP Surgery", "raw CLIP", metric
    )
    for b in BACKBONES
    for metric in ("score_contrast", "iou")
}
pd.DataFrame(
    [{"backbone": b, "measure": m, **{k: round(v, 3) for k, v in d.items()}} for (b, m), d in paired.items()]
)

# %% [markdown]
# ## What you should see
# - Raw CLIP: on ViT-B/16 the paper reports a *negative mean* score contrast — on average its maps are
#   brighter outside the objects than inside. A negative mean does not say that most maps are opposite;
#   the share of opposite maps is this project's measure, and a map with no information is opposite
#   about half the time, so only a share above the random map's is evidence of "opposite"
#   visualization. The lines printed below say, per backbone, where this run stands.
# - CLIP Surgery: the paper reports higher mSC and mIoU than raw CLIP for every backbone; here the
#   comparison is paired per image, with an interval.
# - The pointing game is compared with its chance: the random map's hit rate on the token grid (close to
#   the share of token-cell centres inside the object), not 0.
# - Small models are noisier than ViT-B/16: weaker absolute numbers, wider intervals.


# %%
def rate(row: pd.Series) -> str:
    return f"{row.opposite_rate:.0f} % [{row.opposite_rate_low:.0f}, {row.opposite_rate_high:.0f}]"


claims = {}
for b in BACKBONES:
    raw, surgery = table.loc[(b, "raw CLIP")], table.loc[(b, "CLIP Surgery")]
    null, centre = table.loc[(b, "null:random")], table.loc[(b, "null:centre")]
    null_text = f"random-map null {rate(null)}; centre prior {centre.opposite_rate:.0f} %"
    for name, row in (("raw CLIP", raw), ("CLIP Surgery", surgery)):
        verdict = compare_interval(row.opposite_rate_low, row.opposite_rate_high, null.opposite_rate)
        print(
            f"{b}: {name}'s opposite share {rate(row)} is {verdict} the random map's "
            f"({null.opposite_rate:.0f} %)"
        )
    claims[f"{b}: raw CLIP's maps are opposite (SC < 0) more often than a map with no information"] = Claim(
        raw.opposite_rate_low > null.opposite_rate_high, f"opposite share {rate(raw)}", null_text
    )
    claims[f"{b}: CLIP Surgery's maps are opposite less often than a map with no information"] = Claim(
        surgery.opposite_rate_high < null.opposite_rate_low, f"opposite share {rate(surgery)}", null_text
    )
    for metric, label in (("score_contrast", "score contrast"), ("iou", "IoU")):
        d = paired[(b, metric)]
        claims[f"{b}: CLIP Surgery raises the {label} over raw CLIP on the same images"] = Claim(
            d["low"] > 0 and d["p"] < 0.05,
            f"mean per-image difference {d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}], "
            f"sign-flip p = {d['p']:.3g} ({int(d['units'])} images)",
            f"raw CLIP {d['b']:.1f} (no difference: 0)",
        )
    c = chance[b]
    claims[f"{b}: CLIP Surgery's hottest pixel lands on the object more often than chance"] = Claim(
        surgery.pointing_game_low > null.pointing_game_high,
        f"pointing game {surgery.pointing_game:.0f} % [{surgery.pointing_game_low:.0f}, "
        f"{surgery.pointing_game_high:.0f}]",
        f"random-map null {null.pointing_game:.0f} % [{null.pointing_game_low:.0f}, "
        f"{null.pointing_game_high:.0f}] (cell-centre chance {c['cells']:.0f} %, object area "
        f"{c['area']:.0f} %); raw CLIP {raw.pointing_game:.0f} %",
    )
print(check_claims(claims))

# %% [markdown]
# ## Exercises
# **1.** A map with no information — noise on a 14 × 14 token grid — scored against a square object that
# covers 6 % of the image. Predict its opposite share (SC < 0) over 200 draws, then run the cell.

# %%
PREDICTION = None  # e.g. "about 50 %"
square = torch.zeros(112, 112, dtype=torch.bool)
square[40:67, 40:67] = True
noise = null_meter([("square", square)], "random", samples=200, grid=(14, 14)).summary()
print(exercise(PREDICTION, f"{noise['opposite_rate']:.0f} % opposite", "opposite share of a random map?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** About 50 %: a map that knows nothing about the object is as likely to be brighter
# outside it as inside (SC is symmetric around 0). This is why an opposite share of, say, 55 % is no
# evidence of "opposite visualization": it must be compared with this null, with its interval.

# %% [markdown]
# **2.** A thin vertical strip, 4 pixels wide, between two token-cell centres of a 14 × 14 grid on a
# 112 px image. Predict the pointing-game chance of a random *pixel* and of a random *token-grid* map.

# %%
PREDICTION = None  # e.g. "pixel 4 %, token grid 4 %"
strip = torch.zeros(112, 112, dtype=torch.bool)
strip[:, 6:10] = True  # cell centres are at x = 4, 12, 20, ...
measured = (
    f"pixel {100 * area_chance(strip):.1f} %, token grid {100 * cell_centre_chance(strip, (14, 14)):.1f} %"
)
print(exercise(PREDICTION, measured, "pointing chance of a thin strip?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** A random pixel lands in the strip 3.6 % of the time (its area), but a map upsampled
# from a token grid peaks at (about) a cell centre, and no centre lies in the strip: its chance is 0.
# Chance levels depend on the resolution the map was made at.

# %% [markdown]
# **3.** The first image of the figure above: predict the sign of raw CLIP's score contrast for its own
# class, and of CLIP Surgery's.

# %%
PREDICTION = None  # e.g. "raw negative, surgery positive"
first = [
    r
    for r in records
    if r["backbone"] == BACKBONES[0] and r["image"] == shown[0].name and r["class"] == shown[0].labels[0]
]
measured = ", ".join(f"{r['method']} SC {r['score_contrast']:+.1f}" for r in first if r["method"] in METHODS)
print(
    exercise(PREDICTION, measured, f"{BACKBONES[0]}, {shown[0].name}: sign of SC for {shown[0].labels[0]!r}?")
)

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** It depends on the image: the table's opposite share says how often raw CLIP is
# negative on this model, and the random map says how often a guess would be. One image is an
# anecdote; the claims above are about all of them.
