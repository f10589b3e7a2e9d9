"""Run the code blocks of README.md and docs/*.md, and check what they print.

    python docs/_ext/doc_blocks.py                  # every page, unmarked blocks
    python docs/_ext/doc_blocks.py docs/models.md   # one page
    python docs/_ext/doc_blocks.py --all            # marked blocks too (see below)

A page's blocks run in order, in one namespace and one scratch folder, as a reader would
run them top to bottom:

- ``python`` blocks are executed. An ``output`` block after one shows what it prints:
  the printed text must equal it, line for line, ``...`` standing for any text.
- ``bash`` blocks run as a bash script; ``console`` blocks run each ``$ command`` and
  compare its standard output with the lines below it (``...`` as above). A command
  ending in ``&`` starts in the background (a server) and is stopped when the page ends;
  the commands after it are retried for up to two minutes while it starts.
  ``python experiments/<name>.py`` runs with the short options of ``SHORT_OPTIONS``
  appended (one epoch on the shipped sample) unless the command already runs on the sample.
- Other blocks (``text``, ``json``, no language) are text.

A block preceded by a line in italics starting with a marker is run only when asked:
``*Long run…*`` (training on the full data, benchmarks: ``--long``), ``*Needs
network…*`` (the package index, other hosts, downloads: ``--network``), ``*Server…*``
(a server started or queried by hand: ``--server``) and ``*Needs devices…*`` (more
accelerators than one: ``--devices``); ``--all`` asks for all four.

Data: ``load_mnist()`` finds no IDX folder, no tensorflow-datasets copy and no mirror
(``FNLEARN_DATASET_MIRROR`` points at a closed port), so it loads the 6,000/1,000-image
sample shipped with fnlearn. Pages under ``docs/tutorials/`` are executed by the site
build (myst-nb), not here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = {"Long run": "long", "Needs network": "network", "Server": "server",
           "Needs devices": "devices"}
FENCE = re.compile(r"^(\s*)(`{3,})([^`\n]*)$")
SHORT_OPTIONS = {
    "experiments/mnist.py": ["--epochs", "1", "--source", "sample"],
    "experiments/convnet.py": ["--epochs", "1", "--source", "sample"],
    "experiments/custom_loop.py": ["--epochs", "1", "--source", "sample"],
    "experiments/port.py": ["--epochs", "1", "--source", "sample"],
}
RETRY_SECONDS = 120


@dataclasses.dataclass
class Block:
    """One fenced block of a page.

    Args:
      page: the Markdown file.
      line: the line of its opening fence (1-based).
      language: the fence's language (``python``, ``output``, ``bash``...).
      text: its content.
      marker: "long", "network", "server" or None (see the module docstring).
      output: for a python block, the text of the ``output`` block that follows it.
    """

    page: Path
    line: int
    language: str
    text: str
    marker: str | None = None
    output: str | None = None

    @property
    def where(self) -> str:
        """``page:line``, for messages."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


class BlockError(AssertionError):
    """A block failed, or printed something else than its page shows."""


def is_notebook(path: Path) -> bool:
    """Whether a page is an executed notebook (myst-nb), which the site build runs."""
    return bool(re.match(r"---\n(?:.*\n)*?file_format:\s*mystnb", path.read_text()))


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/ that is not an executed notebook."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [page for page in found
            if "_build" not in page.parts and not is_notebook(page)]


def marker_of(previous: list[str]) -> str | None:
    """The marker of a block: the first line of the paragraph just above its fence."""
    paragraph: list[str] = []
    for line in reversed(previous):
        if line.strip():
            paragraph.insert(0, line.strip())
        elif paragraph:
            break
    for phrase, kind in MARKERS.items():
        if paragraph and paragraph[0].startswith(f"*{phrase}"):
            return kind
    return None


def blocks(path: Path) -> list[Block]:
    """The page's fenced blocks, in order; an ``output`` block is attached to its block.

    Raises:
      BlockError: an ``output`` block follows no python block, or a fence is not closed.
    """
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = len(match.group(1)), match.group(2), match.group(3).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise BlockError(f"{path.relative_to(ROOT)}:{i + 1}: the fence is not closed")
        language = info.split()[0] if info else ""
        text = "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n"
        block = Block(path, i + 1, language, text, marker_of(lines[:i]))
        if language == "output":
            owner = found[-1] if found else None
            if owner is None or owner.language != "python" or owner.output is not None:
                raise BlockError(f"{block.where}: an output block must follow a python block")
            owner.output = block.text
        elif not language.startswith("{"):  # MyST directives are the site's business
            found.append(block)
        i = end + 1
    return found


def matches(expected: str, printed: str) -> bool:
    """Whether printed text is what the page shows (trailing spaces aside, ``...`` wild)."""
    def clean(text):
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"

    return doctest.OutputChecker().check_output(clean(expected), clean(printed),
                                                doctest.ELLIPSIS)


def run_python(block: Block, namespace: dict) -> None:
    """Execute a python block in the page's namespace and check its output."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block.text, block.where, "exec"), namespace)  # noqa: S102
    except Exception as error:
        raise BlockError(f"{block.where}: the block raised {type(error).__name__}: {error}\n"
                         + traceback.format_exc(limit=-3)) from error
    if block.output is not None and not matches(block.output, out.getvalue()):
        raise BlockError(f"{block.where}: the block printed\n{out.getvalue()}\n"
                         f"but the page shows\n{block.output}")


def shorten(command: str) -> str:
    """A command with the short options of the experiment it runs appended."""
    for script, options in SHORT_OPTIONS.items():
        if re.search(rf"\bpython3? {re.escape(script)}\b", command) and \
                "--source sample" not in command:
            tail = " &" if command.rstrip().endswith("&") else ""
            return command.rstrip().removesuffix("&").rstrip() + " " + shlex.join(options) + tail
    return command


def shell_env(bin_folder: Path) -> dict[str, str]:
    """The environment of shell blocks: ``python`` is this interpreter, fnlearn this checkout."""
    for name in ("python", "python3"):
        wrapper = bin_folder / name
        if not wrapper.exists():  # a script, not a link: a venv's python must keep its path
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            wrapper.chmod(0o755)
    path = os.pathsep.join([str(bin_folder), os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PATH": path, "PYTHONPATH": pythonpath}


def run_shell(block: Block, env: dict[str, str]) -> None:
    """Run a bash block as a script."""
    script = "set -euo pipefail\n" + "\n".join(shorten(line) for line in block.text.splitlines())
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=900)
    if done.returncode:
        raise BlockError(f"{block.where}: exit status {done.returncode}\n{done.stdout}\n"
                         f"{done.stderr}")


def console_commands(text: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in pairs]


def run_console(block: Block, env: dict[str, str], background: list) -> None:
    """Run each ``$`` command of a console block; compare outputs that were not shortened.

    A command ending in ``&`` joins ``background`` (stopped when the page ends); while one
    runs, a failing command is retried for up to ``RETRY_SECONDS`` (the server starts).
    """
    for command, expected in console_commands(block.text):
        short = shorten(command)
        if short.rstrip().endswith("&"):
            background.append(subprocess.Popen(
                ["bash", "-c", short.rstrip().removesuffix("&")], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            continue
        deadline = time.monotonic() + (RETRY_SECONDS if background else 0)
        while True:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", short], env=env,
                                  capture_output=True, text=True, timeout=900)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if done.returncode:
            raise BlockError(f"{block.where}: `{command}` exited {done.returncode}\n"
                             f"{done.stdout}\n{done.stderr}")
        if expected.strip() and short == command and not matches(expected, done.stdout):
            raise BlockError(f"{block.where}: `{command}` printed\n{done.stdout}\n"
                             f"but the page shows\n{expected}")


def stop(background: list) -> None:
    """Stop the page's background commands."""
    for process in background:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def sample_data(folder: Path):
    """Environment in which ``load_mnist()`` falls back to the shipped sample, quickly."""
    names = ("FNLEARN_DATA_DIR", "FNLEARN_DATASET_MIRROR", "FNLEARN_DATA_CACHE",
             "TFDS_DATA_DIR")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("FNLEARN_DATA_DIR", None)
    os.environ["FNLEARN_DATASET_MIRROR"] = "http://127.0.0.1:9/"  # a closed port: offline
    os.environ["FNLEARN_DATA_CACHE"] = str(folder / "cache")
    os.environ["TFDS_DATA_DIR"] = str(folder / "tfds")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclasses.dataclass
class PageRun:
    """What running one page did.

    Args:
      page: the page.
      ran: the blocks run, by language.
      skipped: the marked blocks not asked for, by marker.
    """

    page: Path
    ran: dict[str, int]
    skipped: dict[str, int]


def run_page(path: Path, include: frozenset[str] = frozenset()) -> PageRun:
    """Run a page's blocks in order, in a scratch folder (the current directory meanwhile).

    Args:
      path: the Markdown page.
      include: markers whose blocks run too ("long", "network", "server").

    Returns:
      The counts of blocks run and skipped.

    Raises:
      BlockError: the first block that failed or printed something else than shown.
    """
    ran: dict[str, int] = {}
    skipped: dict[str, int] = {}
    namespace: dict = {"__name__": "__main__"}
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="doc-blocks-") as scratch:
        folder = Path(scratch)
        (folder / "bin").mkdir()
        (folder / "experiments").symlink_to(ROOT / "experiments")
        env = shell_env(folder / "bin")
        os.chdir(folder)
        try:
            with sample_data(folder):
                env = {**env, **{k: os.environ[k] for k in ("FNLEARN_DATASET_MIRROR",
                                                             "FNLEARN_DATA_CACHE",
                                                             "TFDS_DATA_DIR")}}
                env.pop("FNLEARN_DATA_DIR", None)
                background: list[subprocess.Popen] = []
                runners = {"python": lambda block: run_python(block, namespace),
                           "bash": lambda block: run_shell(block, env),
                           "console": lambda block: run_console(block, env, background)}
                try:
                    for block in blocks(path):
                        if block.language not in runners:
                            continue
                        if block.marker and block.marker not in include:
                            skipped[block.marker] = skipped.get(block.marker, 0) + 1
                            continue
                        runners[block.language](block)
                        ran[block.language] = ran.get(block.language, 0) + 1
                finally:
                    stop(background)
        finally:
            os.chdir(previous)
    return PageRun(path, ran, skipped)


def main(argv: list[str] | None = None) -> int:
    """Run the pages named (default: all); print one line per page and the totals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="Markdown pages (default: all)")
    for kind in MARKERS.values():
        parser.add_argument(f"--{kind}", action="store_true",
                            help=f"also run the blocks marked {kind}")
    parser.add_argument("--all", action="store_true", help="run every marked block too")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # blocks import this checkout's fnlearn
    include = frozenset(kind for kind in MARKERS.values() if args.all or getattr(args, kind))
    total, skipped, failed = 0, 0, []
    for page in [p.resolve() for p in args.pages] or pages():
        started = time.perf_counter()
        try:
            result = run_page(page, include)
        except BlockError as error:
            failed.append(page)
            print(f"FAILED {error}", flush=True)
            continue
        count, left = sum(result.ran.values()), sum(result.skipped.values())
        total, skipped = total + count, skipped + left
        print(f"{page.relative_to(ROOT)}: {count} blocks ran {dict(sorted(result.ran.items()))}"
              f", {left} marked blocks not run {dict(sorted(result.skipped.items()))} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"{total} passed, {len(failed)} failed ({skipped} marked blocks not run)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
