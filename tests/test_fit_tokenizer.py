"""experiments/fit_tokenizer.py end to end (subprocess) and its chunk-file loading."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vla_jax.tokenizers import fitting
from vla_jax.tokenizers.fast import FastTokenizer
from vla_jax.tokenizers.synthetic import smooth_chunks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, "experiments/fit_tokenizer.py", *args], check=False,
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_main_command_fits_and_saves(tmp_path):
  """The README's command on the built-in data (fewer chunks), plus a config override."""
  workdir = tmp_path / "fast"
  proc = _run("--config=configs/fast_tokenizer.py:num_chunks=600",
              "--config.fast.vocab_size=256", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "[4/4] Saving" in proc.stderr and "FAST tokenizer saved" in proc.stdout  # Progress.
  tok = FastTokenizer.load(str(workdir))
  assert (tok.action_horizon, tok.action_dim, tok.scale, tok.vocab_size) == (10, 7, 10.0, 256)
  report = json.loads((workdir / "fit_report.json").read_text())
  assert report["valid_fraction"] == 1.0 and report["err_max"] <= 0.15
  assert report["compression"] > 2.0
  chunks = smooth_chunks(20, 10, 7, control_hz=10.0, seed=5)
  decoded, valid = tok.decode(*tok.encode(chunks))
  assert valid.all() and np.abs(decoded - chunks).mean() <= 0.03


def test_fits_on_an_npz_file_and_rejects_a_bad_one(tmp_path):
  data = smooth_chunks(300, 20, 3, control_hz=20.0, seed=2)
  np.savez(tmp_path / "chunks.npz", actions=data, other=np.zeros(3))
  proc = _run(f"--config=configs/fast_tokenizer.py:data_path={tmp_path / 'chunks.npz'}",
              f"--workdir={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stderr
  tok = FastTokenizer.load(str(tmp_path / "out"))
  assert (tok.action_horizon, tok.action_dim) == (20, 3)  # Shapes come from the file.
  np.save(tmp_path / "flat.npy", data.reshape(300, -1))
  proc = _run(f"--config=configs/fast_tokenizer.py:data_path={tmp_path / 'flat.npy'}",
              f"--workdir={tmp_path / 'bad'}")
  assert proc.returncode != 0 and "flat.npy" in proc.stderr and "[N, H, D]" in proc.stderr


def test_load_chunks_errors_name_file_and_key(tmp_path):
  np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, 4), np.float32), b=np.zeros(1))
  with pytest.raises(ValueError, match=r"two.npz: no array 'actions' \(arrays: \['a', 'b'\]\)"):
    fitting.load_chunks(str(tmp_path / "two.npz"))
  assert fitting.load_chunks(str(tmp_path / "two.npz"), "a").shape == (2, 3, 4)
  bad = np.zeros((2, 3, 4), np.float32)
  bad[1, 2, 0] = np.nan
  np.save(tmp_path / "nan.npy", bad)
  with pytest.raises(ValueError, match=r"nan.npy: 1 non-finite .*\(1, 2, 0\)"):
    fitting.load_chunks(str(tmp_path / "nan.npy"))
  np.save(tmp_path / "int.npy", np.zeros((2, 3, 4), np.int64))
  with pytest.raises(ValueError, match="int.npy: expected a float"):
    fitting.load_chunks(str(tmp_path / "int.npy"))
  with pytest.raises(ValueError, match="unknown extension '.csv'"):
    (tmp_path / "x.csv").write_text("1")
    fitting.load_chunks(str(tmp_path / "x.csv"))
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    fitting.load_chunks(str(tmp_path / "missing.npy"))
