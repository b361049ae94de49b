"""Loading whichever action tokenizer a directory holds (e.g. a checkpoint's assets)."""

from __future__ import annotations

import os

from vla_jax.tokenizers import binning, fast


def load_action_tokenizer(directory: str) -> binning.BinningTokenizer | fast.FastTokenizer:
  """Loads the binning or FAST tokenizer saved in ``directory`` by its ``save``.

  Raises:
    FileNotFoundError: neither ``binning_tokenizer.json`` nor ``fast_tokenizer.json`` is there.
    ValueError: both are there (ambiguous), or the file is corrupt (the message names it).
  """
  found = {name: os.path.exists(os.path.join(directory, name))
           for name in (binning.FILENAME, fast.FILENAME)}
  if all(found.values()):
    raise ValueError(f"{directory} holds both {binning.FILENAME} and {fast.FILENAME}; load one "
                     f"with BinningTokenizer.load or FastTokenizer.load")
  if found[binning.FILENAME]:
    return binning.BinningTokenizer.load(directory)
  if found[fast.FILENAME]:
    return fast.FastTokenizer.load(directory)
  raise FileNotFoundError(f"No action tokenizer in {directory}: expected {binning.FILENAME} or "
                          f"{fast.FILENAME}")
