"""What an install gets: the CPU build of torch (never PyPI's multi-GB CUDA one), and a licence file that matches
the licence the package declares."""

from __future__ import annotations

import platform
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    (sys.platform, platform.machine()) != ("linux", "x86_64"), reason="only Linux x86_64 has a CUDA build to avoid"
)
def test_the_installed_torch_is_the_cpu_build() -> None:
    # This venv was made by `make test` (in CI, on a fresh machine): what it holds is what the Makefile installs.
    assert torch.version.cuda is None and torch.__version__.endswith("+cpu"), torch.__version__


def test_every_install_path_pins_the_cpu_build() -> None:
    pinned = dict(re.findall(r"^torch==(\S+); (.+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE))
    linux_x86 = next(version for version, marker in pinned.items() if '== "x86_64"' in marker)
    assert linux_x86.endswith("+cpu")  # a plain version would match PyPI's CUDA build there
    makefile = (ROOT / "Makefile").read_text()
    assert f"echo torch=={linux_x86} ||" in makefile
    assert "TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch=={linux_x86}" in dockerfile


def test_the_licence_file_matches_the_declared_licence() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
