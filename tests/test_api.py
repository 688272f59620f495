"""The public API: the README's library example runs as written (into a temporary workdir),
and `import jaxdistill` exposes what it promises without starting JAX."""

import os
import re
import runpy
import subprocess
import sys

import numpy as np
from conftest import ROOT

import jaxdistill


def _readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Use it as a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_library_example_runs(tmp_path, capsys):
    script = tmp_path / "example.py"
    script.write_text(_readme_example().replace("/tmp/jaxdistill_library_example",
                                                str(tmp_path / "run")))
    runpy.run_path(str(script))
    lines = capsys.readouterr().out.strip().splitlines()
    kd, accuracy_line = lines[0], lines[-1]  # the progress lines of the run come between
    s, t = np.array([2.0, 0.5, -1.0]) / 4, np.array([1.5, 1.0, -0.5]) / 4
    p_s, p_t = np.exp(s) / np.exp(s).sum(), np.exp(t) / np.exp(t).sum()
    assert abs(float(kd.strip("[]")) - 16 * np.sum(p_t * np.log(p_t / p_s))) < 1e-6
    accuracy, digest = accuracy_line.split()
    assert 0.0 <= float(accuracy) <= 1.0 and len(digest) == 12
    assert (tmp_path / "run" / "summary.json").exists()


def test_public_names_resolve_lazily():
    assert sorted(jaxdistill.__all__) == sorted(jaxdistill._EXPORTS)
    for name in jaxdistill.__all__:
        assert getattr(jaxdistill, name) is not None, name
    probe = "import sys, jaxdistill; print('jax' in sys.modules, jaxdistill.__version__)"
    out = subprocess.run([sys.executable, "-c", probe],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", jaxdistill.__version__]
