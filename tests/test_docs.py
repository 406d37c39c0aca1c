"""The docs show only commands that parse, and link only to what exists.

Every `irevnet` command in a shell code block (bash, sh, shell, console) of README.md, docs/*.md
and results/*.md must name a command the CLI has and use only options that command takes, read
from the click command tree behind `irevnet.cli.app` (what `--help` prints). Values are not
checked: a path or a preset in an example is the reader's to change. Relative links must reach a
file, and a `#fragment` a heading of it.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import typer.main

from irevnet.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}


def code_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number of the first code line, language, lines) of every fenced block."""
    blocks, fence, lang, start, lines = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, lang, start, lines = match.group(1), match.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            blocks.append((start, lang, lines))
            fence = None
        else:
            lines.append(line)
    return blocks


def shell_lines(lang: str, lines: list[str], first: int) -> list[tuple[int, str]]:
    """(line number, command) of a shell block, continuation lines joined. Where any line starts
    with a `$ ` prompt (a console transcript), only prompted lines are commands; the rest is output."""
    prompted = lang == "console" or any(line.lstrip().startswith("$ ") for line in lines)
    commands, current, at = [], None, 0
    for number, line in enumerate(lines, first):
        if current is None:
            text = line.strip()
            if prompted:
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            current, at = "", number
        else:
            text = line.strip()
        if text.endswith("\\") and not text.endswith("\\\\"):
            current += text[:-1] + " "
            continue
        commands.append((at, current + text))
        current = None
    if current is not None:
        commands.append((at, current))
    return commands


def invocations(command: str) -> list[list[str]]:
    """The arguments of every irevnet run in a shell command line: `irevnet ...`, `python -m
    irevnet ...`, `torchrun ... -m irevnet ...`, each of `a && b`, `a; b`, `a | b`; comments dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    segments, segment = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(segment)
            segment = []
        else:
            segment.append(token)
    segments.append(segment)
    runs = []
    for seg in segments:
        while seg and (
            re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", seg[0]) or seg[0] in ("do", "then", "else", "time", "!")
        ):
            seg = seg[1:]  # environment assignments and shell keywords before the program
        if seg and seg[0] == "irevnet":
            runs.append(seg[1:])
        elif "-m" in seg[:-1] and seg[seg.index("-m") + 1] == "irevnet":
            runs.append(seg[seg.index("-m") + 2 :])
    return runs


# typer builds a click command tree (its own copy of click, so the classes are not click's: the
# tree is read by duck typing, a group being a command with `commands`)
@cache
def _cli():
    return typer.main.get_command(app)


def _options(command) -> dict:
    """Every spelling of every option the command takes, its help option included."""
    ctx = command.context_class(command, info_name=command.name)
    return {
        name: p
        for p in command.get_params(ctx)
        if p.param_type_name == "option"
        for name in (*p.opts, *p.secondary_opts)
    }


def _takes_value(param, spelled: str) -> int:
    """How many of the next arguments are the option's value."""
    if param.is_flag or param.count or spelled in param.secondary_opts:
        return 0
    return param.nargs if param.nargs > 0 else 1


def _check_options(command, where: str, args: list[str]) -> tuple[list[str], list[str]]:
    """Problems with the options at the head of args (or all of them), and the rest of args."""
    options, problems, rest = _options(command), [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1 and not re.fullmatch(r"-[\d.]+(e-?\d+)?", arg):
            name, _, inline = arg.partition("=")
            param = options.get(name)
            if param is None:
                problems.append(f"{where} has no option {name}")
            elif not inline:
                i += _takes_value(param, name)
        elif hasattr(command, "commands"):
            return problems, args[i:]  # the subcommand and its arguments
        i += 1
    return problems, rest


def problems_of(args: list[str]) -> list[str]:
    """Why `irevnet ARGS` would not parse: an unknown command, or an option the command lacks."""
    group = _cli()
    problems, rest = _check_options(group, "irevnet", args)
    if not rest:
        return problems
    name = rest[0]
    command = group.commands.get(name)
    if command is None:
        return problems + [f"irevnet has no command {name!r} (it has {', '.join(sorted(group.commands))})"]
    return problems + _check_options(command, f"irevnet {name}", rest[1:])[0]


def check_markdown(text: str, source: str = "<text>") -> tuple[int, list[str]]:
    """(irevnet runs found, problems as 'source:line: irevnet ...: why') of a markdown text."""
    found, problems = 0, []
    for first, lang, lines in code_blocks(text):
        if lang not in SHELL_LANGUAGES:
            continue
        for number, command in shell_lines(lang, lines, first):
            try:
                runs = invocations(command)
            except ValueError as e:  # unbalanced quotes
                problems.append(f"{source}:{number}: cannot be split as a shell command ({e}): {command}")
                continue
            for args in runs:
                found += 1
                problems += [f"{source}:{number}: {why}: irevnet {' '.join(args)}" for why in problems_of(args)]
    return found, problems


def test_every_command_shown_in_the_docs_parses():
    found, problems = 0, []
    per_page = {}
    for page in PAGES:
        n, p = check_markdown(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
        per_page[page.relative_to(ROOT).as_posix()] = n
        found += n
        problems += p
    assert not problems, "\n".join(problems)
    # the checker sees the examples: every page that is about commands shows some
    assert found >= 40, per_page
    for name in (
        "README.md",
        "docs/bundles.md",
        "docs/precision.md",
        "docs/serving.md",
        "docs/evaluation.md",
        "docs/training.md",
        "docs/tensorrt-and-cpp.md",
        "docs/reference-checkpoints.md",
        "docs/speed.md",
    ):
        assert per_page.get(name, 0) > 0, (name, per_page)


SNIPPET = """\
Prose that mentions `irevnet export --not-checked` inline is not a code block.

```bash
pip install -e ".[dev]" && irevnet export -c a.pt -o b --made-up-option 3   # a comment: --also-made-up
irevnet verify b -b onnxruntime \\
    --samples 4 --no-such-flag
ONEDNN_MAX_CPU_ISA=AVX2 python -m irevnet bench b --batch-sizes=1,8 --duration-s 2
torchrun --nproc-per-node 2 -m irevnet train -m irevnet-tiny -d digits -o run --epoch 3
irevnet --debug verifyy b
```

```console
$ irevnet info -c a.pt --image-size 32 --json out.json
output lines are not commands: irevnet export --fake
$ irevnet memory -m irevnet-tiny --batch 8
```

```python
import irevnet  # irevnet export --python-is-not-shell
```
"""


def test_the_checker_catches_made_up_options_and_commands():
    found, problems = check_markdown(SNIPPET, "snippet")
    assert found == 7
    assert problems == [
        "snippet:4: irevnet export has no option --made-up-option: irevnet export -c a.pt -o b --made-up-option 3",
        "snippet:5: irevnet verify has no option --no-such-flag: irevnet verify b -b onnxruntime --samples 4 --no-such-flag",
        "snippet:8: irevnet train has no option --epoch: irevnet train -m irevnet-tiny -d digits -o run --epoch 3",
        f"snippet:9: irevnet has no command 'verifyy' (it has {', '.join(sorted(_cli().commands))}): irevnet --debug verifyy b",
        "snippet:15: irevnet memory has no option --batch: irevnet memory -m irevnet-tiny --batch 8",
    ], "\n".join(problems)


def test_a_value_that_looks_like_an_option_is_not_taken_for_one():
    # -m takes a value, so the value 'irevnet-tiny' and '-' (stdin) are not options; --no-debug is a flag
    assert problems_of(["train", "-m", "irevnet-tiny", "-d", "digits", "-o", "-"]) == []
    assert problems_of(["export", "-c", "a", "-o", "b", "--no-debug", "--samples", "4"]) == []
    assert problems_of(["export", "--help"]) == []


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(page: Path, text: str) -> list[str]:
    """The relative links of a page's text that reach no file, or no heading of it."""
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        relative = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
            bad.append(f"{target}: no heading #{fragment} in {relative}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken_links(page, page.read_text(encoding="utf-8"))


def test_the_link_check_catches_a_missing_file_and_heading():
    page = ROOT / "docs" / "bundles.md"
    text = "[a](precision.md#the-exact-coupling) [b](precision.md#no-such-heading) [c](nowhere.md) [d](https://x.org/y)"
    assert broken_links(page, text) == [
        "precision.md#no-such-heading: no heading #no-such-heading in docs/precision.md",
        "nowhere.md: no such file",
    ]
