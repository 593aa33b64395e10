"""cs231n/coco_utils.py: the assignment's COCO captioning data helpers (xpnn.coco):
load_coco_data(base_dir=None, max_train=None, pca_features=True) reads
cs231n/datasets/coco_captioning below the notebook's folder (h5py needed for the .h5 files,
imported only when loading), sample_coco_minibatch and decode_captions."""
from ..coco import decode_captions, load_coco_data, sample_coco_minibatch

__all__ = ["load_coco_data", "sample_coco_minibatch", "decode_captions"]
