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
# # 10 · Multimodal visualization: which words of a caption CLIP relies on, and where each lands
#
# **Question.** Given an image and a whole caption, which tokens does CLIP match to the image, and
# where in the image does each land? The paper treats every text token like a class: its feature is
# compared with the image tokens, and feature surgery removes what all tokens share.
#
# **Reproduces.** The paper's multimodal visualization (its figure of captions with the most activated
# tokens marked, `[start]` and `[end]` included, over the images' maps): per-token maps of a caption and
# the importance of each token, with the two ways of removing the redundant part: the empty prompt's
# features, or the mean over the caption's tokens. As the reference does, all n + 2 token features are
# taken — the start and end tokens included — before CLIP's argmax over the end position
# (`caption_tokens(..., special_tokens=True)`).
#
# **Caveat.** Only the end token's position is trained to align with images: CLIP's text embedding *is*
# the `[end]` row. The other positions' features pass through the same final norm and projection, but
# nothing trained them to be compared with image tokens, so their scores and maps are a probe of the
# text tower, not an explanation CLIP was trained to give. (`[start]`'s feature is even the same for
# every caption: the text tower's attention is causal, so position 0 sees only itself.)
#
# Token importance (`surgery_lib.maps.multimodal.word_importance`) is the class token's score of each
# token, min-max normalised over the caption. Per-token maps are the patch rows of `word_similarity`.
# The "hit rate" of the last section is this project's measure.
#
# **Model.** `toy-vit-v2`: the text side works for any model; its 14 × 14 grid makes the word maps
# readable.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("SURGERY_MODEL", "toy-vit-v2")
PRETRAINED = os.environ.get("SURGERY_PRETRAINED", "default")
IMAGES = os.environ.get("SURGERY_IMAGES", "")  # composites carry captions; other images get "a photo of …"
LIMIT = int(os.environ.get("SURGERY_LIMIT", "40"))

# %%
import pandas as pd

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.eval.sets import caption_word_records
from surgery_lib.maps.explain import encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.multimodal import END, caption_tokens, word_importance, word_similarity
from surgery_lib.maps.text import empty_prompt_features
from surgery_lib.model.loading import load_clip
from surgery_lib.ui.claims import check_claims
from surgery_lib.ui.viz import caption_figure, map_grid, save_figure, word_maps_figure
from surgery_lib.ui.widgets import CaptionExplorer

loaded = load_clip(MODEL, pretrained=PRETRAINED)
model, tokenizer = loaded.model, loaded.tokenizer
_, items = example_images(IMAGES or default_source(MODEL), limit=LIMIT)
captions = [item.describe() for item in items]
empty = empty_prompt_features(model, tokenizer)

# %% [markdown]
# ## One caption: token importance and per-token maps
# The composite with the most objects among the first images; its caption names each of them. The start
# and end tokens are included, as in the paper.

# %%
index = max(range(len(items)), key=lambda i: len(items[i].masks))
item, caption = items[index], captions[index]
cap = caption_tokens(model, tokenizer, caption, special_tokens=True)
batch = loaded.reference_preprocess(item.image).unsqueeze(0)
tokens = {
    name: encode_image_tokens(model, batch, config)
    for name, config in {"raw CLIP": SurgeryConfig.off(), "CLIP Surgery": SurgeryConfig.paper()}.items()
}
size = (item.image.height, item.image.width)
print(f"{item.name}: {caption!r}; objects: {item.labels}")


def word_maps(method: str, redundancy: str):
    """``(H, W, K)`` per-word maps of ``cap`` on the image."""
    image_tokens, grid = tokens[method]
    return similarity_map(word_similarity(image_tokens, cap, redundancy, empty)[:, 1:], size, grid)[0]


surgery_sim = word_similarity(tokens["CLIP Surgery"][0], cap, "empty_prompt", empty)
fig = caption_figure(cap.words, word_importance(surgery_sim)[0], title="token importance (class token)")
save_figure(fig, "10_word_importance")

# %%
fig = word_maps_figure(item.image, cap.words, word_maps("CLIP Surgery", "empty_prompt"))
save_figure(fig, "10_word_maps_surgery")

# %%
fig = word_maps_figure(item.image, cap.words, word_maps("raw CLIP", "none"))
save_figure(fig, "10_word_maps_raw")

# %% [markdown]
# ## Try your own caption
# Type a caption (Enter applies it) and pick the redundancy option: the words shaded by importance and
# each word's map under CLIP Surgery. (The explorer shows the content tokens only, without `[start]`
# and `[end]`.)

# %%
caption_explorer = CaptionExplorer(loaded, item.image, caption)
caption_explorer

# %% [markdown]
# ## The two redundancy options side by side (CLIP Surgery)
# `empty_prompt` subtracts the features of the empty text `""`; `word_mean` subtracts the mean over the
# caption's own tokens, `[start]` and `[end]` included (the multi-class form of feature surgery). On the
# class token both shift every token's score by the same amount, so the importance is the same; the
# maps differ.

# %%
options = ["empty_prompt", "word_mean"]
fig = map_grid(
    [item.image] * 2,
    [word_maps("CLIP Surgery", r) for r in options],
    cap.words,
    row_titles=options,
    panel_size=1.3,
)
save_figure(fig, "10_redundancy_options")

# %% [markdown]
# ## Measured: is the most important word a class in the image?
# On every composite with a caption (the first `LIMIT` of each held-out set), the top word under each
# importance, method and redundancy option; a *hit* is a word of a class present in the image (the
# captions name only present classes, next to template words such as "a", "photo", "of", "and").
# `chance` is the hit rate of a word drawn at random from the caption. "patch peak" ranks words by the
# highest value of their map (the patch rows, where raw CLIP and CLIP Surgery differ).

# %%
rows = []
for name, source in {"seen": "composites", "new": "composites-new"}.items():
    _, set_items = example_images(source, limit=LIMIT)
    set_captions = [item.describe() for item in set_items]
    for r in caption_word_records(model, tokenizer, set_items, set_captions, loaded.image_size):
        rows.append({**r, "set": name})
words = pd.DataFrame(rows)
hits = (
    words.pivot_table(index=["importance", "redundancy"], columns="method", values="hit", aggfunc="mean")
    * 100
)
hits["chance"] = 100 * words.groupby(["importance", "redundancy"])["chance"].mean()
hits.round(1)

# %% [markdown]
# ## Measured: how often is `[end]` the most activated token?
# The same images with the start and end tokens ranked too: the share of captions whose top token is
# `[end]`, per importance, method and redundancy option, next to the chance of a token drawn at random.

# %%
special_rows = []
for name, source in {"seen": "composites", "new": "composites-new"}.items():
    _, set_items = example_images(source, limit=LIMIT)
    set_captions = [item.describe() for item in set_items]
    for r in caption_word_records(
        model, tokenizer, set_items, set_captions, loaded.image_size, special_tokens=True
    ):
        special_rows.append({**r, "set": name, "end_top": r["word"] == END, "one_in": 1 / r["tokens"]})
special = pd.DataFrame(special_rows)
end_top = special.pivot_table(index=["importance", "redundancy"], columns="method", values="end_top") * 100
end_top["chance"] = 100 * special.groupby(["importance", "redundancy"])["one_in"].mean()
end_top.round(1)

# %% [markdown]
# ## What you should see
# - The per-token maps of CLIP Surgery put each class word on its object; raw CLIP's token maps are
#   noisy, often brighter on the background. Do not expect function words to be flat: the paper reports
#   that tokens such as "in", "." and "of" can respond strongly, and that `[end]` — the one position
#   trained to align with images — is often the most activated token. (Mind the caveat above: only
#   `[end]`'s feature is trained for this comparison.)
# - Among the content tokens, the most important is a class word in the image far more often than a
#   random word is. With `[start]` and `[end]` ranked too, `[end]` is the top token more often than
#   chance (the paper's finding; on the toy model it may not be).
# - The class-token importance is the same for raw CLIP and CLIP Surgery (the dual path keeps the class
#   token vanilla) and for both redundancy options (each shifts all words equally); the methods and the
#   options differ in the maps, hence in the "patch peak" ranking.

# %%
ct, peak = hits.loc["class token"], hits.loc["patch peak"]
claims = {
    f"the top word (class token) is a present class more often than chance "
    f"({ct['raw'].iloc[0]:.1f} % vs {ct['chance'].iloc[0]:.1f} %)": ct["raw"].iloc[0] > ct["chance"].iloc[0],
    "the class-token importance is the same for raw CLIP, CLIP Surgery and both redundancy options "
    f"({', '.join(f'{v:.1f}' for v in ct[['raw', 'surgery']].to_numpy().ravel())} %)": (
        (ct[["raw", "surgery"]].to_numpy() == ct["raw"].iloc[0]).all()
    ),
}
end_ct = end_top.loc["class token"]
claims[
    f"[end] is the top token by class-token importance more often than chance "
    f"({end_ct['raw'].iloc[0]:.1f} % vs {end_ct['chance'].iloc[0]:.1f} %)"
] = end_ct["raw"].iloc[0] > end_ct["chance"].iloc[0]
for option in options:
    raw, surgery = peak.loc[option, "raw"], peak.loc[option, "surgery"]
    claims[
        f"patch peak, {option}: CLIP Surgery's top word is a present class at least as often as raw "
        f"CLIP's ({raw:.1f} → {surgery:.1f} %)"
    ] = surgery >= raw
print(check_claims(claims))
