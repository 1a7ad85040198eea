"""The house rules of DESIGN.md, checked on the source: imports point one way (`bot` -> `llm`, `storage`; never
back, and `llm` and `storage` never import each other), each chat SDK is imported by exactly one adapter module,
and torch stays in `llm/` and `bot/inference.py`. A rule that is only written down is broken by the next change."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "llm", "storage")


def imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement is (functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def modules() -> dict[str, set[str]]:
    return {
        path.relative_to(ROOT).as_posix(): imports(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def importers(prefix: str) -> set[str]:
    def matches(name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    return {module for module, names in modules().items() if any(matches(n) for n in names)}


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from slack_sdk.errors import SlackApiError\n    import torch.nn\n")
    assert imports(source) == {"os", "slack_sdk.errors", "torch.nn"}


@pytest.mark.parametrize(("package", "forbidden"), [("llm", ("bot", "storage")), ("storage", ("bot", "llm"))])
def test_llm_and_storage_import_neither_bot_nor_each_other(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {m for prefix in forbidden for m in importers(prefix) if m.startswith(f"{package}/")}
    assert offenders == set()


@pytest.mark.parametrize(
    ("sdk", "only"),
    [("discord", "bot/adapters/discord_adapter.py"), ("slack_bolt", "bot/adapters/slack_adapter.py"),
     ("slack_sdk", "bot/adapters/slack_adapter.py")],
)  # fmt: skip
def test_each_chat_sdk_is_imported_by_exactly_one_adapter_module(sdk: str, only: str) -> None:
    assert importers(sdk) == {only}


def test_torch_stays_in_llm_and_the_inference_module() -> None:
    outside = {m for m in importers("torch") if not m.startswith("llm/") and m != "bot/inference.py"}
    assert outside == set()
