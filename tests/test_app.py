"""The demo app: its work without a browser, its HTTP API with a real prediction, and the page as headless
Chromium draws it (a screenshot this test looks at, and the rendered text); fails closed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tipsomaly_lite.cli import build_parser, main
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.deploy.app import MAX_PHOTOS, TITLE, DemoSession, check_port
from tipsomaly_lite.offline import MEANINGLESS_TAG, MeaninglessResultsWarning

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["pill"], n_train=0, n_normal=4, n_anomalous=2, seed=5)
    test = root / "toy" / "pill" / "test"
    return sorted(test.glob("good/*.png")), sorted(p for p in test.glob("*/*.png") if p.parent.name != "good")


@pytest.fixture(scope="module")
def session():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        s = DemoSession("tips", "tiny", 56)
        s.model()
    return s


def test_photos_get_overlays_scores_and_decisions(session, photos):
    good, bad = photos
    answer = session.analyse([*bad, good[0]], "pill", threshold="0.5")
    assert len(answer.overlays) == len(bad) + 1 and len(answer.rows) == len(bad) + 1
    image, caption = answer.overlays[0]
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.std() > 5
    assert all(r["decision"] == ("anomalous" if float(r["image_score"]) > 0.5 else "normal") for r in answer.rows)
    assert MEANINGLESS_TAG in answer.summary and "typed in" in answer.summary and caption.startswith(bad[0].name)
    # the scores are the detector's
    detector = session.detector()
    model = detector.model
    expected = detector.predict(model.preprocess([str(bad[0])], model.image_size), "pill").image_score
    assert float(answer.rows[0]["image_score"]) == pytest.approx(float(expected[0]), abs=1e-4)


def test_known_good_photos_set_the_threshold_and_the_colour_scale(session, photos):
    good, bad = photos
    answer = session.analyse(bad, "pill", threshold="", normal=good[:3])
    t = answer.threshold
    assert t is not None and t.n_normal == 3 and "3 known-good photos" in answer.summary
    assert all(r["decision"] in ("normal", "anomalous") for r in answer.rows)
    none = session.analyse(bad, "pill")
    assert none.threshold is None and all(r["decision"] == "" for r in none.rows) and "no threshold" in none.summary


@pytest.mark.parametrize("kwargs, needle", [
    ({"class_word": "   "}, "no prompts can be made"),
    ({"threshold": "nan"}, "finite image-score threshold"),
    ({"threshold": "inf"}, "finite image-score threshold"),
    ({"threshold": "7"}, "finite image-score threshold"),
    ({"photos": []}, "at least one image"),
    ({"prompts": "released:nowhere"}, "expected one of"),
    ({"family": "resnet"}, "expected one of"),
])
def test_bad_requests_are_one_line(session, photos, kwargs, needle):
    args = {"photos": photos[1][:1], "class_word": "pill", **kwargs}
    with pytest.raises(ValueError, match=needle) as err:
        session.analyse(**args)
    assert "\n" not in str(err.value)


def test_unreadable_or_too_many_photos_are_refused(session, photos, tmp_path):
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="b.png cannot be read"):
        session.analyse([photos[0][0], tmp_path / "b.png"], "pill")
    with pytest.raises(ValueError, match="known-good photos"):
        session.analyse(photos[1], "pill", normal=[tmp_path / "b.png"])
    with pytest.raises(ValueError, match=f"at most {MAX_PHOTOS}"):
        session.analyse([photos[0][0]] * (MAX_PHOTOS + 1), "pill")


def test_a_port_in_use_is_one_line_and_exit_2(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"--port {port}"):
            check_port(port)
        assert main(["app", "--port", str(port), "--variant", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}" in err[0] and "in use" in err[0]
    assert check_port(0) > 0  # 0: any free port
    with pytest.raises(SystemExit):
        main(["app", "--port", "70000"])
    assert "TCP port" in capsys.readouterr().err


def test_a_missing_app_extra_is_one_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app", "--port", "0", "--variant", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Gradio" in err[0] and "[app]" in err[0]


@pytest.mark.slow  # starts Gradio (about 10-15 s on 2 cores)
def test_the_http_api_returns_a_real_prediction(photos, tmp_path):
    pytest.importorskip("gradio", reason="the app extra: pip install 'tipsomaly_lite[app]'")
    from gradio_client import Client, handle_file

    from tipsomaly_lite.deploy.app import launch_app

    args = build_parser().parse_args(["app", "--port", "0", "--variant", "tiny", "--image-size", "56"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        page = launch_app(args, block=False)
    try:
        html = urllib.request.urlopen(page.local_url, timeout=30).read().decode()
        assert TITLE.split(" ·")[0] in html
        client = Client(page.local_url, verbose=False)
        gallery, summary = client.predict([handle_file(str(p)) for p in photos[1]], "pill", "tips",
                                          "none (training-free)", "0.5", [], api_name="/predict")
        assert len(gallery) == len(photos[1]) and MEANINGLESS_TAG in summary
        with Image.open(gallery[0]["image"]) as im:
            assert im.size[0] > 200 and np.asarray(im.convert("RGB")).std() > 5
        lines = [line for line in summary.splitlines() if line.startswith(f"| {photos[1][0].name}")]
        score = float(lines[0].split("|")[2])
        session = DemoSession("tips", "tiny", 56)
        detector = session.detector()
        expected = detector.predict(detector.model.preprocess([str(photos[1][0])], 56), "pill").image_score
        assert score == pytest.approx(float(expected[0]), abs=1e-3)  # the page's number is the detector's
        with pytest.raises(Exception, match="finite image-score threshold"):  # a user error comes back as one line
            client.predict([handle_file(str(photos[1][0]))], "pill", "tips", "none (training-free)", "nan", [],
                           api_name="/predict")
    finally:
        page.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=20000", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # starts `tipsomaly app` and Chromium (about 30 s on 2 cores)
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no headless Chromium on this machine")
def test_headless_chromium_shows_the_page_with_an_overlay_and_the_offline_banner(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TIPSOMALY_OFFLINE": "1", "MPLBACKEND": "Agg"}
    server = subprocess.Popen([sys.executable, "-m", "tipsomaly_lite", "app", "--port", str(port), "--variant",
                               "tiny", "--image-size", "56", "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "the app did not answer within 120 s"
                time.sleep(1)
        shot = tmp_path / "page.png"
        _chromium(f"--screenshot={shot}", "--window-size=1280,900", url)
        dom = _chromium("--dump-dom", url).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert TITLE in dom and MEANINGLESS_TAG in dom and "analyse" in dom
    assert "class word" in dom and "known-good photos" in dom
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        pixels = np.asarray(im.convert("RGB")).astype(float)
    assert pixels.std() > 20  # not a blank page
    # the example is drawn in the right column: a photo (coloured) beside its map, whose colour map runs from
    # purple-blue (0) through green to red (1): the map's low values cover a panel, and its colour bar shows the
    # greens (nothing else on the page is blue or green); the toy model's maps of this example are mostly low
    right = pixels[150:600, 450:]
    saturation = right.max(axis=2) - right.min(axis=2)
    assert (saturation > 40).mean() > 0.1, "no coloured images on the page"
    bluish = (right[..., 2] > right[..., 0] + 20) & (right[..., 2] > right[..., 1] + 20)
    greenish = (right[..., 1] > right[..., 0] + 20) & (right[..., 1] >= right[..., 2] - 10)
    assert bluish.mean() > 0.05, "no anomaly map on the page"
    assert greenish.sum() > 100, "no colour bar beside the map"
    # the offline banner in red in the header
    top = pixels[:150]
    red = (top[..., 0] > 150) & (top[..., 1] < 80) & (top[..., 2] < 80)
    assert red.sum() > 200, "no red offline banner"
