"""The seven medical benchmarks: each owner's layout, faked in tmp_path, prepared into the common format.

Hostile and faulty copies (a mask with no image, an image with no label, a labels.csv that does not
parse) are one line naming the file, exit 2 at the CLI, and nothing in the output folder.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import native as nf
from tipsomaly_lite.cli import main
from tipsomaly_lite.data import prepare, registry
from tipsomaly_lite.data.datasets import AnomalyDataset, DatasetError, read_meta
from tipsomaly_lite.data.prepare_medical import read_headct_labels

MEDICAL = registry.MEDICAL_KEYS


def _prepare(key, tmp_path, src=None, **kw):
    src = src or nf.FAKE_WRITERS[registry.canonical_key(key)](tmp_path / "raw" / key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fake data never matches published counts
        return prepare.prepare_dataset(key, src, tmp_path / "data", verbose=False, **kw)


def _counts(root):
    return {c: (sum(1 - r["anomaly"] for r in rows), sum(r["anomaly"] for r in rows))
            for c, rows in read_meta(root)["test"].items()}


def _untouched(data_root):
    """Nothing was written: no prepared folder, no hidden temporary one."""
    return not data_root.exists() or list(data_root.iterdir()) == []


def test_registry_knows_the_seven_with_the_authors_class_names_and_no_direct_link():
    assert MEDICAL == ("headct", "brainmri", "br35h", "isic", "colondb", "clinicdb", "tn3k")
    assert registry.DATASET_KEYS == ("mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd")  # the industrial suite
    assert registry.ALL_DATASET_KEYS == registry.DATASET_KEYS + MEDICAL
    assert registry.SUITES == {"industrial": registry.DATASET_KEYS, "medical": MEDICAL}
    words = {k: registry.DATASETS[k].class_word(registry.DATASETS[k].classes[0]) for k in MEDICAL}
    assert words == {"headct": "headct", "brainmri": "brain mri", "br35h": "br35h", "isic": "isic",
                     "colondb": "colon", "clinicdb": "ClinicDB", "tn3k": "tn3k"}
    for key in MEDICAL:
        src = registry.DATASETS[key]
        assert src.url is None and src.domain == "medical" and key in prepare.instructions(key)
        assert src.levels == (("image",) if key in ("headct", "brainmri", "br35h") else ("pixel",))
    assert registry.dataset_source("cvc-colondb").key == "colondb"
    assert registry.dataset_source("cvc-clinicdb").key == "clinicdb"
    # published test counts, as the owners list them
    assert {k: (registry.DATASETS[k].test_normal, registry.DATASETS[k].test_anomalous) for k in MEDICAL} == {
        "headct": (100, 100), "brainmri": (98, 155), "br35h": (1500, 1500), "isic": (0, 379), "colondb": (0, 380),
        "clinicdb": (0, 62), "tn3k": (0, 614)}


@pytest.mark.parametrize("key", MEDICAL)
def test_each_layout_prepares_into_the_common_format(key, tmp_path):
    out = _prepare(key, tmp_path)
    assert out == tmp_path / "data" / key
    (cls,) = registry.DATASETS[key].classes
    assert _counts(out) == {cls: nf.MEDICAL_FAKE_COUNTS[key]}
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["dataset"] == key and protocol["domain"] == "medical"
    assert protocol["levels"] == list(registry.DATASETS[key].levels)
    ds = AnomalyDataset(out, image_size=14, key=key)
    assert ds.pixel_level == ("pixel" in registry.DATASETS[key].levels)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 14, 14)
        if ds.pixel_level:  # every image anomalous, every mask binarised to 0/255 and non-empty
            row = ds.samples[i]
            values = set(np.unique(np.asarray(Image.open(out / row["mask_path"]))).tolist())
            assert item["label"] == 1 and values == {0, 255} and item["mask"].sum() > 0
        else:  # no masks at all
            assert ds.samples[i]["mask_path"] == "" and item["mask"].sum() == 0
    assert [p.name for p in (tmp_path / "data").iterdir()] == [key]  # no temporary folder left


def test_headct_pairs_ids_with_padded_names_and_labels_hemorrhage(tmp_path):
    out = _prepare("headct", tmp_path)
    rows = read_meta(out)["test"]["headct"]
    assert {r["img_path"].split("/")[-1]: r["anomaly"] for r in rows} == {
        "000.png": 0, "001.png": 1, "002.png": 0, "003.png": 0, "004.png": 1}
    assert {r["specie_name"] for r in rows} == {"good", "hemorrhage"}


def test_brainmri_uses_brain_tumor_dataset_not_the_copy_at_the_top(tmp_path):
    out = _prepare("brainmri", tmp_path)
    names = sorted(r["img_path"].split("/")[-1] for r in read_meta(out)["test"]["brain_mri"])
    assert names == ["0 no.JPG", "1 no.JPG", "Y0.jpg", "Y1.jpg", "Y2.jpg"]


def test_br35h_leaves_the_unlabelled_pred_folder_out(tmp_path):
    out = _prepare("br35h", tmp_path)
    paths = [r["img_path"] for r in read_meta(out)["test"]["br35h"]]
    assert not any("pred" in p for p in paths) and len(paths) == 5
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["left_out"] == ["pred/"] and "pred/" in protocol["description"]


@pytest.mark.parametrize("alias,key", [("cvc-colondb", "colondb"), ("cvc-clinicdb", "clinicdb")])
def test_the_authors_spellings_are_accepted(alias, key, tmp_path, capsys):
    src = nf.FAKE_WRITERS[key](tmp_path / "raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["prepare", alias, "--source", str(src), "--data-root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / key / "meta.json").is_file()
    ds = AnomalyDataset(tmp_path / "data" / key, image_size=14, key=alias)
    assert ds.key == key and ds[0]["class_word"] == registry.DATASETS[key].class_word(registry.DATASETS[key].classes[0])


def test_published_counts_are_checked(tmp_path):
    with pytest.warns(UserWarning, match=r"ISIC 2016.*total 0 normal / 3 anomalous, published 0 / 379"):
        prepare.prepare_dataset("isic", nf.fake_isic(tmp_path / "raw"), tmp_path / "data", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare.check_published_counts("headct", {"headct": (100, 100)}) == []
        assert prepare.check_published_counts("tn3k", {"tn3k": (0, 614)}) == []


def test_download_explains_where_each_is_published(tmp_path, capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"[{k}]" in out for k in MEDICAL)
    assert "felipekitamura/head-ct-hemorrhage" in out and "PraNet" in out and "ISBI2016_ISIC_Part1_Test" in out
    assert main(["download", "cvc-colondb", "--data-root", str(tmp_path)]) == 0  # manual: prints how
    assert "TestDataset/CVC-ColonDB" in capsys.readouterr().out
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------ faulty copies: one line, exit 2, nothing written

def _break_isic_mask_without_image(src):
    (src / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000001.jpg").unlink()
    return "ISIC_0000001_Segmentation.png"


def _break_isic_image_without_mask(src):
    (src / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000002_Segmentation.png").unlink()
    return "ISIC_0000002.jpg"


def _break_colondb_mask_without_image(src):
    (src / "TestDataset" / "CVC-ColonDB" / "images" / "3.png").unlink()
    return "masks/3.png"


def _break_tn3k_image_without_mask(src):
    (src / "test-mask" / "0001.jpg").unlink()
    return "test-image/0001.jpg"


def _break_tn3k_mask_of_another_size(src):
    Image.new("L", (7, 9), 255).save(src / "test-mask" / "0002.jpg")
    return "0002.jpg"


def _break_headct_image_without_label(src):
    text = (src / "labels.csv").read_text().replace("3,0\n", "")
    (src / "labels.csv").write_text(text)
    return "003.png"


def _break_headct_label_without_image(src):
    (src / "head_ct" / "head_ct" / "002.png").unlink()
    return "labels.csv"


def _break_headct_csv_not_parsing(src):
    (src / "labels.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n")
    return "labels.csv"


def _break_headct_csv_bad_label(src):
    (src / "labels.csv").write_text("id, hemorrhage\n0,0\n1,yes\n")
    return "labels.csv line 3"


def _break_headct_csv_wrong_columns(src):
    (src / "labels.csv").write_text("name,label\n0,0\n")
    return "labels.csv"


def _break_headct_csv_duplicate_id(src):
    (src / "labels.csv").write_text("id, hemorrhage\n0,0\n1,1\n1,0\n2,0\n3,0\n4,1\n")
    return "labels.csv line 4"


def _break_brainmri_empty_no(src):
    for p in (src / "brain_tumor_dataset" / "no").iterdir():
        p.unlink()
    return "brain_tumor_dataset/no"


def _break_br35h_corrupt_image(src):
    (src / "yes" / "y0.jpg").write_bytes(b"not a jpeg")
    return "y0.jpg"


BREAKS = [("isic", _break_isic_mask_without_image), ("isic", _break_isic_image_without_mask),
          ("colondb", _break_colondb_mask_without_image), ("tn3k", _break_tn3k_image_without_mask),
          ("tn3k", _break_tn3k_mask_of_another_size), ("headct", _break_headct_image_without_label),
          ("headct", _break_headct_label_without_image), ("headct", _break_headct_csv_not_parsing),
          ("headct", _break_headct_csv_bad_label), ("headct", _break_headct_csv_wrong_columns),
          ("headct", _break_headct_csv_duplicate_id), ("brainmri", _break_brainmri_empty_no),
          ("br35h", _break_br35h_corrupt_image)]


@pytest.mark.parametrize("key,breaker", BREAKS, ids=[b.__name__[len("_break_"):] for _, b in BREAKS])
def test_a_faulty_copy_is_one_line_naming_the_file_and_nothing_is_written(key, breaker, tmp_path, capsys):
    src = nf.FAKE_WRITERS[key](tmp_path / "raw")
    named = breaker(src)
    data_root = tmp_path / "data"
    with pytest.raises(DatasetError, match=named.replace(".", r"\.")):
        _prepare(key, tmp_path, src=src)
    assert _untouched(data_root)
    code = main(["prepare", key, "--source", str(src), "--data-root", str(data_root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0] and "Traceback" not in err[0], err
    assert _untouched(data_root)


def test_a_missing_layout_names_what_was_looked_for(tmp_path):
    (tmp_path / "raw" / "empty").mkdir(parents=True)
    for key, what in [("isic", "ISBI2016_ISIC_Part1_Test_Data"), ("clinicdb", "CVC-ClinicDB/images"),
                      ("tn3k", "test-image"), ("headct", "labels.csv"), ("br35h", "yes/ and no/")]:
        with pytest.raises(DatasetError, match=what):
            _prepare(key, tmp_path, src=tmp_path / "raw" / "empty")
    assert _untouched(tmp_path / "data")


def test_headct_labels_reader_accepts_the_published_header_and_blank_lines(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffid, hemorrhage\r\n0, 1\r\n\r\n7,0\r\n", encoding="utf-8")
    assert read_headct_labels(path) == {0: 1, 7: 0}


def test_an_image_level_set_still_refuses_an_unmasked_anomaly_in_a_pixel_level_set(tmp_path):
    out = _prepare("isic", tmp_path)
    meta = read_meta(out)
    meta["test"]["isic"][0]["mask_path"] = ""
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="has no mask_path"):
        AnomalyDataset(out, image_size=14, key="isic")


@pytest.mark.parametrize("levels", [[], ["pixels"], "image", [["image"]], [1]])
def test_a_protocol_json_with_bad_levels_is_refused_naming_it(levels, tmp_path):
    out = _prepare("headct", tmp_path)
    protocol = json.loads((out / "protocol.json").read_text())
    (out / "protocol.json").write_text(json.dumps({**protocol, "levels": levels}))
    with pytest.raises(DatasetError, match=r"protocol\.json: levels is"):
        AnomalyDataset(out, image_size=14, key="headct")
