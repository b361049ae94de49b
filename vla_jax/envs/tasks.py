"""Task families, instruction templates, success predicates and shaped rewards.

Four language-conditioned families (``task_id`` = index in :data:`TASK_NAMES`):

- ``reach``:      "touch the red cube". Success: the pusher centre is within
                  ``REACH_TOL`` of the target object's centre (i.e. it touches it).
- ``push``:       "push the blue cylinder to the green zone" (zone named by colour). Success: the
                  object's centre is on the table within ``ZONE_TOL`` (xy) of the zone centre.
- ``pick_place``: "put the yellow ball in the left zone" (zone named by side, image left = -x).
                  Success: the object was lifted (latched), is released, rests on the table and
                  its centre is within ``ZONE_TOL`` of the zone centre.
- ``lift``:       "pick up the white cube". Success: the object's centre is ``LIFT_HEIGHT`` above
                  its resting height.

Every episode has ``num_objects`` objects of distinct colours (the target and distractors) and two
zones of distinct colours, one in each half of the table, so the instruction decides what to do.

Dense reward (per control step, in [0, 2]): a task term in [0, 1] plus 1 once success holds.
With ``near(d) = 1 - tanh(10 d)`` (d in metres, 1 at d = 0, 0.24 at 10 cm):
reach ``near(|ee - obj|)``; push ``0.3 near(|ee - obj|) + 0.7 near(|obj - zone|_xy)``;
pick_place ``0.2 near(|ee - obj|) + 0.2 held + 0.6 near(|obj - zone|_xy)``;
lift ``0.3 near(|ee - obj|) + 0.2 held + 0.5 clip(height / LIFT_HEIGHT, 0, 1)``.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from vla_jax.envs import scene

TASK_NAMES = ("reach", "push", "pick_place", "lift")
# Few, saturated colours that stay distinct at 64x64 under Lambert shading.
OBJECT_COLORS = {"red": (0.9, 0.12, 0.1), "blue": (0.12, 0.25, 0.95),
                 "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95)}
ZONE_COLORS = {"green": (0.15, 0.75, 0.2), "purple": (0.6, 0.2, 0.8), "black": (0.05, 0.05, 0.05)}
TABLE_COLOR = (0.55, 0.45, 0.35)
ROBOT_COLOR = (0.3, 0.3, 0.32)
SHAPE_NOUNS = {"box": "cube", "cylinder": "cylinder", "sphere": "ball"}
SIDES = ("left", "right")   # zone 0 is always in the left half (x < 0), zone 1 in the right half

TEMPLATES = {
    "reach": ("touch the {obj}", "reach for the {obj}", "move the gripper to the {obj}"),
    "push": ("push the {obj} to the {zone} zone", "slide the {obj} into the {zone} zone",
             "push the {obj} onto the {zone} target"),
    "pick_place": ("put the {obj} in the {side} zone",
                   "pick up the {obj} and place it in the {side} zone",
                   "carry the {obj} to the {side} zone"),
    "lift": ("pick up the {obj}", "lift the {obj}", "raise the {obj} off the table"),
}
NUM_PARAPHRASES = 3

REACH_TOL = scene.OBJ_HALF + scene.PUSHER_RADIUS + 0.015   # m, pusher centre to object centre
ZONE_TOL = scene.ZONE_RADIUS - 0.01                         # m, object centre to zone centre (xy)
ON_TABLE_TOL = 0.01                                         # m above the resting height
LIFT_HEIGHT = 0.06                                          # m above the resting height
LIFTED_LATCH = 0.03                                         # m: "was lifted" for pick_place


def instruction_table() -> tuple[list[str], np.ndarray]:
  """All instruction strings and the id lookup table.

  Returns:
    instructions: list of every instruction string (``instruction_id`` indexes it).
    ids: int32 [num_tasks, num_object_colors, num_shapes, num_zone_keys, NUM_PARAPHRASES]:
      the instruction id of a (task, object colour, shape, zone key, paraphrase); the zone key is
      the zone colour index for ``push``, the side (0 left, 1 right) for ``pick_place`` and unused
      (all entries equal) for ``reach`` and ``lift``.
  """
  colors, zones = list(OBJECT_COLORS), list(ZONE_COLORS)
  shapes = list(scene.SHAPES)
  nkeys = max(len(zones), len(SIDES))
  ids = np.zeros((len(TASK_NAMES), len(colors), len(shapes), nkeys, NUM_PARAPHRASES), np.int32)
  instructions: list[str] = []
  index: dict[str, int] = {}
  for (t, task), (c, color), (s, shape), k, p in itertools.product(
      enumerate(TASK_NAMES), enumerate(colors), enumerate(shapes), range(nkeys),
      range(NUM_PARAPHRASES)):
    zone = zones[k % len(zones)]
    side = SIDES[k % len(SIDES)]
    text = TEMPLATES[task][p].format(obj=f"{color} {SHAPE_NOUNS[shape]}", zone=zone, side=side)
    if text not in index:
      index[text] = len(instructions)
      instructions.append(text)
    ids[t, c, s, k, p] = index[text]
  return instructions, ids


def near(d):
  """Shaping kernel: 1 at distance 0, decays with d (m)."""
  return 1.0 - jnp.tanh(10.0 * d)


def evaluate(task_id, ee, obj, zone, held, lifted):
  """Success predicate and task reward of one env.

  Args:
    task_id: int32 [] task family.
    ee: float32 [3] pusher centre (m). obj: float32 [3] target object centre (m).
    zone: float32 [3] target zone centre (m). held: bool [] target attached to the gripper.
    lifted: bool [] the target was lifted at least ``LIFTED_LATCH`` this episode.

  Returns:
    (success bool [], task reward float32 [] in [0, 1]).
  """
  height = obj[2] - scene.OBJ_HALF
  d_ee = jnp.linalg.norm(ee - obj)
  d_zone = jnp.linalg.norm(obj[:2] - zone[:2])
  on_table = height < ON_TABLE_TOL
  in_zone = d_zone < ZONE_TOL
  succ = jnp.stack([
      d_ee < REACH_TOL,
      in_zone & on_table,
      in_zone & on_table & lifted & ~held,
      height > LIFT_HEIGHT,
  ])
  rew = jnp.stack([
      near(d_ee),
      0.3 * near(d_ee) + 0.7 * near(d_zone),
      0.2 * near(d_ee) + 0.2 * held + 0.6 * near(d_zone),
      0.3 * near(d_ee) + 0.2 * held + 0.5 * jnp.clip(height / LIFT_HEIGHT, 0.0, 1.0),
  ])
  return succ[task_id], rew[task_id].astype(jnp.float32)
