"""Virtualenvs of the benchmarks' own for what llmrun is compared with (claude-agent-sdk,
LiteLLM's proxy), made on first use from a requirements file here and never installed into
llmrun's environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def private_venv(venv: Path, requirements: Path, probe: str) -> tuple[str | None, str]:
    """(the venv's interpreter, what `python -c probe` printed there), making the venv and
    installing `requirements` into it when the probe fails; (None, why not) when that fails."""
    python = venv / "bin" / "python"
    if python.exists():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if done.returncode == 0:
            return str(python), done.stdout.strip()
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return None, f"{requirements.name} not installed in {venv}: {detail.strip().splitlines()[-1]}"
    return str(python), done.stdout.strip()
