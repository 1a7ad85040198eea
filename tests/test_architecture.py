"""The house rules of docs/architecture.md, checked on the source: imports point one way (adapters -> core ->
inference -> `llm`; `bot` -> `llm`, `storage`; never back, and `llm` and `storage` never import each other), only the
composition root and the command line import the adapters, each chat SDK stays in its adapter (Slack's in one
module, discord.py in the Discord adapter's package), torch stays in `llm/` and the local generator, and no module
imports itself through others. A rule that is only written down is broken by the next change."""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "llm", "storage")


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is (functions and TYPE_CHECKING blocks too):
    ``from a.b import c`` counts as a.b, and as a.b.c where that is a module of ours."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path.relative_to(root), node.level, node.module) if node.level else node.module
            assert module is not None
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names if _file(f"{module}.{alias.name}", root)}
    return names


def _absolute(path: Path, level: int, module: str | None) -> str:
    """``from ..x import y`` in ``path`` (relative to the root), named from the root (``from . import y``: the
    package)."""
    package = path.with_suffix("").parts[:-1]  # a package's __init__ is inside it, like a module
    base = package[: len(package) - (level - 1)]
    return ".".join((*base, module) if module else base)


def _file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of one of our modules (a package: its __init__), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def graph() -> dict[str, frozenset[str]]:
    """Each of our modules -> the modules of ours it imports."""
    sources = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    ours = {_name(path) for path in sources}
    return {_name(path): frozenset(n for n in imports(path) if n in ours) for path in sources}


def importers(prefix: str) -> set[str]:
    """Our modules that import ``prefix`` or anything under it."""

    def matches(name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(matches(n) for n in imports(path)):
                found.add(_name(path))
    return found


def cycles(edges: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Every import cycle of ``edges`` (as one path around it), found by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from slack_sdk.errors import SlackApiError\n    import torch.nn\n")
    assert imports(source) == {"os", "slack_sdk.errors", "torch.nn"}


def test_the_checker_names_relative_imports_from_the_root(tmp_path: Path) -> None:
    """A relative import must not slip past the layer rules: ``from ..adapters import x`` in bot/core is bot's."""
    for module in ("bot/adapters/slack.py", "bot/core/messages.py", "bot/core/probe.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    source = tmp_path / "bot" / "core" / "probe.py"
    source.write_text("from ..adapters import slack\nfrom . import messages\nfrom .commands import parse\n")
    expected = {"bot.adapters", "bot.adapters.slack", "bot.core", "bot.core.messages", "bot.core.commands"}
    assert imports(source, tmp_path) == expected


def test_the_checker_reads_real_edges_and_finds_cycles() -> None:
    assert "bot.core.messages" in graph()["bot.core.conversation"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(("package", "forbidden"), [("llm", ("bot", "storage")), ("storage", ("bot", "llm"))])
def test_llm_and_storage_import_neither_bot_nor_each_other(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {m for prefix in forbidden for m in importers(prefix) if m.startswith(f"{package}.")}
    assert offenders == set()


def test_only_the_composition_root_and_the_command_line_import_the_adapters() -> None:
    outside = {m for m in importers("bot.adapters") if not m.startswith(("bot.adapters", "bot.cli"))}
    assert outside == {"bot.app"}


@pytest.mark.parametrize("layer", ["bot.core", "bot.inference"])
def test_the_core_and_inference_never_import_upwards(layer: str) -> None:
    upwards = {"bot.core": ("bot.adapters", "bot.app", "bot.cli"), "bot.inference": ("bot.adapters", "bot.core")}
    offenders = {m for prefix in upwards[layer] for m in importers(prefix) if m.startswith(layer)}
    assert offenders == set()


@pytest.mark.parametrize(
    ("sdk", "only"),
    [("slack_bolt", "bot.adapters.slack.adapter"), ("slack_sdk", "bot.adapters.slack.adapter")],
)  # fmt: skip
def test_each_slack_sdk_is_imported_by_exactly_one_adapter_module(sdk: str, only: str) -> None:
    assert importers(sdk) == {only}


def test_discord_py_is_imported_only_inside_the_discord_adapter_package() -> None:
    """Slack's SDK is one funnel (a Web API call) that the adapter module hands the others as a protocol. discord.py
    has none: its objects are its API (a message replies, an interaction defers, commands are its decorators, its
    HTTP client is where Discord's address and rate limits live), so the Discord adapter is a package, and the rule
    is that discord.py stays inside it."""
    package = "bot.adapters.discord"
    importing = importers("discord")
    assert f"{package}.adapter" in importing  # the checker still sees the imports
    assert {m for m in importing if not m.startswith(f"{package}.")} == set()


def test_torch_stays_in_llm_and_the_local_generator() -> None:
    outside = {m for m in importers("torch") if not m.startswith("llm.") and m != "bot.inference.local"}
    assert outside == set()
