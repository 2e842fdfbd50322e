"""python -m jax_csfcn.train --config configs/cityscapes_tfds_csfcn.py --config.data.root=~/tensorflow_datasets

CSFCN-100 on Cityscapes read from tensorflow-datasets (builder ``cityscapes``, config
``semantic_segmentation``, prepared in the array_record format: python -m
jax_csfcn.data.tfds_cityscapes --manual_dir DIR_WITH_THE_ZIPS --data_dir ~/tensorflow_datasets).
data.root is the TFDS data_dir.  Same recipe and sizes as configs/cityscapes_csfcn_100.py; only
the source differs (TFDS split names: train, validation, test).
"""

from jax_csfcn.config import get_config as base


def get_config():
    c = base()
    c.workdir = "runs/cityscapes_tfds_csfcn"
    c.data.dataset = "tfds_cityscapes"
    c.data.root = "~/tensorflow_datasets"
    c.data.val_split = "validation"
    return c
