"""The classroom app's page: a tower picker (when more than one model is on this machine) above the map
explorer and the attention explorer of the picked tower."""

from __future__ import annotations

from pathlib import Path

from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.model import available_towers, load_tower, tower_info
from surgery_lib.ui.attention_explorer import AttentionExplorer
from surgery_lib.ui.explorer_base import _widgets
from surgery_lib.ui.map_explorer import Explorer


class TowerApp:
    """The app: ``widget`` shows a ``Dropdown`` of :func:`~surgery_lib.model.available_towers` (DOM class
    ``surgery-tower-picker``; only when there are several) and the explorers of the picked tower, built
    anew when another is picked (a tower that cannot be loaded is reported in ``status``, the last
    explorers stay).

    Args:
        start: the tower spec shown first (``name`` or ``name@tag``; ``SURGERY_MODEL`` / ``_PRETRAINED``).
        figure_dir, max_exports: where the explorers' "export figure" writes, and how many figures at most.
        images: the example source (``"composites"``, ``"real"``); default: the one that suits the tower.
        towers: the specs to offer (default: what is on this machine now).
    """

    def __init__(
        self,
        start: str,
        figure_dir: Path,
        max_exports: int,
        images: str | None = None,
        towers: list[str] | None = None,
    ) -> None:
        w = _widgets()
        towers = list(towers if towers is not None else available_towers())
        if start not in towers:
            towers.insert(0, start)
        self.figure_dir, self.max_exports, self.images = figure_dir, max_exports, images
        self.picker = w.Dropdown(options=towers, value=start, description="tower")
        self.picker.add_class("surgery-tower-picker")
        self.picker.layout.display = "" if len(towers) > 1 else "none"
        self.status = w.HTML("")
        self.body = w.VBox([])
        self.widget = w.VBox([self.picker, self.status, self.body])
        self.explorer: Explorer | None = None
        self.show(start)
        self.picker.observe(lambda change: self.show(change["new"]), names="value")

    def show(self, spec: str) -> None:
        """Build the explorers of the tower ``spec``."""
        w = _widgets()
        try:
            loaded = load_tower(spec)
        except Exception as error:  # a missing file, an unknown tag: said, the last explorers kept
            self.status.value = f"<b>{spec}</b> cannot be loaded: {error}"
            return
        name = spec.split("@")[0]
        classes, items = example_images(self.images or default_source(name), limit=12)
        labels = list(dict.fromkeys(label for item in items[:3] for label in item.labels))[:3] or classes[:3]
        self.explorer = Explorer(
            loaded,
            items,
            labels,
            selected=[item.name for item in items[:3]],
            figure_dir=self.figure_dir,
            max_exports=self.max_exports,
        )
        parts = [self.explorer.widget, w.HTML("<h2>Attention of one token</h2>")]
        if tower_info(loaded.model).class_token in ("learned", "mean"):
            parts.append(AttentionExplorer(loaded, items[0].image, block=-1).widget)
        else:
            parts.append(w.HTML(f"{spec} has no class token in its residual stream: see README, Towers."))
        self.body.children = parts
        self.status.value = f"tower: <b>{spec}</b>"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
