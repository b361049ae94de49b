"""Action heads behind one policy interface (``vla_jax.models.policy``).

* ``common``: the observation prefix (images of all history frames, text, proprio tokens), the
  suffix masks and positions shared by all heads.
* ``flow``: pi0 flow-matching action expert (shared attention, prefix KV cache, level-2 copies).
* ``diffusion`` + ``ddpm``: Octo readouts + MLP-ResNet denoiser, cosine DDPM, DDPM/DDIM samplers.
* ``autoregressive`` + ``action_tokens``: binning / FAST tokens in the LM vocabulary, KV-cache
  decoding in ``lax.while_loop``, validity of decoded sequences.
* ``discrete_diffusion``: masked binned tokens, cosine unmasking with re-masking.
* ``hybrid``: HybridVLA, the flow and AR binning heads on one backbone with a confidence-gated
  ensemble.
* ``synthetic``: a tiny conditioned dataset for tests and benchmarks.
"""
