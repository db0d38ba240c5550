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
# # 08 · Open-vocabulary semantic segmentation
#
# **Question.** Used as a training-free segmenter (each pixel takes the class it is most similar to),
# how much better is CLIP Surgery than raw CLIP?
#
# **Reproduces.** The paper's open-vocabulary segmentation table. Its training-free rows, as the
# official repository's README shows the table (labelled Table 6 there; ViT-B/16 with OpenAI's CLIP
# weights, no post-processing or self-training; mIoU %):
#
# | method (paper's table) | PASCAL Context | COCO-Stuff | Cityscapes |
# |---|---|---|---|
# | MaskCLIP | 22.4 | 15.3 | 22.7 |
# | CLIP Surgery | 29.3 | 21.9 | 31.4 |
# | margin | +6.9 | +6.6 | +8.7 |
#
# (The margins are computed from those two rows. The abstract of the first arXiv version, v1, says
# CLIP Surgery "surpasses the state-of-the-art method by 8.74% at mIoU on Cityscapes", which agrees with
# the last column; margins of +4.44 and +4.56 on Context and COCO-Stuff also circulate for the arXiv
# text, against a row this project could not read offline, so this notebook quotes the table as the
# official repository publishes it.) Offline it runs on the
# shipped sets with the toy models; with data and weights: `SURGERY_BACKBONES=ViT-B-16
# SURGERY_PRETRAINED=openai
# SURGERY_DATASETS=context=/data/VOCdevkit,coco_stuff=/data/coco_stuff164k,cityscapes=/data/cityscapes`.
#
# Protocols (`surgery_lib.eval.segmentation`): `paper` — the whole image at the model's input size, argmax
# over the foreground classes, background where the winning class's normalised map is below 0.5 (the
# paper does not say how it decides background: this is our documented assumption); `sliding` — the
# common training-free protocol (short side 336/448/560, windows of 224 with stride 112, background by
# a probability threshold). mIoU from the confusion matrix summed over the dataset.
#
# **Model.** Both shipped models, `toy-vit-v2` and `toy-rn`.

# %% tags=["parameters"]
import os

# SURGERY_BACKBONES, else SURGERY_MODEL, else both shipped toy models
DEFAULT_BACKBONES = "toy-vit-v2,toy-rn"
BACKBONES = os.environ.get("SURGERY_BACKBONES", os.environ.get("SURGERY_MODEL", DEFAULT_BACKBONES)).split(",")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
DATASETS = os.environ.get("SURGERY_DATASETS", "")  # "NAME=ROOT,..."; "" = the shipped sets
PROTOCOL = os.environ.get("SURGERY_PROTOCOL", "paper")  # "paper" or "sliding"
LIMIT = int(os.environ.get("SURGERY_LIMIT", "60"))
EVAL_DIR = os.environ.get("SURGERY_EVAL_DIR", "../build/eval")

# %%
import pandas as pd

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.datasets import load_dataset
from surgery_lib.eval.runner import dataset_specs, evaluation_table
from surgery_lib.eval.segmentation import Protocol, segment_samples
from surgery_lib.eval.tables import metric_bars, with_intervals
from surgery_lib.model.loading import load_clip
from surgery_lib.model.shipped import pretrained_for
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import bar_chart, save_figure, segmentation_figure

datasets = dataset_specs(DATASETS)
rows = evaluation_table(
    "segment", BACKBONES, datasets, EVAL_DIR, pretrained=PRETRAINED, limit=LIMIT, protocol=PROTOCOL
)
table = pd.DataFrame(rows)
pd.DataFrame(with_intervals(rows, ["mIoU", "pixel_accuracy"]))[
    [
        "backbone",
        "dataset",
        "method",
        "mIoU (95 % CI)",
        "pixel_accuracy (95 % CI)",
        "classes_evaluated",
        "s_per_image",
    ]
]

# %% [markdown]
# The brackets are 95 % bootstrap confidence intervals over images (this project's addition): the
# images are resampled 1000 times and the mIoU recomputed from their summed confusion matrix.

# %%
values, errors = metric_bars(rows, "mIoU")
fig = bar_chart(values, "mIoU (%)", "segmentation mIoU: raw CLIP vs CLIP Surgery (95 % CI)", errors=errors)
save_figure(fig, "08_miou")

# %% [markdown]
# ## Per-class IoU (first backbone, first dataset)

# %%
first = table[(table.backbone == BACKBONES[0]) & (table.dataset == next(iter(datasets)))]
per_class = pd.concat(
    [pd.read_csv(f"{r.out}/results.csv").assign(method=r.method) for r in first.itertuples()]
)
per_class = per_class.pivot(index="class", columns="method", values="iou").fillna(0.0)
fig = bar_chart(
    per_class.to_dict(orient="index"), "IoU (%)", f"{BACKBONES[0]} on {next(iter(datasets))}: per-class IoU"
)
save_figure(fig, "08_per_class_iou")

# %% [markdown]
# ## Predicted masks
# Ground truth and predictions of raw CLIP and CLIP Surgery (white: ignored pixels).

# %%
loaded = load_clip(BACKBONES[0], pretrained=pretrained_for(BACKBONES[0], PRETRAINED))
name, root = next(iter(datasets.values()))
dataset = load_dataset(name, root)
samples = [dataset[i] for i in range(min(3, len(dataset)))]
protocol = Protocol.for_dataset(PROTOCOL, name)
methods = {"raw CLIP": SurgeryConfig.off(), "CLIP Surgery": SurgeryConfig.paper()}
predicted = {m: segment_samples(loaded, dataset, samples, c, protocol) for m, c in methods.items()}
for i, sample in enumerate(samples):
    fig = segmentation_figure(
        sample.image, sample.label, {m: p[i] for m, p in predicted.items()}, dataset.class_names
    )
    save_figure(fig, f"08_masks_{i}")

# %% [markdown]
# ## What you should see
# - With real weights, CLIP Surgery's mIoU is far above raw CLIP's. The paper's table (above) puts it
#   +6.9 (Context), +6.6 (COCO-Stuff) and +8.7 (Cityscapes) points above MaskCLIP, itself a training-free
#   method that already improves on raw CLIP's dense predictions.
# - The toy models are weak segmenters (a few mIoU points): small, trained on 31 classes at 112–128 px.
#   On the held-out composites CLIP Surgery raises mIoU on most sets (the check below lists where it
#   does not); on the real photos (out of domain for the toy models) neither method is meaningful.

# %%
wide = table.pivot_table(index=["backbone", "dataset"], columns="method", values="mIoU")
claims = {
    f"{b} on {d}: CLIP Surgery raises segmentation mIoU ({r.raw:.1f} → {r.surgery:.1f})": r.surgery > r.raw
    for (b, d), r in wide.iterrows()
    if d.startswith("composites")
}
print(check_claims(claims) if claims else "no composite sets evaluated: the claims are about them")
