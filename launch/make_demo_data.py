"""Writes the demo world: training shards plus held-out SugarCrepe-format benchmarks.

  python launch/make_demo_data.py --output_dir data/demo [--num_train 1000] [--num_eval 2400] \
      [--num_base 4000] [--seed 0]

The world's parameters are WorldConfig's defaults, which are configs/demo.py's (docs/demo_world.md).
"""

import argparse


from tripletclip_jax.demo import scenes, world as demo_world


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--output_dir", required=True)
  p.add_argument("--num_train", type=int, default=1000, help="size of the finite training set")
  p.add_argument("--num_eval", type=int, default=2400, help="examples per SugarCrepe subset")
  p.add_argument("--num_base", type=int, default=0, help="single-object scenes for a CLIP base")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image_size", type=int, default=48)
  p.add_argument("--num_shards", type=int, default=4)
  args = p.parse_args(argv)
  cfg = scenes.WorldConfig(image_size=args.image_size)
  out = demo_world.write_demo_data(
    args.output_dir, args.num_train, args.num_eval, args.seed, cfg, args.num_shards, args.num_base
  )
  n = out["train"] + out["heldout_triplets"] + 14 * out["sugarcrepe_per_subset"]
  print(
    f"Wrote {out['train']} training triplets, {out['heldout_triplets']} held-out triplets and 2 x 7 "
    f"SugarCrepe-format subsets of {out['sugarcrepe_per_subset']} to {args.output_dir} "
    f"in {out['seconds']:.1f}s ({n / out['seconds']:.0f} examples/s)"
  )
  print(
    f"train={out['train']} heldout={out['heldout_triplets']} per_subset={out['sugarcrepe_per_subset']} "
    f"seconds={out['seconds']:.2f} examples_per_s={n / out['seconds']:.0f}"
  )
  print(f"Oracles (% correct, held-out): {out['oracle']['heldout']}")
  print(
    f"Realised training edit mix {out['train_edit_mix']}; rejected edits: {out['rejected']['train']}"
  )


if __name__ == "__main__":
  main()
