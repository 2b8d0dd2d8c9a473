"""The documentation holds together: the README and every docs/ page link only to files and
headings that exist, never outside the repository, and docs/cli.md names every subcommand and
flag the program has (read from the Click command tree, not from a list kept here)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from gistnet.cli import cli

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CHECKED = [*PAGES, REPO / "benchmarks" / "README.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
PARENT_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[^\s`'\")\]>]*)")
REPO_PATH = re.compile(r"`((?:tests|scripts|helm|k8s|job|benchmarks|docs)/[\w./-]*)(?:::(\w+))?`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation stripped (letters,
    digits, '_', '-' and spaces kept), each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    """Link targets outside code: inline links, images and reference definitions."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(prose) + REF_DEF.findall(prose)


def link_problems(page: Path, text: str, repo: Path = REPO) -> list[str]:
    problems = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:: not a file here
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(repo):
            problems.append(f"{page.name}: {target} leaves the repository")
            continue
        if not dest.exists():
            problems.append(f"{page.name}: {target}: no such file")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix != ".md":
                problems.append(f"{page.name}: {target}: an anchor into a non-Markdown target")
            elif anchor not in anchors(dest.read_text()):
                problems.append(f"{page.name}: {target}: no heading with that anchor in {dest.name}")
    return problems


def escaping_paths(page: Path, text: str, repo: Path = REPO) -> list[str]:
    """Any '../' path, linked or merely written (in code too), that climbs out of the repository:
    a reader's clone has nothing there."""
    return [f"{page.name}: {p}" for p in PARENT_PATH.findall(text)
            if not (page.parent / p).resolve().is_relative_to(repo)]


def stale_paths(text: str, repo: Path = REPO) -> list[str]:
    """Repository paths the text names in backticks (`scripts/x.sh`, `tests/a.py::test_b`)
    that do not exist, or name a test the file does not define: a moved file leaves none behind."""
    problems = []
    for path, test in REPO_PATH.findall(text):
        if not (repo / path).exists():
            problems.append(path)
        elif test and not re.search(rf"^\s*(?:async )?def {test}\(", (repo / path).read_text(), re.M):
            problems.append(f"{path}::{test}")
    return problems


@pytest.mark.parametrize("page", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_anchor_resolves_inside_the_repository(page):
    text = page.read_text()
    assert link_problems(page, text) == []
    assert escaping_paths(page, text) == []
    assert stale_paths(text) == []


def test_the_readme_is_a_landing_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme  # .ci/run runs the README's test command
    mapped = {t for t in links(readme) if t.startswith("docs/")}
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= mapped  # every page is reachable from the README


def commands(group: click.Group, path: tuple[str, ...] = ("gistnet",)):
    """(path, command) for every command of the tree, groups included, depth first."""
    yield path, group
    for name, sub in sorted(group.commands.items()):
        if isinstance(sub, click.Group):
            yield from commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def sections(text: str) -> dict[str, str]:
    """Level-2 sections of a page by their heading text (backticks dropped)."""
    parts = re.split(r"^## +(.+)$", FENCE.sub("", text), flags=re.M)
    return {parts[i].replace("`", "").strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def missing_from_cli_page(text: str, root: click.Group = cli) -> list[str]:
    """Each subcommand needs a '## `gistnet <name>`' section naming, in backticks, each of its
    flags (every spelling) and arguments; the group's own options go in 'Options of every command'."""
    found = sections(text)
    missing = []
    for path, cmd in commands(root):
        name = " ".join(path)
        where = "Options of every command" if cmd is root else name
        body = found.get(where)
        if body is None:
            missing.append(f"section '{where}'")
            continue
        names = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if isinstance(p, click.Option)]
        names += [f"{p.name.upper()}..." if p.nargs == -1 else p.name.upper()
                  for p in cmd.params if isinstance(p, click.Argument)]
        if cmd is root:
            names += ["-h", "--help"]
        missing += [f"{name} {n}" for n in names if f"`{n}`" not in body]
    return missing


def test_every_subcommand_and_flag_is_in_the_command_line_page():
    assert missing_from_cli_page((REPO / "docs" / "cli.md").read_text()) == []


# ------------------------------------------------------------------ the checks can fail

def test_slugs_follow_github():
    assert slug("Fan-out: one pod per (fold, model) on Kubernetes") == "fan-out-one-pod-per-fold-model-on-kubernetes"
    assert slug("`gistnet train`") == "gistnet-train"
    assert slug("report.html and checklist.md") == "reporthtml-and-checklistmd"
    assert slug("Loader: host memory and speed (issue 10)") == "loader-host-memory-and-speed-issue-10"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A") == {"a", "a-1", "a-2"}


def test_a_broken_link_an_unknown_anchor_or_an_escape_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B page\n## Real heading\n")
    page = tmp_path / "docs" / "a.md"
    text = ("[ok](b.md#real-heading) [gone](missing.md) [typo](b.md#real-headin) [self](#nowhere) "
            "[out](../../x.md) `[in code](missing.md)` [web](https://example.org/x)\n"
            "```\n[fenced](missing-too.md)\n```\nsummary in `../../shared/PROTOCOL.md`\n")
    page.write_text(text)
    problems = link_problems(page, text, tmp_path)
    assert problems == ["a.md: missing.md: no such file",
                        "a.md: b.md#real-headin: no heading with that anchor in b.md",
                        "a.md: #nowhere: no heading with that anchor in a.md",
                        "a.md: ../../x.md leaves the repository"]
    assert escaping_paths(page, text, tmp_path) == ["a.md: ../../x.md", "a.md: ../../shared/PROTOCOL.md"]
    assert escaping_paths(page, "[up](../README.md)", tmp_path) == []
    assert stale_paths("`tests/test_docs.py::test_slugs_follow_github` `job/gistnet/crossval.py` "
                       "`tests/test_docs.py::test_gone`") == ["job/gistnet/crossval.py", "tests/test_docs.py::test_gone"]


def test_a_missing_subcommand_or_flag_is_reported():
    text = (REPO / "docs" / "cli.md").read_text()
    assert missing_from_cli_page(text.replace("`--level`", "`level`")) == ["gistnet stats --level"]
    without_section = re.sub(r"^## `gistnet exit-codes`$", "## exit codes", text, flags=re.M)
    assert missing_from_cli_page(without_section) == ["section 'gistnet exit-codes'"]

    @click.group()
    @click.option("--quiet")
    def root(quiet):
        """A tree with one nested group."""

    @root.group("remote")
    def remote():
        """Nested."""

    @remote.command("add")
    @click.option("--url/--no-url")
    @click.argument("name")
    def add(url, name):
        """Leaf."""

    page = "## Options of every command\n`--quiet` `-h` `--help`\n## gistnet remote\n## gistnet remote add\n`--url` `NAME`\n"
    assert missing_from_cli_page(page, root) == ["gistnet remote add --no-url"]


# ------------------------------------------------------------------ the synopsis lists every flag

SYNOPSIS_FREE = {"config", "launch"}  # "[flags]": they take train's flags (config) or pass them on (launch)


def synopsis_problems(text: str, root: click.Group = cli) -> list[str]:
    """cli.md's synopsis block against Click: one entry per command (continuation lines indented),
    naming every long flag it has and none it lacks (config and launch say "[flags]")."""
    block = re.search(r"^## Synopsis\n+```\n(.*?)^```", text, flags=re.M | re.S).group(1)
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("gistnet "):
            current = line.split()[1]
            entries[current] = ""
        if current:
            entries[current] += " " + line.split("#")[0]
    problems = []
    for name, cmd in sorted(root.commands.items()):
        if name not in entries:
            problems.append(f"{name}: not in the synopsis")
            continue
        if name in SYNOPSIS_FREE:
            continue
        shown = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", entries[name]))
        flags = {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)
                 if o.startswith("--") and o != "--help"}
        problems += [f"{name}: {flag} missing" for flag in sorted(flags - shown)]
        problems += [f"{name}: {flag} is not a flag of it" for flag in sorted(shown - flags)]
    return problems


def test_the_synopsis_lists_every_flag_of_every_command():
    assert synopsis_problems((REPO / "docs" / "cli.md").read_text()) == []


def test_a_flag_left_out_of_the_synopsis_is_reported():
    text = (REPO / "docs" / "cli.md").read_text()
    assert synopsis_problems(text.replace("[--per-site N]", "")) == ["demo: --per-site missing"]


# ------------------------------------------------------------------ kubectl selectors name the release

def release_label_problems(text: str) -> list[str]:
    """Each ``app.kubernetes.io/instance=NAME`` in a page names the release that the page's last
    ``helm install|upgrade [--install] RELEASE`` before it installed (the chart sets the label to
    the release name)."""
    problems, release = [], None
    for match in re.finditer(r"helm (?:install|upgrade)(?: --install)? ([\w.-]+)|app\.kubernetes\.io/instance=([\w.-]+)",
                             text):
        if match.group(1):
            release = match.group(1)
        elif match.group(2) != release:
            problems.append(f"instance={match.group(2)} after helm install {release}")
    return problems


def test_label_selectors_name_the_release_installed_before_them():
    problems = {p.name: release_label_problems(p.read_text()) for p in PAGES}
    assert {name: found for name, found in problems.items() if found} == {}
    assert release_label_problems("helm install gistnet-nightly x\nkubectl get jobs -l app.kubernetes.io/instance=gistnet") \
        == ["instance=gistnet after helm install gistnet-nightly"]
