"""The docs hold together: every link resolves, and their cheap claims stay true.

- Every relative link (and image) in every markdown file of the repository
  reaches a file or directory of the tree; a `#anchor` into a markdown file
  reaches one of its headings under both GitHub's and GitLab's slug rules
  (lowercase, punctuation dropped, spaces to '-'; GitLab also folds '--').
- Every `docs/*.md` / `README.md` path that the components, the package, the
  scripts or the tests mention exists, and so does every repository path a
  doc names in backticks (`tests/e2e/test_fanout.py`, `templates/fanout.yml`).
- Every test a doc cites (`file.py::test_name`) exists.
- docs/cli.md names every command of `authscope.cli.COMMANDS`, every option of
  each (and no option the CLI lacks) and every exit code cli.py maps;
  docs/components.md lists every input of every component with the type and
  default that templates/*.yml declare; docs/design.md's module layout is the
  package on disk; README.md is a front page with the two commands first.

Each check is a function that returns the problems it found; the controls feed
the same function a broken file and see the problem reported.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".tools", "node_modules", ".e2e", ".venv", "build", "dist", "__pycache__"}
SKIP_DIRS |= {".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}
# Files that name repository paths: every `docs/...md` they mention must exist.
MENTIONING = ("templates/*.yml", ".gitlab-ci.yml", "plugin/**/*.py", "scripts/*", "benchmarks/*.py")
MENTIONING += ("tests/**/*.py", "pyproject.toml")
THIS_FILE = Path(__file__).resolve()
# Top-level directories whose paths a doc may name in backticks.
TREE_PREFIXES = ("docs", "templates", "tests", "scripts", "benchmarks", "plugin")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); one level of brackets in the text.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
DOC_MENTION = re.compile(r"(?<![\w./-])((?:docs/[\w./-]*|README)\.md)(#[\w-]+)?")
TREE_MENTION = re.compile(r"`((?:" + "|".join(TREE_PREFIXES) + r")/[^`\s]*)`")
TEST_REF = re.compile(r"((?:[\w.-]+/)*test_\w+\.py)::((?:Test\w+::)?test_\w+)")


# -- markdown: fences, headings, slugs, links ----------------------------------------


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence:
            # A closing fence: the same character, at least as long, nothing after it.
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = "" if not line[match.end() :].strip() else fence
            continue
        if match:
            fence = match.group(1)
            continue
        yield number, line


def heading_texts(text: str) -> list[str]:
    """The text of every ATX and setext heading outside code blocks, in order."""
    headings: list[str] = []
    previous = ""
    for _, line in prose_lines(text):
        atx = ATX.match(line)
        if atx:
            headings.append(atx.group(2) or "")
            previous = ""
            continue
        if SETEXT.match(line) and previous.strip() and not previous.lstrip().startswith(("|", "-", "*", ">")):
            headings.append(previous.strip())
            previous = ""
            continue
        previous = line
    return headings


def _rendered(heading: str) -> str:
    """Roughly the text a renderer makes of a heading: no markup, links as their text."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("*", "")


def github_slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", _rendered(heading).strip().lower()).replace(" ", "-")


def gitlab_slug(heading: str) -> str:
    return re.sub(r"-{2,}", "-", github_slug(heading))


def anchors(text: str) -> set[str]:
    """Anchors that work on GitHub *and* GitLab (duplicates get -1, -2, ...)."""
    sets = []
    for slug in (github_slug, gitlab_slug):
        seen: dict[str, int] = {}
        found = set()
        for heading in heading_texts(text):
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        sets.append(found)
    return sets[0] & sets[1]


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line, target) of every inline link, image, reference definition and HTML link."""
    for number, line in prose_lines(text):
        line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_LINK):
            for match in pattern.finditer(line):
                yield number, match.group(1).strip("<>")


def resolve(root: Path, here: Path, target: str, where: str) -> list[str]:
    """Problems with `target` (path#anchor), a link or mention found at `where`."""
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        dest = here
    elif path_part.startswith("/"):
        dest = root / path_part.lstrip("/")
    else:
        dest = here.parent / path_part
    dest = Path(os.path.normpath(dest))
    if root.resolve() not in (dest.resolve(), *dest.resolve().parents):
        return [f"{where}: {target} leaves the repository"]
    if not dest.exists():
        return [f"{where}: {target}: no such file ({dest.relative_to(root)})"]
    if anchor and dest.suffix == ".md" and dest.is_file() and anchor not in anchors(dest.read_text()):
        return [f"{where}: {target}: {dest.name} has no heading with anchor #{anchor}"]
    return []


def link_problems(md: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every relative link of markdown file `md` that does not resolve."""
    problems = []
    for number, target in links(md.read_text()):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # an absolute URL: not ours to check offline
        problems += resolve(root, md, target, f"{md.relative_to(root)}:{number}")
    return problems


def tree_mention_problems(md: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every repository path `md` names in backticks (outside code blocks) that is missing."""
    problems = []
    for number, line in prose_lines(md.read_text()):
        for match in TREE_MENTION.finditer(line):
            path = match.group(1).split("::")[0].split("[")[0].rstrip(".,:;")
            if any(c in path for c in "<>*{}$"):
                continue  # a pattern or a placeholder, not a path
            if not (root / path).exists():
                problems.append(f"{md.relative_to(root)}:{number}: `{path}` does not exist")
    return problems


def mention_problems(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every docs/*.md or README.md path (with its #anchor) in `path` that does not resolve."""
    problems = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for match in DOC_MENTION.finditer(line):
            target = match.group(1) + (match.group(2) or "")
            problems += resolve(root, root / "README.md", target, f"{path.relative_to(root)}:{number}")
    return problems


def cited_test_problems(md: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every `file.py::test_name` in `md` whose file or test function does not exist."""
    problems = []
    for number, line in enumerate(md.read_text().splitlines(), 1):
        for match in TEST_REF.finditer(line):
            file, name = match.group(1), match.group(2).split("::")[-1]
            if "/" in file:
                candidates = [root / file] if (root / file).is_file() else []
            else:
                candidates = sorted((root / "tests").rglob(file))
            defined = re.compile(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", re.MULTILINE)
            if not candidates:
                problems.append(f"{md.relative_to(root)}:{number}: {file}: no such test file")
            elif not any(defined.search(c.read_text()) for c in candidates):
                problems.append(f"{md.relative_to(root)}:{number}: {file} has no test {name}")
    return problems


def markdown_files(root: Path = REPO_ROOT) -> list[Path]:
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        found += [Path(directory) / f for f in sorted(files) if f.endswith(".md")]
    return found


def mentioning_files(root: Path = REPO_ROOT) -> list[Path]:
    found: set[Path] = set()
    for pattern in MENTIONING:
        found |= {p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    return sorted(p for p in found if p.resolve() != THIS_FILE and "fixtures" not in p.parts)


MARKDOWN = markdown_files()


def test_the_tree_has_the_docs_this_module_checks() -> None:
    names = {str(p.relative_to(REPO_ROOT)) for p in MARKDOWN}
    for doc in ("targets-file", "components", "cli", "tools", "design", "SECURITY", "RELIABILITY", "BENCHMARKS"):
        assert f"docs/{doc}.md" in names
    assert "README.md" in names
    assert any(p.match("templates/*.yml") for p in mentioning_files())


@pytest.mark.parametrize("md", MARKDOWN, ids=[str(p.relative_to(REPO_ROOT)) for p in MARKDOWN])
def test_every_relative_link_resolves(md: Path) -> None:
    assert link_problems(md) == []


@pytest.mark.parametrize("md", MARKDOWN, ids=[str(p.relative_to(REPO_ROOT)) for p in MARKDOWN])
def test_every_path_and_test_a_doc_names_exists(md: Path) -> None:
    assert tree_mention_problems(md) + cited_test_problems(md) == []


def test_every_docs_path_the_code_and_templates_mention_exists() -> None:
    problems = [problem for path in mentioning_files() for problem in mention_problems(path)]
    assert problems == []


# -- controls: the same functions report what is broken ----------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_control_a_broken_link_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "docs/a.md": "# A\n\n## Two words, `code`\n\n## Tools that ignore `DOCKER_CONFIG`\n",
            "README.md": (
                "# R\n\nsee [a](docs/a.md), [b](docs/gitlab-ci.md) and ![img](docs/none.png)\n"
                "[ok](docs/a.md#two-words-code) [anchor](docs/a.md#no-such-heading)\n"
                "[self](#r) [x](#nothing) [outside](../elsewhere.md) [web](https://example.com/x.md)\n"
                "[ref]: docs/missing.md\n"
                "[dashes](docs/a.md#tools-that-ignore-docker_config)\n"
                "`[code](docs/not-a-link.md)`\n"
                "```md\n[fenced](docs/not-a-link-either.md)\n# fenced heading\n```\n"
                "[fenced heading](#fenced-heading)\n"
            ),
        },
    )
    # The good links ([a], [ok], [self], [web], [dashes]) and the ones in code are not reported.
    assert link_problems(root / "README.md", root) == [
        "README.md:3: docs/gitlab-ci.md: no such file (docs/gitlab-ci.md)",
        "README.md:3: docs/none.png: no such file (docs/none.png)",
        "README.md:4: docs/a.md#no-such-heading: a.md has no heading with anchor #no-such-heading",
        "README.md:5: #nothing: README.md has no heading with anchor #nothing",
        "README.md:5: ../elsewhere.md leaves the repository",
        "README.md:6: docs/missing.md: no such file (docs/missing.md)",
        "README.md:13: #fenced-heading: README.md has no heading with anchor #fenced-heading",
    ]


def test_control_an_anchor_only_one_of_github_and_gitlab_knows_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"a.md": "## Pull once: `--pull-once`\n## Same\n## Same\n"})
    assert github_slug("Pull once: `--pull-once`") == "pull-once---pull-once"
    assert gitlab_slug("Pull once: `--pull-once`") == "pull-once-pull-once"
    (root / "b.md").write_text("[gh](a.md#pull-once---pull-once) [gl](a.md#pull-once-pull-once) [2nd](a.md#same-1)\n")
    problems = link_problems(root / "b.md", root)
    assert len(problems) == 2 and "#same-1" not in "".join(problems), problems


def test_control_a_template_naming_a_missing_doc_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "docs/components.md": "# Components\n## Inputs\n",
            "templates/fanout.yml": (
                "# for crane, see docs/gitlab" + "-ci.md; inputs: docs/components.md#inputs\n"
                "# and docs/components.md#outputs\nspec: {}\n"
            ),
        },
    )
    problems = mention_problems(root / "templates" / "fanout.yml", root)
    assert len(problems) == 2, problems
    assert "docs/gitlab-ci.md" in problems[0] and "#outputs" in problems[1]


def test_control_a_missing_path_or_test_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "tests/e2e/test_x.py": "def test_real():\n    pass\n",
            "tests/test_y.py": "def test_other():\n    pass\n",
            "docs/t.md": (
                "`test_x.py::test_real[*]` `tests/test_y.py::test_other` `tests/e2e/test_x.py`\n"
                "`test_x.py::test_gone` `tests/test_z.py::test_other` `templates/nope.yml`\n"
            ),
        },
    )
    doc = root / "docs" / "t.md"
    assert cited_test_problems(doc, root) == [
        "docs/t.md:2: test_x.py has no test test_gone",
        "docs/t.md:2: tests/test_z.py: no such test file",
    ]
    assert tree_mention_problems(doc, root) == [
        "docs/t.md:2: `tests/test_z.py` does not exist",
        "docs/t.md:2: `templates/nope.yml` does not exist",
    ]


# -- docs/cli.md against the CLI -------------------------------------------------------


def sections(text: str) -> dict[str, str]:
    """Heading text (rendered) -> the text up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    starts = []
    for number, line in prose_lines(text):
        match = ATX.match(line)
        if match:
            starts.append((number - 1, len(match.group(1)), _rendered(match.group(2) or "").strip()))
    found = {}
    for i, (start, level, title) in enumerate(starts):
        end = next((s for s, lvl, _ in starts[i + 1 :] if lvl <= level), len(lines))
        found[title] = "\n".join(lines[start + 1 : end])
    return found


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the first table in `text` (header and rule dropped)."""
    rows: list[list[str]] = []
    for _, line in prose_lines(text):
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        elif rows:
            break
    return [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]


OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def cli_doc_problems(text: str) -> list[str]:
    """What docs/cli.md (given as text) gets wrong about the commands, options and exit codes."""
    from authscope import cli

    problems = []
    by_title = sections(text)
    commands = {row[0].strip("`").split()[1] for row in table_rows(by_title.get("Commands", "")) if row}
    for name in cli.COMMANDS:
        if name not in commands:
            problems.append(f"the commands table does not name `{name}`")
        section = by_title.get(f"authscope {name}")
        if section is None:
            problems.append(f"no section `authscope {name}`")
            continue
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]  # type: ignore[union-attr]
        # A command with sub-commands of its own (`job open|close`): their options count.
        parsers = [sub] + [
            p for a in sub._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()
        ]
        # -p/--password is there only to refuse a password on the command line, unlisted.
        shown = [action for p in parsers for action in p._actions if action.help != argparse.SUPPRESS]
        real = {opt for action in shown for opt in action.option_strings} - {"-h", "--help"}
        documented = {opt for row in table_rows(section) for opt in OPTION.findall(row[0])}
        problems += [f"`authscope {name}`: option {o} is not documented" for o in sorted(real - documented)]
        problems += [f"`authscope {name}`: documents {o}, which it lacks" for o in sorted(documented - real)]
    codes = {row[0] for row in table_rows(by_title.get("Exit codes", ""))}
    exits = {value for key, value in vars(cli).items() if key.startswith("EXIT_") and isinstance(value, int)}
    for code in sorted({c for _, c in cli.EXIT_CODES} | exits | {130}):
        if str(code) not in codes:
            problems.append(f"the exit codes table has no row for {code}")
    return problems


def test_cli_doc_names_every_command_option_and_exit_code() -> None:
    assert cli_doc_problems((REPO_ROOT / "docs" / "cli.md").read_text()) == []


def test_control_a_command_or_option_missing_from_the_cli_doc_is_reported() -> None:
    text = (REPO_ROOT / "docs" / "cli.md").read_text()
    no_sweep = re.sub(r"^\|\s*`authscope sweep.*\n", "", text, flags=re.MULTILINE)
    assert any("does not name `sweep`" in p for p in cli_doc_problems(no_sweep))
    no_option = text.replace("`--pull-once`", "`--pull-twice`")
    problems = cli_doc_problems(no_option)
    assert "`authscope fanout`: option --pull-once is not documented" in problems
    assert "`authscope fanout`: documents --pull-twice, which it lacks" in problems
    no_code = re.sub(r"^\| 127 \|.*\n", "", text, flags=re.MULTILINE)
    assert cli_doc_problems(no_code) == ["the exit codes table has no row for 127"]


# -- docs/components.md against templates/*.yml ------------------------------------------


def component_inputs(template: Path) -> dict[str, dict[str, Any]]:
    header = next(yaml.safe_load_all(template.read_text()))
    return {name: decl or {} for name, decl in header["spec"]["inputs"].items()}


def _cell_value(cell: str, kind: str) -> Any:
    text = cell.strip()
    if text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    if kind == "string":
        return "" if text == '""' else text
    return yaml.safe_load(text)


def components_doc_problems(text: str, templates: Path = REPO_ROOT / "templates") -> list[str]:
    """What docs/components.md (given as text) gets wrong about each component's inputs."""
    problems = []
    by_title = sections(text)
    for template in sorted(templates.glob("*.yml")):
        name = template.stem
        section = by_title.get(f"{name} inputs")
        if section is None:
            problems.append(f"no section `{name}` inputs")
            continue
        declared = component_inputs(template)
        rows = {row[0].strip("`"): row for row in table_rows(section)}
        for missing in sorted(set(declared) - set(rows)):
            problems.append(f"{name}: input {missing} is not documented")
        for extra in sorted(set(rows) - set(declared)):
            problems.append(f"{name}: documents input {extra}, which {template.name} does not declare")
        for input_name in sorted(set(declared) & set(rows)):
            decl, row = declared[input_name], rows[input_name]
            kind = decl.get("type", "string")
            if len(row) < 4:
                problems.append(f"{name}: input {input_name}: the row needs input, type, default, meaning")
                continue
            if row[1] != kind:
                problems.append(f"{name}: input {input_name}: type {row[1]}, declared {kind}")
            if _cell_value(row[2], kind) != decl.get("default"):
                problems.append(f"{name}: input {input_name}: default {row[2]}, declared {decl.get('default')!r}")
    return problems


def test_components_doc_lists_every_input_as_the_templates_declare_it() -> None:
    assert components_doc_problems((REPO_ROOT / "docs" / "components.md").read_text()) == []


def test_control_a_wrong_or_missing_input_in_the_components_doc_is_reported() -> None:
    text = (REPO_ROOT / "docs" / "components.md").read_text()
    broken = text.replace(
        "| `fail-fast` | boolean | `false` | start no new", "| `fail-fast` | boolean | `true` | start no new"
    )
    broken = re.sub(r"^\| `pull-once` \|.*\n", "", broken, flags=re.MULTILINE)
    broken = broken.replace("| `child-stage` | string |", "| `child-stage` | number |")
    broken = broken.replace(
        "| `registry-login` | boolean | `true` | log in to `$CI_REGISTRY` as `$CI_REGISTRY_USER` (password",
        "| `registry-logins` | boolean | `true` | log in to `$CI_REGISTRY` as `$CI_REGISTRY_USER` (password",
    )
    assert components_doc_problems(broken) == [
        "fanout-pipeline: input child-stage: type number, declared string",
        "fanout: input pull-once is not documented",
        "fanout: input fail-fast: default `true`, declared False",
        "scope: input registry-login is not documented",
        "scope: documents input registry-logins, which scope.yml does not declare",
    ]


# -- docs/design.md's layout, the README's shape -------------------------------------------


def layout_problems(text: str, package: Path = REPO_ROOT / "plugin" / "authscope") -> list[str]:
    """Modules the layout block of docs/design.md (given as text) lists but the package lacks, and back."""
    block = re.search(r"^```\n(plugin/authscope/.*?)^```", text, re.MULTILINE | re.DOTALL)
    if not block:
        return ["no ``` block starting with plugin/authscope/"]
    listed = {m for m in re.findall(r"^\s+(\w+\.py)\s", block.group(1), re.MULTILINE) if not m.startswith("__")}
    on_disk = {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    return [f"the layout lists {m}, which is not in {package.name}/" for m in sorted(listed - on_disk)] + [
        f"the layout does not list {m}" for m in sorted(on_disk - listed)
    ]


def test_design_doc_layout_is_the_package_on_disk() -> None:
    assert layout_problems((REPO_ROOT / "docs" / "design.md").read_text()) == []


def test_control_a_module_missing_from_the_layout_is_reported() -> None:
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    without = re.sub(r"^  fanout\.py .*\n", "", text, flags=re.MULTILINE)
    assert layout_problems(without) == ["the layout does not list fanout.py"]
    extra = text.replace("  fanout.py ", "  flow.py            made up\n  fanout.py ", 1)
    assert layout_problems(extra) == ["the layout lists flow.py, which is not in authscope/"]


def front_page_problems(text: str) -> list[str]:
    problems = []
    if len(text.splitlines()) >= 200:
        problems.append(f"README.md has {len(text.splitlines())} lines (a front page has under 200)")
    block = re.search(r"^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()] if block else []
    if commands[:2] != ["./scripts/demo", "./scripts/test"]:
        problems.append(f"the first commands are {commands[:2]}, not ./scripts/demo and ./scripts/test")
    return problems


def test_readme_is_a_front_page_with_the_two_commands_first() -> None:
    assert front_page_problems((REPO_ROOT / "README.md").read_text()) == []


def test_control_a_long_readme_or_another_first_command_is_reported() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert len(front_page_problems(text + "\n" * 200)) == 1
    moved = text.replace("```sh\n./scripts/demo", "```sh\npip install authscope\n./scripts/demo", 1)
    assert front_page_problems(moved) == [
        "the first commands are ['pip install authscope', './scripts/demo'], not ./scripts/demo and ./scripts/test"
    ]
