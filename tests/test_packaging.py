"""Building the package leaves the source tree as it was (issue 26: `pip install .` left a build/ folder)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_building_a_wheel_leaves_no_build_folder_in_the_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    for name in ("tools", "rlm", "agents", "repl", "briefing"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    before = sorted(p.name for p in src.iterdir())
    out = tmp_path / "dist"
    # pip's own build (no isolation: this environment's setuptools; `pip install .` makes the same calls)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(src), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in src.iterdir()) == before      # no build/, no .egg-info
    (wheel,) = out.glob("latent_briefing-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rlm/cli.py" in names and "rlm/data/pg_essays/foundervisa.txt" in names
    assert not any(n.startswith(("tools/", "tests/", "build/")) for n in names)
