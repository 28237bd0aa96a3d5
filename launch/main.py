"""Trains TripletCLIP (or a baseline loss) from a config file.

  python launch/main.py --config configs/cc3m.py --workdir gs://bucket/runs/cc3m
  python launch/main.py --config configs/demo.py --workdir runs/demo --config.total_steps=100
  python launch/main.py --config configs/demo.py:clip --workdir runs/demo_clip

Restarting with the same workdir resumes from its latest checkpoint.
"""

import difflib
import sys


from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
  "config", None, "Training config file (configs/NAME.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go.")


def _config_keys(argv) -> list[str]:
  """Flattened keys of the requested config, for suggestions after a bad override."""
  spec = _config_spec(argv)
  if not spec:
    return []
  from tripletclip_jax.train.config import flat_keys, load_config_file

  return flat_keys(load_config_file(spec))


def _config_spec(argv) -> str | None:
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
    spec = argv[argv.index("--config") + 1]
  return spec


def parse_flags(argv):
  """absl parsing, with one-line errors (exit 2) for a broken config file, unknown keys and bad values."""
  from tripletclip_jax.train.config import ConfigError, load_config_file

  spec = _config_spec(argv)
  if spec:
    try:  # absl would show a broken config file as a traceback: load it once first to say what is wrong
      load_config_file(spec)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    try:
      keys = _config_keys(argv)
    except Exception:  # noqa: BLE001 - the config file itself is broken: report the original error
      keys = []
    unknown = [k for k in overrides if keys and k not in keys]
    if unknown:
      close = difflib.get_close_matches(unknown[0], keys, n=3, cutoff=0.5)
      msg = f"Unknown config key '{unknown[0]}'" + (
        f"; did you mean {', '.join(close)}?" if close else "; see the config file."
      )
    else:
      msg = str(e).strip().splitlines()[0]
      msg = msg.replace("flag --config.", "bad value for config key ")
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every file operation at INFO
  if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
    print("error: pass --config=configs/NAME.py and --workdir=DIR", file=sys.stderr)
    sys.exit(2)
  from tripletclip_jax.data.pipeline import TooManyBadRecords
  from tripletclip_jax.fileio import StorageError
  from tripletclip_jax.train.config import ConfigError
  from tripletclip_jax.train.loop import Preempted, train_and_evaluate

  try:
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except Preempted as e:
    print(e)
    sys.exit(flags.FLAGS.config.preempted_exit_code)
  except ConfigError as e:  # a config value that cannot work: exit 2, like a bad override
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (ValueError, FileNotFoundError, FloatingPointError, TooManyBadRecords, StorageError) as e:
    # Bad input or a diverged run: one line that says what to do, not a traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
