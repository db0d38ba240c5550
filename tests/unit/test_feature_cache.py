"""The persistent text-feature cache (``surgery_lib.maps.feature_cache``) and its use by ``text_features``.

Each test points ``SURGERY_CACHE_DIR`` at its own folder. Covered: hit and miss, a corrupt, foreign or
ill-shaped entry is recomputed with a warning naming the file, concurrent writers (threads and
processes), a changed weight / template / label / tokenizer gives a new key, ``SURGERY_NO_CACHE``,
and ``surgery cache info|clear``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import REPO, make_vit

import surgery_lib.maps.text as text_module
from surgery_lib.cli import main
from surgery_lib.maps.feature_cache import (
    cache_dir,
    cache_info,
    clear_disk_cache,
    disk_cache_enabled,
    entry_path,
    load_entry,
    store_entry,
    text_entry_key,
    text_weights_hash,
    tokenizer_fingerprint,
)
from surgery_lib.maps.text import clear_text_cache, text_features

LABELS = ["cat", "dog", "traffic light"]


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SURGERY_NO_CACHE", raising=False)
    clear_text_cache()
    return tmp_path / "cache"


@pytest.fixture
def encodes(monkeypatch) -> list[int]:
    """The number of prompts each call of the text tower encoded (``encode_prompts`` counted)."""
    calls: list[int] = []
    original = text_module.encode_prompts
    monkeypatch.setattr(
        text_module,
        "encode_prompts",
        lambda model, tokens: calls.append(len(tokens)) or original(model, tokens),
    )
    return calls


def _entry_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("text/*/*.pt"))


def _path_of(model, tokenizer, label, templates=text_module.PROMPT_TEMPLATES) -> Path:
    weights = text_weights_hash(model)
    tok = tokenizer_fingerprint(tokenizer, 77)
    p = next(model.parameters())
    return entry_path(weights, text_entry_key(weights, tok, templates, label, p.dtype, p.device))


def test_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SURGERY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "surgery_lib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "surgery_lib"


def test_tests_never_use_the_users_cache():
    assert Path(os.environ["SURGERY_CACHE_DIR"]) != Path.home() / ".cache" / "surgery_lib"


def test_miss_then_hit_in_a_fresh_memory(folder, encodes, tokenizer):
    model = make_vit()
    first = text_features(model, tokenizer, LABELS)
    assert encodes == [3 * 85]  # one batched forward over labels × templates
    assert len(_entry_files(folder)) == 3
    clear_text_cache()  # as a new process: only the disk remembers
    again = text_features(make_vit(), tokenizer, LABELS)  # another object, the same weights
    assert encodes == [3 * 85] and torch.equal(first, again)
    text_features(make_vit(), tokenizer, ["cat", "bird"])
    assert encodes == [3 * 85, 85]  # only "bird" is new
    assert cache_info()["entries"] == 4 and cache_info()["models"] == 1


def test_corrupt_entry_is_recomputed_with_a_warning(folder, encodes, tokenizer):
    model = make_vit()
    good = text_features(model, tokenizer, ["cat"])
    path = _path_of(model, tokenizer, "cat")
    path.write_bytes(b"not a torch file")
    clear_text_cache()
    with pytest.warns(RuntimeWarning, match=rf"{path.name}.*unreadable"):
        again = text_features(model, tokenizer, ["cat"])
    assert len(encodes) == 2
    torch.testing.assert_close(again, good, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: read again without a warning
        assert torch.equal(load_entry(path, path.stem), again[0])


def test_truncated_entry_is_recomputed_with_a_warning(folder, encodes, tokenizer):
    model = make_vit()
    text_features(model, tokenizer, ["cat"])
    path = _path_of(model, tokenizer, "cat")
    path.write_bytes(path.read_bytes()[:100])
    clear_text_cache()
    with pytest.warns(RuntimeWarning, match=path.name):
        text_features(model, tokenizer, ["cat"])
    assert len(encodes) == 2


def test_foreign_entry_is_not_used(folder, encodes, tokenizer):
    model = make_vit()
    cat, dog = text_features(model, tokenizer, ["cat", "dog"])
    cat_path, dog_path = _path_of(model, tokenizer, "cat"), _path_of(model, tokenizer, "dog")
    cat_path.write_bytes(dog_path.read_bytes())  # dog's entry under cat's name
    clear_text_cache()
    with pytest.warns(RuntimeWarning, match=rf"{cat_path.name}.*another key"):
        again = text_features(model, tokenizer, ["cat"])
    torch.testing.assert_close(again[0], cat, atol=1e-6, rtol=0)
    assert not torch.allclose(again[0], dog)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (torch.ones(32, dtype=torch.float64) / 32**0.5, "not a float32 vector"),
        (torch.ones(2, 16) / 32**0.5, "not a float32 vector"),
        (torch.ones(31) / 31**0.5, "length 31"),
        (torch.full((32,), float("nan")), "non-finite"),
        (torch.ones(32), "unit norm"),
    ],
)
def test_ill_shaped_entry_is_recomputed(folder, encodes, tokenizer, value, why):
    model = make_vit()
    good = text_features(model, tokenizer, ["cat"])
    path = _path_of(model, tokenizer, "cat")
    torch.save({"format": 1, "key": path.stem, "features": value}, path)
    clear_text_cache()
    if "length" in why:  # a vector of unit norm and the wrong length: caught by the dimension check
        with pytest.warns(RuntimeWarning, match=why):
            assert load_entry(path, path.stem, dim=32) is None
        return
    with pytest.warns(RuntimeWarning, match=rf"{path.name}.*{why}"):
        again = text_features(model, tokenizer, ["cat"])
    torch.testing.assert_close(again, good, atol=1e-6, rtol=0)


def test_other_format_is_not_used(folder, tokenizer):
    model = make_vit()
    text_features(model, tokenizer, ["cat"])
    path = _path_of(model, tokenizer, "cat")
    entry = torch.load(path, weights_only=True)
    torch.save({**entry, "format": 0}, path)
    with pytest.warns(RuntimeWarning, match="not a text-feature entry of this format"):
        assert load_entry(path, path.stem) is None


def test_concurrent_threads_write_the_same_and_different_keys(folder):
    value = torch.nn.functional.normalize(torch.randn(32), dim=0)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            barrier.wait()
            for round_ in range(20):
                store_entry(folder / "text" / "m" / "same.pt", "same", value)
                store_entry(folder / "text" / "m" / f"own{i}-{round_}.pt", f"own{i}-{round_}", value)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = sorted((folder / "text" / "m").iterdir())
    assert len(files) == 1 + 8 * 20 and all(f.suffix == ".pt" for f in files)  # no temporary file left
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in files:
            assert torch.equal(load_entry(f, f.stem), value)


_WRITER = """
import sys, torch
from pathlib import Path
from surgery_lib.maps.feature_cache import store_entry
folder, name = Path(sys.argv[1]), sys.argv[2]
value = torch.nn.functional.normalize(torch.arange(1.0, 33.0), dim=0)
for i in range(150):
    store_entry(folder / "same.pt", "same", value)
    store_entry(folder / f"{name}{i}.pt", f"{name}{i}", value)
print("done")
"""


def test_concurrent_processes_do_not_clash(folder):
    target = folder / "text" / "m"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), name], env=env, stdout=subprocess.PIPE, text=True
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all("done" in o for o in outputs)
    files = sorted(target.iterdir())
    assert len(files) == 1 + 2 * 150 and all(f.suffix == ".pt" for f in files)
    value = torch.nn.functional.normalize(torch.arange(1.0, 33.0), dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in files:
            assert torch.equal(load_entry(f, f.stem), value)


def test_changed_weight_gives_a_new_key_and_new_features(folder, encodes, tokenizer):
    model = make_vit()
    before = text_weights_hash(model)
    assert text_weights_hash(model) == before == text_weights_hash(make_vit())  # stable, remembered
    old = text_features(model, tokenizer, ["cat"])
    with torch.no_grad():
        model.transformer.resblocks[0].mlp.c_fc.weight[0, 0] += 1.0  # in place: the version counter moves
    after = text_weights_hash(model)
    assert after != before
    new = text_features(model, tokenizer, ["cat"])  # the memory cache notices too
    assert len(encodes) == 2 and not torch.allclose(new, old)
    torch.testing.assert_close(
        new, text_features(model, tokenizer, ["cat"], use_cache=False), atol=1e-6, rtol=0
    )
    assert len(_entry_files(folder)) == 2


def test_replaced_or_loaded_weights_give_a_new_key(tokenizer):
    model = make_vit()
    before = text_weights_hash(model)
    model.load_state_dict(make_vit(seed=3).state_dict())
    assert text_weights_hash(model) != before
    model.text_projection = torch.nn.Parameter(model.text_projection.detach() * 2)
    assert text_weights_hash(model) != text_weights_hash(make_vit(seed=3))


def test_image_tower_weights_do_not_enter_the_text_key():
    model = make_vit()
    before = text_weights_hash(model)
    with torch.no_grad():
        model.visual.proj.mul_(2.0)
    assert text_weights_hash(model) == before


def test_the_key_covers_templates_label_tokenizer_dtype_and_device(tokenizer):
    model = make_vit()
    w = text_weights_hash(model)
    t77 = tokenizer_fingerprint(tokenizer, 77)
    base = text_entry_key(w, t77, ("a {}.", "the {}."), "cat", torch.float32, torch.device("cpu"))
    assert t77 == tokenizer_fingerprint(open_clip.get_tokenizer("ViT-B-16"), 77)  # another object, same
    short = functools.partial(open_clip.tokenize, context_length=24)
    others = [
        text_entry_key(w, t77, ("a {}.", "one {}."), "cat", torch.float32, "cpu"),
        text_entry_key(w, t77, ("a {}.",), "cat", torch.float32, "cpu"),
        text_entry_key(w, t77, ("a {}.", "the {}."), "cats", torch.float32, "cpu"),
        text_entry_key(
            w, tokenizer_fingerprint(short, 24), ("a {}.", "the {}."), "cat", torch.float32, "cpu"
        ),
        text_entry_key(w, t77, ("a {}.", "the {}."), "cat", torch.bfloat16, "cpu"),
        text_entry_key(w, t77, ("a {}.", "the {}."), "cat", torch.float32, "meta"),
        text_entry_key(
            text_weights_hash(make_vit(seed=1)), t77, ("a {}.", "the {}."), "cat", torch.float32, "cpu"
        ),
    ]
    assert len({base, *others}) == 1 + len(others)
    assert tokenizer_fingerprint(tokenizer, 77) != tokenizer_fingerprint(tokenizer, 76)


def test_changed_templates_give_new_entries(folder, encodes, tokenizer):
    model = make_vit()
    text_features(model, tokenizer, ["cat"])
    single = text_features(model, tokenizer, ["cat"], templates="single")
    assert len(_entry_files(folder)) == 2 and encodes == [85, 1]
    clear_text_cache()
    assert torch.equal(text_features(model, tokenizer, ["cat"], templates="single"), single)
    assert encodes == [85, 1]


def test_cache_is_shared_across_processes(folder, tokenizer):
    script = (
        "import open_clip, torch\n"
        "from surgery_lib import load_clip\n"
        "from surgery_lib.maps.text import text_features\n"
        "c = load_clip('toy-vit')\n"
        "torch.save(text_features(c.model, c.tokenizer, ['cat', 'dog']), 'out.pt')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], env=env, cwd=folder.parent, check=True, timeout=300)
    assert len(_entry_files(folder)) == 2
    from surgery_lib import load_clip

    loaded = load_clip("toy-vit")
    calls = []
    original = text_module.encode_prompts
    text_module.encode_prompts = lambda m, t: calls.append(1) or original(m, t)
    try:
        here = text_features(loaded.model, loaded.tokenizer, ["cat", "dog"])
    finally:
        text_module.encode_prompts = original
    assert not calls  # the other process's entries were hits: the keys are stable across processes
    assert torch.equal(here, torch.load(folder.parent / "out.pt", weights_only=True))


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_no_cache_environment_variable(folder, encodes, tokenizer, monkeypatch, value):
    model = make_vit()
    monkeypatch.setenv("SURGERY_NO_CACHE", value)
    assert not disk_cache_enabled()
    text_features(model, tokenizer, ["cat"])
    assert not _entry_files(folder)
    monkeypatch.delenv("SURGERY_NO_CACHE")
    text_features(model, tokenizer, ["dog"])
    assert len(_entry_files(folder)) == 1


def test_no_cache_argument_and_no_cache_flag(folder, encodes, tokenizer):
    model = make_vit()
    text_features(model, tokenizer, ["cat"], use_disk_cache=False)
    text_features(model, tokenizer, ["dog"], use_cache=False)
    assert not _entry_files(folder) and len(encodes) == 2


def test_an_unreadable_entry_is_not_read_with_no_cache(folder, tokenizer, monkeypatch):
    model = make_vit()
    text_features(model, tokenizer, ["cat"])
    _path_of(model, tokenizer, "cat").write_bytes(b"junk")
    clear_text_cache()
    monkeypatch.setenv("SURGERY_NO_CACHE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text_features(model, tokenizer, ["cat"])


def test_replaced_encode_text_is_not_cached_on_disk(folder, tokenizer, monkeypatch):
    model = make_vit()
    monkeypatch.setattr(model, "encode_text", lambda tokens, normalize=False: torch.ones(len(tokens), 32))
    text_features(model, tokenizer, ["cat"])
    assert not _entry_files(folder)


def test_unwritable_cache_warns_and_still_computes(tmp_path, monkeypatch, tokenizer):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(blocker))
    clear_text_cache()
    with pytest.warns(RuntimeWarning, match="cannot write"):
        feats = text_features(make_vit(), tokenizer, ["cat"])
    assert feats.shape == (1, 32)


def test_cache_command_info_and_clear(folder, tokenizer, capsys):
    text_features(make_vit(), tokenizer, LABELS)
    (folder / "notes.txt").write_text("mine")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "3 text-feature entries of 1 models" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 3" in capsys.readouterr().out
    assert not _entry_files(folder) and cache_info()["entries"] == 0
    assert (folder / "notes.txt").read_text() == "mine"  # only the cache's own files are deleted
    assert clear_disk_cache() == 0


def test_cache_command_in_a_subprocess(folder):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SURGERY_NO_CACHE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "surgery_lib", "cache", "info"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and str(folder) in out.stdout and "off" in out.stdout


def test_a_cached_entry_never_hides_an_empty_label(folder, tokenizer):
    model = make_vit()
    text_features(model, tokenizer, ["&nbsp;"], allow_empty_label=True)  # stored, in memory and on disk
    for _ in range(2):
        with pytest.raises(ValueError, match="no text once tokenized"):
            text_features(model, tokenizer, ["&nbsp;"])
        clear_text_cache()
