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
# and the "opposite" share (the share of (image, class) pairs with SC < 0) are this project's own.
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

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval.analysis import map_records, maps_for, summarise
from surgery_lib.eval.tables import with_intervals
from surgery_lib.model.loading import load_clip
from surgery_lib.model.shipped import pretrained_for
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import figure_style, panel_grid, save_figure

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
# ## Measured on every image with masks, for every backbone
# Maps over the source's whole class list; each class present in an image is scored against its mask.
# This is this project's protocol: the paper does not publish its own (threshold, class list per image;
# see notebook 07). mIoU, mSC and pointing game are averaged per class, then over classes; "opposite %"
# is the share of (image, class) pairs with SC < 0.

# %%
records = []
for backbone in BACKBONES:
    loaded = load_clip(backbone, pretrained=pretrained_for(backbone, PRETRAINED))
    classes, items = example_images(IMAGES or default_source(backbone), limit=LIMIT)
    for r in map_records(loaded, items, classes, METHODS):
        records.append({"backbone": backbone, **r})
rows = summarise(records, by=("backbone", "method"), intervals=True)
table = pd.DataFrame(rows).round(1)
metrics = ["mIoU", "mSC", "pointing_game", "opposite_rate"]
pd.DataFrame(with_intervals(rows, metrics))[
    ["backbone", "method", *[f"{m} (95 % CI)" for m in metrics], "pairs"]
]

# %% [markdown]
# The brackets: 95 % bootstrap intervals over images (this project's addition; 1000 resamples of the
# images, each summary recomputed). With a few images they are wide.

# %%
frame = pd.DataFrame(records)
with figure_style():
    grid = sns.catplot(
        data=frame, x="method", y="score_contrast", col="backbone", kind="box", height=2.6, aspect=0.9
    )
    grid.refline(y=0.0, color="black", linewidth=0.8)
    grid.set_axis_labels("", "score contrast SC (×100)")
save_figure(grid.figure, "01_score_contrast_distribution")
# %% [markdown]
# ## What you should see
# - Raw CLIP: a large share of (image, class) pairs has SC < 0. On ViT-B/16 the paper reports a
#   *negative mean* score contrast for raw CLIP — on average its maps are brighter outside the objects
#   than inside; a negative mean does not say that most maps are opposite, and the share of opposite
#   maps is this project's measure, not the paper's. On the shipped toy models this share is about
#   three quarters (toy-vit-v2, whose raw mean SC is negative as on ViT-B/16) and over half (toy-rn) on
#   the held-out composites.
# - CLIP Surgery: mSC and mIoU rise and the opposite share falls, for every backbone.
# - Small models are noisier than ViT-B/16: weaker absolute numbers, the same direction. The cell below
#   checks each claim on the backbones and images this notebook ran on.

# %%
s = table.set_index(["backbone", "method"])
claims = {}
for b in BACKBONES:
    raw, surgery = s.loc[(b, "raw CLIP")], s.loc[(b, "CLIP Surgery")]
    claims[f"{b}: raw maps are opposite for {raw.opposite_rate:.0f} % of pairs (≥ 20 %)"] = (
        raw.opposite_rate >= 20
    )
    claims[f"{b}: CLIP Surgery raises mSC ({raw.mSC:.1f} → {surgery.mSC:.1f})"] = surgery.mSC > raw.mSC
    claims[f"{b}: CLIP Surgery raises mIoU ({raw.mIoU:.1f} → {surgery.mIoU:.1f})"] = surgery.mIoU > raw.mIoU
    claims[f"{b}: fewer opposite maps ({raw.opposite_rate:.0f} → {surgery.opposite_rate:.0f} %)"] = (
        surgery.opposite_rate < raw.opposite_rate
    )
print(check_claims(claims))
