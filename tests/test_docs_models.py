"""docs/models.md runs: every Python block in order, in one namespace, and the summary it
prints is the one the page shows."""

import contextlib
import io
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of each fenced block of the page, in order."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"```(\w*)\n(.*?)```", PAGE.read_text(), re.S)]


def test_every_snippet_of_the_models_page_runs_and_prints_what_it_shows(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    printed, shown = [], []
    for number, (language, text) in enumerate(blocks()):
        if language == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(text, f"{PAGE.name} block {number}", "exec"), namespace)  # noqa: S102
            if out.getvalue():
                printed.append(out.getvalue())
        elif language == "":
            shown.append(text)
    assert printed == shown
    assert len([1 for language, _ in blocks() if language == "python"]) == 10
