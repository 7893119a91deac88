"""The docs' Python blocks against the code: every block compiles, uses only public names, and runs.

Every ```python block of README.md and docs/*.md is checked:

- it compiles (top-level ``await`` and ``async with`` allowed, annotations not evaluated,
  so ``def charge(card: Card) -> Receipt: ...`` stands for any types);
- it imports no private module (``meshlib._config``, ``from meshlib import _x``) and reads
  no private attribute (``meshlib._x``): what a user needs is public, or it is not in the
  docs;
- every ``meshlib.<name>...`` chain it uses, and every name it imports from meshlib,
  exists;
- it runs. The blocks of one page run in order, in one namespace that starts as if
  ``import httpx`` and ``import meshlib`` had run (API.md's convention), so a block may use
  what an earlier block of its page defined. They run in a temporary directory holding the
  files the docs name: ``mesh.toml`` (a copy of examples/fleet/mesh.toml) and ``svc.crt``,
  ``svc.key``, ``mesh-ca.crt`` (a client certificate and a CA made with trustme). No host
  name resolves but loopback ones, so a block that would reach the network fails at once
  instead of waiting on DNS.

A block that cannot run here says why on the line just before its fence, in an HTML
comment that the rendered page does not show::

    <!-- not run: sends requests to orders.internal, which does not exist here -->
    ```python
    response = client.get("/orders/42")
    ```

Such a block is still compiled and checked for names; only running it is left out. Keep
these few, each for a reason a reader would accept (a host that does not exist, your
own application object, process-wide OpenTelemetry providers): ``MAX_NOT_RUN`` caps them.

Links between pages (``[Roadmap](index.md#roadmap)``) must lead to a heading that exists.
The ``meshlib check`` and ``meshlib explain`` sessions that docs/mesh-file.md shows for
the fleet's file (``$ meshlib ... mesh.toml ...`` in a console block) are run too, in
examples/fleet, and must print what the page says.
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import shlex
import shutil
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

import meshlib
import meshlib.asgi
import meshlib.testing
import meshlib.wsgi
from meshlib._cli import main
from meshlib._mesh import default_mesh
from meshlib._runtime import runtime

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Raising this is a decision: every block left unrun is a block nothing keeps honest.
MAX_NOT_RUN = 15

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
_LOOKS_LIKE_A_MARKER = re.compile(r"<!--.*\bnot[\s_-]*run\b", re.IGNORECASE)
_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | __future__.annotations.compiler_flag
_LOOPBACK = {None, "127.0.0.1", "::1", "localhost", b"127.0.0.1", b"::1", b"localhost"}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the fence, 1-based
    source: str  # dedented
    not_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if fence["lang"] == "python":
            previous = next((text for text in reversed(lines[:index]) if text.strip()), "")
            marker = _NOT_RUN.match(previous)
            found.append(
                Block(
                    page,
                    index + 1,
                    textwrap.dedent("\n".join(lines[index + 1 : end])),
                    None if marker is None else marker["reason"],
                )
            )
        index = end + 1
    return found


BLOCKS = [block for path in PAGES for block in _blocks(path)]


def _compile(block: Block) -> Any:
    tree = ast.parse(block.source, block.page, "exec", feature_version=None)
    ast.increment_lineno(tree, block.line)  # tracebacks point into the page
    return compile(tree, block.page, "exec", flags=_FLAGS, dont_inherit=True)


def _tree(block: Block) -> ast.Module:
    return ast.parse(block.source, block.page)


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) > 40  # the extraction found them, fences inside admonitions too
    assert any(block.page == "README.md" for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_block_compiles(block: Block) -> None:
    _compile(block)


def _private_uses(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_private_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if _is_private_module(node.module):
                found.append(node.module)
            elif node.module.split(".")[0] == "meshlib":
                found += [f"{node.module}.{a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            chain = _chain(node)
            if chain and chain[0] == "meshlib":
                found.append(".".join(chain))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "meshlib" and any(map(_private, parts[1:]))


def _chain(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when it does not start at a plain name."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_block_imports_nothing_private(block: Block) -> None:
    assert _private_uses(_tree(block)) == [], (
        f"{block.id} uses a private meshlib module or name; the docs may show only public ones"
    )


def _resolve(path: str) -> object:
    """The object `path` (``meshlib.testing.FakeClock``) names; AttributeError if none."""
    head, *rest = path.split(".")
    found: object = importlib.import_module(head)
    for name in rest:
        if not hasattr(found, name) and inspect.ismodule(found):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{found.__name__}.{name}")
        found = getattr(found, name)
    return found


def _meshlib_names(tree: ast.Module) -> list[str]:
    """Every dotted meshlib name the block imports or uses, fully spelled."""
    aliases = {"meshlib": "meshlib"}  # the pages' namespace starts with it
    used: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "meshlib":
                    used.append(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "meshlib":
            for alias in node.names:
                used.append(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _chain(node)
            if chain and chain[0] in aliases:
                used.append(".".join([aliases[chain[0]], *chain[1:]]))
    return used


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_every_meshlib_name_a_block_uses_exists(block: Block) -> None:
    missing = []
    for name in _meshlib_names(_tree(block)):
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert missing == [], f"{block.id} uses names meshlib does not have"


def test_markers_are_spelled_so_that_they_count() -> None:
    for path in PAGES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines, 1):
            if not _LOOKS_LIKE_A_MARKER.search(text):
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            marker = _NOT_RUN.match(text)
            assert marker is not None, f"{where}: write it as <!-- not run: REASON -->"
            assert marker["reason"], f"{where}: say why the block cannot run"
            following = next((t for t in lines[number:] if t.strip()), "")
            assert following.strip() == "```python", f"{where}: not followed by a python block"


def test_few_blocks_are_left_unrun() -> None:
    not_run = [block.id for block in BLOCKS if block.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, not_run


# -- running the pages ---------------------------------------------------------------------


def _refuse_remote_names(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in _LOOPBACK:
        raise socket.gaierror(
            f"the docs test resolves no host but loopback ones, not {host!r}: "
            "mark the block <!-- not run: REASON --> or use a FaultServer"
        )
    return _getaddrinfo(host, *args, **kwargs)


_getaddrinfo = socket.getaddrinfo


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the files the docs name, with no network beyond loopback."""
    shutil.copy(ROOT / "examples" / "fleet" / "mesh.toml", tmp_path / "mesh.toml")
    ca = trustme.CA()
    leaf = ca.issue_cert("svc.internal")
    ca.cert_pem.write_to_path(str(tmp_path / "mesh-ca.crt"))
    (tmp_path / "svc.crt").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tmp_path / "svc.key"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MESHLIB_CONFIG", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse_remote_names)
    return tmp_path


@contextlib.contextmanager
def _global_state_kept() -> Iterator[None]:
    """Undo what a page may change for the whole process: logging, test mode, hooks, env."""
    environ = dict(os.environ)
    loggers = [logging.getLogger(), logging.getLogger("meshlib")]
    saved = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    hooks = default_mesh()._hooks[:]
    skip_waits = runtime.skip_waits
    try:
        yield
    finally:
        for lg, level, handlers, propagate in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
        default_mesh()._hooks[:] = hooks
        runtime.skip_waits = skip_waits
        os.environ.clear()
        os.environ.update(environ)


def _close(namespace: dict[str, Any]) -> None:
    for value in namespace.values():
        if isinstance(value, httpx.Client | meshlib.Mesh):
            value.close()
        elif isinstance(value, httpx.AsyncClient):
            asyncio.run(value.aclose())


RUNNABLE = sorted({block.page for block in BLOCKS if block.not_run is None})


@pytest.mark.network
@pytest.mark.parametrize("page", RUNNABLE)
def test_page_runs(page: str, workdir: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "docs", "httpx": httpx, "meshlib": meshlib}
    with _global_state_kept():
        try:
            for block in BLOCKS:
                if block.page != page or block.not_run is not None:
                    continue
                code = _compile(block)
                result = eval(code, namespace)  # our own docs, compiled above
                if inspect.iscoroutine(result):  # a block with a top-level await
                    asyncio.run(result)
        finally:
            _close(namespace)


# -- the command-line sessions of the policy-file page -------------------------------------

FLEET = ROOT / "examples" / "fleet"


def _sessions(path: Path) -> list[tuple[int, list[str], str]]:
    """``(line, argv, output)`` for each ``$ meshlib`` command on the fleet's file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[tuple[int, list[str], str]] = []
    inside = False
    for number, text in enumerate(lines, 1):
        if text.startswith("```"):
            inside = text == "```console"
            continue
        if not (inside and text.startswith("$ meshlib ")):
            continue
        argv = shlex.split(text[len("$ meshlib ") :])
        if "mesh.toml" not in argv:
            continue
        output = []
        for following in lines[number:]:
            if following.startswith(("$ ", "```")):
                break
            output.append(following + "\n")
        found.append((number, argv, "".join(output)))
    return found


SESSIONS = _sessions(ROOT / "docs" / "mesh-file.md")


def test_the_policy_file_page_shows_explain_and_check() -> None:
    commands = [argv[0] for _, argv, _ in SESSIONS]
    assert commands.count("explain") >= 3
    assert "check" in commands


@pytest.mark.parametrize(
    ("argv", "shown"),
    [(argv, shown) for _, argv, shown in SESSIONS],
    ids=[f"mesh-file.md:{line}" for line, _, _ in SESSIONS],
)
def test_the_page_prints_what_the_command_prints(
    argv: list[str], shown: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(FLEET)
    assert main(argv) == 0
    assert capsys.readouterr().out == shown


# -- links between pages -------------------------------------------------------------------

_LINK = re.compile(r"\]\((?P<page>[\w./-]*?\.md)?#(?P<anchor>[\w-]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")


def _anchors(path: Path) -> set[str]:
    from markdown.extensions.toc import slugify  # what mkdocs uses for heading ids

    found, fenced = set(), False
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(text)
        if heading:
            found.add(slugify(heading["title"].replace("`", ""), "-"))
    return found


@pytest.mark.parametrize("path", PAGES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_links_lead_to_headings_that_exist(path: Path) -> None:
    broken = []
    for match in _LINK.finditer(path.read_text(encoding="utf-8")):
        target = path.parent / match["page"] if match["page"] else path
        if not target.exists() or match["anchor"] not in _anchors(target):
            broken.append(match[0])
    assert broken == []


# -- commands ------------------------------------------------------------------------------

_COMMAND_PAGES = ["README.md", "docs/getting-started.md", "docs/performance.md"]


def _commands(path: Path) -> list[str]:
    commands, inside = [], False
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.startswith("```"):
            inside = text == "```bash"
            continue
        line = text.split("#", 1)[0].strip()
        if inside and line:
            commands += [part.strip() for part in line.split("&&")]
    return commands


@pytest.mark.parametrize("page", _COMMAND_PAGES)
def test_commands_use_the_virtual_environment_they_set_up(page: str) -> None:
    commands = _commands(ROOT / page)
    assert commands
    stray = [
        command
        for command in commands
        if not command.startswith((".venv/bin/", "python3 -m venv .venv", "apt-get "))
    ]
    assert stray == []
