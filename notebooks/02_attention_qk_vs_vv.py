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
# # 02 · q-k vs v-v attention: which tokens does a token attend to?
#
# **Question.** Why do raw CLIP's maps point at the background (the paper's *opposite* visualization)?
# The paper's answer: in CLIP's q-k self-attention a token attends to tokens of *other* regions
# (inconsistent semantic regions), while v-v (and q-q, k-k) attention keeps it within its own region.
# The paper names a second, separate problem, the *noisy* activations, and another cause for it:
# redundant features shared by all classes (notebook 05). This notebook is about the first.
#
# **Reproduces.** The paper's figure of one query token's attention under q-k and under v-v
# self-attention (here with q-q and k-k as well), and a measure behind it: the attention mass a query
# keeps inside its own region (object or background, from masks), per block and attention kind.
# That *own-region attention mass* is this project's measure, not the paper's: the paper shows the
# attention maps, and its numbers (mIoU, mSC) score the similarity maps an attention kind produces
# (notebooks 01, 06, 07).
#
# **Model.** `toy-vit-v2`: the analysis reads a ViT's self-attention blocks (`toy-rn`'s only
# attention is its attention pool).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")  # a ViT: the analysis needs its blocks
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")
LIMIT = int(os.environ.get("SURGERY_LIMIT", "16"))

# %%
import pandas as pd
import seaborn as sns

from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval.analysis import attention_locality
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import figure_style, save_figure
from surgery_lib.ui.widgets import AttentionExplorer, max_depth

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
items = [it for it in items if it.masks]
blocks = list(range(max_depth(loaded.model)))

# %% [markdown]
# ## One query token, four kinds of attention
# Move the sliders: the block, and the row and column of the query patch (marked +). Each panel shows
# where that token's attention goes (heads averaged, min-max normalised).

# %%
explorer = AttentionExplorer(loaded, items[0].image, block=-1)
save_figure(explorer.figure(), "02_attention_kinds_last_block")
explorer

# %% [markdown]
# ## How much attention stays in the query's own region (this project's measure)
# For each image: query patches from each object and from the background; "own mass" is the attention
# on the *other* patches of the query's region (class token and the query's own patch left out, the
# rest renormalised). The query's own patch is left out because self-self attention (v-v, q-q, k-k)
# peaks on the diagonal: counting it would make those kinds look local by construction — identity
# attention would score 1.0; with it left out, identity attention scores exactly the chance level.
# The dashed line is that chance level (the region's share of the patches left), the null this
# measure is compared with. `attention_locality(..., exclude="3x3")` also leaves out the query's
# neighbours; `"none"` gives the earlier, self-including measure.

# %%
frame = pd.DataFrame(attention_locality(loaded, items, blocks))
summary = frame.groupby(["region", "kind", "block"])[["own_mass", "chance"]].mean().reset_index()
with figure_style():
    grid = sns.relplot(
        data=summary,
        x="block",
        y="own_mass",
        hue="kind",
        col="region",
        kind="line",
        marker="o",
        height=2.6,
        aspect=1.1,
    )
    for ax, region in zip(grid.axes.flat, grid.col_names, strict=True):
        chance = summary[summary.region == region].chance.mean()
        ax.axhline(chance, color="grey", linestyle="--", linewidth=0.8)
    grid.set_axis_labels("block", "attention mass in own region")
save_figure(grid.figure, "02_attention_locality")
# %%
means = frame.groupby(["region", "kind"])[["own_mass", "chance"]].mean().unstack("kind")
means.round(3)

# %% [markdown]
# ## What you should see
# - Object queries: q-k attention keeps the least mass in the object — it spreads over other regions,
#   the paper's "inconsistent semantic regions" — while v-v, q-q and k-k keep clearly more. This is the
#   paper's explanation of the *opposite* raw maps, and why the surgery uses v-v attention. It does not
#   explain the *noise*: that comes from redundant features every class shares, which feature surgery
#   removes (notebook 05).
# - Background queries keep most of their attention in the background for every kind (the background
#   covers most patches, so chance is high too).
# - The toy ViT has 8 blocks and a 14 × 14 grid (ViT-B/16: 12 blocks, 14 × 14); its curves are noisier.

# %%
own = means["own_mass"]
print(
    check_claims(
        {
            f"object queries: v-v keeps more in the object than q-k ({own.loc['object', 'vv']:.2f} vs "
            f"{own.loc['object', 'qk']:.2f})": own.loc["object", "vv"] > own.loc["object", "qk"],
            "object queries: q-k keeps the least of the four kinds": own.loc["object"].idxmin() == "qk",
            "object queries: v-v stays above chance": own.loc["object", "vv"]
            > means["chance"].loc["object", "vv"],
        }
    )
)
