"""spoon-ai declares Python >= 3.12, so where this interpreter cannot import it, the tests of its
adapter (tests/test_integration_spoon.py) run in the virtualenv that scripts/install-python-tools
makes for it ($LLMRUN_TOOLS_HOME/spoon, ~/.local/share/llmrun-tools/spoon), with this checkout's
llmrun first on its path."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

TOOLS_HOME = Path(os.environ.get("LLMRUN_TOOLS_HOME") or Path.home() / ".local/share/llmrun-tools")
PYTHON = TOOLS_HOME / "spoon" / "bin" / "python"

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("spoon_ai") is not None,
        reason="spoon-ai is importable here, so tests/test_integration_spoon.py runs in this process",
    ),
    pytest.mark.skipif(
        not PYTHON.is_file(), reason=f"no spoon-ai virtualenv at {PYTHON.parent.parent}: scripts/install-python-tools"
    ),
    pytest.mark.timeout(900),
]


def test_the_spoon_adapter_passes_its_tests_under_spoon_ai() -> None:
    done = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_integration_spoon.py"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and "skipped" not in done.stdout, done.stdout[-2000:]
