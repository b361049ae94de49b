"""RLDS reader: round trip, OXE mappings, shards, statistics + cache, bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from vla_jax.data import normalization, rlds, statistics, synthetic
from vla_jax.data import standardize as std_lib

TRAIN_LENS = [3, 5, 4, 6, 2, 7]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("rlds"))
  paths = {
      "tabletop_demos": synthetic.write_dataset(
          root, "tabletop_demos", {"train": TRAIN_LENS, "validation": [4, 3]}),
      "bridge_dataset": synthetic.write_dataset(root, "bridge_dataset", {"train": [3, 5]},
                                                image_size=(8, 10)),
      "fractal20220817_data": synthetic.write_dataset(
          root, "fractal20220817_data", {"train": [4, 2]}, image_size=(6, 8)),
  }
  return root, paths


def _read(path, kind, cameras=("base",), **kw):
  ds = rlds.read_trajectories(path, std_lib.get_spec(kind), cameras, **kw)
  return list(rlds.iterate_numpy(ds, kind))


def _decode(png_bytes):
  return tf.io.decode_image(png_bytes, channels=3).numpy()


def test_tabletop_round_trip_equal(data_dir):
  _, paths = data_dir
  trajs = _read(paths["tabletop_demos"], "tabletop_demos")
  assert [t["episode_index"] for t in trajs] == list(range(len(TRAIN_LENS)))
  for i, tr in enumerate(trajs):
    ep = synthetic.make_episode("tabletop_demos", i, TRAIN_LENS[i])
    np.testing.assert_array_equal(tr["actions"], ep["steps"]["action"])
    np.testing.assert_array_equal(tr["state"], ep["steps"]["observation"]["state"])
    images = np.stack([_decode(b) for b in tr["image/base"]])
    np.testing.assert_array_equal(images, ep["steps"]["observation"]["image_base"])  # PNG: exact
    assert [s.decode() for s in tr["language_instruction"]] == ep["steps"]["language_instruction"]
  val = _read(paths["tabletop_demos"], "tabletop_demos", split="validation")
  np.testing.assert_array_equal(
      val[1]["actions"], synthetic.make_episode("tabletop_demos", 7, 3)["steps"]["action"])


def test_oxe_datasets_map_to_canonical_keys(data_dir):
  _, paths = data_dir
  bridge = _read(paths["bridge_dataset"], "bridge_dataset")[1]
  ep = synthetic.make_episode("bridge_dataset", 1, 5, image_size=(8, 10))["steps"]
  np.testing.assert_array_equal(bridge["actions"], ep["action"])
  np.testing.assert_array_equal(bridge["state"], ep["observation"]["state"])
  assert bridge["state"].shape == (5, 7) and bridge["actions"].dtype == np.float32
  assert _decode(bridge["image/base"][0]).shape == (8, 10, 3)  # image_0 is the base camera

  fractal = _read(paths["fractal20220817_data"], "fractal20220817_data")[0]
  ep = synthetic.make_episode("fractal20220817_data", 0, 4, image_size=(6, 8))["steps"]
  a, o = ep["action"], ep["observation"]
  np.testing.assert_array_equal(fractal["actions"], np.concatenate(
      [a["world_vector"], a["rotation_delta"], a["gripper_closedness_action"]], -1))
  np.testing.assert_array_equal(fractal["state"], np.concatenate(
      [o["base_pose_tool_reached"], o["gripper_closed"]], -1))
  assert fractal["actions"].shape == (4, 7) and fractal["state"].shape == (4, 8)
  assert fractal["language_instruction"][0].decode() == o["natural_language_instruction"][0]


def test_missing_key_names_key_and_dataset(data_dir):
  _, paths = data_dir
  spec = std_lib.DatasetSpec(name="broken", image_keys={"base": "observation/image_0"},
                             state_keys=("observation/joint_pos",), action_keys=("action",),
                             language_key="language_instruction")
  with pytest.raises(KeyError, match=r"observation/joint_pos.*broken|broken.*observation/joint"):
    rlds.read_trajectories(paths["bridge_dataset"], spec, ("base",), dataset_name="broken")
  with pytest.raises(KeyError, match="wrist"):
    rlds.read_trajectories(paths["bridge_dataset"], std_lib.get_spec("bridge_dataset"),
                           ("wrist",))
  with pytest.raises(KeyError, match="no split 'test'"):
    _read(paths["bridge_dataset"], "bridge_dataset", split="test")
  with pytest.raises(KeyError, match="Did you mean"):
    std_lib.get_spec("bridge_datset")


def test_unreadable_directory_and_corrupt_record(data_dir, tmp_path):
  _, paths = data_dir
  with pytest.raises(FileNotFoundError, match="does not exist"):
    rlds.open_builder(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="no TFDS dataset"):
    rlds.open_builder(str(tmp_path))
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match="cannot read the TFDS dataset"):
    rlds.open_builder(str(broken))
  # Flip bytes in the middle of the one train shard: the record checksum fails on read.
  copy = tmp_path / "copy"
  shutil.copytree(paths["bridge_dataset"], copy)
  (shard,) = [f for f in os.listdir(copy) if "train.tfrecord" in f]
  raw = bytearray((copy / shard).read_bytes())
  raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
  (copy / shard).write_bytes(bytes(raw))
  with pytest.raises(RuntimeError, match="corrupt"):
    _read(str(copy), "bridge_dataset")


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_are_disjoint_and_cover_the_split(data_dir, count):
  _, paths = data_dir
  seen = [[int(t["episode_index"]) for t in _read(
      paths["tabletop_demos"], "tabletop_demos", (), process_index=p, process_count=count)]
          for p in range(count)]
  flat = [i for s in seen for i in s]
  assert sorted(flat) == list(range(len(TRAIN_LENS))) and len(set(flat)) == len(flat)
  assert all(seen)  # every process gets episodes


def test_statistics_equal_numpy_and_cache_hit(data_dir, tmp_path, monkeypatch):
  _, paths = data_dir
  spec = std_lib.get_spec("bridge_dataset")
  stats = statistics.dataset_statistics(paths["bridge_dataset"], spec, cache_dir=str(tmp_path))
  eps = [synthetic.make_episode("bridge_dataset", i, n, image_size=(8, 10))["steps"]
         for i, n in enumerate([3, 5])]
  for key, arrays in (("action", [e["action"] for e in eps]),
                      ("state", [e["observation"]["state"] for e in eps])):
    x = np.concatenate(arrays).astype(np.float64)
    ref = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
           "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
    for name, value in ref.items():
      np.testing.assert_allclose(stats[key][name], value, rtol=1e-6, err_msg=f"{key}/{name}")
    assert stats[key]["mask"] == [True] * 6 + [False]  # gripper stays raw
  assert stats["num_transitions"] == 8 and json.loads(json.dumps(stats)) == stats
  assert len(os.listdir(tmp_path)) == 1

  def no_scan(*args, **kwargs):
    raise AssertionError("second call must hit the cache")

  monkeypatch.setattr(statistics, "_scan", no_scan)
  assert statistics.dataset_statistics(paths["bridge_dataset"], spec,
                                       cache_dir=str(tmp_path)) == stats
  with pytest.raises(AssertionError, match="cache"):  # a different mask is a different key
    statistics.dataset_statistics(paths["bridge_dataset"], spec, cache_dir=str(tmp_path),
                                  action_mask=[True] * 7)


def _plant_nan(index, episode):
  if index == 2:
    episode["steps"]["action"][1, 0] = np.nan
  if index == 4:
    episode["steps"]["observation"]["state"][0, 3] = np.inf
  return episode


@pytest.fixture(scope="module")
def nan_path(tmp_path_factory):
  return synthetic.write_dataset(str(tmp_path_factory.mktemp("nan")), "tabletop_demos",
                                 {"train": [3, 3, 4, 3, 5, 3]}, edit=_plant_nan)


def test_nonfinite_fails_with_episode_or_is_dropped(nan_path, tmp_path, capsys):
  spec = std_lib.get_spec("tabletop_demos")
  with pytest.raises(ValueError, match="episode 2"):
    statistics.dataset_statistics(nan_path, spec, cache_dir=str(tmp_path))
  stats = statistics.dataset_statistics(nan_path, spec, cache_dir=str(tmp_path),
                                        nonfinite="drop")
  assert stats["nonfinite_episodes"] == [2, 4] and stats["num_episodes"] == 4
  assert stats["num_transitions"] == 3 + 3 + 3 + 3
  assert "dropped 2 episodes" in capsys.readouterr().out


def test_normalizers_round_trip_and_mask():
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, size=(500, 3)).astype(np.float32)
  x[:, 2] = rng.choice([-1.0, 1.0], size=500)  # a gripper-like raw dimension
  stats = normalization.compute_stats([x[:200], x[200:]], mask=[True, True, False])
  z = normalization.normalize(x, stats, "zscore")
  np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-4)
  np.testing.assert_array_equal(z[:, 2], x[:, 2])
  np.testing.assert_allclose(normalization.unnormalize(z, stats, "zscore"), x, atol=1e-4)
  q = normalization.normalize(x, stats, "quantile")
  assert q[:, :2].min() == -1.0 and q[:, :2].max() == 1.0  # clipped beyond q01/q99
  ends = normalization.normalize(np.array([stats["q01"], stats["q99"]]), stats, "quantile")
  np.testing.assert_allclose(ends[:, :2], [[-1, -1], [1, 1]], atol=1e-6)  # q01 -> -1, q99 -> 1
  inside = (x[:, :2] > stats["q01"][:2]).all(1) & (x[:, :2] < stats["q99"][:2]).all(1)
  np.testing.assert_allclose(normalization.unnormalize(q, stats, "quantile")[inside],
                             x[inside], atol=1e-4)
  with pytest.raises(ValueError, match="3 dimensions"):
    normalization.normalize(x[:, :2], stats, "zscore")
