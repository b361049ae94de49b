"""Benchmarks run as ``python benchmarks/<name>.py``, which puts ``benchmarks/`` first on
``sys.path``: a script named like an importable module shadows it for every import of the run
(``benchmarks/tokenizers.py`` once hid Hugging Face ``tokenizers``, and each benchmark had to edit
``sys.path`` to work around it)."""

import glob
import importlib.util
import os

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "benchmarks")


def test_no_benchmark_is_named_like_an_importable_module_or_edits_sys_path():
  scripts = sorted(glob.glob(os.path.join(_BENCHMARKS, "*.py")))
  assert len(scripts) >= 5, scripts
  assert importlib.util.find_spec("tokenizers") is not None  # The check sees a real clash.
  for path in scripts:
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.find_spec(name)
    assert spec is None, f"benchmarks/{name}.py shadows the importable module {spec.origin}"
    with open(path) as f:
      assert "sys.path" not in f.read(), f"benchmarks/{name}.py edits sys.path"
