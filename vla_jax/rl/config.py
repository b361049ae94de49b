"""The ``rl`` section of an RL fine-tuning config (:func:`default_rl_config`)."""

from __future__ import annotations

import ml_collections

ALGORITHMS = ("grpo", "ppo", "exit")
LIKELIHOODS = ("exact", "fpo")
REWARDS = ("success", "dense")


def default_rl_config() -> ml_collections.ConfigDict:
  """Every key ``vla_jax.rl`` reads, with the published values they start from.

  Keys:
    algorithm: "grpo" (group-relative advantages, no critic; Shao et al. 2024 as used by
      SimpleVLA-RL, Li et al. 2025), "ppo" (GAE with a critic on the backbone's pooled
      features, ``vla_jax.rl.value``; RLinf and piRL fine-tune with PPO; needs a decision at
      every control step, ``eval.replan_every = 1``), or
      "exit": expert iteration (``vla_jax.rl.expert_iteration``): the policy imitates its own
      episodes steered by the MJX oracle's best-of-N search (ExIt, Anthony et al. 2017; success
      filtering as ReST/RAFT); no likelihood, so any head; ``group_size`` may be 1.
    exit_candidates: N chunks sampled per decision by the search (the oracle at N = 8 raised
      the main job's test success from 83.5% to 92.0%, docs/experiments/steering.md).
    exit_lookahead: control steps each candidate is simulated in a copy of the true state
      (1 ... H; H = 4 is what the steering results used).
    exit_success_only: imitate only the steps of steered episodes that end in success.
    exit_demo_weight: weight of the imitation loss on demonstrations of the starting run's
      dataset mixed into every expert-iteration update (0 = none; the imitation of its own
      samples alone drifts, docs/experiments/rl_tiny.md); one demonstration per env each
      iteration.
    exit_sample_options: the head's sampling options for the search's candidates, on top of
      evaluation's (e.g. flow ``num_steps``).
    gamma, gae_lambda: PPO's discount and GAE lambda (0.99, 0.95: the common PPO defaults).
    value_coef: weight of the critic's squared error in the loss. value_hidden: its MLP width.
    likelihood: "exact": the head's stochastic sampler and its exact log-likelihood
      (``policy.sample_stochastic`` / ``policy.log_prob``: Flow-Noise for the flow head, masked
      token log-probs for token heads); "fpo": Flow Policy Optimization (flow head only): the
      ratio is ``exp(L_old - L_new)`` of per-sample flow-matching losses at ``fpo_samples``
      fixed (noise, time) pairs per decision (McAllister et al. 2025).
    group_size: G rollouts from one start state (SimpleVLA-RL: 8).
    num_groups: start states per iteration; ``train.batch_size = num_groups * group_size`` envs.
    reward: "success" (binary, at the episode's end; SimpleVLA-RL's outcome reward) or "dense"
      (the env's shaped reward summed over the episode).
    dynamic_sampling: drop groups whose G returns are all equal (all success or all failure:
      zero advantage, no signal; DAPO, Yu et al. 2025, and SimpleVLA-RL).
    clip_low, clip_high: asymmetric ratio clipping ``[1 - clip_low, 1 + clip_high]`` (DAPO's
      "clip-higher", 0.2 / 0.28, also SimpleVLA-RL's).
    kl_coef: weight of a k3 estimate of KL(policy || reference) on the sampled decisions, the
      reference being the starting checkpoint (0 = off: DAPO and SimpleVLA-RL drop it).
    updates_per_iteration: optimizer steps on each batch of rollouts (each on a fresh random
      subset of decisions; the ratio is against the rollout policy).
    decisions_per_update: decisions (env step, env) drawn per optimizer step among those of
      kept groups while the episode ran (the loss is their mean; all of them would be
      ``num_envs x horizon`` backbone passes with gradients).
    sample_options: per head (``sample_options.<head>``, the starting checkpoint's head picks
      one), its stochastic sampler's options: flow ``noise_std`` (Euler-step noise, normalized
      action units), ``noise_temperature`` (x_0's std) and ``scored_actions``; diffusion
      ``min_std`` (DPPO's floor, 0.1) and ``last_k``; token heads (ar, discrete_diffusion)
      ``temperature`` (1 = the trained distribution; SimpleVLA-RL samples at 1.6), AR binning
      also ``window`` (> 0: sample only within that many bins of each step's median bin,
      exploration local in action space; 0 = the whole distribution). FPO samples
      with the head's own ``sample()`` defaults and ignores them. The Flow-Noise likelihood credits only the
      per-step noise, not x_0 (it has no parameters), so the step noise must account for a
      real share of the action spread (micro reach, colabs/rl_finetune.ipynb: no learning with
      x_0 at 1 and steps at 0.1, a 3-4x return gain with 0.1 and 0.3).
    learn_noise_std: flow head, exact likelihood: the Euler-step noise std is a parameter, one
      per action dimension, starting at ``sample_options.flow.noise_std`` and trained by the
      policy loss inside ``noise_std_bounds`` (ReinFlow's bounded learnable noise, Zhang et al.
      2025, in its state-independent form; ``vla_jax.rl.noise_std``). False: the fixed std.
    noise_std_bounds: (min, max) of the learned std, normalized action units.
    noise_std_lr_scale: the learned std's learning rate relative to the policy's (100: with
      Adam at 1e-4 its squashed logit then moves by up to ~0.01 per update).
    fpo_samples: (noise, time) pairs per decision for ``likelihood="fpo"``.
    replan_every: control steps between decisions during RL (0 = the evaluation's
      ``eval.replan_every``). With receding-horizon evaluation (1), each decision's
      likelihood still scores the whole chunk of H actions though only the first one runs:
      the others' terms add variance and no signal. Executing the whole chunk (H) makes every
      scored action matter and samples H times fewer chunks (SimpleVLA-RL and piRL also
      execute chunks); GRPO only (PPO's GAE needs a decision at every step).
    done_on_success: episodes stop at success during RL (later decisions would only add noise
      to the gradient); evaluation keeps the env's own setting.
    tasks: task families ("," or "+"-separated) to train on ("" = every task of the env).
    eval_every: iterations between periodic evaluations on the dev block (0 = off).
    eval_episodes_per_task: episodes per task of those periodic evaluations.
  """
  return ml_collections.ConfigDict({
      "algorithm": "grpo",
      "likelihood": "exact",
      "group_size": 8,
      "num_groups": 8,
      "reward": "success",
      "dynamic_sampling": True,
      "clip_low": 0.2,
      "clip_high": 0.28,
      "kl_coef": 0.0,
      "exit_candidates": 8,
      "exit_lookahead": 4,
      "exit_success_only": True,
      "exit_demo_weight": 0.0,
      "exit_sample_options": ml_collections.ConfigDict(),
      "gamma": 0.99,
      "gae_lambda": 0.95,
      "value_coef": 0.5,
      "value_hidden": 256,
      "updates_per_iteration": 2,
      "decisions_per_update": 256,
      "sample_options": ml_collections.ConfigDict({
          "flow": {"noise_std": 0.1},
          "diffusion": {"min_std": 0.1},
          "ar": {"temperature": 1.0, "window": 0},
          "discrete_diffusion": {"temperature": 1.0},
      }),
      "learn_noise_std": False,
      "noise_std_bounds": (0.02, 0.5),
      "noise_std_lr_scale": 100.0,
      "fpo_samples": 4,
      "replan_every": 0,
      "done_on_success": True,
      "tasks": "",
      "eval_every": 20,
      "eval_episodes_per_task": 10,
  })


def check_rl_config(rl: ml_collections.ConfigDict, head: str) -> None:
  """Raises ValueError naming the key when the ``rl`` section is inconsistent."""
  if rl.algorithm not in ALGORITHMS:
    raise ValueError(f"rl.algorithm='{rl.algorithm}' not in {ALGORITHMS}")
  if rl.likelihood not in LIKELIHOODS:
    raise ValueError(f"rl.likelihood='{rl.likelihood}' not in {LIKELIHOODS}")
  if rl.algorithm == "exit":  # Imitates its searched episodes: no likelihood, any head.
    pass
  elif rl.likelihood == "fpo" and head != "flow":
    raise ValueError(f"rl.likelihood='fpo' needs the flow head; this checkpoint's head is "
                     f"'{head}' (use rl.likelihood='exact')")
  elif rl.likelihood == "exact" and head not in rl.sample_options:
    raise ValueError(f"rl.sample_options has no entry for the checkpoint's '{head}' head (it "
                     f"has {sorted(rl.sample_options)}); add rl.sample_options.{head}")
  if rl.get("learn_noise_std", False) and (head != "flow" or rl.likelihood != "exact"):
    raise ValueError(f"rl.learn_noise_std needs the flow head with rl.likelihood='exact' (the "
                     f"Flow-Noise chain); got head '{head}', likelihood '{rl.likelihood}'")
  if rl.reward not in REWARDS:
    raise ValueError(f"rl.reward='{rl.reward}' not in {REWARDS}")
  for key in ("group_size", "num_groups", "updates_per_iteration", "decisions_per_update",
              "fpo_samples"):
    if rl[key] < 1:
      raise ValueError(f"rl.{key}={rl[key]} must be >= 1")
  if rl.get("replan_every", 0) < 0:
    raise ValueError(f"rl.replan_every={rl.replan_every} must be >= 0 (0 = the evaluation's)")
  if rl.algorithm == "exit" and (rl.exit_candidates < 1 or rl.exit_lookahead < 1):
    raise ValueError(f"rl.exit_candidates={rl.exit_candidates} and rl.exit_lookahead="
                     f"{rl.exit_lookahead} must be >= 1")
  if rl.algorithm == "grpo" and rl.group_size < 2:
    raise ValueError(f"rl.group_size={rl.group_size}: group-relative advantages need >= 2")
  if not (0 <= rl.clip_low < 1 and rl.clip_high >= 0):
    raise ValueError(f"rl.clip_low={rl.clip_low} must be in [0, 1), rl.clip_high="
                     f"{rl.clip_high} >= 0")
