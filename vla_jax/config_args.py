"""The one parser for config-file arguments: ``configs/x.py:key=value,key=value``.

Every ``configs/*.py`` file exposes ``get_config(arg)``. ``arg`` is the text after the colon in
``--config=configs/x.py:arg``; :func:`parse_arg` turns it into a locked ``ConfigDict`` whose keys and
types are fixed by the defaults the config file declares. Values are typed from the default
(bool, int, float, str; a default of ``None`` keeps the text). An unknown key fails with the close
matches, so a typo never silently falls back to a default.

Leaves of the returned config itself are overridden with ``--config.a.b=value`` (ml_collections
does that and also reports close matches for unknown keys).
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

import ml_collections

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _convert(key: str, text: str, default: Any) -> Any:
  """Converts ``text`` to the type of ``default``; raises ValueError naming ``key``."""
  if isinstance(default, bool):  # Before int: bool is a subclass of int.
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"config arg '{key}': expected a bool (true/false), got '{text}'")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"config arg '{key}': expected an int, got '{text}'") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"config arg '{key}': expected a float, got '{text}'") from None
  return text


def unknown_key_error(key: str, known: list[str], where: str = "config arg") -> KeyError:
  """A KeyError for ``key`` that lists the close matches among ``known``."""
  close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
  hint = f" Did you mean: {', '.join(close)}?" if close else ""
  return KeyError(f"Unknown {where} '{key}'.{hint} Known keys: {', '.join(sorted(known))}.")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"key=value,key=value"`` into a locked ConfigDict typed by ``defaults``.

  Args:
    arg: the text after ``file.py:`` (``None`` or ``""`` means all defaults).
    **defaults: every accepted key with its default value; the default's type is the key's type.

  Returns:
    A locked ``ConfigDict`` with one entry per default.

  Raises:
    KeyError: a key not in ``defaults`` (the message lists close matches).
    ValueError: a malformed ``key=value`` item or a value of the wrong type.
  """
  values = dict(defaults)
  if arg:
    for item in arg.split(","):
      item = item.strip()
      if not item:
        continue
      if "=" not in item:
        raise ValueError(f"config arg item '{item}' is not of the form key=value (in '{arg}')")
      key, text = item.split("=", 1)
      key = key.strip()
      if key not in defaults:
        raise unknown_key_error(key, list(defaults))
      values[key] = _convert(key, text, defaults[key])
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def parse_name_values(items: list[str], flag: str) -> dict[str, Any]:
  """``["a=1", "b='x'"]`` -> ``{"a": 1, "b": "x"}``, each value a Python literal (the
  ``--sample_option=name=value`` flags of experiments/eval.py and steer.py); raises ValueError
  naming ``flag`` and the bad item."""
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"{flag} expects name=value, got '{item}'")
    try:
      out[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{flag} {name}: '{value}' is not a Python literal") from e
  return out
