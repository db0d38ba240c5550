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
# # 05 · Redundant features: what every class shares
#
# **Question.** Why are raw maps *noisy*? (Their being *opposite* — pointing at the background — is the
# q-k attention's doing: notebook 02.) The paper finds that the image-text similarity contains
# *redundant features*: a part of the element-wise products `f ⊙ t_j` that is the same for every class
# `j` (so it says nothing about which class is where), and that the empty prompt `""` behaves like it:
# even the empty prompt's own map lights up regions, as the class maps do. Feature surgery subtracts it.
#
# **Reproduces.** The paper's analysis of redundant features (its figure of class maps beside the empty
# prompt's map; the feature products shared across classes) and the effect of feature surgery on the
# maps, with controls the paper does not show: a random direction, a held-out class, the size of the
# class list, and feature surgery on raw q-k CLIP.
#
# Measures: mIoU and mSC are the paper's; the pointing game and the share of "opposite" maps (SC < 0)
# are this project's own, as are the shared fraction and the cosines of the first section.
#
# **Model.** `toy-vit-v2`, the shipped default (feature surgery is not ViT-specific; `SURGERY_MODEL=toy-rn`
# runs it on the ModifiedResNet).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")
LIMIT = int(os.environ.get("SURGERY_LIMIT", "24"))

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from surgery_lib.config import METHODS, SurgeryConfig
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval.analysis import (
    empty_prompt_map,
    map_records,
    maps_for,
    redundancy_controls,
    redundancy_records,
    redundancy_subtraction_records,
    summarise,
    vocabulary_sweep_records,
)
from surgery_lib.maps.explain import encode_image_tokens, explain
from surgery_lib.maps.features import class_weights
from surgery_lib.maps.text import text_features
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import figure_style, line_chart, method_comparison, save_figure

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
items = [it for it in items if it.masks]

# %% [markdown]
# ## The empty prompt's own map
# The paper's observation, on one image: the maps of the classes in it, of one absent class, and of the
# empty prompt `""` (its prompt ensemble, the same 85 templates with an empty name), for raw CLIP and for
# architecture surgery without feature surgery. If the empty prompt — which names nothing — lights up
# the same regions as the class maps, those regions are not class evidence but what every text shares.

# %%
item = max(items, key=lambda it: len(it.masks))
absent = next(c for c in classes if c not in item.masks)
labels = [*item.labels[:3], absent]
towers = {
    "raw CLIP": SurgeryConfig.off(),
    "v-v, no feature surgery": SurgeryConfig.paper().replace(feature_surgery=False),
}
shown = {
    name: torch.cat([maps_for(loaded, item, labels, c), empty_prompt_map(loaded, item, c)[..., None]], dim=-1)
    for name, c in towers.items()
}
fig = method_comparison(item.image, shown, [*labels, '"" (empty prompt)'])
save_figure(fig, "05_empty_prompt_map")
flat = {name: m.flatten(0, 1).T.numpy() for name, m in shown.items()}  # (labels + 1, pixels)
empty_r = {name: np.corrcoef(f)[-1, :-1] for name, f in flat.items()}  # empty map vs each class map
pd.DataFrame(empty_r, index=labels).T.round(2)

# %% [markdown]
# The table: Pearson correlation, over the pixels, between the empty prompt's map and each label's map.

# %% [markdown]
# ## How much of the feature products all classes share
# Per image token: `shared_fraction = ‖mean_j p_j‖² / mean_j ‖p_j‖²` (1 = every class has the same
# product), the cosine between that shared part and the empty prompt's product, and the similarity
# every class gets from the shared part alone. Tokens from the architecture-surgery path (v-v, no
# feature surgery), split by region.
#
# **The cosine is close to 1 largely by construction**, so on its own it is no evidence. The shared part
# `m = f ⊙ mean_j t_j` and the empty prompt's product `f ⊙ e` are the same token `f` times two CLIP text
# features, and CLIP's text features share a large common component (they lie in a narrow cone): the
# mean of many class features is close to that component, and so is *any* text's feature. Two controls
# read it: the cosine with a held-out class's product (one class against the mean of the others —
# what any text gets) and with a random direction's product (what the token `f` alone produces).
# Evidence that the empty prompt *is* the redundant part must compare it with such controls, and must
# use something not built from the products: the next sections do (the maps after subtracting each).

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
save_figure(fig, "05_redundant_feature_distributions")
cosines = ["shared_fraction", "empty_cosine", "heldout_cosine", "random_cosine", "shared_similarity"]
frame.groupby("region")[cosines].mean().round(3)

# %% [markdown]
# ## What would be evidence: subtracting the empty prompt against subtracting a control
# Subtract one direction `r` from every class feature, `S_j = f·(t_j − r)`: each class's map moves by the
# same spatial pattern `−f·r`. If `r` holds the redundant features, the maps lose the noise every class
# shares and score better; a direction that holds nothing (a random unit vector, built from neither the
# image nor the texts) should not help. The empty prompt is built from neither the image nor the class
# names either, so this comparison is not true by construction. Architecture surgery without feature
# surgery, maps over the whole class list.

# %%
controls = {"nothing subtracted": None, **redundancy_controls(loaded, classes)}
subtracted = pd.DataFrame(summarise(redundancy_subtraction_records(loaded, items, classes, controls)))
subtracted = subtracted.set_index("method")
subtracted.round(1)

# %% [markdown]
# ## Feature surgery on the maps
# The same v-v architecture surgery, without feature surgery, with the class-mean redundancy (the
# paper's multi-class form) and with the empty prompt as the redundancy; and, as a control, feature
# surgery on raw q-k CLIP (the `feature-surgery-only` preset). Feature surgery runs over the source's
# whole class list; only the labels of the figure are shown. (Over the shown labels alone the class
# mean would depend on what is displayed; with two labels the maps would be exact complements.)

# %%
arch = SurgeryConfig.paper().replace(feature_surgery=False)
variants = {
    "no feature surgery": arch,
    "− class mean": arch.replace(feature_surgery=True),
    "− empty prompt": arch.replace(feature_surgery=True, redundant_features="empty_prompt"),
}
fig = method_comparison(
    item.image,
    {k: maps_for(loaded, item, labels, c, vocabulary=classes) for k, c in variants.items()},
    labels,
)
save_figure(fig, "05_feature_surgery_maps")

# %% [markdown]
# ## Measured: noisy activations before and after feature surgery
# The rows above, plus raw q-k CLIP with and without feature surgery.

# %%
controls_qk = {
    "raw q-k CLIP": SurgeryConfig.off(),
    "raw q-k CLIP + feature surgery": METHODS["feature-surgery-only"],
}
records = map_records(loaded, items, classes, {**variants, **controls_qk})
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
    grid.set_xticklabels(rotation=20, ha="right")
save_figure(grid.figure, "05_feature_surgery_contrast")

# %% [markdown]
# ## The class list matters: a vocabulary-size sweep
# The multi-class form subtracts the weighted mean over the classes it is given. For each class present
# in an image, feature surgery over that class plus `k − 1` others drawn at random from the source's list
# (`k = 1`: the single-text form, the empty prompt as redundancy; `k` = all: the paper's setting). With
# `k = 2` the two maps are exact complements (`S₂ = −S₁`): the class's map is "where the other class is
# not" — the pitfall of computing feature surgery over the two labels one happens to display.

# %%
sizes = [1, 2, 5, None]
sweep = pd.DataFrame(summarise(vocabulary_sweep_records(loaded, items, classes, sizes), by=("vocabulary",)))
sweep = sweep.set_index("vocabulary")
fig = line_chart(
    sweep.index.tolist(),
    {"mSC": sweep.mSC.tolist(), "mIoU": sweep.mIoU.tolist()},
    "classes feature surgery runs over",
    "score",
    f"{loaded.name}: feature surgery vs the size of the class list",
)
save_figure(fig, "05_vocabulary_sweep")
two = explain(loaded.model, loaded.tokenizer, loaded.reference_preprocess(item.image)[None], labels[:2])
complement_gap = float((two.similarity[..., 0] + two.similarity[..., 1]).abs().max())
print(f"two labels {labels[:2]} alone: max |S₁ + S₂| = {complement_gap:.1e} (exact complements)")
sweep.round(1)

# %% [markdown]
# ## The class weights and their temperature
# Feature surgery's multi-class form weights each class before taking the mean:
# `p = softmax(2 · f_cls · tᵀ)`, `w = p / mean(p)`, `S_j = w_j (f·t_j) − mean_j' w_j' (f·t_j')`. The `2` is a
# temperature on the class token's cosine similarities `c_j`, which lie in [−1, 1] and for one image
# usually differ by well under 1: at 2 the softmax stays mild, `w_j = e^{2c_j} / mean_j' e^{2c_j'}`
# `≈ 1 + 2 (c_j − c̄)` when the cosines are close — a tilt towards the classes the image-level
# prediction favours, and a redundant part that stays near the plain class mean.
# CLIP's own logit scale (100) would make `w` nearly one-hot: the subtracted mean would be the top
# class's term alone, so every other class's map would turn into the inverse of the top class's map.
# The weights on the figure's image, over the source's class list:

# %%
tokens, _ = encode_image_tokens(
    loaded.model, loaded.reference_preprocess(item.image)[None], SurgeryConfig.paper()
)
texts = text_features(loaded.model, loaded.tokenizer, classes)
weights = pd.DataFrame(
    {f"temperature {t}": class_weights(tokens, texts, t)[0].numpy() for t in (2.0, 100.0)}, index=classes
)
weights.describe().loc[["min", "max", "std"]].round(3)

# %% [markdown]
# ## What you should see
# - The empty prompt's own map is not flat: it lights up regions much as the class maps do (the paper's
#   figure), and correlates with them — a part of every class map is the same for any text.
# - Most of each token's feature product is shared by all classes (a shared fraction well above 1/T),
#   for object and background tokens alike: that part cannot tell classes apart, yet it dominates the
#   raw similarity.
# - The shared part is nearly parallel to the empty prompt's product (cosine close to 1), but a held-out
#   class's product is close too: most of that cosine comes from the common component of all CLIP text
#   features. The evidence is relative: the empty prompt closer than a held-out class, far closer than a
#   random direction, and, in the maps, subtracting the empty prompt doing better than subtracting a
#   random direction.
# - Subtracting the redundant part (either form) raises the score contrast and mIoU over architecture
#   surgery alone on ViT-B/16; the paper uses the class mean for multi-class maps and the empty prompt
#   when there is a single text. On the shipped toy ViT (toy-vit-v2) both forms raise mIoU and mSC over
#   architecture surgery alone, the empty prompt more than the class mean; with a few dozen images
#   the margins are noisy (the previous toy ViT showed no clear gain). Feature surgery on raw q-k CLIP
#   does not fix its opposite maps: that is the attention's job.
# - The class list matters: with two classes the maps are complements; the paper's setting is the
#   dataset's whole class list. The class weights at temperature 2 stay within a factor 2 of 1 (at 100
#   they would be nearly one-hot).

# %%
shared = frame[frame.region != "class token"]
base = summary.loc["no feature surgery"]
empty_mean_r = float(np.mean(empty_r["raw CLIP"]))
sub = subtracted.mSC
w2, w100 = weights["temperature 2.0"], weights["temperature 100.0"]
claims = {
    f"the empty prompt's raw map correlates with the class maps (mean r = {empty_mean_r:.2f} > 0)": (
        empty_mean_r > 0
    ),
    f"most of the products is shared (mean fraction {shared.shared_fraction.mean():.2f} > 0.5; "
    f"1/T = {1 / len(classes):.2f})": shared.shared_fraction.mean() > 0.5,
    f"the shared part is closer to the empty prompt's product than to a held-out class's (cosine "
    f"{shared.empty_cosine.mean():.2f} vs {shared.heldout_cosine.mean():.2f}; random direction "
    f"{shared.random_cosine.mean():.2f})": shared.empty_cosine.mean() > shared.heldout_cosine.mean(),
    f"subtracting the empty prompt beats subtracting a random direction (mSC {sub['empty prompt']:.1f} vs "
    f"{sub['random direction']:.1f})": sub["empty prompt"] > sub["random direction"],
    f"with two labels alone the maps are complements (max |S₁ + S₂| = {complement_gap:.1e})": complement_gap
    < 1e-5,
    f"the class weights at temperature 2 stay within 0.5–2 ({w2.min():.2f}–{w2.max():.2f}; at 100: "
    f"{w100.min():.2f}–{w100.max():.2f})": w2.between(0.5, 2.0).all(),
}
for name in ("− class mean", "− empty prompt"):
    row = summary.loc[name]
    claims[f"feature surgery '{name}' raises mSC ({base.mSC:.1f} → {row.mSC:.1f})"] = row.mSC > base.mSC
    claims[f"feature surgery '{name}' raises mIoU ({base.mIoU:.1f} → {row.mIoU:.1f})"] = row.mIoU > base.mIoU
qk, qk_fs = summary.loc["raw q-k CLIP"], summary.loc["raw q-k CLIP + feature surgery"]
claims[
    f"feature surgery alone leaves raw q-k CLIP below architecture surgery (mSC {qk.mSC:.1f} → "
    f"{qk_fs.mSC:.1f}, v-v without feature surgery {base.mSC:.1f})"
] = qk_fs.mSC < base.mSC
print(check_claims(claims))
