"""Executes every notebook in colabs/ end to end (nbclient, the `python3` kernel of this Python).

A notebook's own ``assert`` cells are part of the test: ``rl_finetune.ipynb`` ends by checking
that GRPO improved its deliberately weakened micro policy (the return at least doubled, the bias
moved back), the RL issue's "a tiny RL run improves a weakened policy" test.
"""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))


def test_there_are_notebooks():
  assert NOTEBOOKS, f"no notebooks found in {os.path.join(REPO, 'colabs')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  # `python3` resolves to ipykernel in this interpreter (no user-level kernelspec is needed); the
  # kernel starts in the repo root and inherits this process's environment (CPU-only JAX), with
  # TMPDIR pointing here so what a notebook writes to `tempfile` dirs (datasets, checkpoints) is
  # cleaned up with pytest's tmp_path.
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  # XLA's default optimization, as a user runs the notebook (conftest.py lowers it for the tests).
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  client = NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": REPO}})
  client.execute()  # Raises CellExecutionError with the failing cell and traceback.
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors
