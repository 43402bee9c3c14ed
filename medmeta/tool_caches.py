"""The caches the libraries medmeta uses would write under ``$HOME``, kept in the medmeta home instead.

matplotlib writes its font list on first use to ``MPLCONFIGDIR``, else ``$XDG_CACHE_HOME/matplotlib``,
else ``~/.cache/matplotlib``; torch (kernels, hub), fontconfig and other XDG-following libraries
write under ``$XDG_CACHE_HOME`` (``~/.cache``) and ``$XDG_CONFIG_HOME`` (``~/.config``). Nothing may be
written outside the home, so ``keep_caches_in(home)`` points all of them at ``H/cache/`` for this
process and its children. It must run before those libraries are first imported (their directories
are read once): the CLI calls it as soon as it knows the home, and ``training/plots.py`` again before
it imports matplotlib, for flows started without the CLI (a deployment's worker).

    H/cache/matplotlib/   MPLCONFIGDIR (font list; a matplotlibrc elsewhere is ignored, so plots are the same everywhere)
    H/cache/xdg/          XDG_CACHE_HOME
    H/cache/xdg-config/   XDG_CONFIG_HOME
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_environment(home_root: Path) -> dict[str, str]:
    """The environment variables that keep third-party caches under ``home_root/cache``."""
    cache = Path(home_root) / "cache"
    return {"MPLCONFIGDIR": str(cache / "matplotlib"), "XDG_CACHE_HOME": str(cache / "xdg"),
            "XDG_CONFIG_HOME": str(cache / "xdg-config")}


def keep_caches_in(home_root: Path) -> None:
    """Set ``cache_environment(home_root)`` in ``os.environ`` (overriding what was set: the promise is
    that nothing is written outside the home). The folders are made when a library first writes."""
    os.environ.update(cache_environment(home_root))
