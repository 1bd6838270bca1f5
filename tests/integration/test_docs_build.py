"""The user guide builds with ``mkdocs build --strict`` (a warning fails it: a broken link, a docstring that
does not resolve, a reference block the generator does not know), offline, with the generated pages filled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    configuration = (site / "configuration.html").read_text(encoding="utf-8")
    for generated in ("--cpus", "--cluster_secret", "plugins.transport", "executor.max_memory", "DISPY_SECRET"):
        assert generated in configuration, f"{generated} missing from the built configuration reference"
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("JobCluster", "SharedJobCluster", "DispyJob", "recover_jobs", "NodeAllocate"):
        assert f'id="dispy.{name}"' in api, f"{name} missing from the API reference"
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, \
            f"{page.name} loads fonts from the network"
