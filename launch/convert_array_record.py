"""Copies TripletData TFRecord shards into Grain's native ArrayRecord format, record for record.

  python launch/convert_array_record.py --input 'runs/demo/data/seed0/train/*.tfrecord' --output_dir runs/demo/data/seed0/train_ar
  python launch/main.py --config configs/demo.py --workdir runs/ar --config.data.train=runs/demo/data/seed0/train_ar

Each `NAME.tfrecord` becomes `NAME.array_record` (the same tf.train.Example bytes in the same
order), so training from the copy sees the same records in the same order as training from the
shards. ArrayRecord files are read from a local (or mounted) file system. The folder's
manifest.json, written last, lists each file with its record count, size and CRC32: training reads
exactly that set.
"""

import argparse
import sys

from tripletclip_jax.data import array_record, records


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--input", required=True, help="TFRecord shards: a directory, glob or comma-separated list"
  )
  p.add_argument(
    "--output_dir", required=True, help="an empty local folder for the .array_record files"
  )
  p.add_argument(
    "--replace",
    action="store_true",
    help="delete the .array_record files and manifest that --output_dir holds first",
  )
  args = p.parse_args(argv)
  try:
    paths = array_record.convert(
      args.input, args.output_dir, args.replace, log=lambda m: print(m, file=sys.stderr)
    )
  except (FileNotFoundError, ValueError, OSError, records.RecordError) as e:
    sys.exit(f"error: {e}")
  print(f"Wrote {len(paths)} ArrayRecord files to {args.output_dir}")


if __name__ == "__main__":
  main()
