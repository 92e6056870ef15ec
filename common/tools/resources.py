"""Files gitsieve's own commands need beyond its packages: the simulated agents
(``scripts/``) and the labelled corpus (``tests/corpus/``).

From a checkout they are read in place; ``pip install .`` copies them to
``<prefix>/share/gitsieve/`` (setup.py ``data_files``).
"""
from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
INSTALLED = Path(sys.prefix) / "share" / "gitsieve"
# ``pip install --target DIR`` puts the data files beside the packages: DIR/share/gitsieve
TARGET = Path(__file__).resolve().parents[3] / "share" / "gitsieve"


class ResourceMissing(FileNotFoundError):
    pass


def resource(*parts: str) -> Path:
    """The path of a shipped file, e.g. ``resource("scripts", "churn.py")``."""
    for base in (CHECKOUT, INSTALLED, TARGET):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise ResourceMissing(f"{'/'.join(parts)} is not in the checkout ({CHECKOUT}) nor "
                          f"installed ({INSTALLED}); reinstall gitsieve with `pip install .`")
