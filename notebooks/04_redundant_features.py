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
# # 04 · Redundant features: what every class shares
#
# **Question.** Why are raw maps noisy even where attention is fixed? The paper finds that the
# image-text similarity contains *redundant features*: a part of the element-wise products
# `f ⊙ t_j` that is the same for every class `j` (so it says nothing about which class is where), and
# that the empty prompt's features are close to it. Feature surgery subtracts it.
#
# **Reproduces.** The paper's analysis of redundant features (its Fig. 5 idea: feature products across
# classes, the empty-prompt similarity) and the effect of feature surgery on the maps (its Fig. 6 idea).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")
LIMIT = int(os.environ.get("SURGERY_LIMIT", "24"))

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval.analysis import map_records, maps_for, redundancy_records, summarise
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import figure_style, method_comparison, save_figure

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
items = [it for it in items if it.masks]

# %% [markdown]
# ## How much of the feature products all classes share
# Per image token: `shared_fraction = ‖mean_j p_j‖² / mean_j ‖p_j‖²` (1 = every class has the same
# product), the cosine between that shared part and the empty prompt's product, and the similarity
# every class gets from the shared part alone. Tokens from the architecture-surgery path (v-v, no
# feature surgery), split by region.

# %%
frame = pd.DataFrame(redundancy_records(loaded, items, classes))
with figure_style():
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.4))
    sns.histplot(
        data=frame,
        x="shared_fraction",
        hue="region",
        stat="density",
        common_norm=False,
        element="step",
        ax=axes[0],
    )
    sns.histplot(
        data=frame,
        x="empty_cosine",
        hue="region",
        stat="density",
        common_norm=False,
        element="step",
        ax=axes[1],
        legend=False,
    )
    axes[0].set_xlabel("shared fraction of the products")
    axes[1].set_xlabel("cosine(shared part, empty-prompt product)")
    fig.tight_layout()
save_figure(fig, "04_redundant_feature_distributions")
frame.groupby("region")[["shared_fraction", "empty_cosine", "shared_similarity"]].mean().round(3)

# %% [markdown]
# ## Feature surgery on the maps
# The same v-v architecture surgery, without feature surgery, with the class-mean redundancy (the
# paper's multi-class form) and with the empty prompt as the redundancy.

# %%
arch = SurgeryConfig.paper().replace(feature_surgery=False)
variants = {
    "no feature surgery": arch,
    "− class mean": arch.replace(feature_surgery=True),
    "− empty prompt": arch.replace(feature_surgery=True, redundant_features="empty_prompt"),
}
item = max(items, key=lambda it: len(it.masks))
labels = item.labels[:3]
fig = method_comparison(
    item.image, {k: maps_for(loaded, item, labels, c) for k, c in variants.items()}, labels
)
save_figure(fig, "04_feature_surgery_maps")
# %% [markdown]
# ## Measured: noisy activations before and after feature surgery

# %%
records = map_records(loaded, items, classes, variants)
summary = pd.DataFrame(summarise(records)).set_index("method")
summary.round(1)

# %%
with figure_style():
    grid = sns.catplot(
        data=pd.DataFrame(records),
        x="method",
        y="score_contrast",
        kind="violin",
        height=2.6,
        aspect=1.6,
        cut=0,
    )
    grid.refline(y=0.0, color="black", linewidth=0.8)
    grid.set_axis_labels("", "score contrast SC (×100)")
save_figure(grid.figure, "04_feature_surgery_contrast")
# %% [markdown]
# ## What you should see
# - Most of each token's feature product is shared by all classes (a shared fraction well above 1/T),
#   for object and background tokens alike: that part cannot tell classes apart, yet it dominates the
#   raw similarity.
# - The shared part is nearly parallel to the empty prompt's product (cosine close to 1): the paper's
#   observation that redundant features look like the features of an empty text.
# - Subtracting it (either form) raises the score contrast and mIoU over architecture surgery alone on
#   ViT-B/16; the paper uses the class mean for multi-class maps and the empty prompt when there is a
#   single text. On the shipped toy ViT architecture surgery alone already gives clean maps and the
#   further gain is within the noise of a few dozen images (on 60 seen composites: mSC 20.4 → 21.2 with
#   the class mean, 20.2 with the empty prompt; pointing game 47 → 55 / 53 %), so the checks below can
#   go either way. Feature surgery on raw q-k CLIP alone does not fix its maps on this model.

# %%
shared = frame[frame.region != "class token"]
base = summary.loc["no feature surgery"]
claims = {
    f"most of the products is shared (mean fraction {shared.shared_fraction.mean():.2f} > 0.5; "
    f"1/T = {1 / len(classes):.2f})": shared.shared_fraction.mean() > 0.5,
    f"the shared part is close to the empty prompt's (mean cosine {shared.empty_cosine.mean():.2f} > 0.9)": (
        shared.empty_cosine.mean() > 0.9
    ),
}
for name in ("− class mean", "− empty prompt"):
    row = summary.loc[name]
    claims[f"feature surgery '{name}' raises mSC ({base.mSC:.1f} → {row.mSC:.1f})"] = row.mSC > base.mSC
    claims[f"feature surgery '{name}' raises mIoU ({base.mIoU:.1f} → {row.mIoU:.1f})"] = row.mIoU > base.mIoU
print(check_claims(claims))
