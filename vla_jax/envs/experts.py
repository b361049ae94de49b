"""Scripted experts: closed-loop, privileged-state waypoint controllers for every task family.

Each control step the expert picks a waypoint from the current state (a small state machine
keyed on geometry, no memory) and outputs a saturated proportional velocity command toward it:
``a_xyz = clip((waypoint - ee) / (max_speed * dt), -1, 1)`` (it would reach the waypoint in one
step if it were within one step's travel), plus the gripper command (-1 open, +1 close). Being
stateless and smooth, the observation -> action mapping is easy to imitate. All branches are
computed and selected with ``jnp.where``, so the expert is jit- and vmap-able.

- reach: move to just above the target's top (touching it).
- lift / pick_place: hover over the target, descend to the grasp height, close (the env attaches
  the object, see ``tabletop.py``), lift; pick_place then carries it above the zone at a height
  that clears the other objects, lowers it and opens, then retreats upward.
- push: hover to the point behind the object (opposite the zone), descend to the object's centre
  height and push toward the point that brings the object's centre onto the zone centre;
  re-approach from above whenever the pusher drifts off the push line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vla_jax.envs import scene, tasks
from vla_jax.envs.tabletop import State, TabletopEnv

GRASP_GAP = 0.005         # m, pusher bottom above the object top when grasping
HOVER_GAP = 0.03          # m, extra height while aligning over an object
CARRY_Z = 0.16            # m, pusher height while carrying (the held object clears the others)
PUSH_HOVER_Z = 0.08       # m, pusher height while moving to the push start (clears objects)
ALIGN_TOL = 0.01          # m, xy alignment before descending onto an object
PUSH_LINE_TOL = 0.015     # m, off-line tolerance while pushing before re-approaching
PUSH_STANDOFF = 0.008     # m, gap behind the object before pushing
PUSH_SPEED = 0.65         # fraction of max speed while pushing


def _unit(v):
  return v / jnp.maximum(jnp.linalg.norm(v), 1e-6)


def expert_action(env: TabletopEnv, state: State, rng: jax.Array,
                  noise_scale: float = 0.0) -> jax.Array:
  """The expert's action for one env state.

  Args:
    env: the env (static). state: one env's State (no batch axis; vmap for batches).
    rng: PRNG key for the action noise.
    noise_scale: std of Gaussian noise added to every action dimension before clipping, so that
      demonstrations are diverse (0 = deterministic expert).

  Returns:
    float32 [4] action in [-1, 1].
  """
  data, info = state.data, state.info
  ee = env.ee_pos(data)
  obj = env.object_pos(data)[info["target"]]
  zone = env.zone_pos(data)[info["zone"]]
  held = info["held"]
  h, r = scene.OBJ_HALF, scene.PUSHER_RADIUS
  grasp_z = obj[2] + h + r + GRASP_GAP
  xy = lambda p: p[:2]
  at = lambda p_xy, z: jnp.concatenate([p_xy, jnp.reshape(z, (1,))])

  # Grasp sequence shared by lift and pick_place (used while the object is not held).
  aligned = jnp.linalg.norm(xy(ee) - xy(obj)) < ALIGN_TOL
  grasp_wp = jnp.where(aligned, at(xy(obj), grasp_z), at(xy(obj), grasp_z + HOVER_GAP))
  grasp_grip = jnp.where(aligned & (jnp.abs(ee[2] - grasp_z) < 0.01), 1.0, -1.0)

  # reach
  reach_wp, reach_grip = at(xy(obj), obj[2] + h + r + GRASP_GAP), -1.0

  # lift
  lift_wp = jnp.where(held, at(xy(ee), CARRY_Z), grasp_wp)
  lift_grip = jnp.where(held, 1.0, grasp_grip)

  # pick_place
  to_zone = xy(zone) - xy(obj)
  over_zone = jnp.linalg.norm(to_zone) < 0.012
  low_enough = obj[2] - h < 0.012
  carry_wp = jnp.where(over_zone, at(xy(ee) + to_zone, ee[2] + (h + 0.008 - obj[2])),
                       at(xy(ee) + to_zone, CARRY_Z))
  placed = ~held & info["lifted"] & (jnp.linalg.norm(to_zone) < tasks.ZONE_TOL - 0.01)
  pp_wp = jnp.where(held, carry_wp, jnp.where(placed, at(xy(ee), CARRY_Z), grasp_wp))
  pp_grip = jnp.where(held, jnp.where(over_zone & low_enough, -1.0, 1.0),
                      jnp.where(placed, -1.0, grasp_grip))

  # push
  d = _unit(to_zone)
  behind = xy(obj) - d * (h + r + PUSH_STANDOFF)
  e = xy(ee) - behind
  along = e @ d
  lateral = jnp.linalg.norm(e - along * d)
  on_line = (lateral < PUSH_LINE_TOL) & (jnp.abs(along) < 0.02) & (ee[2] < h + 0.012)
  near_behind = jnp.linalg.norm(e) < 0.015
  approach_wp = jnp.where(near_behind, at(behind, h), at(behind, PUSH_HOVER_Z))
  done_push = jnp.linalg.norm(to_zone) < 0.01
  push_wp = jnp.where(done_push, ee, approach_wp)
  push_grip = -1.0  # open: a closed gripper over an object would grasp it

  wps = jnp.stack([reach_wp, push_wp, pp_wp, lift_wp])
  grips = jnp.stack([jnp.asarray(g, jnp.float32) for g in
                     (reach_grip, push_grip, pp_grip, lift_grip)])
  task = info["task_id"]
  step_len = env.config.max_speed / env.config.control_hz
  a_xyz = jnp.clip((wps[task] - ee) / step_len, -1.0, 1.0)
  # Pushing: move along the object->zone line at PUSH_SPEED (slowing down over the last 3 cm)
  # while tracking the contact point behind the object, which keeps a round object from
  # slipping sideways off the pusher.
  contact = xy(obj) - d * (h + r)
  speed = PUSH_SPEED * jnp.minimum(1.0, jnp.linalg.norm(to_zone) / 0.03)
  push_xy = jnp.clip(speed * d + (contact - xy(ee)) / step_len, -1.0, 1.0)
  push_a = jnp.concatenate([push_xy, jnp.clip((h - ee[2:]) / step_len, -1.0, 1.0)])
  a_xyz = jnp.where((task == 1) & on_line & ~done_push, push_a, a_xyz)
  a = jnp.concatenate([a_xyz, grips[task][None]]).astype(jnp.float32)
  a = a + noise_scale * jax.random.normal(rng, a.shape)
  return jnp.clip(a, -1.0, 1.0)
