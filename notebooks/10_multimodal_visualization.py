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
# The "hit rate" and the word pointing game of the last sections are this project's measures.
#
# **What the toy model can and cannot show.** Its text tower was trained on short template captions
# naming 31 classes, so it can show whether a class word's map lands on its object more often than a
# random point would (the object's share of the image) and whether the surgery maps do better than raw
# CLIP's; it cannot show the paper's observations about function words and punctuation on free-form
# captions, which need CLIP's own text tower and real captions.
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

from surgery_lib import (
    END,
    METHODS,
    SurgeryConfig,
    caption_tokens,
    empty_prompt_features,
    encode_image_tokens,
    load_clip,
    similarity_map,
    word_importance,
    word_similarity,
)
from surgery_lib.analysis import (
    bootstrap_ci,
    caption_word_records,
    default_source,
    example_images,
    sign_flip_test,
    word_pointing_records,
)
from surgery_lib.figures import (
    CaptionExplorer,
    Claim,
    caption_figure,
    check_claims,
    exercise,
    map_grid,
    save_figure,
    skip_without_token_text_features,
    word_maps_figure,
)

loaded = load_clip(MODEL, pretrained=PRETRAINED)
model, tokenizer = loaded.model, loaded.tokenizer
skipped = skip_without_token_text_features(loaded)  # SigLIP's bidirectional text tower: skipped, saying why
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
# caption's own tokens, `[start]` and `[end]` included — an *unweighted* mean, not the paper's
# multi-class form of feature surgery (`05_redundant_features`), which weights each class by its
# class-token probability. On the class token both shift every token's score by the same amount, so
# the importance is the same; the maps differ.

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
# ## Measured: does a class word's map peak on its object? (this project's measure)
# For every composite of both held-out sets and every class its caption names, the peak of that word's
# map (the empty-prompt option) is a *hit* when it lies inside the object's mask. A uniformly random
# point hits with probability equal to the object's share of the image: that share, computed per
# (image, class) pair and averaged, is the chance level. Brackets: 95 % bootstrap intervals over pairs.

# %%
pointing = []
for name, source in {"seen": "composites", "new": "composites-new"}.items():
    _, set_items = example_images(source, limit=LIMIT)
    for r in word_pointing_records(
        model, tokenizer, set_items, [it.describe() for it in set_items], loaded.image_size,
        {"raw": METHODS["raw"], "surgery": METHODS["surgery"]},
    ):  # fmt: skip
        pointing.append({**r, "set": name})
pointing = pd.DataFrame(pointing)
peak_rows = {}
for method, g in pointing.groupby("method"):
    hit, chance = bootstrap_ci(100 * g.hit), bootstrap_ci(100 * g.chance)
    above = bootstrap_ci(100 * (g.hit - g.chance))
    peak_rows[method] = {
        "hit rate % (95 % CI)": f"{hit[0]:.1f} % [{hit[1]:.1f}, {hit[2]:.1f}]",
        "area chance % (95 % CI)": f"{chance[0]:.1f} % [{chance[1]:.1f}, {chance[2]:.1f}]",
        "above chance": above,
        "pairs": len(g),
    }
pd.DataFrame(peak_rows).T.drop(columns="above chance")

# %% [markdown]
# ## What you should see
# - The per-token maps of CLIP Surgery put each class word on its object; raw CLIP's token maps are
#   noisy, often brighter on the background. Do not expect function words to be flat: the paper reports
#   that tokens such as "in", "." and "of" can respond strongly, and that `[end]` is often the most
#   activated token. `[end]` is the one position trained to align with images, so its lead is expected
#   by construction and is printed above, not counted as a claim.
# - Among the content tokens, the most important (class token) is a class word of the image more often
#   than a random caption word is (chance: the share of class words in the caption).
# - A class word's map peaks on its object more often than a random point would (the object's share of
#   the image), and CLIP Surgery's maps do so more often than raw CLIP's (paired over the same pairs).
# - On a ViT's dual path the class-token importance is the same for raw CLIP, CLIP Surgery and both
#   redundancy options by construction (the class token is CLIP's own; each option shifts all words
#   equally): a check, not a claim. On a ModifiedResNet it is not the same.

# %%
ct = hits.loc["class token"]
top = words[(words.importance == "class token") & (words.method == "surgery")]
top = top[top.redundancy == options[0]]
hit_ci, chance_ci = bootstrap_ci(100 * top.hit.astype(float)), bootstrap_ci(100 * top.chance)
diff = bootstrap_ci(100 * (top.hit.astype(float) - top.chance))
claims = {
    "the top content word (class token) is a class of the image more often than a random caption word": Claim(
        diff[1] > 0,
        f"hit rate {hit_ci[0]:.1f} % [{hit_ci[1]:.1f}, {hit_ci[2]:.1f}] over {len(top)} captions "
        f"(Δ {diff[0]:+.1f} [{diff[1]:+.1f}, {diff[2]:+.1f}])",
        f"random-word chance {chance_ci[0]:.1f} % [{chance_ci[1]:.1f}, {chance_ci[2]:.1f}]",
    ),
}
for method in ("raw", "surgery"):
    above = peak_rows[method]["above chance"]
    claims[f"{method}: a class word's map peaks on its object more often than a random point"] = Claim(
        above[1] > 0,
        f"hit rate {peak_rows[method]['hit rate % (95 % CI)']} ({peak_rows[method]['pairs']} pairs; "
        f"Δ {above[0]:+.1f} [{above[1]:+.1f}, {above[2]:+.1f}])",
        f"object-area chance {peak_rows[method]['area chance % (95 % CI)']}",
    )
paired = pointing.pivot_table(index=["set", "image", "class"], columns="method", values="hit")
gain, p_value = sign_flip_test(paired["surgery"], paired["raw"])
claims["CLIP Surgery's word maps peak on the object more often than raw CLIP's"] = Claim(
    gain > 0 and p_value < 0.05,
    f"hit rate {100 * paired['surgery'].mean():.1f} % vs {100 * paired['raw'].mean():.1f} % "
    f"(Δ {100 * gain:+.1f} points, sign-flip p = {p_value:.3g}, {len(paired)} pairs)",
    "raw CLIP on the same (image, class) pairs",
)
end_ct = end_top.loc["class token"]
print(
    f"(not a claim: [end] is the top token by class-token importance in {end_ct['raw'].iloc[0]:.1f} % of "
    f"captions, one token in {1 / (end_ct['chance'].iloc[0] / 100):.0f} by chance; it is the only position "
    "trained to align with images, so its lead cannot count as a finding)\n"
)
checks = {}
if hasattr(model.visual, "transformer"):  # a ViT: the dual path keeps the class token
    checks[
        "ViT dual path: the class-token importance is the same for raw CLIP, CLIP Surgery and both "
        f"redundancy options ({', '.join(f'{v:.1f}' for v in ct[['raw', 'surgery']].to_numpy().ravel())} %)"
    ] = (ct[["raw", "surgery"]].to_numpy() == ct["raw"].iloc[0]).all()
print(check_claims(claims, checks=checks or None))

# %% [markdown]
# ## Exercises
# **1.** The chance level of the word pointing game is the object's share of the image. Predict: on the
# composites, is it nearer 5 %, 20 % or 50 %?

# %%
PREDICTION = None
print(exercise(PREDICTION, f"{100 * pointing.chance.mean():.1f} %", "mean object share of the image"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# *Solution.* The composites paste one to three objects on a background, each covering a modest part of
# the image; the printed mean is the bar a map must clear. A hit rate of 30 % would be a finding if the
# chance were 5 %, and no finding at all if it were 40 %.

# %% [markdown]
# **2.** `word_mean` subtracts the unweighted mean of the caption's tokens. Predict: does the top word by
# class-token importance change between `empty_prompt` and `word_mean` on the first caption?

# %%
PREDICTION = None
surgery_tokens = tokens["CLIP Surgery"][0]
tops = {
    r: cap.words[int(word_importance(word_similarity(surgery_tokens, cap, r, empty))[0].argmax())]
    for r in options
}
print(exercise(PREDICTION, tops, "top token per redundancy option"))

# %% [markdown] jupyter={"source_hidden": true} tags=["solution"]
# *Solution.* No: on the class token each option subtracts one vector `r` from every word's feature, so
# every word's score drops by the same `f_cls · r` and the order is kept. The options differ on the patch
# rows, where the image tokens differ.
