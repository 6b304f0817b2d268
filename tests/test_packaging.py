"""How llmrun is installed: its distribution name, and the Makefile's own virtualenv.

On PyPI `llmrun` is an unrelated package, so every install instruction must name the
distribution in pyproject.toml. The Makefile runs everything with `.venv/bin/python`, so that
`make install` works on a system Python that refuses pip (PEP 668) and `make test` is not
thrown off by another Python earlier on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from .conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DISTRIBUTION = PYPROJECT["project"]["name"]

# An install command and what follows it, up to the end of the code span, `&&`, `;` or `)`; the
# package may be on the next line, as where the README wraps "pip install\n'...[mcp]'".
INSTALL = re.compile(r"\b(?:pip|pipx|uv pip|uv tool)\s+install\s+([^`&;)\n]*)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def llmrun_packages(text: str) -> list[str]:
    """The packages named llmrun or llmrun-* in the install commands of `text`."""
    found = []
    for match in INSTALL.finditer(text):
        for word in match.group(1).split():
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", word.strip("'\""))
            if name and re.fullmatch(r"llmrun(-.*)?", normalized(name.group()).rstrip("-.")):
                found.append(name.group())
    return found


def project_texts() -> dict[str, str]:
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for path in sorted((ROOT / "llmrun").rglob("*.py")):
        texts[str(path.relative_to(ROOT))] = path.read_text()
    return texts


def test_the_distribution_is_not_pypis_unrelated_llmrun_but_the_command_and_import_are_llmrun() -> None:
    assert normalized(DISTRIBUTION) != "llmrun"
    assert PYPROJECT["project"]["scripts"] == {"llmrun": "llmrun.cli:main"}
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["llmrun"]


def test_install_commands_find_llmrun_packages_in_any_form() -> None:
    text = "`pip install llmrun`, pip install 'llmrun[server]', `pip install\n'llmrun_x[mcp]'`, pip install llm"
    assert llmrun_packages(text) == ["llmrun", "llmrun", "llmrun_x"]


def test_every_install_command_names_the_distribution() -> None:
    wrong = {
        where: names
        for where, text in project_texts().items()
        if (names := [n for n in llmrun_packages(text) if normalized(n) != normalized(DISTRIBUTION)])
    }
    assert wrong == {}
    readme = (ROOT / "README.md").read_text()
    assert llmrun_packages(readme).count(DISTRIBUTION) >= 3  # PyPI, the CI example, the extras
    serve_hint = (ROOT / "llmrun" / "cli" / "serve.py").read_text()
    assert f"pip install '{DISTRIBUTION}[server]'" in serve_hint


def test_the_readmes_first_command_runs_the_llmrun_that_make_install_installs() -> None:
    first_block = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[:2] == [
        'make install && .venv/bin/llmrun chat --runner claude_code "Say hi"',
        "make test",
    ]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_env(path_first: Path) -> dict[str, str]:
    """The environment of a make run: a directory first on PATH, no settings from an outer make."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return env


@needs_make
def test_make_install_makes_the_virtualenv_and_installs_into_it(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path)
    dry = subprocess.run(
        ["make", "-n", "install"], cwd=tmp_path, env=make_env(tmp_path), capture_output=True, text=True, check=True
    )
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("python3 -m venv .venv")
    assert any(line.startswith(".venv/bin/python -m pip install -e '.[dev,") for line in lines)
    assert not any(re.match(r"python3? -m pip", line) for line in lines)

    other = subprocess.run(
        ["make", "-n", "install", "PYTHON=/opt/py/bin/python"],
        cwd=tmp_path,
        env=make_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "venv" not in other.stdout  # a Python named on the command line is used as it is
    assert "/opt/py/bin/python -m pip install -e '.[dev," in other.stdout


@needs_make
def test_make_test_runs_the_virtualenvs_python_whatever_python3_is_first_on_path(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path)
    # .venv: a virtualenv that sees this interpreter's packages (pytest among them).
    venv.create(tmp_path / ".venv", with_pip=False)
    venv_bin = tmp_path / ".venv" / "bin"
    purelib = subprocess.run(
        [venv_bin / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    # Another virtualenv's python3 first on PATH (and named by $PYTHON): it fails if run.
    other_bin = tmp_path / "other"
    other_bin.mkdir()
    for name in ("python3", "python"):
        (other_bin / name).write_text("#!/bin/sh\necho 'the other python ran' >&2\nexit 3\n")
        (other_bin / name).chmod(0o755)
    env = make_env(other_bin)
    env["PYTHON"] = str(other_bin / "python3")
    seen = tmp_path / "seen.json"
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_where.py").write_text(
        "import json, os, sys\n"
        "def test_where():\n"
        f"    open({str(seen)!r}, 'w').write(json.dumps([sys.executable, os.environ['PATH']]))\n"
    )

    done = subprocess.run(["make", "test"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "the other python ran" not in done.stderr
    executable, path = json.loads(seen.read_text())
    assert executable == str(venv_bin / "python")
    assert path.split(os.pathsep)[0] == str(venv_bin)  # llmrun and llm of .venv come first
