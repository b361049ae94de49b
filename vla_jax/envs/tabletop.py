"""The MJX tabletop env: functional ``reset(rng) -> State`` / ``step(State, action) -> State``.

Action: float32 [4] in [-1, 1] = end-effector velocity (x, y, z) as a fraction of
``max_speed`` (m/s) and the gripper command (-1 open ... +1 closed). Out-of-range actions are
clipped to [-1, 1]; the end effector is also clipped to the workspace box. A NaN/inf action is
not applied: that step freezes the physics, sets ``info["error"]`` and ends the episode
(``done``), so one bad env never poisons a batch. Physics that turns non-finite does the same.

Proprio ``state``: float32 [4] = end-effector position (m, world frame) and gripper opening
(0 closed ... 1 open).

Grasping is a documented attach rule ("weld-like", kinematic), because friction grasps are fragile
in MJX: at the end of a control step, if the gripper is commanded closed, the fingers are at least
80% closed and an active object's centre is within ``GRASP_XY_TOL`` horizontally of the pusher with
its top just under the pusher, that object becomes *held*: every physics substep it is placed at
the pusher position plus the offset it had when grasped, with zero velocity. Opening the gripper
releases it; it then falls onto the table under gravity.

Episodes: ``success`` is latched (true from the first step it holds until reset); ``done`` is true
at the horizon (``horizon`` control steps), on an error, and on success only if
``done_on_success`` (default False: evaluation counts "success within the horizon").
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import mujoco
import numpy as np
from flax import struct
from mujoco import mjx

from vla_jax.envs import camera, scene, tasks

GRASP_XY_TOL = 0.02       # m
GRASP_Z_TOL = 0.025       # m, pusher centre above the object top (beyond the pusher radius)
WORKSPACE_LO = (-0.22, -0.22, scene.PUSHER_RADIUS + 0.005)
WORKSPACE_HI = (0.22, 0.22, 0.2)
GRIPPER_RATE = 0.5        # fraction of the full finger travel per control step
EE_HOME = (0.0, -0.12, 0.12)   # m, start position of the pusher centre (jittered by 2 cm in xy)
# Placement grid: 4 columns x 3 rows of cells 10 cm apart; zones take one left and one right
# cell, objects take distinct other cells; everything is jittered by +-1 cm inside its cell.
GRID_X = (-0.15, -0.05, 0.05, 0.15)
GRID_Y = (-0.1, 0.0, 0.1)
GRID_JITTER = 0.01


def split_list(text: str) -> list[str]:
  """Names from "a,b" or "a+b" (the "+" form fits inside a ``file.py:key=value,...`` config arg)."""
  return [t.strip() for t in re.split(r"[,+]", str(text)) if t.strip()]


def default_env_config() -> ml_collections.ConfigDict:
  """The env config (embed it in other configs as ``config.env``)."""
  return ml_collections.ConfigDict({
      "tasks": "reach,push,pick_place,lift",   # ","/"+" list: reset samples uniformly among them
      "num_objects": 3,            # objects per episode (target + distractors), 2..4
      "horizon": 50,               # control steps per episode (5 s at 10 Hz)
      "control_hz": 10.0,          # control rate (Hz)
      "physics_dt": 0.02,          # s per physics substep (control period / substeps)
      "max_speed": 0.3,            # m/s end-effector speed at |action| = 1
      "image_size": 64,            # rendered height = width (px)
      "cameras": "base",           # ","/"+" list: base, wrist ("" = no images, state-only obs)
      "fovy": 40.0,                # deg, base camera vertical field of view
      "done_on_success": False,
      "randomize_colors": False,   # domain randomization: jitter every colour by +-color_jitter
      "color_jitter": 0.08,
      "randomize_lighting": False,  # jitter the light direction and intensity
      "randomize_camera": False,    # jitter the base camera position (m) and aim (rad)
      "camera_pos_jitter": 0.02,
      "camera_rot_jitter": 0.04,
  })


@struct.dataclass
class State:
  """One env's state (add a leading axis for batches).

  data: mjx.Data. obs: {"image/<camera>": uint8 [H, W, 3], "state": float32 [4]}.
  reward: float32 []. done, success: bool []. info: dict with task_id, instruction_id, step,
  error (int32/bool []), target (int32 [] target slot), zone (int32 [] target zone), held (bool),
  lifted (bool), offset (float32 [3] held object offset), active (bool [slots]), geom_rgb
  (float32 [G, 3]), light_dir (float32 [3]), light_gain (float32 []), cam_pos (float32 [3]),
  cam_mat (float32 [3, 3]) (the base camera pose of this episode).
  """
  data: mjx.Data
  obs: dict[str, jax.Array]
  reward: jax.Array
  done: jax.Array
  success: jax.Array
  info: dict[str, Any]


def _rot(axis: int, angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  m = jnp.eye(3).at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)
  return m


class TabletopEnv:
  """Language-conditioned tabletop tasks in MJX with a pure-JAX camera. See module docstring."""

  def __init__(self, config: ml_collections.ConfigDict):
    """Builds the MJX model and the static tables; raises ValueError naming a bad config key."""
    self.config = config
    names = split_list(config.tasks)
    unknown = [t for t in names if t not in tasks.TASK_NAMES]
    if unknown or not names:
      raise ValueError(f"env config 'tasks': unknown task(s) {unknown} in '{config.tasks}'; "
                       f"known: {', '.join(tasks.TASK_NAMES)}")
    self.enabled_task_ids = np.array([tasks.TASK_NAMES.index(t) for t in names], np.int32)
    if not 2 <= config.num_objects <= len(tasks.OBJECT_COLORS):
      raise ValueError(f"env config 'num_objects' must be in [2, {len(tasks.OBJECT_COLORS)}], "
                       f"got {config.num_objects}")
    substeps = 1.0 / (config.control_hz * config.physics_dt)
    if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
      raise ValueError(f"env config: 1 / (control_hz * physics_dt) must be a positive integer, "
                       f"got control_hz={config.control_hz}, physics_dt={config.physics_dt}")
    self.substeps = round(substeps)
    self.camera_names = split_list(config.cameras)
    bad = [c for c in self.camera_names if c not in ("base", "wrist")]
    if bad:
      raise ValueError(f"env config 'cameras': got '{config.cameras}'; allowed: base, wrist "
                       "(empty = no images, state-only observations)")
    self.mj_model = scene.build_model(scene.SceneSpec(timestep=config.physics_dt))
    # This process's own device: MJX's default, jax.devices()[0], belongs to process 0 in a
    # multi-process run, and other processes cannot compute with arrays placed there.
    self.mjx_model = mjx.put_model(self.mj_model, device=jax.local_devices()[0])
    self.index = scene.scene_index(self.mj_model)
    self.cam_spec = camera.CameraSpec(height=config.image_size, width=config.image_size,
                                      fovy=config.fovy)
    self.task_names = list(tasks.TASK_NAMES)
    self.instructions, self._instruction_ids = tasks.instruction_table()
    self.action_dim = 4
    self.state_dim = 4
    self.horizon = int(config.horizon)
    self.control_hz = float(config.control_hz)
    self.image_size = (int(config.image_size), int(config.image_size))
    m = self.mj_model
    self._cam_ids = {c: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in
                     ("base", "wrist")}
    bid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)
    self._ee_mocap = int(m.body_mocapid[bid("ee")])
    self._zone_mocap = np.array([m.body_mocapid[bid(f"zone{i}")] for i in range(scene.NUM_ZONES)])
    self._finger_mocap = np.array([m.body_mocapid[bid(n)] for n in ("finger_l", "finger_r")])
    self._obj_body_pos = m.body_pos[m.geom_bodyid[self.index.obj_geoms]].astype(np.float32)
    self._base_rgb = np.array([m.mat_rgba[m.geom_matid[g], :3] for g in range(m.ngeom)],
                              np.float32)
    self._base_rgb[self.index.table_geom] = tasks.TABLE_COLOR
    self._base_rgb[self.index.robot_geoms] = tasks.ROBOT_COLOR
    self._obj_palette = np.array(list(tasks.OBJECT_COLORS.values()), np.float32)
    self._zone_palette = np.array(list(tasks.ZONE_COLORS.values()), np.float32)
    cells = np.array([(x, y) for x in GRID_X for y in GRID_Y], np.float32)
    self._cells = cells                              # [12, 2]
    self._left_cells = np.nonzero(cells[:, 0] < 0)[0]
    self._right_cells = np.nonzero(cells[:, 0] > 0)[0]
    d0 = mujoco.MjData(m)
    mujoco.mj_forward(m, d0)
    self._base_cam_pos = d0.cam_xpos[self._cam_ids["base"]].astype(np.float32)
    self._base_cam_mat = d0.cam_xmat[self._cam_ids["base"]].reshape(3, 3).astype(np.float32)
    self._data0 = mjx.put_data(m, d0, device=jax.local_devices()[0])

  # ---------------------------------------------------------------- helpers on a single state

  def ee_pos(self, data: mjx.Data) -> jax.Array:
    """Pusher centre (m), float32 [3]."""
    return data.mocap_pos[self._ee_mocap]

  def object_pos(self, data: mjx.Data) -> jax.Array:
    """Object centres (m), float32 [slots, 3] (from the rendered geom positions)."""
    return data.geom_xpos[self.index.obj_geoms]

  def zone_pos(self, data: mjx.Data) -> jax.Array:
    """Zone centres (m), float32 [zones, 3]."""
    return data.mocap_pos[self._zone_mocap]

  def gripper_opening(self, data: mjx.Data) -> jax.Array:
    """0 closed ... 1 open, float32 [] (read from the finger mocap positions)."""
    half = (data.mocap_pos[self._finger_mocap[1], 0] - data.mocap_pos[self._finger_mocap[0], 0]) / 2
    return (half - scene.FINGER_CLOSED) / scene.FINGER_TRAVEL

  def _set_gripper(self, mocap_pos, ee, opening):
    """Places the ee and both fingers (opening 0 closed ... 1 open)."""
    half = scene.FINGER_CLOSED + opening * scene.FINGER_TRAVEL
    fingers = ee[None] + jnp.stack([-half, half])[:, None] * jnp.array([1.0, 0.0, 0.0])
    return mocap_pos.at[self._ee_mocap].set(ee).at[self._finger_mocap].set(fingers)

  def _kinematics(self, data: mjx.Data) -> mjx.Data:
    """Body/geom (and, for the wrist camera, camera) poses from qpos and mocap_pos."""
    data = mjx.kinematics(self.mjx_model, data)
    if "wrist" in self.camera_names:
      data = mjx.camlight(self.mjx_model, data)
    return data

  def render(self, data: mjx.Data, info: dict[str, Any]) -> dict[str, jax.Array]:
    """Renders every configured camera: {"image/<cam>": uint8 [H, W, 3]}."""
    m = self.mj_model
    light = info["light_dir"]
    out = {}
    for cam in self.camera_names:
      if cam == "base":
        pos, mat = info["cam_pos"], info["cam_mat"]
      else:
        pos = data.cam_xpos[self._cam_ids[cam]]
        mat = data.cam_xmat[self._cam_ids[cam]].reshape(3, 3)
      img = camera.render(m.geom_type, m.geom_size, data.geom_xpos,
                          data.geom_xmat.reshape(-1, 3, 3),
                          info["geom_rgb"] * info["light_gain"], pos, mat, light, self.cam_spec,
                          axis_aligned=True)   # objects only translate; mocaps keep identity
      out[f"image/{cam}"] = img
    return out

  def _obs(self, data, info):
    obs = self.render(data, info)
    obs["state"] = jnp.concatenate(
        [self.ee_pos(data), self.gripper_opening(data)[None]]).astype(jnp.float32)
    return obs

  # ---------------------------------------------------------------------------- reset / step

  def reset(self, rng: jax.Array) -> State:
    """Samples an episode (task, objects, colours, positions, instruction) from ``rng``; the task
    family is uniform over the configured ``tasks``."""
    k_task, k_rest = jax.random.split(rng)
    return self.reset_task(k_rest, jax.random.choice(k_task, jnp.asarray(self.enabled_task_ids)))

  def reset_task(self, rng: jax.Array, task_id: jax.Array) -> State:
    """Like :meth:`reset` with the task family given (int32 [], index in ``task_names``), e.g. to
    evaluate a fixed number of episodes per task."""
    cfg = self.config
    ks = jax.random.split(rng, 12)
    task_id = jnp.asarray(task_id, jnp.int32)
    n = cfg.num_objects
    slots = jax.random.permutation(ks[1], scene.NUM_SLOTS)[:n]          # active slots
    colors = jax.random.permutation(ks[2], len(self._obj_palette))[:n]
    zone_colors = jax.random.permutation(ks[3], len(self._zone_palette))[:scene.NUM_ZONES]
    zc = jnp.stack([jax.random.choice(ks[4], jnp.asarray(self._left_cells)),
                    jax.random.choice(ks[5], jnp.asarray(self._right_cells))])
    key = jax.random.uniform(ks[6], (len(self._cells),)).at[zc].set(2.0)   # zones last
    obj_cells = jnp.argsort(key)[:n]
    cells = jnp.asarray(self._cells)
    jit_obj = jax.random.uniform(ks[7], (n, 2), minval=-GRID_JITTER, maxval=GRID_JITTER)
    jit_zone = jax.random.uniform(ks[8], (2, 2), minval=-GRID_JITTER, maxval=GRID_JITTER)
    obj_xy = cells[obj_cells] + jit_obj
    zone_xy = cells[zc] + jit_zone
    target_k = jax.random.randint(ks[9], (), 0, n)
    target_zone = jax.random.randint(ks[10], (), 0, scene.NUM_ZONES)
    k11 = jax.random.split(ks[11], 6)
    para = jax.random.randint(k11[0], (), 0, tasks.NUM_PARAPHRASES)
    target = slots[target_k]
    shape_id = target // scene.SLOTS_PER_SHAPE
    zone_key = jnp.where(task_id == tasks.TASK_NAMES.index("push"), zone_colors[target_zone],
                         target_zone)
    instruction_id = jnp.asarray(self._instruction_ids)[
        task_id, colors[target_k], shape_id, zone_key, para]

    # Physics state: active objects on their cells, the others parked (qpos 0 = park pose).
    data = self._data0
    qpos = data.qpos
    qx = jnp.asarray(self.index.obj_qpos[:, 0])[slots]
    qy = jnp.asarray(self.index.obj_qpos[:, 1])[slots]
    body = jnp.asarray(self._obj_body_pos)[slots]
    qpos = qpos.at[qx].set(obj_xy[:, 0] - body[:, 0]).at[qy].set(obj_xy[:, 1] - body[:, 1])
    ee = jnp.asarray(EE_HOME) + jnp.concatenate(
        [jax.random.uniform(k11[1], (2,), minval=-0.02, maxval=0.02), jnp.zeros(1)])
    zone_pos = jnp.concatenate([zone_xy, jnp.full((2, 1), scene.ZONE_HEIGHT)], -1)
    mocap_pos = self._set_gripper(data.mocap_pos.at[self._zone_mocap].set(zone_pos), ee, 1.0)
    data = data.replace(qpos=qpos, qvel=jnp.zeros_like(data.qvel), mocap_pos=mocap_pos)
    data = self._kinematics(data)

    # Colours (+ optional domain randomization of colours, light and camera).
    rgb = jnp.asarray(self._base_rgb)
    rgb = rgb.at[jnp.asarray(self.index.obj_geoms)[slots]].set(
        jnp.asarray(self._obj_palette)[colors])
    rgb = rgb.at[jnp.asarray(self.index.zone_geoms)].set(
        jnp.asarray(self._zone_palette)[zone_colors])
    if cfg.randomize_colors:
      rgb = jnp.clip(rgb + jax.random.uniform(k11[2], rgb.shape, minval=-cfg.color_jitter,
                                              maxval=cfg.color_jitter), 0.0, 1.0)
    light_dir = jnp.array([0.3, 0.5, -1.0], jnp.float32)
    light_gain = jnp.float32(1.0)
    if cfg.randomize_lighting:
      kl = jax.random.split(k11[3])
      light_dir = light_dir + jax.random.uniform(kl[0], (3,), minval=-0.3, maxval=0.3)
      light_gain = jax.random.uniform(kl[1], (), minval=0.85, maxval=1.15)
    cam_pos = jnp.asarray(self._base_cam_pos)
    cam_mat = jnp.asarray(self._base_cam_mat)
    if cfg.randomize_camera:
      kc = jax.random.split(k11[4], 3)
      cam_pos = cam_pos + jax.random.uniform(kc[0], (3,), minval=-cfg.camera_pos_jitter,
                                             maxval=cfg.camera_pos_jitter)
      ang = jax.random.uniform(kc[1], (2,), minval=-cfg.camera_rot_jitter,
                               maxval=cfg.camera_rot_jitter)
      cam_mat = _rot(2, ang[0]) @ _rot(0, ang[1]) @ cam_mat
    active = jnp.zeros(scene.NUM_SLOTS, bool).at[slots].set(True)
    info = {
        "task_id": task_id.astype(jnp.int32), "instruction_id": instruction_id.astype(jnp.int32),
        "step": jnp.int32(0), "error": jnp.bool_(False), "target": target.astype(jnp.int32),
        "zone": target_zone.astype(jnp.int32), "held": jnp.bool_(False), "lifted": jnp.bool_(False),
        "offset": jnp.zeros(3, jnp.float32), "active": active, "geom_rgb": rgb.astype(jnp.float32),
        "light_dir": light_dir, "light_gain": light_gain, "cam_pos": cam_pos, "cam_mat": cam_mat}
    success, _ = self._evaluate(data, info)
    return State(data=data, obs=self._obs(data, info), reward=jnp.float32(0.0),
                 done=jnp.bool_(False), success=success, info=info)

  def _evaluate(self, data, info):
    obj = self.object_pos(data)[info["target"]]
    zone = self.zone_pos(data)[info["zone"]]
    return tasks.evaluate(info["task_id"], self.ee_pos(data), obj, zone, info["held"],
                          info["lifted"])

  def _hold(self, data, info, ee):
    """Places the held object (if any) at ``ee + offset`` with zero velocity."""
    tgt = info["target"]
    q = jnp.asarray(self.index.obj_qpos)[tgt]
    dof = jnp.asarray(self.index.obj_dof)[tgt]
    want = ee + info["offset"] - jnp.asarray(self._obj_body_pos)[tgt]
    qpos = jnp.where(info["held"], data.qpos.at[q].set(want), data.qpos)
    qvel = jnp.where(info["held"], data.qvel.at[dof].set(0.0), data.qvel)
    return data.replace(qpos=qpos, qvel=qvel)

  def step(self, state: State, action: jax.Array) -> State:
    """Advances one control step (``substeps`` physics steps). See module docstring."""
    cfg = self.config
    info = dict(state.info)
    bad = ~jnp.all(jnp.isfinite(action))
    a = jnp.where(bad, 0.0, jnp.clip(action, -1.0, 1.0)).astype(jnp.float32)
    dt = 1.0 / cfg.control_hz
    ee0 = self.ee_pos(state.data)
    ee1 = jnp.clip(ee0 + a[:3] * cfg.max_speed * dt, jnp.asarray(WORKSPACE_LO),
                   jnp.asarray(WORKSPACE_HI))
    close = a[3] > 0.0
    info["held"] = info["held"] & close          # opening releases the object
    # The gripper opening moves toward the command at GRIPPER_RATE per control step.
    g0 = self.gripper_opening(state.data)
    g1 = g0 + jnp.clip((1.0 - a[3]) / 2.0 - g0, -GRIPPER_RATE, GRIPPER_RATE)
    data = state.data

    def substep(d, frac):
      ee = ee0 + frac * (ee1 - ee0)            # move the mocaps smoothly within the control step
      d = d.replace(mocap_pos=self._set_gripper(d.mocap_pos, ee, g0 + frac * (g1 - g0)))
      d = self._hold(d, info, ee)
      return mjx.step(self.mjx_model, d), None

    fracs = (jnp.arange(self.substeps, dtype=jnp.float32) + 1) / self.substeps
    data, _ = jax.lax.scan(substep, data, fracs)
    data = self._hold(data, info, ee1)
    data = self._kinematics(data)   # positions consistent with the final qpos
    bad = bad | ~jnp.all(jnp.isfinite(data.qpos)) | ~jnp.all(jnp.isfinite(data.qvel))
    data = jax.tree.map(lambda new, old: jnp.where(bad, old, new), data, state.data)

    # Grasp rule (see module docstring), then task bookkeeping.
    objs = self.object_pos(data)
    tgt = info["target"]
    rel = objs - ee1
    fingers_closed = self.gripper_opening(data) < 0.2
    top_gap = -rel[:, 2] - scene.OBJ_HALF - scene.PUSHER_RADIUS   # pusher above the object top
    graspable = (jnp.linalg.norm(rel[:, :2], axis=-1) < GRASP_XY_TOL) & (
        top_gap > -0.01) & (top_gap < GRASP_Z_TOL) & info["active"]
    grab = close & fingers_closed & ~info["held"] & graspable[tgt]
    info["offset"] = jnp.where(grab, rel[tgt], info["offset"])
    info["held"] = info["held"] | grab
    height = objs[tgt, 2] - scene.OBJ_HALF
    info["lifted"] = info["lifted"] | (height > tasks.LIFTED_LATCH)
    info["step"] = state.info["step"] + 1
    info["error"] = state.info["error"] | bad
    pred, task_reward = self._evaluate(data, info)
    success = state.success | pred
    reward = task_reward + success.astype(jnp.float32)
    done = (info["step"] >= self.horizon) | info["error"]
    if cfg.done_on_success:
      done = done | success
    return State(data=data, obs=self._obs(data, info), reward=reward, done=done,
                 success=success, info=info)


def make_env(env_config: ml_collections.ConfigDict | None = None) -> TabletopEnv:
  """Builds the env from a config (default: :func:`default_env_config`)."""
  return TabletopEnv(env_config if env_config is not None else default_env_config())
