"""PEP 517 build backend: setuptools' own, with its build folders outside the source tree.

`pip install .` builds a wheel in the source folder, and setuptools leaves `build/` (and an `.egg-info`) there.
This backend is `setuptools.build_meta` with one change: while it builds a wheel, an sdist or their metadata,
setuptools reads one more config file (`DIST_EXTRA_CONFIG`, a setuptools feature) that points `build` and
`egg_info` at a temporary folder, removed afterwards. Editable installs (`pip install -e .`) are setuptools' as
they are.
Declared in pyproject.toml (`build-backend`, `backend-path`); tested by tests/test_packaging.py.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every hook, as setuptools defines it

__all__ = list(_setuptools.__all__)


@contextlib.contextmanager
def _outside_the_tree() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="latent-briefing-build-") as tmp:
        cfg = os.path.join(tmp, "outside.cfg")
        with open(cfg, "w", encoding="utf-8") as fh:
            fh.write(f"[build]\nbuild_base = {os.path.join(tmp, 'build')}\n\n[egg_info]\negg_base = {tmp}\n")
        before = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = cfg
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("DIST_EXTRA_CONFIG", None)
            else:
                os.environ["DIST_EXTRA_CONFIG"] = before


def get_requires_for_build_wheel(config_settings=None):  # noqa: F811
    with _outside_the_tree():
        return _setuptools.get_requires_for_build_wheel(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):  # noqa: F811
    with _outside_the_tree():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # noqa: F811
    with _outside_the_tree():
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_sdist(config_settings=None):  # noqa: F811
    with _outside_the_tree():
        return _setuptools.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None):  # noqa: F811
    with _outside_the_tree():
        return _setuptools.build_sdist(sdist_directory, config_settings)
