"""Hugging Face ``transformers`` towers: the same random weights in open_clip and in ``CLIPModel`` /
``SiglipModel`` (the mapping of :mod:`surgery_lib.model.hf_towers`) give the same outputs for every method
of the registry (engine tokens, similarities, maps, gradient relevances, logits; ≤ 1e-5), the HF model's
own image embedding under ``SurgeryConfig.off()``, nothing changed in the model, and loading from an HF
cache offline (``load_clip("hf:org/name")``)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from conftest import assert_unchanged, make_vit, snapshot

import surgery_lib as sl
from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.maps.text import text_features
from surgery_lib.methods import REGISTRY, get_method, method_names
from surgery_lib.model import UnsupportedModelError, WeightsNotAvailableError, dense_forward, tower_info
from surgery_lib.model.gradients import LEGRAD_EMPTY_PROMPT, gradient_maps
from surgery_lib.model.hf_towers import HFCLIP, hf_clip_from_open_clip, hf_siglip_from_open_clip
from surgery_lib.model.text_encoding import short_context_plan
from surgery_lib.model.tiny_towers import TINY_CONTEXT, tiny_siglip
from surgery_lib.model.vfm import TINY_VFM, tiny_dino, with_vfm

LABELS = ["cat", "dog", "a red car"]
TOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """``a`` and ``b`` agree to ``TOL`` relative to their scale (absolute below 1)."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}"
    scale = max(1.0, float(b.abs().max()))
    err = float((a.float() - b.float()).abs().max())
    assert err <= TOL * scale, f"{what}: max difference {err:.2e} (scale {scale:.2e})"


def _close_maps(got, want, what: str) -> None:
    """Min-max normalised maps ``(B, H, W, T)``: a difference ``δ`` of the similarity becomes ``δ / range``
    of the map, so the tolerance is ``TOL`` over the smallest range of the patch similarities."""
    patches = want.similarity[:, 1:]  # (B, N, T)
    spread = float((patches.amax(dim=1) - patches.amin(dim=1)).min())
    scale = max(1.0, float(patches.abs().max())) / max(spread, 1e-12)
    err = float((got.maps - want.maps).abs().max())
    assert err <= TOL * scale, f"{what}: max difference {err:.2e} (tolerance {TOL * scale:.2e})"


@torch.no_grad()
def _siglip_open_clip() -> torch.nn.Module:
    """The tiny SigLIP with every parameter random (timm zero-inits the biases), norms' weights near 1."""
    model = tiny_siglip(seed=3)
    gen = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if p.ndim == 0:  # logit_scale, logit_bias: as open_clip initialises them
            continue
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:
            p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.2 * noise)
        else:
            p.copy_(noise * p.shape[-1] ** -0.5)
    return model


@pytest.fixture(scope="module")
def clip_pair() -> tuple[torch.nn.Module, HFCLIP, object]:
    """A tiny open_clip ViT (QuickGELU), its CLIPModel twin and open_clip's tokenizer."""
    model = make_vit()
    return model, hf_clip_from_open_clip(model), open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def siglip_pair() -> tuple[torch.nn.Module, HFCLIP, object]:
    """The tiny open_clip SigLIP, its SiglipModel twin and a tokenizer with its 16-token context."""
    model = _siglip_open_clip()
    return (
        model,
        hf_siglip_from_open_clip(model),
        open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CONTEXT),
    )


@pytest.fixture(scope="module", params=["clip", "siglip"])
def pair(request, clip_pair, siglip_pair):
    return request.param, *(clip_pair if request.param == "clip" else siglip_pair)


def _images(model: torch.nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.visual.image_size
    n = size if isinstance(size, int) else size[0]
    return torch.randn(batch, 3, n, n, generator=torch.Generator().manual_seed(seed))


def test_the_mapping_gives_the_same_towers(pair) -> None:
    """open_clip's and transformers' own forwards agree: image and text embeddings; the adapters say what
    each tower is."""
    family, ours, hf, tokenizer = pair
    x = _images(ours)
    tokens = tokenizer(LABELS)
    with torch.no_grad():
        _close(hf.encode_image(x), ours.encode_image(x), "encode_image")
        _close(hf.encode_text(tokens), ours.encode_text(tokens), "encode_text")
        outputs = hf.hf(input_ids=tokens, pixel_values=x)
        _close(outputs.logits_per_image, _logits(ours, x, tokens), "logits_per_image")
    info, reference = tower_info(hf), tower_info(ours)
    assert (info.kind, info.num_blocks, info.stride, info.pos_grid) == (
        reference.kind, reference.num_blocks, reference.stride, reference.pos_grid,
    )  # fmt: skip
    assert info.class_token == ("learned" if family == "clip" else "pooled")
    assert info.name.startswith("transformers.models.")
    assert (hf.logit_bias is None) == (family == "clip")


def _logits(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's logits per image: ``exp(logit_scale) · cos (+ logit_bias)``."""
    image = model.encode_image(x, normalize=True)
    text = model.encode_text(tokens, normalize=True)
    bias = getattr(model, "logit_bias", None)
    return model.logit_scale.exp() * image @ text.t() + (0 if bias is None else bias)


def test_vanilla_engine_gives_the_hf_models_own_image_embedding(pair) -> None:
    """``SurgeryConfig.off()``: token 0 is ``get_image_features`` of the HF model (fast path and the
    recording path, which runs every block from the adapter's pieces)."""
    _, _, hf, _ = pair
    x = _images(hf)
    with torch.no_grad():
        own = hf.hf.get_image_features(pixel_values=x).pooler_output
        fast, grid = dense_forward(hf, x, SurgeryConfig.off())
        recorded, _ = dense_forward(hf, x, SurgeryConfig.off(), hook=lambda name, value: None)
    _close(fast[:, 0], own, "image embedding (fast path)")
    _close(recorded, fast, "recording path")
    assert fast.shape[1] == 1 + grid[0] * grid[1]


def test_text_encoding_paths(pair) -> None:
    """CLIP's causal text model is encoded on the cut context (its own exact ``encode_text_short``);
    SigLIP's bidirectional one on the full context."""
    family, _, hf, tokenizer = pair
    tokens = tokenizer(["a photo of a cat", "a dog"])
    plan = short_context_plan(hf)
    if family == "clip":
        assert plan.path == "model"
        with torch.no_grad():
            _close(hf.encode_text_short(tokens), hf.encode_text(tokens), "encode_text_short")
    else:
        assert plan.path == "full" and hf.encode_text_short is None


@pytest.mark.parametrize("method", method_names())
def test_every_method_is_equal_across_implementations(pair, method: str) -> None:
    """Each method of the registry gives the same engine tokens, similarities, maps, scores (dense) or
    relevances, logits and image features (gradient) on open_clip and on transformers; a method that is
    not defined on the tower is refused on both."""
    family, ours, hf, tokenizer = pair
    x = _images(ours)
    config = REGISTRY[method].config
    if isinstance(config, GradientConfig):
        texts = text_features(ours, tokenizer, LABELS)
        _close(text_features(hf, tokenizer, LABELS), texts, "text features")
        empty = None
        if family == "siglip" and config.explainer == "legrad":
            empty = sl.encode_text(ours, tokenizer, [LEGRAD_EMPTY_PROMPT])[0]
        results = []
        for model in (ours, hf):
            try:
                results.append(gradient_maps(model, x, texts, config, empty_text_feature=empty))
            except UnsupportedModelError as err:
                results.append(err)
        if isinstance(results[0], Exception):  # not defined on this tower: refused on both
            assert isinstance(results[1], UnsupportedModelError), f"{method}: refused on open_clip only"
            return
        want, got = results
        assert not isinstance(got, Exception), f"{method} runs on open_clip but not on transformers: {got}"
        assert got.grid == want.grid
        _close(got.relevance, want.relevance, f"{method} relevance")
        _close(got.logits, want.logits, f"{method} logits")
        _close(got.image_features, want.image_features, f"{method} image features")
        if want.final is not None:
            _close(got.final, want.final, f"{method} final map")
        if want.target is not None:
            _close(got.target, want.target, f"{method} target")
        return
    if family == "clip":  # a 6 × 7 grid: SC-CLIP's outlier test needs 31 patches
        x = torch.randn(2, 3, 48, 56, generator=torch.Generator().manual_seed(2))
    if get_method(method).needs_vfm:  # ProxyCLIP: the same small random VFM beside both
        ours, hf = with_vfm(ours, TINY_VFM), with_vfm(hf, tiny_dino(ours))
    try:
        want = sl.explain(ours, tokenizer, x, LABELS, method=method)
    except UnsupportedModelError:
        with pytest.raises(UnsupportedModelError):
            sl.explain(hf, tokenizer, x, LABELS, method=method)
        return
    got = sl.explain(hf, tokenizer, x, LABELS, method=method)
    texts = text_features(ours, tokenizer, LABELS)  # read by ResCLIP's feedback, ignored by the others
    tokens_want, _ = sl.encode_image_tokens(ours, x, config, texts=texts)
    tokens_got, _ = sl.encode_image_tokens(hf, x, config, texts=texts)
    _close(tokens_got, tokens_want, f"{method} tokens")
    assert got.grid == want.grid
    for field in ("similarity", "image_scores", "cosine", "empty_similarity"):
        _close(getattr(got, field), getattr(want, field), f"{method} {field}")
    _close_maps(got, want, f"{method} maps")


def test_explain_runs_every_gradient_method_where_it_is_defined(clip_pair) -> None:
    """Through ``explain`` (its text features and the gradient explainer), CLIP's twin matches open_clip."""
    ours, hf, tokenizer = clip_pair
    x = _images(ours)
    for method in ("gradcam", "chefer", "legrad"):
        want = sl.explain(ours, tokenizer, x, LABELS, method=method)
        got = sl.explain(hf, tokenizer, x, LABELS, method=method)
        _close(got.similarity, want.similarity, f"{method} similarity")
        _close_maps(got, want, f"{method} maps")


def _state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
    return (
        snapshot(model),
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def test_nothing_in_the_hf_model_changes_after_runs_and_errors(clip_pair, siglip_pair) -> None:
    for ours, hf, tokenizer in (clip_pair, siglip_pair):
        hf.hf.train()  # a model in training mode stays in training mode
        before, grads, modes = _state(hf.hf)
        x = _images(hf)
        sl.explain(hf, tokenizer, x, LABELS, method="surgery")
        with torch.no_grad(), sl.apply_surgery(hf):
            tokens = hf.encode_image(x)
        assert tokens.ndim == 3  # every token while the surgery is applied
        texts = text_features(hf, tokenizer, LABELS)
        empty = sl.encode_text(hf, tokenizer, [LEGRAD_EMPTY_PROMPT])[0]
        gradient_maps(hf, x, texts, REGISTRY["legrad"].config, empty_text_feature=empty)

        def fail(name: str, value: torch.Tensor) -> None:
            if name == "blocks.2.attn_out":
                raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            dense_forward(hf, x, SurgeryConfig.paper(), hook=fail)
        with pytest.raises(sl.SurgeryError):
            dense_forward(hf, x, SurgeryConfig.paper().replace(depth=99))
        assert_unchanged(hf.hf, before)
        assert [p.requires_grad for p in hf.hf.parameters()] == grads
        assert [m.training for m in hf.hf.modules()] == modes
        with torch.no_grad():
            _close(hf.encode_image(x), ours.encode_image(x), "vanilla after the runs")
        hf.hf.eval()


def test_unsupported_hf_towers_are_refused_by_name() -> None:
    from transformers import SiglipConfig, SiglipModel

    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={**sizes, "vocab_size": 100, "max_position_embeddings": 8},
        vision_config={**sizes, "image_size": 32, "patch_size": 16, "vision_use_head": False},
    )
    with pytest.raises(UnsupportedModelError, match="attention-pool head"):
        tower_info(HFCLIP(SiglipModel(config)))
    with pytest.raises(UnsupportedModelError, match="not a transformers CLIPModel or SiglipModel"):
        HFCLIP(torch.nn.Linear(2, 2))


def test_offline_load_of_a_missing_repository_names_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotAvailableError, match=r"nobody/no-such-clip[\s\S]*config\.json"):
        sl.load_clip("hf:nobody/no-such-clip")
    with pytest.raises(ValueError, match="pretrained, checkpoint and quick_gelu do not apply"):
        sl.load_clip("hf:nobody/no-such-clip", pretrained="openai")


def _clip_tokenizer():
    """A transformers ``CLIPTokenizer`` with open_clip's bundled BPE vocabulary and its special tokens,
    padding with id 0 as open_clip does (so both give the same ids for texts without ``!``)."""
    from transformers import CLIPTokenizer

    simple = open_clip.tokenizer.SimpleTokenizer()
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    return CLIPTokenizer(
        vocab=dict(simple.encoder),
        merges=merges,
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        unk_token="<end_of_text>",
        pad_token="!",
    )


def _write_cache(cache, repo_id: str, hf: HFCLIP, processor: dict) -> None:
    """``hf``'s model, a tokenizer and ``processor`` in an HF hub cache layout under ``cache``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / commit
    hf.hf.save_pretrained(folder)
    _clip_tokenizer().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_load_clip_reads_an_hf_cache_offline(family, clip_pair, siglip_pair, tmp_path, monkeypatch) -> None:
    """``save_pretrained`` into an HF cache layout, then ``load_clip("hf:org/name")`` with
    ``HF_HUB_OFFLINE=1``: the model, its tokenizer (open_clip's ids) and its preprocessing come back, and
    ``explain`` gives what the open_clip model gives."""
    ours, hf, tokenizer = clip_pair if family == "clip" else siglip_pair
    processor = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.6, 0.7], "resample": 3}
    processor["do_center_crop"] = family == "clip"
    _write_cache(tmp_path, f"org/tiny-{family}", hf, processor)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    loaded = sl.load_clip(f"hf:org/tiny-{family}")
    assert loaded.name == f"hf:org/tiny-{family}" and loaded.image_size == hf.visual.image_size
    assert isinstance(loaded.model, HFCLIP) and loaded.model.family == family
    texts = ["a photo of a cat.", "two dogs, it's sunny", ""]
    assert torch.equal(loaded.tokenizer(texts), tokenizer(texts))
    assert loaded.tokenizer.encode("a photo") == open_clip.tokenizer.SimpleTokenizer().encode("a photo")
    assert loaded.tokenizer.context_length == hf.context_length
    normalize = loaded.preprocess.transforms[-1]
    assert list(normalize.mean) == processor["image_mean"] and list(normalize.std) == processor["image_std"]
    x = _images(ours)
    with torch.no_grad():
        _close(loaded.model.encode_image(x), ours.encode_image(x), "loaded encode_image")
    want = sl.explain(ours, tokenizer, x, LABELS, method="surgery")
    got = sl.explain(loaded.model, loaded.tokenizer, x, LABELS, method="surgery")
    _close(got.similarity, want.similarity, "loaded surgery similarity")
