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
# attention is its attention pool). **What the toy model can and cannot show**: its attention kinds are
# computed exactly as on ViT-B/16, so whether q-k mixes regions *on this model* is measured; whether a
# more local attention is what turns the maps around is a causal question, answered by notebook 03's
# factorial (on this model), not by locality alone.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")  # a ViT: the analysis needs its blocks
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")
LIMIT = int(os.environ.get("SURGERY_LIMIT", "16"))

# %%
import pandas as pd
import seaborn as sns

from surgery_lib import load_clip, max_depth
from surgery_lib.analysis import (
    attention_locality,
    bootstrap_ci,
    default_source,
    example_images,
    sign_flip_test,
)
from surgery_lib.figures import (
    AttentionExplorer,
    Claim,
    check_claims,
    exercise,
    figure_style,
    save_figure,
    skip_without_class_token,
)

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
items = [it for it in items if it.masks]
blocks = list(range(max_depth(loaded.model)))

# %%
# A tower without a class token in its residual stream (SigLIP) cannot run this analysis: it shows its
# attention pool instead, and `make figures` skips the cells below, saying why.
skipped = skip_without_class_token(
    loaded,
    items[0].image,
    "This notebook compares the attention kinds of each block with the class token's row among the queries",
)

# %% [markdown]
# ## One query token, four kinds of attention
# Move the sliders: the block, and the row and column of the query patch (marked +). Each panel shows
# where that token's attention goes (heads averaged, min-max normalised). **Min-max panels hide how much
# mass stays on the query itself**: a kind that puts 90 % on the diagonal and one that puts 5 % there can
# look alike once each is stretched to [0, 1]. The table after the locality plot prints that diagonal
# mass (`self_mass`) per kind and block.

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
frame = pd.DataFrame(attention_locality(loaded, items, blocks, kinds=("qk", "qq", "kk", "vv", "identity")))
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
# The diagonal mass the min-max panels hide: the share of each query patch's attention (heads
# averaged, class token left out) on the query patch itself, per kind and block (object and background
# queries together). Identity attention is 1 by definition; uniform attention would put 1/N there.

# %%
frame.pivot_table(index="block", columns="kind", values="self_mass", aggfunc="mean").round(3)

# %% [markdown]
# ## What you should see
# - Object queries: the paper says q-k attention spreads over other regions ("inconsistent semantic
#   regions") while v-v keeps a token within its own region. Tested here against two references: chance
#   (the region's share of the patches left, which identity attention scores exactly once the query's
#   own patch is excluded), and q-k itself, per image with a bootstrap interval and a sign-flip test.
#   This is the paper's explanation of the *opposite* raw maps; whether it is what turns the maps around
#   on this model is notebook 03's factorial. It does not explain the *noise*: that comes from redundant
#   features every class shares, which feature surgery removes (notebook 05).
# - Background queries keep most of their attention in the background for every kind (the background
#   covers most patches, so chance is high too).
# - The toy ViT has 8 blocks and a 14 × 14 grid (ViT-B/16: 12 blocks, 14 × 14); its curves are noisier.

# %%
objects = frame[frame.region == "object"]
per_image = objects.groupby(["image", "kind"])[["own_mass", "chance"]].mean().unstack("kind")
own, chance = per_image["own_mass"], per_image["chance"]["vv"]
vv_qk = bootstrap_ci((own["vv"] - own["qk"]).values)
_, vv_qk_p = sign_flip_test(own["vv"], own["qk"])
vv_chance = bootstrap_ci((own["vv"] - chance).values)
qk_chance = bootstrap_ci((own["qk"] - chance).values)


def ci(t: tuple[float, float, float]) -> str:
    return f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]"


print(
    check_claims(
        {
            "object queries: v-v keeps more mass in the object than q-k": Claim(
                vv_qk[1] > 0,
                f"v-v − q-k own mass {ci(vv_qk)} over {len(own)} images (sign-flip p = {vv_qk_p:.3f})",
                f"q-k ({own['qk'].mean():.3f}); no difference = 0",
            ),
            "object queries: v-v keeps more than chance in the object": Claim(
                vv_chance[1] > 0,
                f"v-v − chance {ci(vv_chance)} (v-v {own['vv'].mean():.3f})",
                f"chance = identity attention's score ({chance.mean():.3f})",
            ),
            "object queries: q-k attention leaves the object more than chance would": Claim(
                qk_chance[2] < 0,
                f"q-k − chance {ci(qk_chance)} (q-k {own['qk'].mean():.3f})",
                f"chance = identity attention's score ({chance.mean():.3f})",
            ),
        },
        checks={
            "identity attention scores chance once the query's own patch is excluded": bool(
                (frame[frame.kind == "identity"].own_mass - frame[frame.kind == "identity"].chance)
                .abs()
                .max()
                < 1e-6
            )
        },
    )
)

# %% [markdown]
# ## Exercises
# **1.** Predict: in the last block, what share of a query patch's v-v attention lands on the query
# itself, compared with q-k? (The min-max panels above cannot tell you.)

# %%
PREDICTION = None  # e.g. (0.5, 0.05) for (v-v, q-k)
last = frame[frame.block == blocks[-1]].groupby("kind").self_mass.mean()
print(
    exercise(
        PREDICTION,
        (round(float(last["vv"]), 3), round(float(last["qk"]), 3)),
        "Diagonal mass, last block (v-v, q-k)?",
    )
)

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** Self-self attention compares a token with itself, the largest similarity in its row, so
# v-v puts far more mass on the diagonal than q-k. That is why the locality measure excludes the query's
# patch: counted, it would make v-v "local" by construction.

# %% [markdown]
# **2.** Predict: do background queries keep more or less of their attention in their own region than
# object queries, for q-k? Why might the answer say little about attention?

# %%
PREDICTION = None  # "more" or "less"
qk_regions = frame[frame.kind == "qk"].groupby("region")[["own_mass", "chance"]].mean().round(3)
print(exercise(PREDICTION, qk_regions.to_dict("index"), "q-k own-region mass, background vs object?"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# **Solution.** More, but so is chance: the background covers most patches. Compare each with its own
# chance level (printed next to it), not with each other.
