"""Policy (backbone + action head) config: every head's sizes and sampling options.

The same ConfigDict that ``configs/vla_tiny.py`` embeds as ``config.policy``
(``vla_jax.models.policy.default_policy_config``). Standalone it drives the heads benchmark:

  PYTHONPATH=. python benchmarks/heads.py --config=configs/policy_heads.py:backbone=tiny \
      --config.flow.expert_width=64

Args (``file.py:key=value,...``): ``head`` (flow | diffusion | ar | discrete_diffusion | hybrid; the
benchmark measures every head and reads each one's section), ``backbone`` (tiny | paligemma_3b).
"""

from vla_jax import config_args
from vla_jax.models import policy as policy_lib


def get_config(arg=None):
  a = config_args.parse_arg(arg, head="flow", backbone="tiny")
  return policy_lib.default_policy_config(a.head, backbone=a.backbone)
