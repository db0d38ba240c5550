"""Where things are: the shipped model files (package data) and the project's data sets.

* model configs and shipped weights: inside the package (``surgery_lib/model/configs``,
  ``surgery_lib/model/weights``), so an installed wheel loads ``toy-vit`` from any directory;
* the data sets (composites, real photos, toy sources): ``$SURGERY_DATA_DIR`` when set, else the
  ``data/`` folder of the source checkout the package was imported from.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "model" / "configs"
WEIGHTS_DIR = PACKAGE_DIR / "model" / "weights"
_CHECKOUT_DIR = PACKAGE_DIR.parent


class DataNotFoundError(FileNotFoundError):
    """The project's data folder is not where it was looked for; the message says how to point to it."""


def data_dir() -> Path:
    """The project's data folder: ``$SURGERY_DATA_DIR``, else ``<checkout>/data``.

    Raises:
        DataNotFoundError: neither exists (an installed package without a checkout and no
            ``SURGERY_DATA_DIR``).
    """
    env = os.environ.get("SURGERY_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"SURGERY_DATA_DIR={env!r} is not a folder")
        return path
    path = _CHECKOUT_DIR / "data"
    if not (path / "composites").is_dir():
        raise DataNotFoundError(
            f"no data folder at {path}: the shipped sets live in the source repository's data/; "
            "set SURGERY_DATA_DIR=/path/to/clip-surgery/data"
        )
    return path


def checkout_dir() -> Path | None:
    """The source checkout the package runs from (it has ``notebooks/``), or None when installed."""
    return _CHECKOUT_DIR if (_CHECKOUT_DIR / "notebooks").is_dir() else None
