"""The VLA experiment of configs/vla_tiny.py at PaliGemma-3B shapes, for the FSDP compile check.

Same sections as configs/vla_tiny.py (``policy``, ``train``, ``data``), but the backbone is
SigLIP So400m/14 at 224 px + Gemma 2B (about 2.92B parameters, scan + remat), the text vocabulary
is PaliGemma's 257152 ids, and the mesh is ``data x fsdp`` (default 1 x 8). The flow head's action
expert is pi0's Gemma-300M shape (width 1024, MLP 4096). ``compile_check`` holds the shapes the
tiny experiment reads from its dataset at run time (the tabletop env: 4-D actions and states).

Launch (lowers and compiles ONE train step on 8 simulated CPU devices, nothing allocated; prints
the parameter count, per-device memory from XLA's memory analysis and the compile time):

  python experiments/compile_check.py --config=configs/vla_paligemma_3b.py:head=flow
  python experiments/compile_check.py --config=configs/vla_paligemma_3b.py:head=ar,batch_size=16
  python experiments/compile_check.py --config=configs/vla_paligemma_3b.py:data=2,fsdp=4

Args (``configs/vla_paligemma_3b.py:key=value,...``): head (flow | diffusion | ar | hybrid |
discrete_diffusion), batch_size (global), data / fsdp (mesh axis sizes; data * fsdp devices).

Pretrained weights (any config): ``--config.policy.init_from=<dir or .safetensors of a Hugging
Face PaliGemma, or a big_vision .npz>`` loads the backbone at step 0 (the heads and the action
expert stay random); ``--config.train.trainable='<regex>'`` trains only the matching parameter
paths (``vla_jax.models.policy.FREEZE_BACKBONE`` freezes the loaded backbone). The embedding must
have the checkpoint's rows: set ``policy.vocab_size`` to them (big_vision's PaliGemma has 257152;
a mismatch fails naming ``llm/embedder/embedding`` with both shapes).

Expected (head=flow, batch 8, 8 simulated CPU devices, f32 AdamW; measured on 2 shared cores):
3.238B parameters (backbone 2.923B + head 314.6M), per device state 4.52 GiB, temporaries
3.02 GiB, peak 7.54 GiB; about 1 minute to compile (details in experiments/compile_check.py).
"""

import ml_collections

from vla_jax import config_args
from vla_jax.data import config as data_config_lib
from vla_jax.models import gemma
from vla_jax.models import policy as policy_lib
from vla_jax.training import config as train_config_lib

HEAD_CHOICES = policy_lib.HEADS  # flow | diffusion | ar | discrete_diffusion | hybrid
# PaliGemma's vocabulary: Gemma's 256000 text ids + 1024 location + 128 segmentation tokens
# (PaliGemma report, Beyer et al. 2024, Sec. 3).
PALIGEMMA_VOCAB = 257_152


def get_config(arg=None):
  a = config_args.parse_arg(arg, head="flow", batch_size=8, data=1, fsdp=8)
  if a.head not in HEAD_CHOICES:
    raise ValueError(f"configs/vla_paligemma_3b.py: head='{a.head}' not in {HEAD_CHOICES}")
  c = ml_collections.ConfigDict()

  c.data = data_config_lib.default_data_config()
  c.data.image_size = 224  # PaliGemma-3B's SigLIP input (224 px, 14 px patches: 256 tokens)
  c.data.max_text_len = 48  # the prompt length openpi uses for pi0 on PaliGemma (48 tokens)

  c.policy = policy_lib.default_policy_config(head=a.head, backbone="paligemma_3b")
  expert = gemma.get_config("gemma_300m")  # pi0's action expert (pi0 paper, Sec. 4)
  c.policy.flow.expert_width = expert.width
  c.policy.flow.expert_mlp_dim = expert.mlp_dim
  # Text ids [0, 257152); token heads append their special and action ids after them, as in the
  # tiny config (policy.vocab_size = 0: the LM vocabulary is sized from the text vocabulary).
  c.text_vocab_size = PALIGEMMA_VOCAB

  c.train = train_config_lib.default_train_config()
  c.train.batch_size = a.batch_size
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 100
  c.train.mesh.data = a.data
  c.train.mesh.fsdp = a.fsdp

  # Example-batch shapes for experiments/compile_check.py (training reads them from the data:
  # the tabletop env of configs/vla_tiny.py has 4-D actions and 4-D states).
  c.compile_check = ml_collections.ConfigDict({"action_dim": 4, "state_dim": 4})
  return c
