"""icv-serve end to end: one service (a local Ray instance, the tiny random model) on a free loopback port,
started once for the module and stopped at its end.

Checked: answers equal the in-process pipeline's, a short bounded load is batched and every answer equals the
single one, overload is answered 503 + Retry-After (never a hang), every bad request class gets its status and a
JSON error, the API key, a SIGKILLed model replica (in-flight requests get a JSON 5xx or are retried, /readyz
answers again within 60 s), and the web page in headless Chromium. No timing is asserted beyond "answers come".
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="icv-serve needs the serve extra: pip install -e '.[serve]'")
import requests  # noqa: E402
from PIL import Image  # noqa: E402

from icv_deploy.serve.loadtest import LocalServer, post_infer, run_load  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "test-key-3f9a"
TIMEOUT_S = 60
# Small limits, so that each bad request class is cheap to send.
SERVER_ARGS = ["--max-batch-size", "4", "--batch-wait-ms", "300", "--max-queue", "4", "--timeout", str(TIMEOUT_S),
               "--num-cpus", "1", "--threads", "1", "--max-body-mb", "1", "--max-pixels", "250000",
               "--max-instructions", "3", "--max-instruction-chars", "120", "--max-steps", "8", "--object-store-mb", "100"]
FIELDS = {"instruction": "Segment the box", "steps": "2", "resolution": "32", "seed": "5"}
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def picture(result: dict, name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["pictures"][name]))))


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(7)
    img = np.zeros((60, 84, 3), np.uint8)
    img[:25], img[25:], img[30:50, 20:45] = (120, 170, 230), (90, 140, 60), (200, 40, 40)
    return np.clip(img.astype(int) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "icv-serve.log"
    with LocalServer(["--model", str(tiny_model), *SERVER_ARGS], env={"ICV_API_KEY": KEY}, log_path=log,
                     ready_timeout_s=600) as srv:
        yield srv


def infer(server, image: bytes, **fields):
    return post_infer(server.url, image, {**FIELDS, **fields}, api_key=KEY, timeout_s=TIMEOUT_S + 30)


def test_answers_equal_the_pipeline_and_batched_load_equals_single_answers(server, tiny_model, scene):
    import icv_deploy

    status, body, _ = infer(server, png(scene), pictures="true")
    assert status == 200, body
    (result,) = body["results"]
    assert (result["task"], result["category"], result["seed"], result["steps"]) == ("segmentation", "box", 5, 2)
    assert result["image_size"] == [84, 60] and picture(result, "mask").shape == (60, 84)
    pipe = icv_deploy.load(tiny_model)
    pipe.progress = False
    alone = pipe(scene, "Segment the box", steps=2, seed=5, resolution=32)
    assert np.abs(picture(result, "visual").astype(int) - alone.visual.astype(int)).max() <= 1

    # Below saturation (4 at a time, the batch size): every request succeeds, some share a batch, and each answer is
    # the single request's answer. (At 6 at a time Ray Serve's router refused some with the queue limit at 4.)
    report = run_load(server.url, png(scene), {**FIELDS, "pictures": "true"}, requests_n=12, concurrency=4,
                      api_key=KEY, timeout_s=TIMEOUT_S + 30)
    assert report.statuses == {200: 12}, report.summary()
    assert max(report.batch_sizes) > 1, report.summary()
    for _, answer, _ in report.answers:
        assert np.abs(picture(answer["results"][0], "visual").astype(int) - picture(result, "visual").astype(int)).max() <= 1

    metrics = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    assert _metric(metrics, 'icv_requests_total{status="200"}') >= 13
    assert _metric(metrics, "icv_batch_requests_count") >= 13
    assert _metric(metrics, "icv_batch_requests_sum") > _metric(metrics, "icv_batch_requests_count")  # batches > 1


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_overload_is_answered_503_with_retry_after(server, scene):
    report = run_load(server.url, png(scene), FIELDS, requests_n=16, concurrency=16, api_key=KEY,
                      timeout_s=TIMEOUT_S + 30)
    assert set(report.statuses) <= {200, 503} and report.statuses[503] >= 1, report.summary()
    for status, body, retry_after in report.answers:
        if status == 503:
            assert body["error"] and int(retry_after) >= 1
    assert max(report.latencies_s) < TIMEOUT_S + 30


BAD_REQUESTS = [
    # (name, status, how to send it)
    ("json body", 400, lambda s, img: requests.post(s.url + "/v1/infer", json={"instruction": "Segment the box"},
                                                    headers=_auth(), timeout=30)),
    ("no image", 400, lambda s, img: _post(s, None, FIELDS)),
    ("no instruction", 400, lambda s, img: _post(s, img, {"steps": "2"})),
    ("a path field", 400, lambda s, img: _post(s, img, {**FIELDS, "path": "/etc/passwd"})),
    ("steps not a number", 400, lambda s, img: _post(s, img, {**FIELDS, "steps": "many"})),
    ("steps over the limit", 400, lambda s, img: _post(s, img, {**FIELDS, "steps": "9"})),
    ("unknown sampler", 400, lambda s, img: _post(s, img, {**FIELDS, "sampler": "magic"})),
    ("resolution too small", 400, lambda s, img: _post(s, img, {**FIELDS, "resolution": "4"})),
    ("image too small", 400, lambda s, img: _post(s, png(np.zeros((8, 8, 3), np.uint8)), FIELDS)),
    ("not an image", 415, lambda s, img: _post(s, b"just some text, not pixels", FIELDS)),
    ("truncated image", 415, lambda s, img: _post(s, img[: len(img) // 2], FIELDS)),
    ("body too large", 413, lambda s, img: _post(s, img + b"\0" * (1024 * 1024), FIELDS)),
    ("too many pixels", 413, lambda s, img: _post(s, png(np.zeros((600, 600, 3), np.uint8)), FIELDS)),
    ("too many instructions", 413, lambda s, img: _post(s, img, {**FIELDS, "instruction": ["Segment the box"] * 4})),
    ("instruction too long", 413, lambda s, img: _post(s, img, {**FIELDS, "instruction": "Segment the " + "x" * 150})),
    ("instruction fits no task", 422, lambda s, img: _post(s, img, {**FIELDS, "instruction": "Write a poem about trees"})),
    ("unknown path", 404, lambda s, img: requests.get(s.url + "/v2/nothing", timeout=30)),
    ("wrong method", 405, lambda s, img: requests.get(s.url + "/v1/infer", timeout=30)),
]


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def _post(server, image, fields):
    """A multipart form: text fields as (None, value) parts, and the image file unless it is None."""
    parts = [(k, (None, v)) for k, vs in fields.items() for v in (vs if isinstance(vs, list) else [vs])]
    if image is not None:
        parts.append(("image", ("x.png", image, "image/png")))
    return requests.post(server.url + "/v1/infer", files=parts, headers=_auth(), timeout=30)


@pytest.mark.parametrize("name,status,send", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_a_json_error(server, scene, name, status, send):
    response = send(server, png(scene))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message and "Traceback" not in message


def test_still_serving_after_bad_requests_and_key_is_required(server, scene):
    no_key = requests.post(server.url + "/v1/infer", files={"image": ("x.png", png(scene))}, data=FIELDS, timeout=30)
    wrong = requests.post(server.url + "/v1/infer", files={"image": ("x.png", png(scene))}, data=FIELDS, timeout=30,
                          headers={"Authorization": "Bearer not-the-key"})
    for response in (no_key, wrong):
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in response.json()["error"]
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "alive"}
    assert requests.get(server.url + "/readyz", timeout=10).json()["ready"] is True
    assert infer(server, png(scene))[0] == 200
    assert "access-control-allow-origin" not in requests.get(server.url + "/", headers={"Origin": "http://evil.test"},
                                                              timeout=10).headers


def _model_replicas(server) -> dict:
    out = {}
    for proc in server.descendants():
        try:
            if "InstructCVModel" in " ".join(proc.cmdline()):
                out[proc.pid] = proc
        except Exception:  # gone meanwhile
            pass
    return out


def test_the_local_instance_runs_at_the_callers_priority(server):
    """Ray starts workers at niceness 15, where a busy machine starves the HTTP proxy and the replicas."""
    workers = [p for p in server.descendants() if "ray::" in " ".join(p.cmdline())]
    assert _model_replicas(server) and workers
    assert {p.nice() for p in workers} == {os.nice(0)}


def test_killed_replica_gets_json_5xx_or_retries_and_recovers(server, scene):
    (victim,) = _model_replicas(server).values()
    reports = []
    load = threading.Thread(target=lambda: reports.append(run_load(
        server.url, png(scene), FIELDS, requests_n=10, concurrency=4, api_key=KEY, timeout_s=TIMEOUT_S + 30)))
    load.start()
    time.sleep(1.0)  # let requests reach the replica
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    replacement = None
    while time.monotonic() - killed < 60:
        replicas = {pid: p for pid, p in _model_replicas(server).items() if pid != victim.pid}
        if replicas and requests.get(server.url + "/readyz", timeout=5).status_code == 200:
            replacement = next(iter(replicas))
            break
        time.sleep(0.5)
    assert replacement is not None, "no new model replica ready within 60 s of the kill"
    load.join(timeout=2 * (TIMEOUT_S + 30))
    assert not load.is_alive()
    (report,) = reports
    assert "timeout" not in report.statuses and "error" not in report.statuses, report.summary()
    for status, body, _ in report.answers:  # retried (200) or a JSON 5xx
        assert status == 200 or (500 <= status < 600 and body["error"]), (status, body)
    assert infer(server, png(scene))[0] == 200


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return chromium, driver


@pytest.mark.skipif(None in _browser_paths(), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_web_page_runs_an_instruction_in_a_real_browser(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        browser.set_page_load_timeout(60)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "image").send_keys(str(EXAMPLE))
        instructions = browser.find_element(By.ID, "instructions")
        instructions.clear()
        instructions.send_keys("Segment the red ball\nDetect the box")
        browser.find_element(By.TAG_NAME, "summary").click()  # open the settings
        for field, value in (("steps", "2"), ("resolution", "32"), ("key", KEY)):
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, TIMEOUT_S + 30).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".result") or "error" in b.find_element(By.ID, "status").get_attribute("class"))
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert "error" not in browser.find_element(By.ID, "status").get_attribute("class"), \
            browser.find_element(By.ID, "status").text
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        assert [c.find_element(By.TAG_NAME, "h2").text for c in cards] == ["Segment the red ball", "Detect the box"]
        assert cards[0].find_element(By.CLASS_NAME, "summary").text.startswith("segmentation of red ball")
        assert cards[1].find_element(By.CLASS_NAME, "summary").text.startswith("detection of box")
        overlay = cards[0].find_element(By.CSS_SELECTOR, "img.overlay")
        # The overlay decoded and drawn at the input's size (320 x 240).
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay)
        assert size == list(Image.open(EXAMPLE).size)
        assert cards[0].find_elements(By.CSS_SELECTOR, "img.mask")
    finally:
        browser.quit()


def test_cli_refuses_a_public_host_without_a_key(tiny_model):
    env = {k: v for k, v in os.environ.items() if k != "ICV_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "icv_deploy.serve.cli", "--model", str(tiny_model), "--host", "0.0.0.0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "ICV_API_KEY" in done.stderr and len(done.stderr.splitlines()) == 1


def test_config_file_is_a_valid_serve_config(tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from icv_deploy.errors import IcvError
    from icv_deploy.serve.settings import ServeSettings

    out = tmp_path / "serve.yaml"
    done = subprocess.run([sys.executable, "-m", "icv_deploy.serve.cli", "config", "--output", str(out), "--host",
                           "0.0.0.0", "--replicas", "4", "--device", "cuda", "--max-batch-size", "16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    (app,) = config["applications"]
    assert app["import_path"] == "icv_deploy.serve.app:build_app" and config["http_options"]["host"] == "0.0.0.0"
    settings = ServeSettings.from_args(app["args"])
    assert settings.require_api_key and settings.gpus_per_replica == 1.0
    options = settings.model_deployment_options()
    assert options["num_replicas"] == 4 and options["ray_actor_options"]["num_gpus"] == 1.0
    assert options["user_config"]["max_batch_size"] == 16 and options["max_ongoing_requests"] == 16
    with pytest.raises(IcvError, match="unknown serve setting"):
        ServeSettings.from_args({**app["args"], "gpus": 2})
