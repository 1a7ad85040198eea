"""The README and docs/ against the code: the Slack manifest offers exactly what the adapter registers, the README
stays short and starts with the two commands, nothing points outside the repository, every relative link lands on a
file (and heading) that exists, and the command line's synopsis names every command and option there is."""

from __future__ import annotations

import argparse
import ast
import functools
import os
import re
from pathlib import Path

import pytest
import yaml  # PyYAML: installed with the dev tools (transformers needs it)

from bot.adapters.slack.commands import COMMANDS, SUMMARIZE_SHORTCUT, TRANSLATE_SHORTCUT
from bot.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MANIFEST = DOCS / "slack-manifest.yaml"
SLACK_ADAPTER = ROOT / "bot" / "adapters" / "slack" / "adapter.py"

# Bolt's `message` listener hears the message events of every conversation type; an app manifest subscribes to them
# one type at a time: public channels, private channels, direct messages.
MANIFEST_EVENTS = {"message": {"message.channels", "message.groups", "message.im"}}
# A path written in the docs, relative (`../llm/assets/NOTICE.md`) or a markdown file's name (`operations.md`).
CLIMBING = re.compile(r"(?:\.\./)+[\w./-]*")
MARKDOWN_NAME = re.compile(r"[\w./-]+\.md\b")
# Commands whose options the README leaves to `--help`.
OPTIONS_IN_HELP_ONLY = {"finetune"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


@functools.cache
def our_markdown() -> frozenset[str]:
    """Names of the repository's markdown files (hidden folders, the virtualenv among them, skipped)."""
    names = set()
    for _folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "node_modules"]
        names |= {f for f in files if f.endswith(".md")}
    return frozenset(names)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))


def register_function() -> ast.FunctionDef:
    """`SlackAdapter._register`, where the adapter subscribes its listeners, as source."""
    tree = ast.parse(SLACK_ADAPTER.read_text(encoding="utf-8"))
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_register")


def registered_events() -> set[str]:
    """The event names `_register` subscribes to: the string arguments of its ``….event(...)`` calls."""
    events = set()
    for node in ast.walk(register_function()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "event":
            [argument] = node.args
            assert isinstance(argument, ast.Constant), ast.unparse(node)
            events.add(argument.value)
    return events


def names_used_in_register() -> set[str]:
    return {n.id for n in ast.walk(register_function()) if isinstance(n, ast.Name)}


def test_the_manifest_offers_exactly_the_slash_commands_the_adapter_registers() -> None:
    assert "COMMANDS" in names_used_in_register()  # the adapter registers /name for each of them
    offered = [entry["command"] for entry in manifest()["features"]["slash_commands"]]
    assert sorted(offered) == sorted(f"/{name}" for name in COMMANDS)


def test_the_manifest_offers_exactly_the_shortcuts_the_adapter_registers() -> None:
    assert {"SUMMARIZE_SHORTCUT", "TRANSLATE_SHORTCUT"} <= names_used_in_register()
    shortcuts = manifest()["features"]["shortcuts"]
    assert all(entry["type"] == "message" for entry in shortcuts)
    assert sorted(entry["callback_id"] for entry in shortcuts) == sorted({SUMMARIZE_SHORTCUT, TRANSLATE_SHORTCUT})


def test_the_manifest_subscribes_to_exactly_the_events_the_adapter_registers() -> None:
    events = registered_events()
    assert {"app_mention", "message"} <= events  # the reader still finds the listeners
    expected = set().union(*(MANIFEST_EVENTS.get(event, {event}) for event in events))
    subscribed = manifest()["settings"]["event_subscriptions"]["bot_events"]
    assert len(subscribed) == len(set(subscribed))
    assert set(subscribed) == expected


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert lines[0].startswith("# ")
    opening = [line for line in lines[1:6] if line.strip()]
    assert opening[0] == "```bash"
    assert re.match(r"make run +# ", opening[1]), opening[1]
    assert re.match(r"make test +# ", opening[2]), opening[2]
    assert opening[3] == "```"


@pytest.mark.parametrize("path", [*markdown_files(), MANIFEST], ids=lambda p: p.name)
def test_nothing_points_outside_the_repository(path: Path) -> None:
    """The repository stands alone: a path that climbs up stays inside it, and every markdown file named (linked or
    not) is one of the repository's own, so nothing leads a reader to a file only the authors have."""
    text = path.read_text(encoding="utf-8")
    outside = [p for p in CLIMBING.findall(text) if not (path.parent / p).resolve().is_relative_to(ROOT)]
    foreign = [name for name in MARKDOWN_NAME.findall(text) if Path(name).name not in our_markdown()]
    assert outside + foreign == []


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file_that_exists(path: Path) -> None:
    broken = []
    for target in LINK.findall(FENCED.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        missing = not linked.exists() or not linked.is_relative_to(ROOT)
        if missing or (fragment and linked.suffix == ".md" and fragment not in anchors(linked)):
            broken.append(target)
    assert broken == []


def the_commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command the parser runs, by its words after `scratchbot` ("db upgrade" for a nested one)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found |= the_commands(sub, f"{prefix}{name} ")
    return found


def synopsis(commands: list[str]) -> dict[str, str]:
    """The README's synopsis block: each command's entry (its `scratchbot <command>` line and continuation lines)."""
    text = README.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL) if "scratchbot" in b)
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("scratchbot"):
            named = [name for name in commands if f"{line} ".startswith(f"scratchbot {name} ")]
            current = max(named, key=len, default=None)
            if current is not None:
                entries[current] = entries.get(current, "") + line
        elif current is not None:
            entries[current] += "\n" + line
    return entries


def test_the_readme_names_every_command() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [name for name in the_commands(build_parser()) if f"scratchbot {name}" not in text]
    assert missing == []


def test_the_readme_synopsis_lists_every_option_of_every_command() -> None:
    commands = the_commands(build_parser())
    entries = synopsis(list(commands))
    missing = {}
    for name, parser in commands.items():
        if name in OPTIONS_IN_HELP_ONLY or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        entry = entries.get(name, "")
        options = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        if absent := sorted(o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", entry)):
            missing[name] = absent
    assert missing == {}
