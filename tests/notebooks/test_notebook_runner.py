"""The main job's runner: no time limit by default, progress, every notebook runs, a summary, --resume."""

from __future__ import annotations

import json
import os

import pytest

from surgery_lib.ui import notebooks as runner
from surgery_lib.ui.notebooks import NotebookError, cell_timeout, main, run_notebook, summary_table

_SAVE = (
    "# %%\nimport os, pathlib\n"
    "pathlib.Path(os.environ['SURGERY_FIGURES_DIR'], '{name}.png').write_bytes(b'x')\n"
)


def _notebooks(folder):
    folder.mkdir()
    good1, bad, good2 = folder / "01_first.py", folder / "02_broken.py", folder / "03_third.py"
    good1.write_text(_SAVE.format(name="01_map"))
    bad.write_text('# %%\nx = 1\n\n# %%\nraise RuntimeError("deliberately broken")\n')
    good2.write_text(_SAVE.format(name="03_map") + _SAVE.format(name="03_other"))
    return good1, bad, good2


def test_a_failing_notebook_leaves_the_others_figures_a_summary_and_a_nonzero_exit(tmp_path, capsys):
    paths = _notebooks(tmp_path / "nbs")
    out, figures = tmp_path / "out", tmp_path / "figs"
    assert main([*map(str, paths), "--out", str(out), "--figures", str(figures)]) == 1
    assert sorted(p.name for p in figures.glob("*.png")) == ["01_map.png", "03_map.png", "03_other.png"]
    assert (out / "03_third.ipynb").is_file()  # the notebook after the broken one ran
    captured = capsys.readouterr()
    table = captured.out[captured.out.index("notebook ") :]
    rows = {line.split()[0]: line for line in table.splitlines()[1:4]}
    assert rows["01_first.py"].split()[-2:] == ["1", "✓"]
    assert rows["02_broken.py"].split()[-2:] == ["0", "✗"]
    assert rows["03_third.py"].split()[-2:] == ["2", "✓"]
    assert "1 notebook(s) failed: 02_broken.py" in captured.err
    assert "deliberately broken" in captured.err
    assert "figures (3 PNG + PDF written by these notebooks)" in captured.out


def test_figures_left_by_an_earlier_numbering_are_named_not_counted_and_kept(tmp_path, capsys):
    first, _, third = _notebooks(tmp_path / "nbs")
    out, figures = tmp_path / "out", tmp_path / "figs"
    figures.mkdir()
    (figures / "02_old_name.png").write_bytes(b"x")  # an earlier run's figure under another number
    assert main([str(first), str(third), "--out", str(out), "--figures", str(figures)]) == 0
    printed = capsys.readouterr().out
    assert "figures (3 PNG + PDF written by these notebooks)" in printed
    assert (
        "1 other PNG file(s) there were not written by these notebooks" in printed
        and "02_old_name.png" in printed
    )
    assert (figures / "02_old_name.png").is_file()


def test_resume_skips_finished_notebooks_whose_inputs_did_not_change(tmp_path, capsys):
    first, bad, third = _notebooks(tmp_path / "nbs")
    out, figures = tmp_path / "out", tmp_path / "figs"
    options = ["--out", str(out), "--figures", str(figures), "--resume"]
    assert main([str(first), str(bad), str(third), *options]) == 1
    stamp = (out / "01_first.ipynb").stat().st_mtime_ns
    capsys.readouterr()
    runs = runner.run_notebooks([first, bad, third], out, figures, resume=True)
    assert [r.status for r in runs] == ["skipped", "failed", "skipped"]  # the failed one runs again
    assert runs[2].figures == ["03_map.png", "03_other.png"]  # recorded figures are reported
    assert (out / "01_first.ipynb").stat().st_mtime_ns == stamp  # not executed again
    # a changed notebook, a deleted figure and another setting each make a notebook run again
    first.write_text(first.read_text() + "\n# %%\ny = 2\n")
    (figures / "03_other.png").unlink()
    runs = runner.run_notebooks([first, third], out, figures, resume=True)
    assert [r.status for r in runs] == ["ok", "ok"]
    runs = runner.run_notebooks([first], out, figures, resume=True, env={"SURGERY_LIMIT": "3"})
    assert [r.status for r in runs] == ["ok"]
    assert "= (unchanged, --resume)" in summary_table(
        runner.run_notebooks([third], out, figures, resume=True)
    )
    # without --resume everything runs
    assert [r.status for r in runner.run_notebooks([third], out, figures)] == ["ok"]


def test_there_is_no_cell_time_limit_unless_one_is_asked_for(monkeypatch):
    monkeypatch.delenv("SURGERY_CELL_TIMEOUT", raising=False)
    assert cell_timeout() is None
    assert cell_timeout("0") is None and cell_timeout("none") is None
    monkeypatch.setenv("SURGERY_CELL_TIMEOUT", "1200")
    assert cell_timeout() == 1200
    assert cell_timeout("30") == 30  # --timeout wins over the variable
    for bad in ("ten", "-5", "1.5"):
        with pytest.raises(ValueError, match="cell timeout"):
            cell_timeout(bad)


def test_a_requested_cell_limit_names_the_cell_and_the_option(tmp_path, monkeypatch, capsys):
    slow = tmp_path / "05_slow.py"
    slow.write_text("# %%\nx = 1\n\n# %%\nimport time\ntime.sleep(30)\n")
    with pytest.raises(NotebookError, match=r"05_slow\.py: cell 2/2 ran past the 2 s limit"):
        run_notebook(slow, tmp_path / "out", tmp_path / "figs", timeout=2)
    monkeypatch.setenv("SURGERY_CELL_TIMEOUT", "abc")
    assert main([str(slow), "--out", str(tmp_path / "out")]) == 2
    assert "cell timeout must be a whole number" in capsys.readouterr().err


def test_progress_names_the_notebook_the_cell_and_an_evaluations_bar(tmp_path):
    path = tmp_path / "04_progress.py"
    path.write_text(
        "# %%\nx = 1\n\n# %% [markdown]\n# text\n\n# %%\nimport sys\n"
        "for i in (1, 2):\n    sys.stderr.write(f'\\rmultilabel:  {50 * i}%| {i}/2 [00:01<00:00]')\n"
    )
    calls = []
    run_notebook(path, tmp_path / "out", tmp_path / "figs", progress=lambda *a: calls.append(a))
    assert {c[:3] for c in calls} == {("04_progress.py", 1, 2), ("04_progress.py", 2, 2)}
    bars = [c[4] for c in calls if c[4]]
    assert bars and bars[-1].startswith("multilabel:  100%| 2/2")
    assert all(c[3] >= 0 for c in calls)


def test_the_progress_line_prints_long_cells_on_a_pipe(tmp_path, capsys):
    import io

    stream = io.StringIO()
    line = runner._ProgressLine(stream, every_s=10)
    line("08_multilabel.py", 3, 9, 5.0, "")
    line("08_multilabel.py", 3, 9, 12.0, "multilabel: 40%| 8/20")
    assert stream.getvalue() == "  08_multilabel.py: cell 3/9,     12 s  multilabel: 40%| 8/20\n"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file names")
def test_a_missing_notebook_is_named(tmp_path, capsys):
    assert main([str(tmp_path / "99_none.py"), "--out", str(tmp_path / "out")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_kernels_wait_passively_unless_told_otherwise(tmp_path, monkeypatch):
    """Spinning OpenMP threads made notebooks 4-25x slower beside another busy job."""
    path = tmp_path / "06_env.py"
    path.write_text("# %%\nimport os\nprint('policy=' + os.environ.get('OMP_WAIT_POLICY', 'unset'))\n")

    def policy() -> str:
        out = run_notebook(path, tmp_path / "out", tmp_path / "figs")
        return "".join(json.loads(out.read_text())["cells"][0]["outputs"][0]["text"]).strip()

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert policy() == "policy=PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert policy() == "policy=ACTIVE"
