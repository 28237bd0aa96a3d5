"""Trains TripletCLIP (or a baseline loss) from a config file.

  python launch/main.py --config configs/cc3m.py --workdir gs://bucket/runs/cc3m
  python launch/main.py --config configs/demo.py --workdir runs/demo --config.total_steps=100
  python launch/main.py --config configs/demo.py:clip --workdir runs/demo_clip
  python launch/main.py --help_config [--config configs/cc3m.py]   # every key: value, resume tag, help

Restarting with the same workdir resumes from its latest checkpoint.
"""

import time

STARTED = time.perf_counter()  # the start-up report counts the imports from here

import argparse  # noqa: E402
import sys  # noqa: E402


def parse(argv: list[str]):
  """(config, workdir) from the command line; exit 2 with one line for anything that cannot work."""
  from tripletclip_jax.configlib import ConfigError, parse_command_line

  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", help="where checkpoints, metrics and exports go")
  p.add_argument(
    "--help_config", action="store_true", help="list every config key with its value and help"
  )
  try:
    if "--help_config" in argv and not any(a.startswith("--config") for a in argv):
      from tripletclip_jax.train.config import base_config

      config, rest = base_config(), argv
    else:
      config, rest = parse_command_line(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  args = p.parse_args(rest)
  if args.help_config:
    from tripletclip_jax.train.config import describe

    print(describe(config))
    sys.exit(0)
  if args.workdir is None:
    print("error: pass --config=configs/NAME.py and --workdir=DIR", file=sys.stderr)
    sys.exit(2)
  return config, args.workdir


def main(argv=None):
  config, workdir = parse(sys.argv[1:] if argv is None else list(argv))
  from absl import flags, logging

  flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; this script parses its own arguments
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every file operation at INFO
  from tripletclip_jax.configlib import ConfigError
  from tripletclip_jax.data.pipeline import TooManyBadRecords
  from tripletclip_jax.fileio import StorageError
  from tripletclip_jax.train.loop import Preempted, train_and_evaluate

  try:
    train_and_evaluate(config, workdir, started=STARTED)
  except Preempted as e:
    print(e)
    sys.exit(config.preempted_exit_code)
  except ConfigError as e:  # a config value that cannot work: exit 2, like a bad override
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (ValueError, FileNotFoundError, FloatingPointError, TooManyBadRecords, StorageError) as e:
    # Bad input or a diverged run: one line that says what to do, not a traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
