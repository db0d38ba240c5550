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
# **Reproduces.** The idea of the paper's Fig. 1 (raw CLIP similarity maps vs CLIP Surgery's), on the
# model and images set below.
#
# Everything runs offline on the project's own small CLIP (`toy-vit`, trained on composites of real
# photo cut-outs). For real weights set `SURGERY_MODEL=ViT-B-16 SURGERY_PRETRAINED=openai` (with the
# weights in the Hugging Face cache or a local file: see the README).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")  # "composites", "composites-new", "real" or a folder
LIMIT = int(os.environ.get("SURGERY_LIMIT", "8"))

# %%
from surgery_lib.config import SurgeryConfig
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.maps.explain import explain
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.viz import method_comparison, save_figure
from surgery_lib.ui.widgets import Explorer

loaded = load_clip(MODEL, pretrained=PRETRAINED)
classes, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
print(f"model {loaded.name} ({loaded.pretrained}), input {loaded.image_size} px; {len(items)} images")

# %% [markdown]
# ## One image, raw CLIP vs CLIP Surgery
# The labels are the classes in the image plus one that is not there. Maps are min-max normalised per
# label (red = most similar).

# %%
item = max(items, key=lambda it: len(it.masks))
absent = next(c for c in classes if c not in item.masks) if classes else "dog"
labels = [*item.labels[:3], absent] if item.labels else ["dog", "person", absent]
batch = loaded.reference_preprocess(item.image).unsqueeze(0)
methods = {"raw CLIP": SurgeryConfig.off(), "CLIP Surgery": SurgeryConfig.paper()}
results = {name: explain(loaded.model, loaded.tokenizer, batch, labels, cfg) for name, cfg in methods.items()}
fig = method_comparison(item.image, {name: r.maps[0] for name, r in results.items()}, labels)
save_figure(fig, "00_quickstart_raw_vs_surgery")
print("in the image:", item.labels)
print(
    "zero-shot probabilities:", dict(zip(labels, results["raw CLIP"].image_scores[0].tolist(), strict=True))
)

# %% [markdown]
# ## The explorer
# Every modification of the surgery config is a control: tick `feature_surgery` off and on, change the
# attention kind or the depth, pick images and labels. Results are cached per (image, config), so
# toggling back is instant; "export figure" writes PNG + PDF to `figures/`.

# %%
explorer = Explorer(loaded, items, labels[:3], selected=[item.name, items[0].name])
explorer

# %% [markdown]
# ## What you should see
# - Raw CLIP's maps are noisy and often light up the background rather than the object (the paper's
#   "opposite visualization"); CLIP Surgery's maps concentrate on the objects named.
# - Every map is min-max normalised, so even the absent label's map has a "hottest" spot: whether a
#   class is present is told by the image-level probabilities, not by the map.
# - On the toy model the maps are coarser than on ViT-B/16 (an 8 × 8 token grid at 96 px instead of
#   14 × 14 at 224 px), and some classes are confused: it is a small model trained on 31 classes.
