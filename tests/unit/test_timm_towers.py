"""open_clip's timm image towers (SigLIP-style and EVA02) on the engine: vanilla equality with open_clip's own
forward, the definitions of ``../shared/METHODS.md`` §13 as properties, every dense method running, nothing
changed in the model, and clear refusals."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from conftest import assert_unchanged, snapshot

import surgery_lib as sl
from surgery_lib.config import SurgeryConfig
from surgery_lib.methods import GRADIENT_METHODS, METHODS, get_method, method_names
from surgery_lib.model import UnsupportedModelError, dense_forward, tower_info
from surgery_lib.model.tiny_towers import TINY_CONTEXT, tiny_eva02, tiny_siglip

TOKENIZER = open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CONTEXT)
TOWERS = {"siglip": tiny_siglip, "eva02": tiny_eva02}


@pytest.fixture(scope="module", params=sorted(TOWERS))
def tower(request) -> tuple[str, torch.nn.Module]:
    return request.param, TOWERS[request.param](seed=3)


def _images(seed: int = 0, batch: int = 2, size: int = 96) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_vanilla_forward_gives_open_clips_image_embedding(tower) -> None:
    """``SurgeryConfig.off()``: token 0 is open_clip's ``encode_image``, on the fast path and on the
    recording path (every block run from the adapter's pieces)."""
    _, model = tower
    x = _images()
    with torch.no_grad():
        want = model.encode_image(x)
        fast, grid = dense_forward(model, x, SurgeryConfig.off())
        recorded, _ = dense_forward(model, x, SurgeryConfig.off(), hook=lambda name, value: None)
    assert grid == (6, 6) and fast.shape[1] == 37
    scale = want.abs().max()
    assert (fast[:, 0] - want).abs().max() <= 1e-5 * scale
    assert (recorded - fast).abs().max() <= 1e-5 * fast.abs().max()


def test_siglip_dense_readout_of_equal_tokens_is_the_pooled_embedding() -> None:
    """§13: the dense readout of a token is the pool with it as its only key/value, so when every token of
    the final stream is equal, every dense token equals the pooled embedding."""
    model = tiny_siglip(seed=1)
    equal = torch.randn(1, 1, 64).expand(2, 36, 64)

    def flatten(name: str, value: torch.Tensor) -> torch.Tensor | None:
        return equal.to(value) if name == "final" else None

    with torch.no_grad():
        tokens, _ = dense_forward(model, _images(seed=5, batch=2), SurgeryConfig.off(), hook=flatten)
    dense = tokens[:, 1:]
    assert (dense - dense[:, :1]).abs().max() < 1e-5  # equal tokens in, equal readouts out
    # the pooled embedding of a stream of equal tokens is their readout (the softmax averages equal values)
    adapter = sl.model.adapters.adapter_for(model)
    z = adapter.final_norm(equal[:1, :1])
    with torch.no_grad():
        assert (
            adapter.attention_pool(adapter.final_norm(equal[:1])) - adapter.dense_readout(z)[:, 0]
        ).abs().max() < 1e-5
        assert (tokens[:, 1:] - adapter.dense_readout(z)).abs().max() < 1e-5
        # end to end: equal tokens entering block 0 stay equal, and the output's token 0 (the pool)
        # equals every dense token
        same, _ = dense_forward(
            model,
            _images(batch=2),
            SurgeryConfig.off(),
            hook=lambda n, v: equal.to(v) if n == "embed" else None,
        )
    assert (same[:, 1:] - same[:, :1]).abs().max() < 1e-5


def test_siglip_info_and_logits() -> None:
    model = tiny_siglip()
    info = tower_info(model)
    assert info.class_token == "pooled" and info.kind == "vit" and info.num_blocks == 6
    feats = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    probs = sl.zero_shot_probabilities(feats, texts, model)
    want = torch.sigmoid(model.logit_scale.exp() * feats @ texts.t() + model.logit_bias)
    assert torch.allclose(probs, want)
    assert not torch.allclose(probs.sum(-1), torch.ones(2))  # SigLIP scores each pair on its own


def test_eva02_vv_attention_does_not_see_the_rotary_embedding() -> None:
    """§13: v is not rotated, so v-v attention in every block gives the same tokens with the rotary
    embedding removed; q-k attention (the control) does not."""
    model = tiny_eva02(seed=2)
    no_rope = copy.deepcopy(model)
    no_rope.visual.trunk.rope = None
    x = _images(seed=4)
    blocks = tower_info(model).num_blocks
    with torch.no_grad():
        for kind, same in (("vv", True), ("qk", False)):
            config = SurgeryConfig(depth=blocks, attention=kind, dual_path=False, skip_ffn=False)
            a, _ = dense_forward(model, x, config)
            b, _ = dense_forward(no_rope, x, config)
            assert ((a - b).abs().max() < 1e-6) == same, kind
    assert tower_info(model).rotary and not tower_info(no_rope).rotary


FIRST_BATCH = (
    "raw",
    "surgery",
    "surgery-no-fs",
    "feature-surgery-only",
    "maskclip",
    "sclip",
    "gem",
    "clearclip",
)
"""Dense methods that must run on every token tower (NACLIP too, below: its prior follows the prefix)."""


def test_every_method_runs_or_is_refused_by_name_and_leaves_the_model_as_it_was(tower) -> None:
    """The first batch's dense presets and NACLIP run; each gradient explainer runs where ``DEFINED_ON``
    says it is defined (by the tower's kind of image embedding) and elsewhere refuses naming the method and
    the tower; the other methods run or refuse naming themselves (SC-CLIP, CLIPtrase: no class token on
    SigLIP); a method that needs a vision foundation model gets a small random one."""
    from surgery_lib.model import TINY_VFM, with_vfm
    from surgery_lib.model.gradients import DEFINED_ON

    _, model = tower
    before = snapshot(model)
    x = _images(batch=1)
    kind = tower_info(model).class_token
    for method in method_names():
        explainer = getattr(METHODS.get(method) or GRADIENT_METHODS[method], "explainer", None)
        subject = with_vfm(model, TINY_VFM) if get_method(method).needs_vfm else model
        if explainer is not None and kind not in DEFINED_ON[explainer]:
            with pytest.raises(UnsupportedModelError, match=f"'{explainer}'.*TimmModel"):
                sl.explain(subject, TOKENIZER, x, ["cat", "dog", "car"], method=method)
            continue
        try:
            result = sl.explain(subject, TOKENIZER, x, ["cat", "dog", "car"], method=method)
        except UnsupportedModelError as error:
            assert method not in (*FIRST_BATCH, "naclip") and explainer is None, (method, error)
            assert f"'{method}'" in str(error), error
            continue
        assert result.maps.shape == (1, 96, 96, 3), method
        assert torch.isfinite(result.maps).all(), method
    assert_unchanged(model, before)


def test_gradcam_on_siglip_is_pytorch_grad_cams_rule_on_all_tokens() -> None:
    """Grad-CAM on a tower without a class token: every stream token is a patch (none is dropped), and the
    target is SigLIP's logit ``logit_scale.exp()·cos + logit_bias`` of the pooled embedding."""
    from surgery_lib.model.gradients import gradcam

    model = tiny_siglip(seed=4)
    x = _images(batch=2)
    texts = torch.nn.functional.normalize(
        torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    result = gradcam(model, x, texts)
    # independently: the activation is the last block's norm1 input, via open_clip's own modules
    trunk = model.visual.trunk
    with torch.enable_grad():
        h = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(x)))
        for block in trunk.blocks[:-1]:
            h = block(h)
        a = trunk.blocks[-1].norm1(h).detach().requires_grad_(True)
        last = trunk.blocks[-1]
        out = h + last.ls1(last.attn(a))
        out = out + last.ls2(last.mlp(last.norm2(out)))
        emb = torch.nn.functional.normalize(model.visual.head(trunk.attn_pool(trunk.norm(out))), dim=-1)
        logits = model.logit_scale.exp() * emb @ texts.t() + model.logit_bias
        maps = []
        for t in range(2):
            (g,) = torch.autograd.grad(logits[:, t].sum(), a, retain_graph=True)
            maps.append((a * g.mean(dim=1, keepdim=True)).sum(-1).clamp(min=0).reshape(2, 6, 6))
    want = torch.stack(maps, dim=1).detach()
    assert torch.allclose(result.logits, logits.detach(), atol=1e-5)
    assert (result.relevance - want).abs().max() <= 1e-5 * want.abs().max()


def test_surgery_changes_the_patch_tokens_not_the_image_embedding(tower) -> None:
    """Dual path: the image embedding (token 0) is the original path's, the patch tokens the new path's."""
    _, model = tower
    x = _images()
    with torch.no_grad():
        vanilla, _ = dense_forward(model, x, SurgeryConfig.off())
        surgery, _ = dense_forward(model, x, METHODS["surgery"])
    assert (surgery[:, 0] - vanilla[:, 0]).abs().max() <= 1e-5 * vanilla.abs().max()
    assert (surgery[:, 1:] - vanilla[:, 1:]).abs().max() > 1e-3


def test_error_inside_the_forward_leaves_the_model_as_it_was(tower) -> None:
    _, model = tower
    before = snapshot(model)

    def boom(name: str, value: torch.Tensor) -> None:
        if name == "blocks.3.attn_input":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        dense_forward(model, _images(), METHODS["surgery"], hook=boom)
    assert_unchanged(model, before)


def test_eva02_runs_at_other_input_sizes_with_the_ropes_own_bands() -> None:
    """At another grid the rotary embedding is built from the rope's frequency bands, as timm builds it for
    dynamic image sizes: a model made with ``dynamic_img_size=True`` and the same weights gives the same
    image embedding."""
    model = tiny_eva02(seed=5)
    dynamic = tiny_eva02(seed=5)
    dynamic.visual.trunk.rope._use_cached_embed = False  # timm's dynamic-size path: get_embed(shape)
    x = _images(size=128)
    with torch.no_grad():
        tokens, grid = dense_forward(model, x, SurgeryConfig.off())
        a = dense_forward(model, x, SurgeryConfig.off(), hook=lambda n, v: None)[0]
        b = dense_forward(dynamic, x, SurgeryConfig.off(), hook=lambda n, v: None)[0]
    assert grid == (8, 8) and tokens.shape[1] == 65
    assert (a - b).abs().max() < 1e-6 and (a - tokens).abs().max() <= 1e-5 * tokens.abs().max()


def test_siglip_runs_at_other_input_sizes() -> None:
    """The positional embedding is resampled into a new tensor; the grid follows the input."""
    model = tiny_siglip()
    with torch.no_grad():
        tokens, grid = dense_forward(model, _images(size=128, batch=1), METHODS["surgery"])
    assert grid == (8, 8) and tokens.shape == (1, 65, 64)


def test_naclip_prior_has_no_class_row_on_siglip() -> None:
    """NACLIP's neighbourhood prior covers only patches when the stream has no class token."""
    from surgery_lib.model.attention import spatial_prior

    omega = spatial_prior((2, 3), 1.0, torch.zeros(()), prefix=0)
    assert omega.shape == (6, 6) and torch.allclose(omega.diagonal(), torch.ones(6))
    with_cls = spatial_prior((2, 3), 1.0, torch.zeros(()))
    assert torch.equal(with_cls[1:, 1:], omega) and with_cls[0].abs().sum() == 0


def test_unsupported_timm_trunks_are_refused_by_name() -> None:
    """A timm ViT with a class token and token pooling (no attention pool) is not a SigLIP tower."""
    from surgery_lib.model.tiny_towers import timm_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "timm_model_name": "surgery_test_vit_tok",
            "timm_pool": "token",
            "timm_proj": "none",
        },
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    kwargs = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32}
    model = timm_clip("siglip", {**kwargs, "class_token": True, "global_pool": "token"}, cfg)
    with pytest.raises(UnsupportedModelError, match="attention-pool head"):
        tower_info(model)


def test_eva02_attention_maps_rotate_as_the_forward_does() -> None:
    """``attention_maps`` (a second adapter, after the trace) rotates q and k like the forward: its q-k
    weights equal the probabilities the engine reports for the same block."""
    model = tiny_eva02(seed=6)
    x = _images(batch=1)
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        dense_forward(
            model, x, SurgeryConfig.off(), hook=lambda n, v: seen.setdefault(n, v), attention_probs=[4]
        )
        maps, grid = sl.model.attention_maps(model, x, block=4, query=None, kinds=("qk",))
    assert grid == (6, 6)
    assert (maps["qk"] - seen["blocks.4.attn_probs"]).abs().max() < 1e-6


def test_class_token_analyses_refuse_siglip_by_name() -> None:
    model = tiny_siglip()
    for call in (
        lambda: sl.model.attention_maps(model, _images(batch=1), block=0, query=0),
        lambda: sl.model.trace_forward(model, _images(batch=1)),
    ):
        with pytest.raises(UnsupportedModelError, match="class token of the residual stream"):
            call()


@pytest.mark.parametrize("after_pool", [True, False])
def test_native_vit_with_average_pooling_gives_open_clips_embedding(after_pool: bool) -> None:
    """open_clip ViTs pooled by the mean patch token (CLIPA: ``pool_type='avg'``, ``final_ln_after_pool``):
    token 0 is open_clip's image embedding, also under a dual-path surgery (from the original path)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(
        layers=4,
        width=64,
        head_width=32,
        patch_size=8,
        image_size=32,
        pool_type="avg",
        final_ln_after_pool=after_pool,
        no_ln_pre=True,
    )
    text = CLIPTextCfg(context_length=16, vocab_size=100, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.encode_image(x)
        for config in (SurgeryConfig.off(), SurgeryConfig(depth=2)):
            tokens, _ = dense_forward(model, x, config)
            assert (tokens[:, 0] - want).abs().max() < 1e-5, config
    assert tower_info(model).class_token == "avg"
    with pytest.raises(UnsupportedModelError, match="class token"):
        sl.model.attention_maps(model, x, block=0, query=0)


def test_eva02_residual_contributions_add_up_to_its_tokens() -> None:
    """EVA02's readout (final LayerNorm, then the head) linearises as OpenAI's does: the embedding's,
    every block's attention and FFN parts and the bias add up to the output tokens."""
    model = tiny_eva02(seed=7)
    parts = sl.model.residual_contributions(model, _images(batch=1), METHODS["surgery"])
    total = parts.embedding + parts.attention.sum(0) + parts.ffn.sum(0) + parts.bias
    assert (total - parts.tokens).abs().max() <= 1e-4 * parts.tokens.abs().max()


def test_eva02_gradient_explainers_at_another_grid_find_its_rotary_embedding() -> None:
    """Grad-ECLIP looks at the last block again with an adapter of its own after the forward: the rotary
    embedding of the grid the forward embedded with is found (it was refused before)."""
    from surgery_lib.model import gradient_maps

    model = tiny_eva02(seed=8)
    texts = torch.nn.functional.normalize(
        torch.randn(2, 48, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    result = gradient_maps(model, _images(size=128, batch=1), texts, GRADIENT_METHODS["grad_eclip"])
    assert result.relevance.shape == (1, 2, 8, 8) and torch.isfinite(result.relevance).all()
