"""The docs stay true to the tree, both ways: README.md and docs/*.md against the `gpu-extender`
command, the policy configuration parser, scripts/ and the files links point to.

What counts as written in the docs: code (fenced or indented blocks, inline spans) for commands,
flags and config keys; any text for `scripts/NAME`; Markdown links for links.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import pytest
import typer
import yaml

from extender.cli import app
from scoring import config

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
REFERENCE = ROOT / "docs" / "configuration.md"

# Flags written in the docs that belong to other programs, yet stand alone in a code span (so
# that nothing names their program): flag -> where it belongs. Keep it empty where you can.
FOREIGN_FLAGS: dict[str, str] = {}


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


# --- reading Markdown --------------------------------------------------------------------------

@dataclass(frozen=True)
class Code:
    page: str
    line: int
    text: str  # one logical line of a block (continuations joined), or one inline span


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


@dataclass(frozen=True)
class Page:
    code: tuple[Code, ...]
    prose: str  # the text outside code blocks, inline code spans included
    prose_lines: tuple[int, ...]  # the source line of each line of prose


@cache
def _read(page: Path) -> Page:
    name = _name(page)
    lines = page.read_text().splitlines()
    code: list[Code] = []
    prose: list[str] = []
    prose_lines: list[int] = []
    block: list[tuple[int, str]] = []

    def flush() -> None:
        logical: list[tuple[int, str]] = []
        for number, text in block:
            if logical and (logical[-1][1].endswith("\\") or (text[:1].isspace() and text.strip())):
                start, before = logical[-1]
                logical[-1] = (start, before.rstrip("\\").rstrip() + " " + text.strip())
            else:
                logical.append((number, text))
        code.extend(Code(name, number, " ".join(text.split())) for number, text in logical if text.strip())
        block.clear()

    fence = ""
    last_text = ""  # the last non-blank line outside code, for telling indented code from lists
    previous_blank = True
    in_indented = False
    for number, line in enumerate(lines, 1):
        if fence:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = ""
                flush()
            else:
                block.append((number, line))
            continue
        opening = _FENCE.match(line)
        if opening:
            fence = opening.group(1)
            in_indented = False
            flush()
            continue
        indented = line.startswith("    ") and line.strip()
        if indented and (in_indented or (previous_blank and not _LIST_ITEM.match(last_text)
                                          and not last_text.startswith("  "))):
            in_indented = True
            block.append((number, line[4:]))
            previous_blank = False
            continue
        if in_indented and not line.strip():
            continue
        if in_indented:
            in_indented = False
            flush()
        prose.append(line)
        prose_lines.append(number)
        if line.strip():
            last_text = line
        previous_blank = not line.strip()
    flush()
    text = "\n".join(prose)
    for paragraph_start, paragraph in _paragraphs(prose, prose_lines):
        for span in _SPAN.finditer(paragraph):
            line = paragraph_start + paragraph.count("\n", 0, span.start())
            code.append(Code(name, line, " ".join(span.group(2).split())))
    return Page(tuple(code), text, tuple(prose_lines))


def _paragraphs(prose: list[str], numbers: list[int]):
    """Runs of non-blank lines (a code span never crosses a blank line), with their first line."""
    run: list[str] = []
    start = 0
    for line, number in zip([*prose, ""], [*numbers, 0]):
        if line.strip():
            if not run:
                start = number
            run.append(line)
        elif run:
            yield start, "\n".join(run)
            run = []


def _code() -> list[Code]:
    return [code for page in PAGES for code in _read(page).code]


def _prose_without_spans(page: Path) -> str:
    """Prose with inline code blanked out (a link inside a code span is no link)."""
    return _SPAN.sub(lambda m: " " * len(m.group(0)), _read(page).prose)


# --- the command line --------------------------------------------------------------------------

@cache
def _cli():
    """The click group typer builds (typer ships its own click: duck-typed, not isinstance)."""
    return typer.main.get_command(app)


def _flags(command) -> set[str]:
    return {flag for param in command.params if param.param_type_name == "option" and not param.hidden
            for flag in (*param.opts, *param.secondary_opts)} - {"--help"}


def _commands() -> dict[str, set[str]]:
    return {name: _flags(command) for name, command in _cli().commands.items() if not command.hidden}


_SHELL_SPLIT = re.compile(r"\s(?:&&|\|\||\||;)\s")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Use:
    code: Code
    command: str | None  # a gpu-extender command, or None for flags standing alone
    flags: tuple[str, ...]


def _uses() -> list[Use]:
    """Every use of the gpu-extender command line in the docs' code: `gpu-extender CMD --flags`
    (also as scripts/gpu-extender, or `CMD --flags` for one of its commands), and spans of flags
    alone (`--dcgm-service NAMESPACE/NAME`). Other programs' command lines are not ours."""
    commands = _commands()
    uses = []
    for code in _code():
        for part in _SHELL_SPLIT.split(code.text):
            part = re.sub(r"(^|\s)#.*", "", part).strip()
            words = part.split()
            while words and (words[0] in ("$", "sudo", "exec") or _ENV.match(words[0])):
                words.pop(0)
            if not words:
                continue
            first = words[0]
            rest = " ".join(words[1:])
            if first == "gpu-extender" or first.endswith(("scripts/gpu-extender", "bin/gpu-extender")):
                command = words[1] if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]) else ""
                uses.append(Use(code, command, tuple(_FLAG.findall(rest))))
            elif first in commands and _FLAG.search(rest):
                uses.append(Use(code, first, tuple(_FLAG.findall(rest))))
            elif first.startswith("--"):
                uses.append(Use(code, None, tuple(_FLAG.findall(part))))
    return uses


def test_every_command_and_flag_in_the_docs_exists():
    commands = _commands()
    every_flag = set().union(*commands.values())
    wrong = []
    for use in _uses():
        where = f"{use.code.page}:{use.code.line}: `{use.code.text}`"
        if use.command == "":  # gpu-extender --help and the like
            known = _flags(_cli()) | {"--help"}
        elif use.command is None:
            known = every_flag | set(FOREIGN_FLAGS)
        elif use.command not in commands:
            wrong.append(f"{where}: no command `gpu-extender {use.command}` (there are: {', '.join(commands)})")
            continue
        else:
            known = commands[use.command] | {"--help"}
        for flag in use.flags:
            if flag not in known:
                owner = f"gpu-extender {use.command}" if use.command else "any gpu-extender command"
                wrong.append(f"{where}: {flag} is no flag of {owner}")
    assert not wrong, "\n".join(wrong)


def test_every_command_and_flag_is_documented():
    uses = _uses()
    documented_commands = {use.command for use in uses if use.command}
    documented_flags = {flag for use in uses for flag in use.flags}
    missing = [f"gpu-extender {name}" for name in _commands() if name not in documented_commands]
    missing += [f"gpu-extender {name} {flag}" for name, flags in _commands().items() for flag in sorted(flags)
                if flag not in documented_flags]
    assert not missing, "not in README.md or docs/ (as code): " + ", ".join(missing)


def test_the_docs_reader_sees_commands_in_blocks_spans_and_indented_code(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `gpu-extender serve --port 1`\nor `--dcgm-port\n9400`.\n\n"
        "```bash\nscripts/gpu-extender score --pod a.yaml \\\n    --output json   # --not-a-flag\n```\n\n"
        "    gpu-extender agent --once\n\n- a list\n\n      not code --either\n")
    code = {c.text: c.line for c in _read(page).code}
    assert code == {"gpu-extender serve --port 1": 1, "--dcgm-port 9400": 2,
                    "scripts/gpu-extender score --pod a.yaml --output json # --not-a-flag": 6,
                    "gpu-extender agent --once": 10}


# --- the policy configuration ------------------------------------------------------------------

def _accepted_keys() -> set[str]:
    keys = {f"{section}.{key}" for section, (_, parsers) in config._SECTIONS.items() for key in parsers}
    return keys | {f"weights.{cls}.{f.name}" for cls in config._CLASS_KEYS for f in fields(config.Weights)}


def _reference_block() -> str:
    block = re.search(r"<!-- default-config -->\n```yaml\n(.*?)```", REFERENCE.read_text(), re.S)
    assert block, f"{_name(REFERENCE)} lacks the <!-- default-config --> block"
    return block.group(1)


def test_the_reference_block_holds_every_key_the_parser_accepts_and_no_other():
    data = yaml.safe_load(_reference_block())
    written = set()
    for section, values in data.items():
        for key, value in values.items():
            if section == "weights":
                written |= {f"weights.{key}.{name}" for name in value}
            else:
                written.add(f"{section}.{key}")
    accepted = _accepted_keys()
    assert written - accepted == set(), "in the docs but not accepted by scoring/config.py"
    assert accepted - written == set(), f"accepted by scoring/config.py but not in {_name(REFERENCE)}"
    assert config.parse(data) == config.PolicyConfig(), "the block's values are not the defaults"


_SECTION_NAMES = (*config._SECTIONS, "weights")
_KEY_MENTION = re.compile(rf"^(?:{'|'.join(_SECTION_NAMES)})\.[A-Za-z_][\w.]*")
_FILE_SUFFIXES = {"py", "yaml", "yml", "md", "json", "go", "mod", "sum", "prom", "csv", "lock", "txt"}


def _is_code_reference(mention: str) -> bool:
    """`groups.choose`, `fragmentation.Supply`: a name in a module of that name, not a key."""
    section, name = mention.split(".")[:2]
    for package in ("scoring", "extender"):
        try:
            module = importlib.import_module(f"{package}.{section}")
        except ImportError:
            continue
        if hasattr(module, name):
            return True
    return False


def _chart_values() -> set[str]:
    """The Helm chart's values as dotted keys (`agent.devicePlugin` is one, not a config key)."""
    values = ROOT / "charts" / "gpu-extender" / "values.yaml"
    keys: set[str] = set()

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(f"{prefix}{key}")
                walk(f"{prefix}{key}.", value)

    walk("", yaml.safe_load(values.read_text()) if values.is_file() else {})
    return keys


def test_every_config_key_mentioned_in_the_docs_exists():
    accepted = _accepted_keys()
    chart = _chart_values()
    prefixes = {key.rsplit(".", depth)[0] for key in accepted for depth in (1, 2) if key.count(".") > depth}
    wrong = []
    for code in _code():
        match = _KEY_MENTION.match(code.text)
        if not match:
            continue
        mention = match.group(0).rstrip(".")
        if mention.rsplit(".", 1)[-1] in _FILE_SUFFIXES or _is_code_reference(mention):
            continue
        if mention not in accepted and mention not in prefixes and mention not in chart:
            wrong.append(f"{code.page}:{code.line}: `{code.text}`: {mention} is no config key")
    assert not wrong, "\n".join(wrong)


# --- scripts -----------------------------------------------------------------------------------

_SCRIPT = re.compile(r"(?<![\w/.-])scripts/([\w.-]*[\w])")


def _script_mentions() -> dict[str, list[str]]:
    mentions: dict[str, list[str]] = {}
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for name in _SCRIPT.findall(line):
                mentions.setdefault(name, []).append(f"{_name(page)}:{number}")
    return mentions


def test_every_script_mentioned_exists():
    missing = {name: where for name, where in _script_mentions().items() if not (ROOT / "scripts" / name).is_file()}
    assert not missing, "no such file in scripts/: " + "; ".join(
        f"scripts/{name} ({', '.join(where)})" for name, where in sorted(missing.items()))


def test_every_script_is_documented():
    scripts = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file() and not p.name.startswith(".")}
    assert scripts - set(_script_mentions()) == set(), "not mentioned in README.md or docs/"


# --- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _read(page).prose.splitlines():
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", page.read_text()))
    return anchors


def _links(page: Path) -> list[str]:
    text = _prose_without_spans(page)
    return _LINK.findall(text) + _REFERENCE_LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_points_to_a_file_that_exists(page: Path):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {_name(file)}")
    assert not broken, f"{_name(page)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    unlinked = [_name(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, "docs pages the README does not link: " + ", ".join(unlinked)
