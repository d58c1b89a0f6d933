"""Where llmos keeps its files: LLMOS_HOME, by default ~/.llmos."""

from __future__ import annotations

import os
from pathlib import Path


def llmos_home() -> Path:
    home = Path(os.environ.get("LLMOS_HOME") or Path.home() / ".llmos").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
