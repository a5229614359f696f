"""docs/extending.md's worked examples run as printed, each in a fresh process (it registers a model), and what they
add passes the contract checks every registered model and encoder module gets (tests/test_interfaces.py)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the worked example's heading -> checks run after its block, in the same process
CHECKS = {
    "a checkerboard masking": """
assert torch.isfinite(out.loss)
grid = out.mask.reshape(2, 4, 4).int()
assert (grid[:, :, 1:] != grid[:, :, :-1]).all() and (grid[:, 1:] != grid[:, :-1]).all()
try:
    CheckerboardMasking().check((3, 3))
    raise AssertionError("an odd number of patches was accepted")
except UsageError:
    pass
""",
    "an encoder": """
assert torch.isfinite(out.loss)
check_encoder_arguments(PatchMLP, TINY)
check_feature_maps(PatchMLP, TINY)
""",
}


def worked_examples() -> dict[str, str]:
    """Heading -> the Python block under each "## Worked example: <heading>" of docs/extending.md."""
    text = (ROOT / "docs" / "extending.md").read_text()
    return dict(re.findall(r"^## Worked example: (.+?)\n.*?```python\n(.*?)```", text, re.S | re.M))


def test_every_worked_example_is_checked():
    assert set(worked_examples()) == set(CHECKS)


@pytest.mark.parametrize("heading", sorted(CHECKS))
def test_worked_example_runs(heading, tmp_path):
    """The block builds its recipe at the tiny configuration it registers and prints a finite loss; then its recipe
    (and encoder) pass the contract checks of tests/test_interfaces.py."""
    code = worked_examples()[heading] + "\nimport sys\nsys.path.insert(0, 'tests')\n" + \
        "from test_interfaces import check_encoder_arguments, check_feature_maps, check_recipe\n" + \
        CHECKS[heading] + "".join(f"check_recipe({name!r}, {str(tmp_path)!r})\n" for name in
                                  re.findall(r"^def (\w+)\(\*\*kwargs\)", worked_examples()[heading], re.M))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"loss \d+\.\d+; masked per image \[(\d+), \1\]", result.stdout), result.stdout
