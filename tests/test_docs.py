"""Documentation checks: every public name is documented, docstring examples run, and the
README's example code runs."""

from __future__ import annotations

import doctest
import inspect
import pathlib
import re

import pytest

import optlab
from helpers import NOT_TRANSFORMS, all_cases

ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLIC = [n for n in optlab.__all__ if callable(getattr(optlab, n))]
REGISTERED = {c.name for c in all_cases()}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_documented(name):
    obj = getattr(optlab, name)
    doc = inspect.getdoc(obj) or ""
    assert len(doc.splitlines()) >= 3, f"optlab.{name} needs a docstring (summary, args, example)"
    if inspect.isclass(obj):
        return
    assert ">>>" in doc, f"optlab.{name}: the docstring needs an Example with `>>>` lines"
    if name in REGISTERED and name not in NOT_TRANSFORMS:
        assert re.search(r"References?:", doc), f"optlab.{name}: the docstring needs its References"


@pytest.mark.parametrize("name", [n for n in PUBLIC if not inspect.isclass(getattr(optlab, n))])
def test_docstring_examples_run(name):
    obj = getattr(optlab, name)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"optlab": optlab}
    for test in finder.find(obj, name, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"optlab.{name}: {result.failed} docstring example(s) failed"


def _python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md"])
def test_markdown_examples_run(doc):
    blocks = _python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    for i, block in enumerate(blocks):
        namespace: dict = {"__name__": f"{doc}_example_{i}"}
        exec(compile(block, f"{doc}[python block {i}]", "exec"), namespace)


def test_readme_index_names_every_public_function():
    """The README's "What is inside" table (or its text) names every public function."""
    text = (ROOT / "README.md").read_text()
    missing = [
        n
        for n in optlab.__all__
        if callable(getattr(optlab, n))
        and not isinstance(getattr(optlab, n), type)
        and not re.search(rf"\b{n}\b", text)
    ]
    assert not missing, f"add to README.md's index: {missing}"
