"""Data: benchmark datasets, their registry and preparation, toy data, the authors' released prompts.

- :mod:`.datasets`: :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` over a prepared ``meta.json``.
- :mod:`.prepare`: the benchmarks' native layouts -> the common layout (:mod:`.prepare_medical`: the seven
  medical ones).
- :mod:`.toy_data`: a generated toy dataset in the MVTec layout (offline mode).
- :mod:`.registry`: the benchmarks this package knows (keys, class words, published counts).
- :mod:`.released_prompts`: the authors' released prompt files, read without unpickling.
"""

from tipsomaly_lite._api import face

_PUBLIC = {
    "tipsomaly_lite.data.datasets": ("AnomalyDataset", "DatasetError", "build_meta_from_mvtec_layout", "list_images",
                                     "read_meta", "find_prepared"),
    "tipsomaly_lite.data.registry": ("DATASETS", "DATASET_KEYS", "MEDICAL_KEYS", "DatasetSource", "class_word"),
    "tipsomaly_lite.data.prepare": ("download_dataset", "instructions", "prepare_dataset"),
    "tipsomaly_lite.data.toy_data": ("CLASS_DEFECTS", "TOY_CLASSES", "make_toy_dataset", "render_sample"),
    "tipsomaly_lite.data.released_prompts": ("RELEASED_PROMPTS", "fetch_released_prompts", "load_released_prompts"),
}
__getattr__, __dir__, __all__ = face(__name__, _PUBLIC)
