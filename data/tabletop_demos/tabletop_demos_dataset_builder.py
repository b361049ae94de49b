"""TFDS CLI entry of ``tabletop_demos``; the builder itself is :mod:`vla_jax.data.tabletop_demos`.

Build with the project's experiment (recommended; config + progress + timing)::

  python experiments/collect_demos.py --config=configs/collect_demos.py --data_dir=/tmp/tfds

or with the TFDS CLI from this directory (default collection settings)::

  tfds build --data_dir=/tmp/tfds --file_format=tfrecord

The CLI picks the builder class *defined* in this module (TFDS indexes builders by the module
that defines them), hence a subclass rather than a bare re-export.
"""

from vla_jax.data import tabletop_demos


class Builder(tabletop_demos.Builder, skip_registration=True):
  """:class:`vla_jax.data.tabletop_demos.Builder`, unchanged."""
