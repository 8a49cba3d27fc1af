"""Tokenizer, preprocessing, the TIPS model API, the offline mode and the download route."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly_lite.backbones.tips import registry as tips_module
from tipsomaly_lite.offline import MeaninglessResultsWarning
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays, tiny_files
from tipsomaly_lite.backbones.preprocess import preprocess
from tipsomaly_lite.backbones.tips.model import load_tips
from tipsomaly_lite.backbones.tips.text import Tokenizer, sinusoidal_positions


# --- tokenizer ----------------------------------------------------------------------------

def test_tokenizer_lowercases_pads_with_zero_and_masks(tiny_tokenizer_path):
    tok = Tokenizer(tiny_tokenizer_path)
    ids, padding = tok(["A BAD Photo of the Bottle.", "flawless bottle"])
    assert ids.shape == padding.shape == (2, 64) and ids.dtype == torch.long
    lower, _ = tok(["a bad photo of the bottle."])
    assert torch.equal(ids[0], lower[0])
    raw = tok.encode("flawless bottle")
    assert ids[1, : len(raw)].tolist() == raw  # no BOS in front
    assert ids[1, len(raw):].eq(0).all()  # pad id 0, no EOS after
    assert padding[1].tolist() == [i >= len(raw) for i in range(64)]
    assert tok.sp.bos_id() == -1 and tok.sp.eos_id() == -1 and tok.sp.pad_id() == 0


def test_tokenizer_truncates_to_64(tiny_tokenizer_path):
    tok = Tokenizer(tiny_tokenizer_path)
    ids, padding = tok([" ".join(["damaged bottle"] * 80)])
    assert ids.shape == (1, 64) and not padding.any() and ids.ne(0).all()


def test_empty_prompt_is_an_error(tiny_tokenizer_path):
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        Tokenizer(tiny_tokenizer_path)(["ok", ""])


def test_sinusoidal_positions_layout():
    pos = sinusoidal_positions(64, 8)
    inv = np.exp(-np.arange(4) * np.log(10000) / 3)
    np.testing.assert_allclose(pos[5].numpy(), np.concatenate([np.sin(5 * inv), np.cos(5 * inv)]), atol=1e-6)


# --- preprocessing --------------------------------------------------------------------------

def test_preprocess_accepts_every_mode():
    rgb = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    grey16 = (np.random.default_rng(1).random((30, 40)) * 65535).astype(np.uint16)
    images = [
        Image.fromarray(rgb), Image.fromarray(rgb).convert("L"), Image.fromarray(rgb).convert("RGBA"),
        Image.fromarray(rgb).convert("P"), Image.fromarray(grey16), grey16, rgb, rgb[..., :1],
        rgb.astype(np.float32) / 255, torch.rand(3, 30, 40),
    ]
    batch = preprocess(images, size=56)
    assert batch.shape == (len(images), 3, 56, 56) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    # grey is repeated into three equal channels, RGBA drops alpha, 16-bit is scaled by 65535
    assert torch.equal(batch[1, 0], batch[1, 2])
    assert torch.allclose(batch[2], batch[0])
    assert torch.allclose(batch[4], batch[5], atol=1e-6)
    assert torch.allclose(batch[0], batch[6]) and torch.allclose(batch[0], batch[8], atol=1e-6)


def test_preprocess_16bit_png_from_disk(tmp_path):
    arr = np.full((28, 28), 65535 // 2, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = preprocess(tmp_path / "g16.png", size=28)
    assert out.shape == (1, 3, 28, 28)
    assert out.mean().item() == pytest.approx(0.5, abs=1e-3)


def test_preprocess_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of 14"):
        preprocess(np.zeros((10, 10), np.uint8), size=500)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        preprocess(np.full((10, 10), 3.0, np.float32), size=14)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        preprocess(tmp_path / "broken.png", size=14)


# --- model API ------------------------------------------------------------------------------

def test_encode_shapes_grid_and_normalisation(tiny):
    images = torch.rand(2, 3, 518, 518)
    cls1, cls2, patches = tiny.encode_image(images)
    assert cls1.shape == cls2.shape == (2, 64) and patches.shape == (2, 37 * 37, 64)
    assert tiny.patch_grid(518) == (37, 37) and tiny.patch_grid() == (32, 32)
    _, _, normed = tiny.encode_image(images, normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2, 1369))
    text = tiny.encode_text(["a photo of a damaged bottle.", "flawless bottle", "carpet"])
    assert text.shape == (3, 64)


def test_non_square_and_bad_sizes(tiny):
    _, _, patches = tiny.encode_image(torch.rand(1, 3, 14 * 4, 14 * 6))
    assert patches.shape == (1, 24, 64)
    with pytest.raises(ValueError, match="multiples of 14"):
        tiny.encode_image(torch.rand(1, 3, 450, 450))
    with pytest.raises(ValueError, match="3 channels"):
        tiny.encode_image(torch.rand(1, 1, 448, 448))


def test_batch_independence(tiny):
    images = torch.rand(3, 3, 112, 112)
    _, _, all_three = tiny.encode_image(images)
    _, _, one = tiny.encode_image(images[1:2])
    torch.testing.assert_close(all_three[1:2], one, atol=1e-5, rtol=1e-5)


def test_zero_shot_probabilities(tiny):
    images = torch.rand(2, 3, 112, 112)
    probs = tiny.zero_shot_probabilities(images, ["a bottle", "a damaged bottle", "a carpet"])
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    cls1, _, _ = tiny.encode_image(images, normalize=True)
    text = tiny.encode_text(["a bottle", "a damaged bottle", "a carpet"], normalize=True)
    torch.testing.assert_close(probs, torch.softmax(cls1 @ text.T / 0.005, -1))
    with pytest.raises(ValueError, match="cls1"):
        tiny.zero_shot_probabilities(images, ["x"], token="cls3")


def test_repr_says_variant_width_depth_grid_source(tiny):
    text = repr(tiny)
    for piece in ("variant='tiny'", "width=64", "depth=2", "patch_grid=32x32", "source=", "meaningless"):
        assert piece in text


# --- offline mode --------------------------------------------------------------------------

def test_tiny_files_are_deterministic(tmp_path):
    a = tiny_files(tmp_path / "a")
    b = tiny_files(tmp_path / "b")
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes()


def test_tiny_warns_loudly():
    with pytest.warns(MeaninglessResultsWarning, match="MEANINGLESS") as record:
        model = load_tips("tiny")
    assert model.is_offline
    assert record[0].filename == __file__  # points at the user's line, not inside the package


def test_offline_env_forces_tiny(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    with pytest.warns(MeaninglessResultsWarning):
        model = load_tips("l14-hr")
    assert model.variant == "tiny"


def test_missing_weights_without_download(monkeypatch):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="tipsomaly fetch l14-hr"):
        load_tips("l14-hr", download=False)
    with pytest.warns(MeaninglessResultsWarning):
        assert load_tips("l14-hr", download=False, fallback_to_tiny=True).is_offline


# --- the download route, against a local HTTP server ------------------------------------

@pytest.fixture
def bucket(tmp_path):
    """A local stand-in for the TIPS bucket, serving a tiny model in the real paths."""
    root = tmp_path / "bucket"
    variant = tips_module.VARIANTS["b14-hr"]
    v, t = random_tips_arrays(TINY_ARCH, seed=7)
    from tipsomaly_lite.backbones.tips.checkpoints import write_npz

    write_npz(root / variant.files["vision"], v)
    write_npz(root / variant.files["text"], t)
    _, _, tok = tiny_files(tmp_path / "tok")
    (root / variant.files["tokenizer"]).write_bytes(tok.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_variant_is_downloaded_into_the_cache_and_loaded(bucket, monkeypatch, tmp_path):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tips_module, "BUCKET", bucket)
    assert not tips_module.variant_is_cached("b14-hr")
    model = load_tips("b14-hr")
    assert model.variant == "b14-hr" and model.arch.width == 64
    assert tips_module.variant_is_cached("b14-hr")
    assert (tmp_path / "home" / "tips" / "v1_0" / "checkpoints" / "tokenizer.model").is_file()
    monkeypatch.setattr(tips_module, "BUCKET", "http://127.0.0.1:9/")  # nothing listens: cache only
    assert load_tips("b14-hr").variant == "b14-hr"


def test_unreachable_bucket_gives_a_clear_error(monkeypatch, tmp_path):
    from tipsomaly_lite.io.download import DownloadError

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setattr(tips_module, "BUCKET", "http://127.0.0.1:9/")
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        load_tips("s14-hr")


def test_cutting_trailing_padding_is_exact(tiny):
    ids, padding = tiny.tokenizer(["a bad photo of a damaged bottle.", "carpet"])
    full = tiny.text.encode_embeddings(tiny.text.embed_tokens(ids), padding)  # all 64 positions
    torch.testing.assert_close(tiny.text(ids, padding), full, atol=1e-6, rtol=1e-5)


def test_hub_route_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    from tipsomaly_lite.io.download import DownloadError

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(DownloadError, match="google/tipsv2-b14.*npz route"):
        load_tips("hf:google/tipsv2-b14")
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    with pytest.warns(MeaninglessResultsWarning):
        assert load_tips("hf:google/tipsv2-b14").is_offline
