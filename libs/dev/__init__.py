"""Development tools that never ship in an image: the local launcher (``make run``: :mod:`chatplane.dev.stack`),
the embedded Kafka broker (:mod:`chatplane.dev.broker`), child processes and ports (:mod:`chatplane.dev.procs`), the
development CA (:mod:`chatplane.dev.devcerts`) and a local Prometheus (``make observe``: :mod:`chatplane.dev.observe`).

A distribution of its own (``libs/dev/pyproject.toml``, ``chatplane-dev``) that ``make install`` installs in editable
mode next to ``chatplane``; the images install only ``chatplane`` (``.dockerignore`` keeps this folder out of their
build context). Its modules may therefore read the repository they are installed from (:func:`repository`).
"""

from __future__ import annotations

from pathlib import Path


def repository() -> Path:
    """The chatplane checkout this package is installed from (editable): the folder above ``libs/dev`` that holds
    the root ``pyproject.toml``. Raises RuntimeError when the package was installed some other way."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file() and (folder / "libs" / "dev").is_dir():
            return folder
    raise RuntimeError("chatplane.dev must be installed in editable mode from a chatplane checkout (make install)")
