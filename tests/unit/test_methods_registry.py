"""The method registry (one file per method) and the forward engine every method runs on."""

from __future__ import annotations

import pytest
import torch
from conftest import make_rn, make_vit, random_images

import surgery_lib.methods as registry
from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.methods import (
    GRADIENT_METHODS,
    INT_BOUNDS,
    METHOD_COLORS,
    METHOD_TITLES,
    METHODS,
    PROTOCOL_PRESETS,
    REGISTRY,
    Method,
    get_method,
)
from surgery_lib.model.adapters import UnsupportedModelError
from surgery_lib.model.engine import SurgeryError, dense_forward, resnet_refusals
from surgery_lib.model.introspection import attention_maps


def test_every_table_about_methods_is_read_from_the_registry():
    assert list(METHODS) + list(GRADIENT_METHODS) == list(REGISTRY)
    assert set(METHOD_TITLES) == set(METHOD_COLORS) == set(REGISTRY)
    assert set(PROTOCOL_PRESETS) <= set(METHODS)
    assert INT_BOUNDS == {"self_attn_iters": (0, 5), "spatial_prior_sigma": (0, 10)}
    positions = [m.position for m in REGISTRY.values()]
    assert positions == sorted(positions) and list(REGISTRY)[:2] == ["raw", "surgery"]
    assert all(isinstance(c, SurgeryConfig) for c in METHODS.values())
    assert all(isinstance(c, GradientConfig) for c in GRADIENT_METHODS.values())


@pytest.mark.parametrize("name", list(METHODS))
def test_a_dense_methods_towers_agree_with_what_the_engine_runs(name):
    """A method claims the ResNet tower exactly when the engine has a ResNet variant of its config."""
    assert get_method(name).runs_on("rn") == (not resnet_refusals(METHODS[name]))


def test_adding_a_method_is_adding_one_file(tmp_path, monkeypatch):
    package = tmp_path / "extra_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "identity_last.py").write_text(
        "from surgery_lib.config import SurgeryConfig\n"
        "from surgery_lib.methods.base import Method\n"
        "METHODS = (Method(name='identity-last', title='identity, last block', color='#123456',\n"
        "    config=SurgeryConfig(attention='identity', dual_path=False, depth=1, skip_ffn=True,\n"
        "    feature_surgery=False), reference='an example', position=5),)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry._collect([str(package)], "extra_methods")
    assert list(found) == ["identity-last"] and found["identity-last"].runs_on("rn")
    (package / "twin.py").write_text(
        "from surgery_lib.config import SurgeryConfig\n"
        "from surgery_lib.methods.base import Method\n"
        "METHODS = (Method(name='twin', title='t', color='#000000',\n"
        "    config=SurgeryConfig(attention='identity',\n"
        "    dual_path=False, depth=1, feature_surgery=False), reference='r', position=6),)\n"
    )
    with pytest.raises(ValueError, match="methods 'identity-last' and 'twin' have the same config"):
        registry._collect([str(package)], "extra_methods")
    (package / "twin.py").unlink()
    (package / "broken.py").write_text("METHODS = ['not a method']\n")
    with pytest.raises(TypeError, match=r"extra_methods\.broken must define METHODS"):
        registry._collect([str(package)], "extra_methods")


def test_a_method_record_is_validated():
    config = SurgeryConfig.off()
    with pytest.raises(ValueError, match="one word"):
        Method("two words", "t", "#000", config, "r", 1)
    with pytest.raises(ValueError, match="towers"):
        Method("x", "t", "#000", config, "r", 1, towers=("cnn",))
    with pytest.raises(ValueError, match="no SurgeryConfig field"):
        Method("x", "t", "#000", config, "r", 1, knobs={"width": (0, 3)})
    with pytest.raises(ValueError, match="outside its bounds"):
        Method("x", "t", "#000", config.replace(depth=0), "r", 1, knobs={"depth": (1, 3)})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_engine_errors_name_the_method_of_a_preset():
    rn = make_rn()
    with pytest.raises(UnsupportedModelError, match=r"method 'sclip'.*ModifiedResNet"):
        dense_forward(rn, random_images(rn), METHODS["sclip"])
    with pytest.raises(UnsupportedModelError, match="this SurgeryConfig"):
        dense_forward(rn, random_images(rn), METHODS["sclip"].replace(pos_embed_interp="bicubic"))


def test_the_engine_reports_attention_probabilities_that_the_output_depends_on():
    vit = make_vit()
    images = random_images(vit)
    seen: dict[str, torch.Tensor] = {}

    def hook(name, value):
        if name.endswith("attn_probs"):
            seen[name] = value

    last = len(vit.visual.transformer.resblocks) - 1
    plain, _ = dense_forward(vit, images, SurgeryConfig.off())
    tokens, _ = dense_forward(vit, images, SurgeryConfig.off(), hook=hook, attention_probs=[last])
    torch.testing.assert_close(tokens, plain, atol=2e-5, rtol=1e-4)
    assert list(seen) == [f"blocks.{last}.attn_probs"]
    want, _ = attention_maps(vit, images, block=-1, query=None, kinds=("qk",))
    torch.testing.assert_close(seen[f"blocks.{last}.attn_probs"], want["qk"], atol=1e-5, rtol=1e-4)
    # the dual path reports the new path's probabilities (v-v) beside the original path's (q-k)
    seen.clear()
    dense_forward(vit, images, SurgeryConfig.paper(), hook=hook, attention_probs=[last])
    assert set(seen) == {f"blocks.{last}.attn_probs", f"new_path.{last}.attn_probs"}
    vv, _ = attention_maps(vit, images, block=-1, query=None, kinds=("vv",))
    assert not torch.allclose(seen[f"new_path.{last}.attn_probs"], seen[f"blocks.{last}.attn_probs"])
    assert vv["vv"].shape == seen[f"new_path.{last}.attn_probs"].shape


def test_a_hook_can_patch_an_activation_and_a_wrong_shape_is_refused():
    vit = make_vit()
    images = random_images(vit)
    plain, _ = dense_forward(vit, images, SurgeryConfig.off())
    zeroed, _ = dense_forward(
        vit,
        images,
        SurgeryConfig.off(),
        hook=lambda n, v: torch.zeros_like(v) if n == "blocks.0.attn_out" else None,
    )
    assert not torch.allclose(zeroed, plain)
    with pytest.raises(SurgeryError, match="expected None or a tensor of shape"):
        dense_forward(vit, images, SurgeryConfig.off(), hook=lambda n, v: v[:, :1] if n == "embed" else None)
    with pytest.raises(SurgeryError, match="attention_probs must name blocks"):
        dense_forward(vit, images, SurgeryConfig.off(), attention_probs=[99])


def test_the_resnet_pool_reports_its_probabilities():
    rn = make_rn()
    images = random_images(rn)
    seen = {}
    tokens, _ = dense_forward(rn, images, SurgeryConfig.off(), hook=seen.__setitem__, attention_probs=[0])
    plain, _ = dense_forward(rn, images, SurgeryConfig.off())
    torch.testing.assert_close(tokens, plain, atol=2e-5, rtol=1e-4)
    assert set(seen) == {"trunk", "pool.input", "pool.attn_probs"}
    torch.testing.assert_close(
        seen["pool.attn_probs"].sum(-1), torch.ones(seen["pool.attn_probs"].shape[:-1])
    )


def test_block_kinds_patch_single_blocks_and_reduce_to_the_config():
    vit = make_vit()
    images = random_images(vit)
    n = len(vit.visual.transformer.resblocks)
    paper = SurgeryConfig.paper().replace(depth=2)
    want, _ = dense_forward(vit, images, paper)
    got, _ = dense_forward(vit, images, paper, block_kinds=[None] * (n - 2) + ["vv", "vv"])
    torch.testing.assert_close(got, want)
    single = SurgeryConfig(dual_path=False, skip_ffn=False, depth=0, feature_surgery=False)
    one, _ = dense_forward(vit, images, single, block_kinds=["vv"] + [None] * (n - 1))
    first_only, _ = dense_forward(vit, images, single.replace(depth=n), block_kinds=["vv"] + [None] * (n - 1))
    torch.testing.assert_close(one, first_only)  # block_kinds replace depth and attention
    assert not torch.allclose(one, dense_forward(vit, images, SurgeryConfig.off())[0])
    with pytest.raises(SurgeryError, match="one entry per block"):
        dense_forward(vit, images, single, block_kinds=["vv"])
    with pytest.raises(SurgeryError, match="unknown attention kind 'zz'"):
        dense_forward(vit, images, single, block_kinds=["zz"] + [None] * (n - 1))
    rn = make_rn()
    with pytest.raises(SurgeryError, match="needs a ViT tower"):
        dense_forward(rn, random_images(rn), single, block_kinds=["vv"])
