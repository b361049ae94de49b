"""The tabletop scene, generated as MJCF text from primitives (no asset files).

Layout (world frame, metres; the table top is the plane z = 0, the camera looks along +y so image
left is -x):

- ``table``: a finite plane of half-size ``TABLE_HALF`` (rendered brown).
- ``zone0..zone{NZ-1}``: flat target discs lying on the table (visual only, no contacts), on
  mocap bodies so that each env places them where its episode wants them.
- ``obj0..obj{NO-1}``: object slots, ``SLOTS_PER_SHAPE`` of each shape (box, cylinder, sphere).
  Each object body has three slide joints (x, y, z) so it translates but never rotates (boxes stay
  axis-aligned, which keeps pushing predictable). The z joint has a lower limit at 0, which *is* the
  table: resting on the table costs one joint-limit constraint instead of a plane contact. Objects
  not used by an episode are parked outside the table, out of view.
- ``ee``: the end effector, a mocap body (moved kinematically by the env, so it has no dynamics of
  its own). It carries a palm box and one ``pusher`` sphere at the palm centre: the only geom that
  collides with objects. The two fingers (visual only) are mocap bodies too, placed by the env
  from the gripper opening. Grasping is an attach ("weld-like") rule implemented by the env, see
  ``tabletop.py``.

Contacts only where needed: the pusher (contype 1) against objects (conaffinity 1); objects do
not collide with each other nor with the table (the z joint limit holds them up).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

SHAPES = ("box", "cylinder", "sphere")
SLOTS_PER_SHAPE = 2
NUM_SLOTS = len(SHAPES) * SLOTS_PER_SHAPE
NUM_ZONES = 2
TABLE_HALF = 0.4          # m, half-size of the table plane
OBJ_HALF = 0.028          # m, half-extent of every object (box half-size, radii, half-heights)
ZONE_RADIUS = 0.06        # m
ZONE_HEIGHT = 0.002       # m, half-height of the zone discs
PUSHER_RADIUS = 0.015     # m
FINGER_LEN = 0.05         # m, fingers hang this far below the pusher centre
FINGER_OPEN = 0.06        # m, finger offset from the palm centre when fully open
FINGER_CLOSED = 0.034     # m, finger offset when closed (touching a held object's sides)
FINGER_TRAVEL = FINGER_OPEN - FINGER_CLOSED
PARK_X = 3.0              # m, x of parked (unused) object slots: off the table, out of view


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """Physics settings of the generated MJCF."""
  timestep: float = 0.02      # s per physics substep
  solver_iterations: int = 4
  ls_iterations: int = 4


def slot_shape(slot: int) -> str:
  """Shape name of object slot ``slot`` (slots are grouped by shape)."""
  return SHAPES[slot // SLOTS_PER_SHAPE]


def _object_xml(slot: int) -> str:
  shape = slot_shape(slot)
  h = OBJ_HALF
  size = {"box": f"{h} {h} {h}", "cylinder": f"{h} {h}", "sphere": f"{h}"}[shape]
  # Body origin sits at the object's centre when resting (joint z = 0 <-> centre at z = h).
  return f"""
    <body name="obj{slot}" pos="{PARK_X + 0.2 * slot} 0 {h}">
      <joint name="obj{slot}_x" type="slide" axis="1 0 0" damping="1" frictionloss="0.05"/>
      <joint name="obj{slot}_y" type="slide" axis="0 1 0" damping="1" frictionloss="0.05"/>
      <joint name="obj{slot}_z" type="slide" axis="0 0 1" damping="1" limited="true"
             range="0 0.5"/>
      <geom name="obj{slot}" type="{shape}" size="{size}" mass="0.1" material="obj"
            contype="2" conaffinity="1" friction="0.5 0.005 0.0001"/>
    </body>"""


def scene_xml(spec: SceneSpec = SceneSpec()) -> str:
  """Returns the MJCF text of the tabletop scene."""
  objects = "".join(_object_xml(i) for i in range(NUM_SLOTS))
  zones = "".join(
      f'<body name="zone{i}" mocap="true" pos="{-0.1 + 0.2 * i} 0.1 {ZONE_HEIGHT}">'
      f'<geom name="zone{i}" type="cylinder" size="{ZONE_RADIUS} {ZONE_HEIGHT}" '
      f'contype="0" conaffinity="0" material="zone"/></body>'
      for i in range(NUM_ZONES))
  f_half = FINGER_LEN / 2
  return f"""
<mujoco model="vla_tabletop">
  <option timestep="{spec.timestep}" iterations="{spec.solver_iterations}"
          ls_iterations="{spec.ls_iterations}" gravity="0 0 -9.81">
    <flag eulerdamp="disable"/>
  </option>
  <asset>
    <!-- mjx.ray (mujoco-mjx 3.17) fails on a model without any material. -->
    <material name="table" rgba="0.55 0.45 0.35 1"/>
    <material name="obj" rgba="0.8 0.8 0.8 1"/>
    <material name="zone" rgba="0.2 0.8 0.2 1"/>
    <material name="robot" rgba="0.3 0.3 0.3 1"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 1" dir="0.3 0.5 -1"/>
    <!-- Looks at (0, 0.05, 0) from 0.61 m away, 55 deg below the horizon; with fovy 40 it sees
         the table from y = -0.17 to 0.41 m, and the gripper up to z = 0.19 m over the far row. -->
    <camera name="base" pos="0 -0.3 0.5" xyaxes="1 0 0 0 0.8192 0.5735" fovy="40"/>
    <geom name="table" type="plane" size="{TABLE_HALF} {TABLE_HALF} 0.01" material="table"
          contype="0" conaffinity="0"/>
    {zones}
    {objects}
    <body name="ee" mocap="true" pos="0 0 0.15">
      <geom name="palm" type="box" size="0.066 0.012 0.008" pos="0 0 0.018" material="robot"
            contype="0" conaffinity="0"/>
      <geom name="pusher" type="sphere" size="{PUSHER_RADIUS}" material="robot"
            contype="1" conaffinity="0" friction="1 0.005 0.0001"/>
      <camera name="wrist" pos="0 -0.06 0.06" xyaxes="1 0 0 0 0.55 0.83"/>
    </body>
    <!-- Fingers are separate mocap bodies (MJX does not move children of mocap bodies); the env
         places them at ee -+ x offset from the gripper opening. Visual only. -->
    <body name="finger_l" mocap="true" pos="{-FINGER_OPEN} 0 0.15">
      <geom name="finger_l" type="box" size="0.006 0.012 {f_half}" pos="0 0 {-f_half + 0.01}"
            material="robot" contype="0" conaffinity="0"/>
    </body>
    <body name="finger_r" mocap="true" pos="{FINGER_OPEN} 0 0.15">
      <geom name="finger_r" type="box" size="0.006 0.012 {f_half}" pos="0 0 {-f_half + 0.01}"
            material="robot" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""


def build_model(spec: SceneSpec = SceneSpec()) -> mujoco.MjModel:
  """Compiles :func:`scene_xml` into an ``MjModel``."""
  return mujoco.MjModel.from_xml_string(scene_xml(spec))


@dataclasses.dataclass(frozen=True)
class SceneIndex:
  """Static indices into the compiled model (python ints / numpy arrays)."""
  table_geom: int
  zone_geoms: np.ndarray      # [NUM_ZONES]
  obj_geoms: np.ndarray       # [NUM_SLOTS]
  obj_qpos: np.ndarray        # [NUM_SLOTS, 3] qpos address of the x, y, z joints
  obj_dof: np.ndarray         # [NUM_SLOTS, 3]
  robot_geoms: np.ndarray     # [4] palm, pusher, finger_l, finger_r


def scene_index(model: mujoco.MjModel) -> SceneIndex:
  """Looks up the geoms and joints the env uses, by name."""
  gid = lambda n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, n)
  jid = lambda n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)
  obj_j = np.array([[jid(f"obj{i}_{a}") for a in "xyz"] for i in range(NUM_SLOTS)])
  return SceneIndex(
      table_geom=gid("table"),
      zone_geoms=np.array([gid(f"zone{i}") for i in range(NUM_ZONES)]),
      obj_geoms=np.array([gid(f"obj{i}") for i in range(NUM_SLOTS)]),
      obj_qpos=model.jnt_qposadr[obj_j],
      obj_dof=model.jnt_dofadr[obj_j],
      robot_geoms=np.array([gid(n) for n in ("palm", "pusher", "finger_l", "finger_r")]),
  )
