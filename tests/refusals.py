"""The checks of a refused call (the project's rule for bad input): a one-line error,
raised before anything compiled, with the given directories byte for byte as before.

    assert refusal(lambda: experiment.run(config, workdir), workdir) == "config.x: ...; fix"

returns the message so that the caller compares all of it, not a prefix.
"""

import os
import re

import pytest
from jax_events import JaxEvents


def tree(directory) -> dict | None:
    """{relative path: bytes (None for a folder)} of everything under `directory`; None if
    it does not exist."""
    if not os.path.isdir(directory):
        return None
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory)] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return out


def refusal(call, *directories, error=ValueError) -> str:
    """The message of the `error` that `call()` raises; asserts it is one line, that
    nothing was compiled, and that each of `directories` is as before (absent if it was)."""
    before = [tree(d) for d in directories]
    with JaxEvents() as seen, pytest.raises(error) as e:
        call()
    message = str(e.value)
    assert "\n" not in message, message
    assert not seen.compiles, (message, dict(seen.compiles))
    for directory, was in zip(directories, before):
        assert tree(directory) == was, (message, directory)
    return message


def store_of_another_teacher(store, checkpoint: str) -> re.Pattern:
    """The refusal of `store` (a TeacherStore) for a run whose teacher is `checkpoint`'s, not
    the one it was written with; the other teacher's digest is its one unknown."""
    stored = store.source["teacher_params_sha256"][:12]
    return re.compile(re.escape(
        f"config.teacher.store='{store.path}' was not written for this run: teacher "
        f"checkpoint: teacher_params_sha256 is {stored}... in the store but ") + "[0-9a-f]{12}"
        + re.escape(f"... (config.teacher.checkpoint='{checkpoint}') in this run. Write a store "
                    "for it with `python -m jaxdistill.teacher_store --config=... "
                    "--store=NEW_DIR` (same config and overrides), or run the teacher online "
                    "(config.teacher.store='')"))
