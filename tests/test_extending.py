"""docs/extending.md's worked example runs as printed: a new masking is one class plus a recipe line."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_checkerboard_example_runs():
    """The example's fenced Python block trains nothing but builds, masks half of every image in the
    checkerboard pattern and returns a finite loss (in a fresh process: it registers a model)."""
    text = (ROOT / "docs" / "extending.md").read_text()
    code = re.search(r"## Worked example.*?```python\n(.*?)```", text, re.S).group(1)
    code += ("\nassert torch.isfinite(out.loss)\n"
             "side = 4\n"
             "grid = out.mask.reshape(2, side, side).int()\n"
             "assert (grid[:, :, 1:] != grid[:, :, :-1]).all() and (grid[:, 1:] != grid[:, :-1]).all()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "masked per image [8, 8]" in result.stdout
