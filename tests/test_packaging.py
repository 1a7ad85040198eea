"""What an install gets: the CPU build of torch (never PyPI's multi-GB CUDA one), and a licence file that matches
the licence the package declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_torch_is_the_cpu_build() -> None:
    # This venv was made by `make test` (in CI, on a fresh machine): what it holds is what the Makefile installs.
    assert torch.version.cuda is None and torch.__version__.endswith("+cpu"), torch.__version__


def test_every_install_path_pins_the_cpu_build() -> None:
    pinned = re.findall(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert len(pinned) == 1 and pinned[0].endswith("+cpu")  # a plain version would match PyPI's CUDA build
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH := torch=={pinned[0]}" in makefile
    assert "TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch=={pinned[0]}" in dockerfile


def test_the_licence_file_matches_the_declared_licence() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
