"""Generated attacks: hostile files and flag values, built by Hypothesis, against the rules of the gates.

Not a list of known cases: each test draws many hostile inputs of one kind and asserts the rule
every command relies on:

- the outcome is a correct result or ONE line naming the file or flag (exit 2 at the CLI), never
  another exception or a traceback;
- nothing outside the output is written or deleted, and a user's files are never replaced;
- nothing waits: each attack runs under an alarm of a few seconds.

The draws are seeded (:data:`SEED`, printed in every failure; ``TIPSOMALY_ATTACK_SEED`` picks another)
and bounded (``max_examples``), so the file stays within seconds in ``make test``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from tipsomaly_lite.cli import main
from tipsomaly_lite.data.datasets import DatasetError, load_image, load_mask, read_meta
from tipsomaly_lite.io.archives import ArchiveError, extract_archive
from tipsomaly_lite.io.guard import MARKER, OutputError, check_replaceable, claim_folder
from tipsomaly_lite.io.images import to_float_rgb
from tipsomaly_lite.io.jsonfile import JSONFileError, read_json
from tipsomaly_lite.method.prompts import get_prompt_set

SEED = int(os.environ.get("TIPSOMALY_ATTACK_SEED", "20261207"))
#: Seconds any one attack may take before it counts as a hang.
ALARM_S = 20
ATTACKS = settings(max_examples=25, deadline=None, database=None, derandomize=False,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore")


@contextlib.contextmanager
def no_hang(what: str):
    """Fail instead of waiting when the block runs longer than :data:`ALARM_S` (a FIFO, a lock, a peer)."""
    def fire(*_):
        raise TimeoutError(f"{what} ran over {ALARM_S} s (seed {SEED})")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(ALARM_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)} (seed {SEED}): {text[-800:]}"
    assert "Traceback" not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ hostile JSON (any origin)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=30)
hostile_json_bytes = st.one_of(
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(40, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.sampled_from([b'{"test": NaN}', b'{"a": Infinity}', b"\xff\xfe{}", b'{"test": {"a": [1]}}',
                     b'{"test": {"a": [{"img_path": "../../etc/passwd", "mask_path": "", "cls_name": "a",'
                     b' "specie_name": "good", "anomaly": 0}]}}']),
)


@seed(SEED)
@ATTACKS
@given(payload=hostile_json_bytes, reader=st.sampled_from(["gate", "meta", "prompt set"]))
def test_any_json_file_is_a_result_or_one_error_naming_it(tmp_path_factory, payload, reader):
    folder = tmp_path_factory.mktemp("json")
    path = folder / ("meta.json" if reader == "meta" else "custom_prompts.json")
    path.write_bytes(payload)
    with no_hang(f"reading {reader}"):
        try:
            if reader == "gate":
                read_json(path)
            elif reader == "meta":
                read_meta(folder)
            else:
                get_prompt_set(str(path))
        except (JSONFileError, DatasetError, ValueError, KeyError) as err:
            message = str(err.args[0] if isinstance(err, KeyError) else err)
            assert str(path) in message or path.name in message or "prompt set" in message, (SEED, message)
            assert "\n" not in message.strip()


# ------------------------------------------------------------------ hostile images and masks

@st.composite
def hostile_image_files(draw):
    kind = draw(st.sampled_from(["bytes", "png-header", "float-tiff", "mode", "tiny"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "png-header":  # a valid signature and IHDR claiming a huge or odd size, then garbage
        w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0) \
            + draw(st.binary(max_size=64))
    if kind == "float-tiff":  # float pixels: NaN, inf or out of range must be refused by name
        values = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan"), float("inf")]),
                               min_size=16, max_size=16))
        buf = io.BytesIO()
        Image.fromarray(np.array(values, dtype=np.float32).reshape(4, 4), mode="F").save(buf, format="TIFF")
        return buf.getvalue()
    if kind == "tiny":
        buf = io.BytesIO()
        Image.new("L", (1, draw(st.integers(1, 3)))).save(buf, format="PNG")
        return buf.getvalue()
    mode = draw(st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr"]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    img = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("F", "I", "I;16", "CMYK", "YCbCr", "LA") else "PNG")
    return buf.getvalue()


@seed(SEED)
@ATTACKS
@given(payload=hostile_image_files(), reader=st.sampled_from(["to_float_rgb", "load_image", "load_mask"]))
def test_any_image_or_mask_file_is_finite_binary_or_one_error_naming_it(tmp_path_factory, payload, reader):
    path = tmp_path_factory.mktemp("img") / "x.tif"
    path.write_bytes(payload)
    with no_hang(f"{reader} on a hostile file"):
        try:
            if reader == "to_float_rgb":
                out = to_float_rgb(path)
            elif reader == "load_image":
                out = load_image(path, size=14)
            else:
                out = load_mask(path, size=14)
        except (ValueError, DatasetError) as err:
            assert str(path) in str(err), (SEED, str(err))
            return
    assert bool(out.isfinite().all()), SEED
    if reader == "load_mask":  # one binary channel, whatever the mode
        assert out.shape == (1, 14, 14) and set(out.unique().tolist()) <= {0.0, 1.0}, SEED
    else:
        assert out.shape[0] == 3 and float(out.min()) >= 0.0 and float(out.max()) <= 1.0, SEED


# ------------------------------------------------------------------ hostile medical label files

csv_cell = st.one_of(st.sampled_from(["0", "1", "2", "-1", "", " 3", "1e3", "nan", "007", "99999999999", "yes", '"',
                                      "0,1", "\x00"]), st.text(max_size=6))
hostile_labels_csv = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(csv_cell, csv_cell), max_size=8).map(
        lambda rows: ("id, hemorrhage\n" + "".join(f"{a},{b}\n" for a, b in rows)).encode("utf-8", "replace")),
    st.sampled_from([b"", b"id, hemorrhage\n", b"\xef\xbb\xbfid,hemorrhage\r\n0,1\r\n", b"id\n0\n",
                     b"id, hemorrhage\n0,0,0\n", b'id, hemorrhage\n"0,1\n']),
)


@seed(SEED)
@ATTACKS
@given(payload=hostile_labels_csv)
def test_any_headct_labels_csv_prepares_or_is_one_error_naming_it_with_nothing_written(tmp_path_factory, payload,
                                                                                       capsys):
    from helpers import native as nf

    root = tmp_path_factory.mktemp("headct")
    src = nf.fake_headct(root / "raw")
    (src / "labels.csv").write_bytes(payload)
    data = root / "data"
    with no_hang("prepare headct with a hostile labels.csv"):
        code = main(["prepare", "headct", "--source", str(src), "--data-root", str(data)])
    if code == 0:  # only a file that labels the five images 0 or 1, once each, prepares
        meta = read_meta(data / "headct")
        assert len(meta["test"]["headct"]) == 5, SEED
        return
    assert code == 2, SEED
    line = _one_line(capsys.readouterr().err)
    assert "labels.csv" in line, (SEED, line)
    assert not data.exists() or list(data.iterdir()) == [], SEED  # nothing half-written


# ------------------------------------------------------------------ hostile flag values

FLAGS = ["--batch-size", "--image-size", "--sigma", "--lr", "--epochs", "--seed", "--n-tokens"]
flag_text = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                      st.text(max_size=12), st.sampled_from(["nan", "inf", "-0", "1e9", "0x10", "", " 8 "]))


@seed(SEED)
@ATTACKS
@given(flag=st.sampled_from(FLAGS), value=flag_text)
def test_any_numeric_flag_value_is_accepted_in_range_or_refused_in_one_line(flag, value, capsys):
    from tipsomaly_lite.cli import build_parser

    argv = ["train", "--dataset", "toy", "--out", "unused", flag, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2, (SEED, flag, value)
        line = _one_line(capsys.readouterr().err)
        assert flag in line, (SEED, line)
        return
    parsed = getattr(args, flag.lstrip("-").replace("-", "_"))
    bounds = {"--batch-size": (1, 1024), "--image-size": (14, 2048), "--sigma": (0, 256), "--lr": (0, 10),
              "--epochs": (1, 10_000), "--seed": (0, 2**32 - 1), "--n-tokens": (1, 64)}[flag]
    assert bounds[0] <= parsed <= bounds[1] and parsed == parsed, (SEED, flag, value, parsed)


# ------------------------------------------------------------------ hostile output folders

user_trees = st.dictionaries(st.sampled_from(["notes.txt", "meta.json", "a/b.png", "scores.csv", MARKER,
                                              "results.md", "toy_config.json", ".hidden"]),
                             st.binary(min_size=1, max_size=40), min_size=1, max_size=4)


@seed(SEED)
@ATTACKS
@given(tree=user_trees, command=st.sampled_from(["toy-data", "toy-data --overwrite", "claim", "replace"]))
@example(tree={MARKER: b"not ours"}, command="claim")  # a file that only looks like our marker
@example(tree={MARKER: b"not ours"}, command="toy-data --overwrite")
def test_a_folder_of_user_files_is_never_replaced(tmp_path_factory, tree, command, capsys):
    root = tmp_path_factory.mktemp("out")
    out = root / "out"
    for name, data in tree.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = _snapshot(root)
    with no_hang(command):
        if command.startswith("toy-data"):
            code = main(["toy-data", "--out", str(out), "--classes", "pill", "--image-size", "32", "--n-train", "0",
                         "--n-normal", "1", "--n-anomalous", "1", *command.split()[1:]])
            assert code == 2, (SEED, tree)
            _one_line(capsys.readouterr().err)
        else:
            with pytest.raises(OutputError):
                (claim_folder(out, command="evaluate") if command == "claim" else check_replaceable(out))
    after = _snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before, SEED  # not one user byte changed
    assert set(after) == set(before), SEED  # and nothing added beside them


@seed(SEED)
@ATTACKS
@given(relation=st.sampled_from(["same", "inside", "holding"]), link=st.booleans())
def test_an_output_overlapping_its_input_is_refused_before_anything_is_written(tmp_path_factory, relation, link,
                                                                              capsys):
    root = tmp_path_factory.mktemp("overlap")
    images = root / "imgs"
    images.mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(images / "x.png")
    out = {"same": images, "inside": images / "res", "holding": root}[relation]
    if link:  # the same place reached through a link
        os.symlink(out if out.exists() else images, root / "alias")
        out = root / "alias" if relation != "inside" else root / "alias" / "res"
    before = _snapshot(root)
    with no_hang("predict onto its input"):
        code = main(["predict", "--images", str(images), "--class-name", "x", "--out", str(out), "--image-size", "28",
                     "--quiet"])
    assert code == 2, SEED
    assert "--images" in _one_line(capsys.readouterr().err)
    assert _snapshot(root) == before, SEED


# ------------------------------------------------------------------ hostile archives

member_names = st.one_of(st.sampled_from(["../evil", "/abs/evil", "a/../../evil", "ok/../../x", "a\\..\\evil",
                                          "ok.txt", "dir/ok.txt", "", ".", "a//b"]),
                         st.text(alphabet="ab./\\", min_size=1, max_size=10))


@seed(SEED)
@ATTACKS
@given(names=st.lists(member_names, min_size=1, max_size=4))
def test_an_archive_extracts_inside_its_target_or_is_one_error(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("zip")
    archive = root / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, name in enumerate(names):
            with contextlib.suppress(ValueError):
                z.writestr(name or f"empty{i}", b"x" * i)
    target = root / "target"
    before = {p for p in root.rglob("*")}
    with no_hang("extracting"):
        try:
            extract_archive(archive, target, progress=False)
        except ArchiveError as err:
            assert "a.zip" in str(err), SEED
            assert {p for p in root.rglob("*")} == before, SEED  # nothing left behind
            return
    outside = {p for p in root.rglob("*")} - before - {target} - set(target.rglob("*"))
    assert not outside, (SEED, outside)


# ------------------------------------------------------------------ hostile prompt files

@st.composite
def hostile_prompt_files(draw):
    """Bytes, or a valid container (safetensors / torch zip) holding the wrong, NaN or mis-shaped tensors."""
    import torch
    from safetensors.torch import save as save_safetensors

    kind = draw(st.sampled_from(["bytes", "safetensors", "torch-zip"]))
    if kind == "bytes":
        return ".pth", draw(st.binary(max_size=200))
    shape = (draw(st.integers(0, 3)), draw(st.sampled_from([0, 1, 64])))
    fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf")]))
    keys = draw(st.lists(st.sampled_from(["normal", "anomalous", "other"]), max_size=3, unique=True))
    tensors = {k: torch.full(shape, fill) for k in keys}
    if kind == "safetensors":
        return ".safetensors", save_safetensors(tensors)
    buf = io.BytesIO()
    torch.save(list(tensors.values()), buf)
    return ".pth", buf.getvalue()


@seed(SEED)
@ATTACKS
@given(file=hostile_prompt_files())
def test_any_prompt_file_gives_finite_prompts_or_one_error_naming_it(tmp_path_factory, file):
    import torch

    from tipsomaly_lite.method.prompt_files import load_prompts

    suffix, payload = file
    path = tmp_path_factory.mktemp("prompts") / f"prompts{suffix}"
    path.write_bytes(payload)
    with no_hang("loading a prompt file"):
        try:
            normal, anomalous = load_prompts(path)[0]
        except ValueError as err:
            assert str(path) in str(err) and "weights_only=False" not in str(err), (SEED, str(err))
            return
    for t in (normal, anomalous):
        assert t.ndim == 2 and t.numel() > 0 and bool(torch.isfinite(t).all()), SEED


# ------------------------------------------------------------------ hostile model folders

config_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=False),
                          st.text(max_size=6), st.lists(st.integers(0, 9), max_size=3))


@seed(SEED)
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(heads=config_values, extra=st.dictionaries(st.sampled_from(["model_type", "hidden_size", "vision_config"]),
                                                  config_values, max_size=2),
       weights=st.sampled_from(["ok", "nan", "missing", "truncated"]))
def test_any_model_folder_loads_whole_or_is_one_error_naming_it(tmp_path_factory, tiny_tokenizer_path, heads, extra,
                                                                weights):
    import torch
    from safetensors.numpy import load_file, save_file

    from helpers.hostile import hf_folder
    from tipsomaly_lite.backbones import load_tips
    from tipsomaly_lite.io.download import DownloadError

    config = json.dumps({"vision_config": {"num_attention_heads": heads}, **extra})
    folder = hf_folder(tmp_path_factory.mktemp("model") / "m", tiny_tokenizer_path, config=config)
    file = folder / "model.safetensors"
    if weights == "truncated":
        file.write_bytes(file.read_bytes()[:3000])
    elif weights != "ok":
        state = load_file(str(file))
        name = sorted(state)[0]
        if weights == "nan":
            state[name] = np.full_like(state[name], np.nan)
        else:
            del state[name]
        save_file(state, str(file))
    with no_hang("loading a model folder"):
        try:
            model = load_tips(f"hf:{folder}")
        except (ValueError, DownloadError) as err:
            assert str(folder) in str(err) and "\n" not in str(err).strip(), (SEED, str(err))
            return
    assert weights == "ok", (SEED, weights)  # a damaged folder never loads
    feats = model.encode_features(torch.rand(1, 3, 28, 28))
    assert all(bool(torch.isfinite(v).all()) for v in feats.values()), SEED
