"""A tensorflow-datasets builder for TripletData, from our shards or webdataset tars.

    from tripletclip_jax.data import tfds_builder  # registers "triplet_data"
    import tensorflow_datasets as tfds
    b = tfds.builder("triplet_data", data_dir=DIR)
    b.download_and_prepare(file_format="array_record",
                           download_config=tfds.download.DownloadConfig(manual_dir=SHARDS_OR_TARS_DIR))
    source = tfds.data_source("triplet_data", split="train", data_dir=DIR) ds =
    pipeline.make_dataset(sources.TFDSSource(source, "triplet_data"), batch_size=...,
    image_size=...)

Images stay encoded bytes, so the Grain pipeline decodes and augments them
exactly as it does records from our shards.
"""

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from tripletclip_jax.data import records, wds


class TripletData(tfds.core.GeneratorBasedBuilder):
  """TripletCLIP data: image, caption, hard negative image, hard negative caption."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put TripletData shards (*.tfrecord, from launch/make_negatives.py or "
    "launch/convert_wds.py) or webdataset tars (*.tar) in the manual_dir."
  )

  def _info(self):
    # encoded JPEG/PNG, decoded by the Grain pipeline
    raw = tfds.features.Tensor(shape=(), dtype=np.object_)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "key": tfds.features.Text(),
          "image": raw,
          "neg_image": raw,
          "caption": tfds.features.Text(),
          "neg_caption": tfds.features.Text(),
          "neg_type": tfds.features.Text(),
        }
      )
    )

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    shards = sorted(glob.glob(os.path.join(root, "*.tfrecord")))
    tars = sorted(glob.glob(os.path.join(root, "*.tar")))
    if not shards and not tars:
      raise FileNotFoundError(f"No *.tfrecord or *.tar files in manual_dir {root}.")
    return {"train": self._generate_examples(shards, tars)}

  def _generate_examples(self, shards, tars):
    for path in shards:
      for payload in records.iter_records(path):
        yield _row(records.decode_example(payload), os.path.basename(path))
    for path in tars:
      for key, sample in wds.iter_samples(path):
        yield _row(
          wds.sample_to_features(key, sample, os.path.basename(path)), os.path.basename(path)
        )


def _row(f: dict, origin: str):
  """(unique key, example) from record features; text may arrive as bytes or str."""
  text = lambda k: f[k].decode("utf-8") if isinstance(f.get(k), bytes) else str(f.get(k, ""))
  return f"{origin}/{text('key')}", {
    "key": text("key"),
    "image": f["image"],
    "neg_image": f["neg_image"],
    "caption": text("caption"),
    "neg_caption": text("neg_caption"),
    "neg_type": text("neg_type"),
  }
