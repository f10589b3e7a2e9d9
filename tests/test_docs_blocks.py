"""Every code block of README.md and docs/*.md runs, and prints what its page shows.

``docs/_ext/doc_blocks.py`` is the runner (and its command line); this test runs it on
each page, so a new page is picked up without an edit here. Blocks marked as long, or as
needing the network, a server or several devices, are left to
``python docs/_ext/doc_blocks.py --all``; the tutorials run in the site build.
"""

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import doc_blocks  # noqa: E402 - after its folder is on the path

PAGES = doc_blocks.pages()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_block_of_the_page_runs_and_prints_what_the_page_shows(page):
    result = doc_blocks.run_page(page)
    assert sum(result.ran.values()) + sum(result.skipped.values()) == len(
        [b for b in doc_blocks.blocks(page) if b.language in ("python", "bash", "console")])


def test_the_pages_are_found_and_the_tutorials_are_left_to_the_site_build():
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "docs/models.md", "docs/training.md"} <= names
    assert not any(name.startswith("docs/tutorials/") for name in names)
    assert doc_blocks.is_notebook(ROOT / "docs" / "tutorials" / "from-keras.md")


def write(tmp_path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text))
    return page


@pytest.fixture
def in_root(monkeypatch):
    """Pages under tmp_path are named relative to the repository root in messages."""
    monkeypatch.setattr(doc_blocks, "ROOT", Path("/"))


def test_a_block_that_prints_something_else_than_shown_fails(tmp_path, in_root):
    page = write(tmp_path, """
        ```python
        print(2 + 2)
        ```

        ```output
        5
        ```
        """)
    with pytest.raises(doc_blocks.BlockError, match="printed\n4\n"):
        doc_blocks.run_page(page)


def test_output_may_elide_with_dots_and_blocks_share_one_namespace(tmp_path, in_root):
    page = write(tmp_path, """
        ```python
        numbers = list(range(30))
        ```

        ```python
        print(numbers)
        ```

        ```output
        [0, 1, 2, ..., 29]
        ```
        """)
    assert doc_blocks.run_page(page).ran == {"python": 2}


def test_a_failing_block_names_its_page_and_line(tmp_path, in_root):
    page = write(tmp_path, """
        text

        ```python
        import fnlearn as fl
        fl.no_such_function()
        ```
        """)
    with pytest.raises(doc_blocks.BlockError, match=r"page.md:4: the block raised Attr"):
        doc_blocks.run_page(page)


def test_marked_blocks_run_only_when_asked(tmp_path, in_root):
    page = write(tmp_path, """
        *Long run: pretends to train for hours.*

        ```python
        raise SystemExit("ran")
        ```

        ```console
        $ echo hello
        hello
        ```
        """)
    result = doc_blocks.run_page(page)
    assert result.ran == {"console": 1} and result.skipped == {"long": 1}
    with pytest.raises(SystemExit, match="ran"):
        doc_blocks.run_page(page, include=frozenset({"long"}))


def test_a_console_command_must_print_what_is_shown(tmp_path, in_root):
    page = write(tmp_path, """
        ```console
        $ echo hello
        goodbye
        ```
        """)
    with pytest.raises(doc_blocks.BlockError, match="printed\nhello"):
        doc_blocks.run_page(page)


def test_experiments_run_with_their_short_options():
    assert doc_blocks.shorten("python experiments/mnist.py --out x") == (
        "python experiments/mnist.py --out x --epochs 1 --source sample")
    command = "python experiments/mnist.py --epochs 3 --source sample --export m.fnx"
    assert doc_blocks.shorten(command) == command


def test_load_mnist_gives_the_sample_inside_a_page(tmp_path, in_root, monkeypatch):
    monkeypatch.setenv("FNLEARN_DATA_DIR", str(tmp_path / "not-a-dataset"))
    page = write(tmp_path, """
        ```python
        import fnlearn as fl
        print(fl.data.load_mnist().source)
        ```

        ```output
        sample
        ```
        """)
    assert doc_blocks.run_page(page).ran == {"python": 1}
