"""A tiny RL run improves a deliberately weakened policy (the real RL step in the one train loop).

The micro flow policy of ``_rl_toy`` in the MJX reach task (16 px, 6 control steps) is weakened
by a velocity bias that moves the pusher back and up, away from the objects (its action is
``x_0 - mean velocity`` after the Euler steps, so a velocity bias of +0.5 in y and -0.5 in z
shifts the action by -0.5 and +0.5). GRPO with the dense reward (reach's ``near(|ee - obj|)``
per step) must raise the return and undo the bias.

Exploration has to be credited: the Flow-Noise likelihood covers the noise added at each Euler
step, not the initial noise x_0 (it has no parameters). With x_0 at std 1 and step noise 0.1, a
random-init policy's action spread is almost all x_0's and the gradient is noise (seen: no
trend in 60 iterations); with x_0 at 0.1 and step noise 0.3 the return rose 3-4x.
"""

import _rl_toy as toy
import jax
import numpy as np

ITERATIONS = 50


def test_grpo_improves_a_weakened_policy(tmp_path):
  env = toy.make_env(done_on_success=True)
  policy = toy.make_policy(env)
  adapter = toy.make_adapter(env, policy)
  params = jax.tree.map(np.asarray, jax.jit(policy.init)(
      jax.random.key(0), toy.Model(policy, adapter).example))
  bias = params["action_out_proj"]["bias"].copy()
  bias[1], bias[2] = 0.5, -0.5  # Back (-y) and up (+z): away from the objects.
  params["action_out_proj"]["bias"] = bias
  rl = toy.rl_config(reward="dense", num_groups=4, group_size=4)
  rl.sample_options.update(noise_std=0.3, noise_temperature=0.1)
  result = toy.run(str(tmp_path / "run"), rl=rl, params=params, env=env,
                   num_steps=ITERATIONS, learning_rate=1e-2, checkpoint_every=ITERATIONS)
  returns = np.array([h["return_mean"] for h in result.history])
  first, last = returns[:10].mean(), returns[-10:].mean()
  assert last > 2 * first, f"mean return {first:.3f} (first 10) -> {last:.3f} (last 10)"
  learned = np.asarray(result.state.params["action_out_proj"]["bias"])
  assert learned[1] < bias[1] and learned[2] > bias[2], learned  # The bias is being undone.

