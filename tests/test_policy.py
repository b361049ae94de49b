"""Policy config and construction: head choice, sizes from config, vocabulary layout, bad input.

Shape-level only (``jax.eval_shape``): nothing is compiled, so these run in seconds.
"""

import jax
import numpy as np
import pytest

from vla_jax.models import policy as policy_lib
from vla_jax.models.heads import action_tokens, synthetic
from vla_jax.tokenizers import binning, fast

H, D, S = 4, 2, 3


def micro(head):
  c = policy_lib.default_policy_config(head)
  c.backbone.vit.update(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=16,
                        head_dim=32)
  c.backbone.llm.update(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16)
  c.flow.update(expert_width=16, expert_mlp_dim=32)
  return c


def make(head, **kw):
  return policy_lib.make_policy(micro(head), action_dim=D, action_horizon=H, state_dim=S,
                                text_vocab_size=kw.pop("text_vocab_size", 8), **kw)


@pytest.fixture(scope="module")
def batch():
  return synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1)[0]


def test_default_config_flow_expert_is_narrow():
  c = policy_lib.default_policy_config()
  assert c.head == "flow" and c.flow.num_steps == 10
  expert = policy_lib.expert_config(c)
  llm = c.backbone.llm
  assert expert.width == 64 < llm.width
  assert (expert.depth, expert.num_heads, expert.head_dim) == (llm.depth, llm.num_heads,
                                                               llm.head_dim)
  assert c.discrete_diffusion.rounds == 12
  with pytest.raises(KeyError, match="Unknown head 'nope'"):
    policy_lib.default_policy_config("nope")


@pytest.mark.parametrize("head", policy_lib.HEADS)
def test_param_shapes_follow_config(head, batch):
  pol = make(head)
  shapes = jax.eval_shape(pol.init, jax.random.key(0), batch)
  llm = shapes["backbone"]["vlm"]["llm"]
  assert shapes["backbone"]["state_proj"]["kernel"].shape == (S, 32)  # Proprio -> LM width.
  vocab = llm["embedder"]["embedding"].shape[0]
  if head == "flow":
    assert llm["layers_0"]["attn"]["q_einsum_1"]["w"].shape == (2, 16, 16)  # Expert width 16.
    assert shapes["action_out_proj"]["kernel"].shape == (16, D)
  if head in ("flow", "diffusion"):
    assert vocab == 8
  if head == "ar":
    assert vocab == 8 + 2 + 256  # text | BOA EOS | 256 bins
  if head == "discrete_diffusion":
    assert vocab == 8 + 1 + 256  # text | MASK | 256 bins
  loss = jax.eval_shape(pol.loss, shapes, batch, jax.random.key(1))
  assert loss[0].shape == ()
  obs = {k: v for k, v in batch.items() if not k.startswith("action")}
  out = jax.eval_shape(pol.sample, shapes, obs, jax.random.key(2))
  assert out["actions"].shape == (len(batch["actions"]), H, D) and out["valid"].dtype == bool


def test_token_layout():
  layout = action_tokens.TokenLayout(text_vocab_size=10, num_action_ids=5, num_special=2)
  assert layout.vocab_size == 17 and layout.action_start == 12
  assert (layout.special(0), layout.special(1)) == (10, 11)
  np.testing.assert_array_equal(layout.to_lm(np.array([0, 4])), [12, 16])
  np.testing.assert_array_equal(layout.from_lm(np.array([11, 12, 16])), [-1, 0, 4])
  with pytest.raises(ValueError, match="cannot hold"):
    action_tokens.TokenLayout(10, 5, 2, vocab_size=16)


def test_bad_configs_and_tokenizers_fail_clearly():
  c = micro("ar")
  c.ar.tokenizer = "fast"
  with pytest.raises(ValueError, match="needs a fitted FastTokenizer"):
    policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8)
  with pytest.raises(TypeError, match="needs a FastTokenizer"):
    policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8,
                           action_tokenizer=binning.BinningTokenizer.uniform(D))
  tok = fast.FastTokenizer(H + 1, D, vocab_size=64).fit(np.zeros((4, H + 1, D), np.float32))
  with pytest.raises(ValueError, match="tokenizer is for D=2, H=5"):
    policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8,
                           action_tokenizer=tok)
  with pytest.raises(TypeError, match="needs a BinningTokenizer"):
    make("discrete_diffusion", action_tokenizer=tok)
  with pytest.raises(ValueError, match="takes no action_tokenizer"):
    make("flow", action_tokenizer=binning.BinningTokenizer.uniform(D))
  c = micro("flow")
  c.head = "nope"
  with pytest.raises(KeyError, match="unknown head 'nope'"):
    policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8)


def test_bad_batches_name_the_key(batch):
  pol = make("flow")
  shapes = jax.eval_shape(pol.init, jax.random.key(0), batch)
  missing = {k: v for k, v in batch.items() if k != "state"}
  with pytest.raises(KeyError, match=r"missing key\(s\) \['state'\]"):
    jax.eval_shape(pol.loss, shapes, missing, jax.random.key(1))
  wrong = dict(batch, state=batch["state"][..., :2])
  with pytest.raises(ValueError, match=r"'state' must be float32 \[B=4, T=1, S=3\]"):
    jax.eval_shape(pol.loss, shapes, wrong, jax.random.key(1))
  wrong = dict(batch, actions=batch["actions"][:, :3])
  with pytest.raises(ValueError, match=r"'actions' must be float32 \[B=4, H=4, D=2\]"):
    jax.eval_shape(pol.loss, shapes, wrong, jax.random.key(1))
  no_mask = {k: v for k, v in batch.items() if k != "action_mask"}
  with pytest.raises(KeyError, match="action_mask"):
    jax.eval_shape(pol.loss, shapes, no_mask, jax.random.key(1))


def test_discrete_diffusion_schedule_and_remasking():
  from vla_jax.models.heads import discrete_diffusion as dd
  sched = dd.unmask_schedule(70, 12)
  assert sched[-1] == 0 and (np.diff(sched) <= 0).all() and sched[0] == 69  # cos(pi/24) * 70
  # 4 slots, 3 bins. Slot 0 committed & confident, slot 1 committed but now unsure (0.2),
  # slots 2, 3 masked with candidates at 0.9 and 0.1.
  probs = np.array([[[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9], [0.1, 0.5, 0.4]]],
                   np.float32)
  ids = np.array([[0, 0, 0, 0]])
  committed = np.array([[True, True, False, False]])
  cand = np.array([[0, 1, 2, 0]])  # Slot 3's candidate has probability 0.1.
  new_ids, new_committed = dd.commit_round(ids, committed, probs, cand, 2, 0.5)
  # Keep 2: slot 0 (confident) and slot 2 (0.9) beat the unsure slot 1 (0.2): it is re-masked.
  np.testing.assert_array_equal(new_committed, [[True, False, True, False]])
  np.testing.assert_array_equal(np.asarray(new_ids)[new_committed], [0, 2])
  # With a low threshold slot 1 is kept whatever the competition.
  _, kept = dd.commit_round(ids, committed, probs, cand, 2, 0.1)
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  # Keep 3: slot 1 (0.2) outranks slot 3's candidate (0.1) and stays.
  _, three = dd.commit_round(ids, committed, probs, cand, 3, 0.5)
  np.testing.assert_array_equal(three, [[True, True, True, False]])


def test_padded_history_frames_are_ignored(batch):
  """With T = 2 and frame 0 padded (obs_mask False), its image and state do not matter."""
  hist = synthetic.multimodal_batch(horizon=H, action_dim=D, state_dim=S, modes=1, history=2)[0]
  hist["obs_mask"][:, 0] = False
  pol = make("flow")
  params = jax.jit(pol.init)(jax.random.key(0), hist)
  loss = jax.jit(lambda b: pol.loss(params, b, jax.random.key(1))[0])
  changed = dict(hist, state=hist["state"].copy(), **{"image/base": hist["image/base"].copy()})
  changed["state"][:, 0] += 5.0
  changed["image/base"][:, 0] = 17
  np.testing.assert_allclose(loss(changed), loss(hist), rtol=1e-6)
  visible = dict(changed, obs_mask=np.ones_like(hist["obs_mask"]))
  assert abs(float(loss(visible)) - float(loss(hist))) > 1e-4  # The frames do matter if valid.


@pytest.mark.parametrize("head", policy_lib.HEADS)
def test_scanned_backbone_traces(head, batch):
  """Big configs stack layers with nn.scan (params [depth, ...]); every head traces with it."""
  c = micro(head)
  c.backbone.scan = True
  pol = policy_lib.make_policy(c, action_dim=D, action_horizon=H, state_dim=S, text_vocab_size=8)
  shapes = jax.eval_shape(pol.init, jax.random.key(0), batch)
  assert shapes["backbone"]["vlm"]["llm"]["layers"]["attn"]["q_einsum"]["w"].shape[0] == 2
  jax.eval_shape(pol.loss, shapes, batch, jax.random.key(1))
  obs = {k: v for k, v in batch.items() if not k.startswith("action")}
  out = jax.eval_shape(pol.sample, shapes, obs, jax.random.key(2))
  assert out["actions"].shape == (len(batch["actions"]), H, D)
