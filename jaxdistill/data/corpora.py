"""Offline text that ships with every Python, as ordered streams of documents.

`pystdlib`: every `.py` file under the standard library directory
(`sysconfig.get_paths()['stdlib']`), one document per file in sorted relative-path order,
except files under a directory named one of `EXCLUDED_DIRS` (installed packages, test suites,
IDLE, caches), platform-specific build files (a top-level `config-*` directory, files named
`_sysconfigdata*`), the generated `pydoc_data/topics.py` (that is `pydoc_topics`) and empty files.

`pydoc_topics`: `pydoc_data.topics.topics` (help topic -> text), one document per topic in
sorted key order.

`pystdlib_functions`: every function or method of those files (in file order, then source
order) whose body starts with a docstring and continues after it on a later line; the prompt
is its source from the `def` line to the end of the docstring, the completion the rest of it.
"""

import ast
import dataclasses
import pathlib
import sysconfig
from collections.abc import Iterator

EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"}
)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: `prompt` (weight-0 context, '' for plain text) followed by `text`."""

    key: str
    text: str
    prompt: str = ""


def _stdlib_files() -> Iterator[tuple[str, str]]:
    """(relative path, source text) of the pystdlib files, in sorted relative-path order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if not (
            EXCLUDED_DIRS & set(parts[:-1])
            or (len(parts) > 1 and parts[0].startswith("config-"))
            or parts[-1].startswith("_sysconfigdata")
            or parts == ("pydoc_data", "topics.py")
        ):
            paths.append("/".join(parts))
    for relative in sorted(paths):
        text = (root / relative).read_text(encoding="utf-8")
        if text:
            yield relative, text


def pystdlib() -> Iterator[Document]:
    return (Document(key, text) for key, text in _stdlib_files())


def pydoc_topics() -> Iterator[Document]:
    from pydoc_data.topics import topics

    return (Document(key, topics[key]) for key in sorted(topics))


def _functions(path: str, source: str) -> list[Document]:
    lines = source.splitlines(keepends=True)
    documents = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue
        doc, rest = node.body[0], node.body[1]
        if ast.get_docstring(node, clean=False) is None or rest.lineno <= doc.end_lineno:
            continue
        documents.append((node.lineno, Document(
            key=f"{path}:{node.lineno}:{node.name}",
            prompt="".join(lines[node.lineno - 1 : doc.end_lineno]),
            text="".join(lines[doc.end_lineno : node.end_lineno]),
        )))
    return [document for _, document in sorted(documents, key=lambda pair: pair[0])]


def pystdlib_functions() -> Iterator[Document]:
    return (doc for path, source in _stdlib_files() for doc in _functions(path, source))


CORPORA = {
    "pystdlib": pystdlib,
    "pydoc_topics": pydoc_topics,
    "pystdlib_functions": pystdlib_functions,
}
