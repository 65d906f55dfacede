"""README.md and docs/*.md stay true.

Every ```python block of a file runs, in order, in one namespace per file, inside a
temporary directory (a block that starts with ``>>>`` runs as a doctest). A block whose
work would take minutes is marked ``<!-- skip-test: reason -->`` on the line before it; the
reason is printed. Every ``convattn ...`` line of a ```bash / ```console block is parsed by
the real command-line parser (without running it) and must not use a deprecated spelling.
Every ``convattn.a.b`` the prose names must exist; relative links must point at files and
headings that exist; README stays at most 200 lines with its documentation index in the
first 60.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*skip-test:\s*(.*?)\s*-->\s*\Z", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SHELL_OPERATORS = {";", "&&", "||", "|", ">", ">>", "<", "&", "(", ")"}


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def code_blocks(path: Path) -> list[tuple[str, str, int, str | None]]:
    """``(language, code, line number, skip reason)`` of each fenced block, in order."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        skip = SKIP.search(text[: m.start()].rstrip() + "\n")
        lineno = text.count("\n", 0, m.start()) + 2  # the block's first code line
        out.append((m.group(1).lower(), m.group(2), lineno, skip.group(1) if skip else None))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*$", text, re.M):
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


# ---------------------------------------------------------------- Python blocks

def _run_python(code: str, ns: dict, where: str) -> None:
    if code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(code, ns, where, where, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report = io.StringIO()
        result = runner.run(test, out=report.write, clear_globs=False)
        ns.update(test.globs)
        assert result.failed == 0, f"{where}: doctest failed\n{report.getvalue()}"
        return
    exec(compile(code, where, "exec"), ns)


def run_python_blocks(path: Path) -> list[str]:
    """Run the file's Python blocks in order in one namespace; return the skipped ones' reasons."""
    ns: dict = {"__name__": "__docs__"}
    skipped = []
    for lang, code, lineno, skip in code_blocks(path):
        if lang != "python":
            continue
        where = f"{path.name}:{lineno}"
        if skip:
            skipped.append(f"{where}: {skip}")
            continue
        try:
            _run_python(code, ns, where)
        except Exception as exc:
            raise AssertionError(f"the Python block at {where} failed: {type(exc).__name__}: {exc}") from exc
    return skipped


PY_FILES = [p for p in DOC_FILES if any(lang == "python" for lang, *_ in code_blocks(p))]


@pytest.mark.parametrize("path", PY_FILES, ids=_ids(PY_FILES))
def test_python_blocks_run(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs and figures the examples write land here
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")  # the same results without building the C++ kernels
    monkeypatch.setenv("MPLBACKEND", "Agg")
    skipped = run_python_blocks(path)
    with capsys.disabled():
        for line in skipped:
            print(f"\n  skipped {line}", end="")


def test_a_snippet_calling_a_missing_api_fails(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```python\nimport convattn\nx = 1\n```\n\n<!-- skip-test: slow -->\n```python\nraise SystemError\n```\n"
                   "```python\nassert x == 1\n```\n")
    assert run_python_blocks(doc) == ["doc.md:8: slow"]
    doc.write_text("```python\nimport convattn\nconvattn.no_such_function()\n```\n")
    with pytest.raises(AssertionError, match="doc.md:2 failed: AttributeError"):
        run_python_blocks(doc)
    doc.write_text("```python\n>>> 1 + 1\n3\n```\n")
    with pytest.raises(AssertionError, match="doctest failed"):
        run_python_blocks(doc)


def test_skip_markers_give_a_reason():
    for path in DOC_FILES:
        for lang, _, lineno, skip in code_blocks(path):
            if skip is not None:
                assert skip, f"{path.relative_to(ROOT)}:{lineno}: skip-test without a reason"


# ---------------------------------------------------------------- command lines

def convattn_commands(code: str) -> list[list[str]]:
    """The argument lists of every ``convattn ...`` / ``-m convattn ...`` call in a shell block."""
    code = code.replace("\\\n", " ")
    code = re.sub(r"\$\{?\w+\}?", "0", code)  # shell variables ($seed) as a value
    out = []
    for line in code.splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        tokens = list(lex)
        for i, tok in enumerate(tokens):
            if tok == "convattn" and (i == 0 or tokens[i - 1] in SHELL_OPERATORS | {"-m", "do", "then"}
                                      or re.fullmatch(r"\w+=\S*", tokens[i - 1])):
                args = []
                for t in tokens[i + 1:]:
                    if t in SHELL_OPERATORS:
                        break
                    args.append(t)
                out.append(args)
    return out


@pytest.fixture(scope="module")
def parser():
    from convattn.cli import build_parser

    return build_parser()


SHELL_FILES = [p for p in DOC_FILES if any(lang in SHELL_LANGS for lang, *_ in code_blocks(p))]


@pytest.mark.parametrize("path", SHELL_FILES, ids=_ids(SHELL_FILES))
def test_command_lines_parse(path, parser):
    errors = []
    for lang, code, lineno, skip in code_blocks(path):
        if lang not in SHELL_LANGS or skip:
            continue
        for args in convattn_commands(code):
            err, status = io.StringIO(), 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    parser.parse_args(args)
                except SystemExit as exc:  # --help exits 0, a bad command line 2
                    status = exc.code
            said = [line for line in err.getvalue().splitlines() if "error" in line or "deprecated" in line]
            if status or said:
                errors.append(f"{path.relative_to(ROOT)}:{lineno}: convattn {shlex.join(args)}\n    " + "\n    ".join(said))
    assert not errors, "command lines the CLI does not accept as written:\n" + "\n".join(errors)


def test_command_line_extraction():
    code = "for s in 0 1; do\n  convattn train --seed $s \\\n    --out runs/a-s$s  # comment\ndone\n" \
           "torchrun --nproc_per_node 2 -m convattn train --config run.yaml\nmake demo\n" \
           "$ CONVATTN_DEBUG=1 convattn eval runs/a && convattn report runs/a"
    assert convattn_commands(code) == [
        ["train", "--seed", "0", "--out", "runs/a-s0"], ["train", "--config", "run.yaml"],
        ["eval", "runs/a"], ["report", "runs/a"]]


def test_a_bad_command_line_is_caught(parser):
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser.parse_args(["train", "--no-such-flag"])


# ---------------------------------------------------------------- names in the prose

def resolve(dotted: str):
    """The object a dotted name such as ``convattn.engine.build_optimizer`` names (importing modules on the way)."""
    import importlib

    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_api_names_in_the_prose_exist(path):
    missing = []
    for name in sorted(set(re.findall(r"`(convattn(?:\.\w+)+)", FENCE.sub("", path.read_text())))):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name} ({exc})")
    assert not missing, f"{path.relative_to(ROOT)} names what does not exist: " + "; ".join(missing)


# ---------------------------------------------------------------- links and README's shape

@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_relative_links_resolve(path):
    text = FENCE.sub("", path.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.relative_to(ROOT)}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{path.relative_to(ROOT)}: no heading #{anchor} in {dest.name}"


def test_readme_is_short_with_the_docs_index_near_the_top():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"
    index = [i for i, line in enumerate(lines, 1) if line.strip() == "## Documentation"]
    assert index and index[0] <= 60, "README.md's '## Documentation' index must start within its first 60 lines"
    readme = README.read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in readme, f"README's documentation index does not link docs/{doc.name}"
