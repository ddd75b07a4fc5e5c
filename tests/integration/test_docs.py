"""The docs site builds strictly (a broken link or anchor fails), its code blocks and the
README's are valid, and every table in them matches the records it is generated from."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deepclust.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(<!-- readme-test: [\w-]+ -->\s*)?```(\w*)\n(.*?)```", re.S)


def _tables():
    spec = importlib.util.spec_from_file_location("_tables_under_test", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def blocks(lang: str, marked: bool | None = None) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in ``lang``; ``marked``: only (un)marked readme-test blocks."""
    out = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group(2) == lang and (marked is None or bool(m.group(1)) == marked):
                out.append((str(page.relative_to(ROOT)), m.group(3)))
    return out


def command_lines(code: str) -> list[list[str]]:
    """Each command of a bash block as argv (continuations joined, comments dropped)."""
    text = code.replace("\\\n", " ")
    return [shlex.split(line.split(" #")[0]) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]' brings it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[test]' brings it)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "idfd" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, f"{page} is not in mkdocs.yml's nav"


def test_every_deepclust_command_in_the_docs_parses() -> None:
    parser = build_parser()
    seen = 0
    for page, code in blocks("bash"):
        for argv in command_lines(code):
            if "deepclust" not in argv:
                continue
            i = argv.index("deepclust")
            args = argv[i + 1 :]
            try:  # as cli.main: key=value overrides may also follow the flags
                _, extra = parser.parse_known_args(args)
            except SystemExit:
                pytest.fail(f"{page}: `deepclust {' '.join(args)}` does not parse")
            overrides_only = all("=" in e and not e.startswith("-") for e in extra)
            assert overrides_only, f"{page}: `deepclust {' '.join(args)}`: {extra}"
            seen += 1
    assert seen >= 20  # the README and the pages hold many; a regex that finds none must fail


def test_every_benchmark_command_names_a_script_and_its_flags() -> None:
    for page, code in blocks("bash"):
        for argv in command_lines(code):
            scripts = [a for a in argv if a.startswith("benchmarks/") and a.endswith(".py")]
            for script in scripts:
                source = (ROOT / script).read_text() if (ROOT / script).is_file() else None
                assert source is not None, f"{page}: {script} does not exist"
                for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
                    assert f'"{flag}"' in source or flag == "--help", f"{page}: {script} has no {flag}"


def test_every_python_block_compiles() -> None:
    found = blocks("python")
    assert found
    for page, code in found:
        compile(code, page, "exec")


@pytest.mark.parametrize("page,code", blocks("python", marked=False), ids=lambda v: v if v.endswith(".md") else "")
def test_unmarked_python_blocks_run(page: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # blocks marked readme-test run in tests/integration/test_readme.py with their epochs made small;
    # the others run as written
    monkeypatch.chdir(tmp_path)
    exec(compile(code, page, "exec"), {"__name__": "__docs__"})


def test_tables_match_their_records() -> None:
    stale = _tables().stale()
    assert not stale, f"tables differ from benchmarks/results in {stale}: run python benchmarks/tables.py"


def test_every_table_is_shown_somewhere() -> None:
    tables = _tables()
    text = "".join(p.read_text() for p in tables.targets())
    assert set(re.findall(r"<!-- table:([\w-]+) -->", text)) == set(tables.TABLES)


def test_a_changed_figure_is_caught() -> None:
    tables = _tables()
    good = tables.render("x\n<!-- table:kmeans -->\n<!-- /table:kmeans -->\n", {})
    assert tables.render(good, {}) == good  # regenerating a fresh table changes nothing
    figure = re.search(r"\| (\d+\.\d\d) \|", good).group(1)
    drifted = good.replace(f"| {figure} |", f"| {float(figure) + 0.01:.2f} |", 1)
    assert tables.render(drifted, {}) == good != drifted
    with pytest.raises(ValueError, match="unknown table"):
        tables.render("<!-- table:nope -->\n<!-- /table:nope -->", {})
    with pytest.raises(ValueError, match="no <!-- /table"):
        tables.render("<!-- table:kmeans -->\n", {})


def _slug(heading: str) -> str:
    """mkdocs' (Python-Markdown toc) anchor of a heading: lower case, word characters and hyphens."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_links_outside_the_site_resolve() -> None:
    # mkdocs checks docs/ itself; the README and the records' READMEs link into it from outside
    outside = [ROOT / "README.md", *sorted((ROOT / "benchmarks" / "results").rglob("README.md"))]
    checked = 0
    for page in outside:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve()
            assert dest.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{page.relative_to(ROOT)}: no #{anchor} in {path}"
            checked += 1
    assert checked >= 20
