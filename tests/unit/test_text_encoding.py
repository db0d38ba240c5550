"""Exact short-context text encoding and batched prompt encoding (``surgery_lib.model.text_encoding``).

The short path must equal ``model.encode_text(tokens, normalize=True).float()`` (≤ 1e-5) on every
tower where it is taken, and the fallback (full context) must be taken where cutting the context
changes the result (a bidirectional SigLIP-style tower that pools the last position).
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import MODEL_FACTORIES
from open_clip.model import CLIPVisionCfg

import surgery_lib.model.text_encoding as te
from surgery_lib import load_clip
from surgery_lib.maps.text import PROMPT_TEMPLATES, encode_text, text_features
from surgery_lib.model import TOY_MODELS
from surgery_lib.model.text_encoding import encode_prompts, short_context_exact, short_context_plan

LABELS = ["cat", "traffic light", "a very small red and white striped lighthouse", "x"]


def _full(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The reference: open_clip's own encode_text over the whole context."""
    with torch.no_grad():
        return model.encode_text(tokens, normalize=True).float()


def _prompts(tokenizer, labels=LABELS, templates=PROMPT_TEMPLATES[:20]) -> torch.Tensor:
    return tokenizer([t.format(label) for label in labels for t in templates])


def _ran_lengths(model: torch.nn.Module, transformer: torch.nn.Module, tokens: torch.Tensor) -> list[int]:
    """The sequence lengths the text transformer ran on while encoding ``tokens`` (hook removed after)."""
    seen: list[int] = []
    handle = transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        encode_prompts(model, tokens)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", TOY_MODELS)
def test_short_context_equals_full_context_on_the_toy_models(name):
    loaded = load_clip(name)
    tokens = _prompts(loaded.tokenizer)
    plan = short_context_plan(loaded.model)
    assert plan.path == "short" and short_context_exact(loaded.model), plan.reason
    short = encode_prompts(loaded.model, tokens)
    torch.testing.assert_close(short, _full(loaded.model, tokens), atol=1e-5, rtol=0)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert longest < tokens.shape[1]
    assert max(_ran_lengths(loaded.model, loaded.model.transformer, tokens)) == longest


@pytest.mark.parametrize("kind", sorted(MODEL_FACTORIES))
def test_short_context_equals_full_context_on_77_token_towers(kind, tokenizer):
    model = MODEL_FACTORIES[kind]()
    tokens = _prompts(tokenizer)
    assert tokens.shape[1] == 77
    torch.testing.assert_close(encode_prompts(model, tokens), _full(model, tokens), atol=1e-5, rtol=0)
    # one chunk of 80 prompts, cut to its longest prompt (18 tokens), far below 77
    assert _ran_lengths(model, model.transformer, tokens) == [int(tokens.argmax(dim=-1).max()) + 1] == [18]


def test_short_context_is_the_same_computation_in_float64(tokenizer):
    model = MODEL_FACTORIES["vit-custom"]().double()
    tokens = _prompts(tokenizer)
    diff = (encode_prompts(model, tokens).double() - _full(model, tokens).double()).abs().max()
    assert diff < 1e-6  # float64 computed, float32 returned: only the final cast's rounding


def test_padding_after_the_end_token_is_never_read(tokenizer):
    model = MODEL_FACTORIES["vit-mha"]()
    tokens = _prompts(tokenizer, labels=["cat"], templates=["a photo of a {}."])
    end = int(tokens.argmax(dim=-1))
    noisy = tokens.clone()
    noisy[0, end + 1 :] = torch.randint(1, 1000, (tokens.shape[1] - end - 1,))  # ids below the end id
    torch.testing.assert_close(_full(model, noisy), _full(model, tokens), atol=1e-6, rtol=0)  # causal
    torch.testing.assert_close(encode_prompts(model, noisy), encode_prompts(model, tokens), atol=0, rtol=0)


def _tiny_vision() -> CLIPVisionCfg:
    return CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16)


def _custom_text_clip(**text_cfg) -> open_clip.CustomTextCLIP:
    torch.manual_seed(0)
    cfg = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2, **text_cfg}
    model = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=_tiny_vision(), text_cfg=cfg).eval()
    with torch.no_grad():
        for p in model.text.parameters():  # open_clip zero-inits some (biases): make every value count
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _random_tokens(batch: int = 12, context: int = 16, seed: int = 0) -> torch.Tensor:
    """Prompts of lengths 3..9: start 98, content ids 1..90, end 99 (the highest id: argmax), pad 0."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = 1 + i % 7
        tokens[i, 0] = 98
        tokens[i, 1 : 1 + n] = torch.randint(1, 91, (n,), generator=gen)
        tokens[i, 1 + n] = 99
    return tokens


SIGLIP_TEXT = {
    "no_causal_mask": True,
    "pool_type": "last",
    "proj_bias": True,
    "norm_kwargs": {"eps": 1e-6},
}


def test_bidirectional_tower_takes_the_full_context():
    model = _custom_text_clip(**SIGLIP_TEXT)
    plan = short_context_plan(model)
    assert plan.path == "full" and not short_context_exact(model)
    assert "no causal mask" in plan.reason
    tokens = _random_tokens()
    assert max(_ran_lengths(model, model.text.transformer, tokens)) == 16
    torch.testing.assert_close(encode_prompts(model, tokens), _full(model, tokens), atol=1e-6, rtol=0)
    # why: on this tower cutting the context changes the features (it pools the last position)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    cut = _full(model, tokens[:, :longest])
    assert (cut - _full(model, tokens)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "text_cfg",
    [
        {"proj_bias": True},  # Linear projection
        {"proj_bias": False},  # matrix projection
        {"pool_type": "eos", "eos_id": 99},
    ],
)
def test_causal_custom_text_tower_takes_the_short_context(text_cfg):
    model = _custom_text_clip(**text_cfg)
    assert short_context_plan(model).path == "short"
    tokens = _random_tokens()
    torch.testing.assert_close(encode_prompts(model, tokens), _full(model, tokens), atol=1e-5, rtol=0)
    assert max(_ran_lengths(model, model.text.transformer, tokens)) == 9


def test_coca_style_class_token_takes_the_full_context():
    model = _custom_text_clip(embed_cls=True)
    assert short_context_plan(model).path == "full"
    assert "class token" in short_context_plan(model).reason


def test_a_replaced_encode_text_takes_the_full_context(monkeypatch, tokenizer):
    model = MODEL_FACTORIES["vit-mha"]()
    calls = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert short_context_plan(model).path == "full"
    encode_prompts(model, _prompts(tokenizer))
    assert calls


def test_a_models_own_short_method_is_used(monkeypatch, tokenizer):
    model = MODEL_FACTORIES["vit-mha"]()
    seen = []

    def own(tokens):
        seen.append(tokens.shape)
        return model.encode_text(tokens) * 3.0  # unnormalised: encode_prompts normalises

    monkeypatch.setattr(model, "encode_text_short", own, raising=False)
    assert short_context_plan(model).path == "model"
    tokens = _prompts(tokenizer)
    torch.testing.assert_close(encode_prompts(model, tokens), _full(model, tokens), atol=1e-6, rtol=0)
    assert seen


def test_unknown_module_takes_the_full_context():
    class Wrapped(torch.nn.Module):
        def encode_text(self, tokens, normalize=False):
            return F.normalize(tokens.float()[:, :4] + 1.0, dim=-1)

    plan = short_context_plan(Wrapped())
    assert plan.path == "full" and "not an open_clip" in plan.reason
    out = encode_prompts(Wrapped(), torch.arange(24).reshape(3, 8))
    torch.testing.assert_close(out, F.normalize(torch.arange(24).reshape(3, 8)[:, :4].float() + 1, dim=-1))


def test_chunks_keep_the_order_and_the_values(monkeypatch, tokenizer):
    model = MODEL_FACTORIES["vit-custom"]()
    tokens = _prompts(tokenizer)[torch.randperm(80, generator=torch.Generator().manual_seed(0))]
    whole = encode_prompts(model, tokens)
    monkeypatch.setattr(te, "MAX_PROMPTS_PER_CHUNK", 7)
    assert len(_ran_lengths(model, model.transformer, tokens)) == 12  # ceil(80 / 7) chunks
    torch.testing.assert_close(encode_prompts(model, tokens), whole, atol=1e-6, rtol=0)
    monkeypatch.setattr(te, "MAX_PROMPTS_PER_CHUNK", 4096)
    monkeypatch.setattr(te, "TOKEN_BUDGET", 100)  # 100 positions: a few prompts a chunk
    assert len(_ran_lengths(model, model.transformer, tokens)) > 8
    torch.testing.assert_close(encode_prompts(model, tokens), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(whole, _full(model, tokens), atol=1e-5, rtol=0)


def test_chunks_respect_the_bounds():
    lengths = [5, 77, 3, 12, 12, 40] * 50
    for group in te._chunks(lengths, 77):
        longest = max(lengths[i] for i in group)
        assert len(group) <= te.MAX_PROMPTS_PER_CHUNK and len(group) * longest <= te.TOKEN_BUDGET
    assert sorted(i for g in te._chunks(lengths, 77) for i in g) == list(range(len(lengths)))


def _per_class_loop(model, tokenizer, labels, templates=PROMPT_TEMPLATES) -> torch.Tensor:
    """Text features as they were computed before batching: one full-context forward per class."""
    rows = []
    for label in labels:
        feats = _full(model, tokenizer([t.format(label) for t in templates]))
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.mark.parametrize("name", TOY_MODELS)
def test_batched_text_features_equal_the_per_class_loop(name):
    loaded = load_clip(name)
    labels = [*LABELS, "dog", "bird", "pepper"]
    batched = text_features(loaded.model, loaded.tokenizer, labels, use_cache=False)
    reference = _per_class_loop(loaded.model, loaded.tokenizer, labels)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)


def test_batched_text_features_equal_the_loop_on_a_77_token_tower(tokenizer):
    model = MODEL_FACTORIES["rn"]()
    batched = text_features(model, tokenizer, LABELS, templates="openai80", use_cache=False)
    reference = _per_class_loop(model, tokenizer, LABELS, templates=PROMPT_TEMPLATES[:80])
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)


def test_encode_text_of_plain_texts_equals_encode_text(tokenizer):
    model = MODEL_FACTORIES["vit-layerscale"]()
    texts = ["", "a cat", "a traffic light at night"]
    torch.testing.assert_close(
        encode_text(model, tokenizer, texts), _full(model, tokenizer(texts)), atol=1e-5, rtol=0
    )


def test_bad_token_shape_is_refused():
    model = MODEL_FACTORIES["vit-mha"]()
    with pytest.raises(ValueError, match=r"tokens must be \(prompts, context\)"):
        encode_prompts(model, torch.zeros(77, dtype=torch.long))
