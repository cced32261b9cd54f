"""The README's Python example runs as written (in a fresh process, caches in a temporary folder)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_python_example_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    code = blocks[0] + "\nassert list(scores['layer'].values) == ['layer2.1', 'layer4.1'] and set(scores['region'].values) == {'V4', 'IT'}\n"
    env = {**os.environ, "NEURALIGN_CACHE": str(tmp_path / "cache"), "NEURALIGN_CACHE_DIR": str(tmp_path / "acts"),
           "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
