"""The shared config-arg parser and the absl/ml_collections override path."""

import subprocess
import sys
import textwrap

import pytest

from vla_jax import config_args


def test_typed_defaults_and_overrides():
  c = config_args.parse_arg("vocab_size=512,scale=2.5,use_x=false,name=abc", vocab_size=1024,
                            scale=10.0, use_x=True, name="")
  assert c.vocab_size == 512 and isinstance(c.vocab_size, int)
  assert c.scale == 2.5 and c.use_x is False and c.name == "abc"


def test_empty_arg_gives_defaults():
  assert config_args.parse_arg(None, a=1).a == 1
  assert config_args.parse_arg("", a=1).a == 1


def test_unknown_key_lists_close_matches():
  with pytest.raises(KeyError, match="vocab_size"):
    config_args.parse_arg("vocab_sise=3", vocab_size=1024, scale=10.0)


@pytest.mark.parametrize("arg,match", [("scale=abc", "expected a float"),
                                       ("n=1.5", "expected an int"),
                                       ("flag=maybe", "expected a bool"),
                                       ("novalue", "key=value")])
def test_bad_values(arg, match):
  with pytest.raises(ValueError, match=match):
    config_args.parse_arg(arg, scale=1.0, n=1, flag=False, novalue=1)


def test_parsed_config_is_locked():
  c = config_args.parse_arg("", a=1)
  with pytest.raises(AttributeError):
    c.b = 2


def test_absl_override_of_unknown_leaf_fails_with_close_match(tmp_path):
  """`--config.a.b=value` on an unknown leaf fails loudly and names the close match."""
  cfg = tmp_path / "cfg.py"
  cfg.write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({"width": 32})
        return c
  """))
  prog = tmp_path / "prog.py"
  prog.write_text(textwrap.dedent("""
      from absl import app
      from ml_collections import config_flags
      _CONFIG = config_flags.DEFINE_config_file("config")
      def main(_):
        print("WIDTH", _CONFIG.value.model.width)
      app.run(main)
  """))
  ok = subprocess.run([sys.executable, str(prog), f"--config={cfg}", "--config.model.width=4"],
                      check=False, capture_output=True, text=True)
  assert ok.returncode == 0 and "WIDTH 4" in ok.stdout
  bad = subprocess.run([sys.executable, str(prog), f"--config={cfg}", "--config.model.widht=4"],
                       check=False, capture_output=True, text=True)
  assert bad.returncode != 0 and "width" in bad.stderr


def test_name_value_flags_parse_as_literals_and_name_bad_items():
  assert config_args.parse_name_values(["num_steps=5", "point='median'", "t=0.5"],
                                       "--sample_option") == {"num_steps": 5, "point": "median",
                                                              "t": 0.5}
  with pytest.raises(ValueError, match="--sample_option expects name=value, got 'num_steps'"):
    config_args.parse_name_values(["num_steps"], "--sample_option")
  with pytest.raises(ValueError, match="--sample_option point: 'median' is not a Python literal"):
    config_args.parse_name_values(["point=median"], "--sample_option")
