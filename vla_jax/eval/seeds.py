"""The three disjoint blocks of env reset seeds: ``demo``, ``dev`` and ``test``.

Every episode in this project is reset from an integer seed ``s`` as
``env.reset(jax.random.split(jax.random.PRNGKey(s))[0])`` (the second half of that split drives
the episode's own randomness, e.g. the expert's noise), so an episode is named, and replayed, by
its seed alone. The seeds are split into blocks that never overlap:

- ``demo`` [0, 1e8): demonstrations (the data; ``collect.seed`` + episode index, validation at
  + 1e7).
- ``dev`` [1e8, 2e8): periodic evaluations during training and *every* tuning decision
  (sampling options, checkpoints, hyper-parameters): ``experiments/eval.py --block=dev``.
- ``test`` [2e8, 3e8): the number a report states. Never used to choose anything.

Within an evaluation block, episode ``j`` has seed ``start + j`` and task
``enabled_tasks[j % num_tasks]``, so the episodes (and hence the success figures) do not depend
on how many envs are simulated at once, and every task gets the same episode count.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SeedBlock:
  """A half-open integer range ``[start, stop)`` of reset seeds."""
  name: str
  start: int
  stop: int

  def seeds(self, count: int, offset: int = 0) -> np.ndarray:
    """int64 [count]: seeds ``start + offset + arange(count)``; raises if they leave the block."""
    if count < 0 or offset < 0:
      raise ValueError(f"seed block '{self.name}': count={count} and offset={offset} must be >= 0")
    if self.start + offset + count > self.stop:
      raise ValueError(f"seed block '{self.name}' [{self.start}, {self.stop}) holds "
                       f"{self.stop - self.start} seeds; offset {offset} + count {count} exceeds it")
    return self.start + offset + np.arange(count, dtype=np.int64)


BLOCK_SIZE = 100_000_000
DEMO = SeedBlock("demo", 0, BLOCK_SIZE)
DEV = SeedBlock("dev", BLOCK_SIZE, 2 * BLOCK_SIZE)
TEST = SeedBlock("test", 2 * BLOCK_SIZE, 3 * BLOCK_SIZE)
BLOCKS = {b.name: b for b in (DEMO, DEV, TEST)}
EVAL_BLOCKS = ("dev", "test")


def block(name: str) -> SeedBlock:
  """The block called ``name``; raises ValueError listing the blocks otherwise."""
  if name not in BLOCKS:
    raise ValueError(f"unknown seed block '{name}'; expected one of {sorted(BLOCKS)}")
  return BLOCKS[name]


def eval_block(name: str) -> SeedBlock:
  """``dev`` or ``test``: evaluating on the demonstrations' seeds is refused (seen episodes)."""
  if name not in EVAL_BLOCKS:
    raise ValueError(f"evaluation seed block must be one of {EVAL_BLOCKS}, got '{name}' (the "
                     "'demo' block holds the training episodes)")
  return BLOCKS[name]


def eval_episodes(name: str, task_ids, episodes_per_task: int, offset: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """``(seeds int64 [E], task_ids int32 [E])`` of an evaluation, ``E = episodes_per_task *
  len(task_ids)``: episode ``j`` is ``seed start + offset + j``, task ``task_ids[j % len]``."""
  task_ids = np.asarray(task_ids, np.int32)
  if episodes_per_task < 1 or not len(task_ids):
    raise ValueError(f"eval_episodes: episodes_per_task={episodes_per_task} must be >= 1 and "
                     f"task_ids ({task_ids.tolist()}) non-empty")
  n = episodes_per_task * len(task_ids)
  return eval_block(name).seeds(n, offset), np.resize(task_ids, n)
