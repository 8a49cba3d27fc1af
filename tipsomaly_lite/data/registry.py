"""The benchmarks this package knows: one entry each, read by datasets, preparation, the CLI and the docs.

An entry (:class:`DatasetSource`) holds a benchmark's key, name, where it is published, its licence,
its class folders and the published test counts; :data:`CLASS_WORDS` holds the prompt words that
differ from the generic rule. A new benchmark is one entry here plus its layout reader in
:mod:`tipsomaly_lite.data.prepare` (the medical ones: :mod:`tipsomaly_lite.data.prepare_medical`).
"""

from __future__ import annotations

import dataclasses

__all__ = ["DATASET_KEYS", "DATASETS", "DatasetSource", "CLASS_WORDS", "class_word", "dataset_source",
           "KSDD_CLASS", "KSDD_TEST_SIZE", "KSDD_RANDOM_STATE", "DAGM_PROTOCOLS",
           "MEDICAL_KEYS", "ALL_DATASET_KEYS", "SUITES", "DATASET_ALIASES", "canonical_key"]

#: Prompt words that differ from the generic rule, per dataset key. KSDD's class folder is
#: ``electrical_commutators``; one published variant prompts with ``SDD`` instead.
CLASS_WORDS: dict[str, dict[str, str]] = {
    "sdd": {"electrical_commutators": "electrical commutators"},
}
def class_word(key: str | None, class_name: str) -> str:
    """The word a class is called by in text prompts.

    Underscores and hyphens become spaces; numeric names (``01``, ``Class3``) stay as they are.

    Args:
        key: dataset key (``"mvtec"``, ``"sdd"`` …) or None for the generic rule.
        class_name: folder name of the class, e.g. ``"metal_nut"``.
    Returns:
        The prompt word, e.g. ``"metal nut"``.
    Taught in notebooks/00_setup.ipynb.
    """
    override = CLASS_WORDS.get(key or "", {}).get(class_name)
    if override is not None:
        return override
    return class_name.replace("_", " ").replace("-", " ").strip()


#: Folder (class) name of KolektorSDD after preparation; its prompt word is
#: "electrical commutators" (see :data:`CLASS_WORDS`).
KSDD_CLASS = "electrical_commutators"
#: The 75/25 split of normal KSDD strips used by the zero-shot papers.
KSDD_TEST_SIZE = 0.25
KSDD_RANDOM_STATE = 42
DAGM_PROTOCOLS = ("official", "balanced")


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark comes from and what a correct preparation of it contains.

    Attributes:
        key: short name used for folders and on the command line (``"visa"``).
        name: full name.
        url: direct download address, or None when it must be fetched by hand.
        sha256: expected SHA-256 of the archive, or None when unknown.
        archive_name: file name of the archive under ``<data_root>/downloads/``.
        licence: the data licence (none of it may be committed to this repository).
        classes: class folder names after preparation.
        test_normal: published number of normal test images (None if not published).
        test_anomalous: published number of anomalous test images.
        instructions: how to get the data by hand and which folder to pass to prepare.
        class_counts: published per-class ``(normal, anomalous)`` test counts, if known.
        domain: ``"industrial"`` (the paper's seven) or ``"medical"`` (the authors' seven more).
        levels: which metrics the benchmark defines: ``("image", "pixel")``; ``("image",)`` for a set
            without masks; ``("pixel",)`` for a set whose every test image is anomalous.
    """

    key: str
    name: str
    url: str | None
    sha256: str | None
    archive_name: str | None
    licence: str
    classes: tuple[str, ...]
    test_normal: int | None
    test_anomalous: int | None
    instructions: str
    class_counts: dict[str, tuple[int, int]] | None = None
    domain: str = "industrial"
    levels: tuple[str, ...] = ("image", "pixel")

    def class_word(self, class_name: str) -> str:
        """Prompt word for a class of this dataset (``"metal_nut"`` -> ``"metal nut"``)."""
        return class_word(self.key, class_name)


_MVTEC_COUNTS = {  # published MVTec AD test split: (good, defective) per class
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89),
    "grid": (21, 57), "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93),
    "pill": (26, 141), "screw": (41, 119), "tile": (33, 84), "toothbrush": (12, 30),
    "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}

#: The benchmarks, in the order the paper's tables use.
DATASETS: dict[str, DatasetSource] = {s.key: s for s in [
    DatasetSource(
        "mvtec", "MVTec AD",
        "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
        "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        "mvtec_anomaly_detection.tar.xz", "CC BY-NC-SA 4.0",
        tuple(sorted(_MVTEC_COUNTS)), 467, 1258,
        "About 4.9 GiB from a slow host; an interrupted download resumes when you run the "
        "command again. By hand: get mvtec_anomaly_detection.tar.xz from the MVTec AD page, "
        "put it anywhere and pass --archive PATH. Prepare with --source <data_root>/raw/mvtec "
        "(the folder holding bottle/, cable/, ...).",
        class_counts=_MVTEC_COUNTS),
    DatasetSource(
        "visa", "VisA (Visual Anomaly)",
        "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        "VisA_20220922.tar", "CC BY 4.0",
        ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
         "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"), 962, 1200,
        "About 1.9 GB. Prepare with --source pointing at the folder holding split_csv/1cls.csv "
        "and <class>/Data/Images/{Normal,Anomaly}/. Masks hold class ids (0..9), binarised > 0."),
    DatasetSource(
        "mpdd", "MPDD (Metal Parts Defect Detection)", None, None, None, "CC BY-NC-SA 4.0",
        ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
        176, 282,
        "Manual download: open the MPDD repository on GitHub (stepanje/MPDD), follow its link "
        "to the SharePoint folder and download the dataset. Extract it so that one folder holds "
        "bracket_black/, bracket_brown/, bracket_white/, connector/, metal_plate/, tubes/, each "
        "MVTec-like (train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png). Then run "
        "tipsomaly prepare mpdd --source THAT_FOLDER (or tipsomaly download mpdd --archive "
        "FILE.zip to extract it into <data_root>/raw/mpdd)."),
    DatasetSource(
        "btad", "BTAD (beanTech Anomaly Detection)",
        "https://avires.dimi.uniud.it/papers/btad/btad.zip",
        "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        "btad.zip", "CC BY-SA 4.0", ("01", "02", "03"), 451, 290,
        "Prepare with --source pointing at BTech_Dataset_transformed/ (holding 01/ 02/ 03/, "
        "each with train/ok, test/ok, test/ko and ground_truth/ko/<stem>.bmp|png)."),
    DatasetSource(
        "sdd", "KolektorSDD (v1)",
        "https://data.vicos.si/datasets/KSDD/KolektorSDD.zip",
        "65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
        "KolektorSDD.zip", "CC BY-NC-SA 4.0", (KSDD_CLASS,), 286, 54,
        "Prepare with --source pointing at the folder holding kos01/ ... kos50/ (each with "
        "PartN.jpg and PartN_label.bmp). Each image is cut into three horizontal strips; "
        "normal strips are split 75/25 into train/test with random_state=42."),
    DatasetSource(
        "dagm", "DAGM 2007 (weakly supervised optical inspection)", None, None, None,
        "unclear (research use)", tuple(f"Class{i}" for i in range(1, 11)), 6996, 1054,
        "Manual download: Kaggle dataset mhskjelvareid/dagm-2007-competition-dataset-optical-"
        "inspection (or the Zenodo copy). Extract it so that one folder holds Class1/ ... "
        "Class10/, each with Train/ and Test/ (512x512 grey *.PNG) and {Train,Test}/Label/"
        "Labels.txt plus <stem>_label.PNG masks. Then run tipsomaly prepare dagm --source "
        "THAT_FOLDER [--protocol official|balanced]. The published counts are for the "
        "official Test split."),
    DatasetSource(
        "dtd", "DTD-Synthetic (Aota et al., WACV 2023)", None, None, None, "unclear",
        ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114",
         "Perforated_037", "Stratified_154", "Woven_001", "Woven_068", "Woven_104",
         "Woven_125", "Woven_127"), None, None,
        "Manual download: the authors' Google Drive folder (linked from the DTD-Synthetic "
        "paper, Aota et al., WACV 2023). Extract it so that one folder holds Blotchy_099/ ... "
        "Woven_127/, each MVTec-like with train/good, test/good, test/bad and "
        "ground_truth/bad/<stem>_mask.png. Then run tipsomaly prepare dtd --source "
        "THAT_FOLDER."),
]}


def _medical(key: str, name: str, cls: str, counts: tuple[int, int], levels: tuple[str, ...], licence: str,
             instructions: str) -> DatasetSource:
    return DatasetSource(key, name, None, None, None, licence, (cls,), counts[0], counts[1], instructions,
                         domain="medical", levels=levels)


#: The industrial benchmarks' keys (the paper's Table 1, ``benchmark --suite industrial``), in its order.
DATASET_KEYS = tuple(DATASETS)

#: The medical benchmarks of the authors' code (its ``train_test.sh``), evaluated with prompts trained on
#: MVTec AD. One class each, named as the authors' dataset descriptions name it (the name is the prompt
#: word): ``headct``, ``brain_mri`` ("brain mri"), ``br35h``, ``isic``, ``colon``, ``ClinicDB``, ``tn3k``.
#: HeadCT, BrainMRI and Br35H have no masks (image level only); every test image of ISIC, CVC-ColonDB,
#: CVC-ClinicDB and TN3K is anomalous (pixel level only). None has a stable direct link.
DATASETS.update({s.key: s for s in [
    _medical("headct", "HeadCT (head CT hemorrhage)", "headct", (100, 100), ("image",), "unclear (Kaggle upload)",
             "Manual download: Kaggle dataset felipekitamura/head-ct-hemorrhage. Extract it so that one folder "
             "holds labels.csv (columns id, hemorrhage; 1 = hemorrhage) and the images NNN.png (in head_ct/ or "
             "below). Then run tipsomaly prepare headct --source THAT_FOLDER. Image level only (no masks)."),
    _medical("brainmri", "BrainMRI (brain MRI images for brain tumor detection)", "brain_mri", (98, 155),
             ("image",), "unclear (Kaggle upload)",
             "Manual download: Kaggle dataset navoneel/brain-mri-images-for-brain-tumor-detection. Extract it; "
             "the archive holds brain_tumor_dataset/yes/ (tumour) and brain_tumor_dataset/no/ (and a copy of "
             "both at its top; brain_tumor_dataset/ is used when present). Then run tipsomaly prepare brainmri "
             "--source THAT_FOLDER. Image level only (no masks)."),
    _medical("br35h", "Br35H (brain tumor detection 2020)", "br35h", (1500, 1500), ("image",),
             "unclear (Kaggle upload)",
             "Manual download: Kaggle dataset ahmedhamada0/brain-tumor-detection. Extract it so that one folder "
             "holds yes/ (tumour) and no/; its unlabelled pred/ and any other folder are left out, not labelled. "
             "Then run tipsomaly prepare br35h --source THAT_FOLDER. Image level only (no masks)."),
    _medical("isic", "ISIC 2016 (skin lesion segmentation, part 1 test set)", "isic", (0, 379), ("pixel",),
             "the ISIC archive's terms (per image)",
             "Manual download: the ISIC challenge data page (ISBI 2016, Part 1: lesion segmentation), the test "
             "images ISBI2016_ISIC_Part1_Test_Data.zip and ground truth ISBI2016_ISIC_Part1_Test_GroundTruth.zip. "
             "Extract both into one folder (ISIC_*.jpg and ISIC_*_Segmentation.png). Then run tipsomaly prepare "
             "isic --source THAT_FOLDER. Every test image is anomalous: pixel level only."),
    _medical("colondb", "CVC-ColonDB (PraNet test split)", "colon", (0, 380), ("pixel",), "research use",
             "Manual download: PraNet's TestDataset (linked from the PraNet repository, DengPingFan/PraNet, on "
             "Google Drive). Extract it so that one folder holds TestDataset/CVC-ColonDB/images/ and masks/ "
             "(paired by file name). Then run tipsomaly prepare colondb --source THAT_FOLDER (cvc-colondb works "
             "too). Every test image is anomalous: pixel level only."),
    _medical("clinicdb", "CVC-ClinicDB (PraNet test split)", "ClinicDB", (0, 62), ("pixel",), "research use",
             "Manual download: PraNet's TestDataset (linked from the PraNet repository, DengPingFan/PraNet, on "
             "Google Drive). Extract it so that one folder holds TestDataset/CVC-ClinicDB/images/ and masks/ "
             "(paired by file name). Then run tipsomaly prepare clinicdb --source THAT_FOLDER (cvc-clinicdb "
             "works too). Every test image is anomalous: pixel level only."),
    _medical("tn3k", "TN3K (thyroid nodule ultrasound, test split)", "tn3k", (0, 614), ("pixel",), "research use",
             "Manual download: the TN3K release linked from the TRFE paper's repository (haifangong/TRFE-Net-for-"
             "thyroid-nodule-segmentation). Extract it so that one folder holds test-image/ and test-mask/ "
             "(paired by file name; the masks are JPEGs, binarised > 0). Then run tipsomaly prepare tn3k --source "
             "THAT_FOLDER. Every test image is anomalous: pixel level only."),
]})
#: The medical benchmarks' keys, image-level sets first (the authors' order).
MEDICAL_KEYS = tuple(k for k, s in DATASETS.items() if s.domain == "medical")
#: Every key the registry knows.
ALL_DATASET_KEYS = DATASET_KEYS + MEDICAL_KEYS
#: ``benchmark --suite NAME``: which benchmarks a suite runs.
SUITES = {"industrial": DATASET_KEYS, "medical": MEDICAL_KEYS}
#: Other spellings accepted for a key (the authors' script names).
DATASET_ALIASES = {"cvc-colondb": "colondb", "cvc-clinicdb": "clinicdb"}


def canonical_key(key: str) -> str:
    """The registry key for ``key`` or one of its :data:`DATASET_ALIASES` (``"cvc-colondb"`` -> ``"colondb"``);
    any other string is returned as it is."""
    return DATASET_ALIASES.get(key, key)


def dataset_source(key: str) -> DatasetSource:
    """The registry entry of ``key`` (an alias such as ``cvc-colondb`` names its key's entry).

    Raises:
        ValueError: an unknown key; the message lists the known ones.
    """
    key = canonical_key(key)
    if key not in DATASETS:
        raise ValueError(f"Unknown dataset key {key!r}; expected one of {ALL_DATASET_KEYS}.")
    return DATASETS[key]
