"""The Tipsomaly method, one module a step, in the paper's reading order (see docs/method.md).

- :mod:`.prompts`: fixed prompt vocabularies and text features (Eq. 1).
- :mod:`.scoring`: (normal, anomalous) probabilities for a global token or every patch, by the backbone's
  scoring rule (Eq. 2-3).
- :mod:`.prompt_learner`: learnable pixel prompts (Eq. 4).
- :mod:`.losses`: Focal + Dice on the patch probabilities (Eq. 5-7).
- :mod:`.feature_cache`: frozen vision features computed once, reused by every epoch.
- :mod:`.training`: the training loop of the prompts.
- :mod:`.run_folder`: a training run on disk: checkpoints, history, lock, resume.
- :mod:`.prompt_files`: learned prompts from a run folder, a prompt file or the authors' release.
- :mod:`.fusion`: local-to-global fusion of the image score (Eq. 8).
- :mod:`.maps`: anomaly maps (upsampling and Gaussian smoothing) and patch-text similarity maps.
- :mod:`.detector`: the whole method in one object.
- :mod:`.few_shot`: K normal reference images per class, their patch memory and nearest-neighbour scores.
- :mod:`.mutual`: batch zero-shot, each test image scored against the other test images of its class.
"""

from tipsomaly_lite._api import face

_PUBLIC = {
    "tipsomaly_lite.method.prompts": ("PROMPT_SETS", "DEFAULT_PROMPT_SET", "PromptSet", "TextFeatureBank",
                                      "SIMILARITY_PROMPTS", "ensemble", "get_prompt_set", "text_features"),
    "tipsomaly_lite.method.scoring": ("two_way_probabilities", "global_score", "patch_probabilities",
                                      "patch_evidence"),
    "tipsomaly_lite.method.prompt_learner": ("PromptLearner",),
    "tipsomaly_lite.method.losses": ("focal_loss", "dice_loss", "segmentation_loss", "fused_segmentation_loss"),
    "tipsomaly_lite.method.feature_cache": ("FeatureCache",),
    "tipsomaly_lite.method.training": ("TrainConfig", "TrainResult", "train_prompts", "training_loss"),
    "tipsomaly_lite.method.run_folder": ("latest_checkpoint", "load_trained_prompts"),
    "tipsomaly_lite.method.prompt_files": ("load_prompts",),
    "tipsomaly_lite.method.fusion": ("fuse_scores", "local_score"),
    "tipsomaly_lite.method.maps": ("anomaly_map", "gaussian_blur", "upsample_map", "similarity_maps"),
    "tipsomaly_lite.method.detector": ("MODES", "DEFAULT_SIGMA", "Detector", "Prediction"),
    "tipsomaly_lite.method.few_shot": ("ReferenceMemory", "draw_references", "nearest_distances", "pair_min_distances",
                                       "fuse_patch_scores", "NN_WEIGHT"),
    "tipsomaly_lite.method.mutual": ("mutual_scores", "interval_average", "predict_mutual", "mutual_predictions"),
}
__getattr__, __dir__, __all__ = face(__name__, _PUBLIC)
