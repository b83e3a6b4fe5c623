"""The page in a real browser: Debian's Chromium, headless, driven by Playwright.

Real server (uvicorn), real worker process, real demo-model generations. Without
Chromium or Playwright these tests skip, unless SDSITE_REQUIRE_BROWSER=1 (CI
sets it) makes a missing browser a failure.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from generator.models import GenerationSession, Status
from tests.support.processes import ROOT

# Nothing here depends on the database engine: CI runs it on SQLite only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.any_database]

CHROMIUM = os.environ.get("SDSITE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SDSITE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
TIMEOUT_MS = 120_000

# Records what the page shows, as it changes: each percentage the progress bar
# takes, each source the result image gets and each status line, in order.
RECORDER = """
window.__seen = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress");
  const image = document.getElementById("result-image");
  const status = document.getElementById("status");
  if (!bar || !image) return;
  new MutationObserver(() => {
    window.__seen.push({kind: "status", value: status.textContent, percent: bar.ariaValueNow});
  }).observe(status, {childList: true, characterData: true, subtree: true});
  new MutationObserver(() => {
    window.__seen.push({kind: "percent", value: Number(bar.getAttribute("aria-valuenow"))});
  }).observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
  new MutationObserver(() => {
    window.__seen.push({kind: "image", value: image.getAttribute("src").slice(0, 30)});
  }).observe(image, {attributes: true, attributeFilter: ["src"]});
  new MutationObserver(() => {
    window.__seen.push({kind: "title", value: document.title});
  }).observe(document.querySelector("title"), {childList: true, subtree: true});
});
"""


@pytest.fixture(scope="module")
def chromium():
    required = os.environ.get("SDSITE_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("Playwright is not installed")
    if not shutil.which(CHROMIUM):
        if required:
            pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    # Playwright's sync API runs an event loop in this thread; the tests' own
    # ORM calls are plain synchronous code all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


# What each page logged, answered with an error, or failed to load: told when a wait fails.
page_events: dict = {}


@pytest.fixture
def new_page(chromium):
    contexts = []

    def make(**options):
        context = chromium.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.add_init_script(RECORDER)
        events = page_events[page] = []
        page.on("console", lambda m: events.append(f"console {m.type}: {m.text}"))
        page.on("requestfailed", lambda r: events.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and events.append(f"HTTP {r.status}: {r.url}"),
        )
        return page

    yield make
    for context in contexts:
        for page in context.pages:
            page_events.pop(page, None)
        context.close()


def generate(page, server, prompt: str, steps: int):
    page.goto(server.url)
    page.fill("#id_prompt", prompt)
    page.click("text=Advanced settings")
    page.fill("#id_steps", str(steps))
    page.click("#generate-button")
    page.wait_for_url(re.compile(r"/s/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def running_generation(new_page, server, start_worker, prompt: str, steps: int, percent: int):
    """A page whose generation (served by a new worker) has passed `percent`."""
    start_worker()
    page = new_page()
    session_id = generate(page, server, prompt, steps)
    page.wait_for_function(
        "p => document.getElementById('progress').ariaValueNow >= p", arg=percent
    )
    return page, session_id


def screenshot(page, name: str, **options) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), **options)


def percentage(page) -> int:
    return int(page.get_attribute("#progress", "aria-valuenow"))


def wait_for_status(page, text: str):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "text => document.getElementById('status').textContent.startsWith(text)", arg=text
        )
    except PlaywrightTimeout:
        status = page.inner_text("#status")
        events = "\n".join(page_events.get(page, [])[-20:])
        raise AssertionError(
            f"waited for status {text!r}; it says {status!r}. The page's events:\n{events}"
        ) from None


def test_progress_and_previews_show_before_the_image(new_page, web_server, start_worker):
    start_worker()
    page = new_page()
    session_id = generate(page, web_server, "a lighthouse at dawn", steps=20)
    wait_for_status(page, "Done.")

    seen = page.evaluate("window.__seen")
    percentages = {s["value"] for s in seen if s["kind"] == "percent"}
    images = [s["value"] for s in seen if s["kind"] == "image"]
    assert len(percentages & set(range(1, 100))) >= 3, percentages
    assert percentage(page) == 100
    assert images[0].startswith("data:image/jpeg;base64,")  # a live preview came first
    assert images[-1].startswith("/media/images/")  # then the image
    assert page.get_attribute("#progress", "aria-valuetext") == "100 percent, step 20 of 20"
    titles = [s["value"] for s in seen if s["kind"] == "title"]
    assert any(re.fullmatch(r"\[[1-9]\d? %\] sdsite", title) for title in titles), titles
    assert page.title() == "sdsite"  # done: the tab's own title again

    screenshot(page, "finished-page.png", full_page=True)
    assert GenerationSession.objects.get(pk=session_id).status == Status.COMPLETED

    # Back goes to the empty form, forward to the finished generation again.
    # (History moves within one document fire popstate, on which the page
    # reloads: Playwright's go_back/go_forward would see their navigation cut.)
    page.evaluate("history.back()")
    page.wait_for_url(f"{web_server.url}/")
    page.wait_for_function("() => document.getElementById('result').hidden")
    page.evaluate("history.forward()")
    page.wait_for_url(f"{web_server.url}/s/{session_id}")
    wait_for_status(page, "Done.")
    assert page.get_attribute("#result-image", "src").startswith("/media/images/")


def test_a_reload_mid_generation_resumes_the_progress(new_page, web_server, start_worker):
    page, session_id = running_generation(
        new_page, web_server, start_worker, "a slow one", steps=60, percent=10
    )
    page.wait_for_function("() => document.getElementById('result-image').src.startsWith('data:')")
    screenshot(page, "generating-page.png")
    before_reload = percentage(page)

    page.reload()
    wait_for_status(page, "Done.")

    assert page.url == f"{web_server.url}/s/{session_id}"
    shown = [s["value"] for s in page.evaluate("window.__seen") if s["kind"] == "percent"]
    resumed = [p for p in shown if p > 0]
    assert resumed[0] >= before_reload  # picked up where it stood, not from zero
    assert resumed == sorted(resumed) and resumed[-1] == 100


def test_cancel_a_running_job(new_page, web_server, start_worker):
    page, session_id = running_generation(
        new_page, web_server, start_worker, "never mind", steps=150, percent=2
    )

    page.click("#cancel-button")
    wait_for_status(page, "Cancelled.")

    assert page.is_hidden("#cancel-button")
    assert GenerationSession.objects.get(pk=session_id).status == Status.CANCELLED


def test_cancel_stops_the_whole_batch_as_a1111s_interrupt_does(new_page, web_server, start_worker):
    start_worker()
    page = new_page()
    page.goto(web_server.url)
    page.fill("#id_prompt", "three slow ones")
    page.click("text=Advanced settings")
    page.fill("#id_steps", "150")
    page.fill("#id_count", "3")
    page.click("#generate-button")
    page.wait_for_function("() => document.getElementById('progress').ariaValueNow >= 2")

    page.click("#cancel-button")
    wait_for_status(page, "Cancelled.")  # the first, which the bar follows
    page.wait_for_function(
        "() => [...document.querySelectorAll('#batch-grid li')]"
        ".every(li => li.dataset.status === 'cancelled')"
    )
    page.wait_for_selector("#cancel-button", state="hidden")
    statuses = GenerationSession.objects.values_list("status", flat=True)
    assert list(statuses) == [Status.CANCELLED] * 3


def test_history_shows_only_ones_own_generations(new_page, web_server, start_worker):
    alice, bob = new_page(), new_page()
    session_id = generate(alice, web_server, "alice's private lighthouse", steps=4)
    # No worker yet: the page says so instead of waiting forever, with a
    # command that works after `make run`'s setup, shown as code.
    wait_for_status(alice, "No worker is running")
    assert alice.inner_text("#status code") == ".venv/bin/python manage.py runworker"
    start_worker()  # a cold worker: it loads the model after it claims the job
    wait_for_status(alice, "Done.")

    # Until the first step is done the page says what the worker really does.
    statuses = [s for s in alice.evaluate("window.__seen") if s["kind"] == "status"]
    before = [s["value"] for s in statuses if s["percent"] == "0"]
    assert any(text.startswith(("Starting", "Loading demo")) for text in before), before
    assert not any("Denoising" in text for text in before), before
    assert not any("favicon" in event for event in page_events[alice])

    bob.goto(f"{web_server.url}/history")
    assert bob.is_visible("#history-empty")
    assert "alice's private lighthouse" not in bob.content()
    assert bob.goto(f"{web_server.url}/s/{session_id}").status == 404

    alice.goto(f"{web_server.url}/history")
    card = alice.locator(f"[data-session-id='{session_id}']")
    assert "alice's private lighthouse" in card.inner_text()
    assert card.locator("img").get_attribute("src").startswith("/media/images/")
    screenshot(alice, "history-page.png")

    card.get_by_text("Use these settings again").click()
    alice.wait_for_url(re.compile(r"/\?from="))
    assert alice.input_value("#id_prompt") == "alice's private lighthouse"
    assert alice.input_value("#id_steps") == "4"

    alice.goto(f"{web_server.url}/history")
    alice.locator(f"[data-session-id='{session_id}'] button", has_text="Delete").click()
    alice.wait_for_selector("#history-empty")
    assert not GenerationSession.objects.filter(pk=session_id).exists()


def test_keyboard_errors_and_a_phone_screen(new_page, web_server):
    page = new_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page.goto(web_server.url)
    # Nothing sticks out sideways on a phone, and no stray "0 %" before any job.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.is_hidden("#progress-text")

    page.focus("#id_prompt")
    page.keyboard.type(" ")  # blank after trimming: the server refuses it
    for _ in (
        "negative prompt", "LoRA", "start from an image", "hires fix", "ControlNet",
        "advanced settings", "Generate",
    ):  # fmt: skip
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")

    page.wait_for_function("() => document.getElementById('alert').textContent.length > 0")
    assert page.get_attribute("#id_prompt", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "id_prompt"  # focus went to the error
    assert page.inner_text("[data-error-for=prompt]") == "This field is required."
    assert page.is_hidden("#progress-text")

    # The LoRA picker writes the A1111 tag into the prompt.
    page.fill("#id_prompt", "a red circle on a blue background")
    page.click("#lora-picker summary")
    page.select_option("#lora-name", "demo-swap")
    page.fill("#lora-weight", "0.5")
    page.click("#lora-add")
    assert page.input_value("#id_prompt") == (
        "a red circle on a blue background <lora:demo-swap:0.5>"
    )
    assert page.inner_text("#lora-weight-value") == "0.5"


def test_each_click_queues_and_the_page_lists_and_finishes_ones_own_queue(
    new_page, web_server, start_worker
):
    start_worker()
    page = new_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page.goto(web_server.url)
    page.click("text=Advanced settings")  # Advanced open: on a phone the output is far below
    page.fill("#id_steps", "25")
    page.fill("#id_prompt", "first")
    page.click("#generate-button")
    page.wait_for_url(re.compile(r"/s/[0-9a-f-]{36}$"))
    # The progress is brought into view.
    page.wait_for_function(
        "() => { const r = document.getElementById('output').getBoundingClientRect();"
        " return r.top >= 0 && r.top < window.innerHeight; }"
    )
    for prompt in ("second", "third"):
        assert page.is_enabled("#generate-button")  # each click queues another job
        page.fill("#id_prompt", prompt)
        page.focus("#id_prompt")
        page.keyboard.press("Control+Enter")  # as in A1111 and ComfyUI
        page.wait_for_function(
            "p => [...document.querySelectorAll('#queue-list .queue-prompt')]"
            ".some(a => a.textContent === p)",
            arg=prompt,
        )
    third_id = page.url.rsplit("/", 1)[1]
    items = page.locator("#queue-list li")
    assert [items.nth(i).locator(".queue-prompt").inner_text() for i in range(3)] == [
        "first",
        "second",
        "third",
    ]
    # Every job shows its place or its bar; cancel the second from the list.
    page.locator("#queue-list li", has_text="second").get_by_role("button").click()
    wait_for_status(page, "Done.")  # the newest, which the page follows
    page.wait_for_selector("#queue-panel", state="hidden")

    statuses = dict(GenerationSession.objects.values_list("prompt", "status"))
    assert statuses == {
        "first": Status.COMPLETED,
        "second": Status.CANCELLED,
        "third": Status.COMPLETED,
    }
    # Under the image: its parameters, and ways to reuse them.
    third = GenerationSession.objects.get(pk=third_id)
    page.wait_for_selector("#result-details", state="visible")
    assert f"Seed{third.seed}" in page.inner_text("#result-parameters").replace("\n", "")
    assert page.get_attribute("#full-size-link", "href") == third.image.url
    assert page.get_attribute("#download-link", "download") == f"sdsite-{third.seed}.png"
    screenshot(page, "queue-finished-phone.png", full_page=True)
    page.click("#same-seed-link")
    page.wait_for_url(re.compile(r"seed=same"))
    assert page.input_value("#id_seed") == str(third.seed)
    assert page.input_value("#id_prompt") == "third"


def test_the_page_counts_down_says_when_the_worker_is_lost_and_when_the_job_restarts(
    new_page, web_server
):
    from django.utils import timezone

    from generator.worker.claims import claim_next, recover_lost_sessions
    from generator.worker.heartbeat import register_worker

    # History for an estimate, and a worker that is alive but claims nothing.
    for _ in range(3):
        done = GenerationSession.objects.create(
            prompt="earlier", seed=1, backend="pytorch", model="demo", steps=20, width=128,
            height=128,
            status=Status.COMPLETED, step_seconds=[1.0] * 20, total_steps=20,
        )  # fmt: skip
        GenerationSession.objects.filter(pk=done.pk).update(
            step_recorded_at=timezone.now().timestamp() - 2, finished_at=timezone.now()
        )
    register_worker("w-test", {})
    page = new_page()
    session_id = generate(page, web_server, "a countdown", steps=20)
    wait_for_status(page, "Queued: next in line, image in about")
    page.wait_for_timeout(2500)  # no message comes meanwhile: the page counts
    shown = [s["value"] for s in page.evaluate("window.__seen") if s["kind"] == "status"]
    seconds = [int(m) for m in re.findall(r"image in about (\d+) s", " ".join(shown))]
    assert len(set(seconds)) >= 2 and seconds == sorted(seconds, reverse=True), shown

    # The job starts, then its worker stops answering.
    claim_next("w-test")
    GenerationSession.objects.filter(pk=session_id).update(
        phase="denoising", current_step=5, eta_seconds=15.0
    )
    page.wait_for_function("() => document.getElementById('progress').ariaValueNow == 25")
    from generator.models import WorkerRecord

    WorkerRecord.objects.filter(pk="w-test").update(
        last_seen_at=timezone.now() - timezone.timedelta(seconds=120)
    )
    wait_for_status(page, "The worker running this job stopped answering")
    assert "error" in page.get_attribute("#status", "class")

    recover_lost_sessions(lease_seconds=30, max_attempts=2)
    wait_for_status(page, "Restarted after a lost worker.")
    assert percentage(page) == 0  # the bar went back with the job


def test_the_admin_lists_fit_a_laptop_screen(new_page, web_server):
    from django.contrib.auth.models import User

    User.objects.create_superuser("admin", password="pw-123456")
    long_model = "/srv/models/" + "a-very-long-model-folder-name-" * 4
    for n in range(3):
        GenerationSession.objects.create(
            prompt="a long prompt about a lighthouse at dawn, " * 10 + str(n),
            seed=n, backend="pytorch", model=long_model, steps=20, total_steps=20, width=256,
            height=256,
        )  # fmt: skip
    from generator.worker.heartbeat import register_worker

    register_worker(f"{'host-' * 12}:1234:abcdef12", {"models": [long_model]})
    page = new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{web_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw-123456")
    page.click("input[type=submit]")
    for changelist in ("generationsession", "workerrecord"):
        page.goto(f"{web_server.url}/admin/generator/{changelist}/")
        page.wait_for_selector("#result_list")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1440, f"{changelist}: {width} px wide"
    screenshot(page, "admin-workers.png")


def test_drop_a_png_for_its_settings_upload_an_image_paint_a_mask_and_inpaint_a_batch(
    new_page, web_server, start_worker, tmp_path
):
    import base64
    import io

    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    start_worker()
    page = new_page()
    page.goto(web_server.url)

    # A PNG dropped on the form gives its settings ("use these settings").
    info = PngInfo()
    info.add_text("parameters", "a red square\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5")
    carrier = io.BytesIO()
    Image.new("RGB", (8, 8)).save(carrier, format="PNG", pnginfo=info)
    transfer = page.evaluate_handle(
        """b64 => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], "earlier.png", {type: "image/png"}));
          return transfer;
        }""",
        base64.b64encode(carrier.getvalue()).decode(),
    )
    page.dispatch_event("#id_prompt", "drop", {"dataTransfer": transfer})
    page.wait_for_function("() => document.getElementById('id_prompt').value === 'a red square'")
    assert page.input_value("#id_steps") == "6" and page.input_value("#id_seed") == "5"

    # Start from an image and paint a mask over its middle.
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "start.png")
    page.click("#image-inputs summary")
    page.set_input_files("#id_init_image", str(tmp_path / "start.png"))
    page.wait_for_selector("#mask-editor", state="visible")
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.65, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#id_strength", "1")
    page.click("text=Advanced settings")
    page.fill("#id_count", "2")
    page.click("#generate-button")
    # The bar follows the first image; the status counts the batch's.
    wait_for_status(page, "Done: 1 of 2 images; the others follow.")
    wait_for_status(page, "Done: all 2 images.")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#batch-grid li')]"
        ".every(li => li.dataset.status === 'completed')"
    )
    screenshot(page, "inpainted-batch.png", full_page=True)

    sessions = list(GenerationSession.objects.order_by("seed"))
    assert [(s.mode, s.seed, s.status) for s in sessions] == [
        ("inpaint", 5, Status.COMPLETED),
        ("inpaint", 6, Status.COMPLETED),
    ]
    mask = np.asarray(Image.open(sessions[0].mask_image.path))
    assert mask.shape == (96, 96)
    assert mask[48, 48] == 255 and mask[5, 5] == 0  # painted in the middle only
    result = np.asarray(Image.open(sessions[0].image.path).convert("RGB"))
    assert (result[:10, :10] == pixels[:10, :10]).all()  # untouched outside the mask


def test_with_no_stream_free_the_page_follows_by_polling(new_page, tmp_path, start_worker):
    from tests.support.processes import WebServer

    server = WebServer(tmp_path, SD_MAX_STREAMS=0)  # every stream is refused with a 503
    try:
        start_worker()
        page = new_page()
        generate(page, server, "a red circle on a blue background", steps=8)
        wait_for_status(page, "Done.")
        assert page.get_attribute("#result-image", "src").startswith("/media/images/")
        assert percentage(page) == 100
        assert any("HTTP 503" in event and "/api/progress/" in event for event in page_events[page])
    finally:
        server.stop()


def test_choosing_a_model_or_an_image_sets_a_size_that_suits_the_model(new_page, tmp_path):
    from PIL import Image

    from tests.support.processes import WebServer

    # A turbo model by name (1 step, no guidance) that is not here: SD 1.x's 512.
    server = WebServer(tmp_path, SD_MODELS="demo,/models/sd-turbo")
    try:
        page = new_page()
        page.goto(server.url)
        page.click("text=Advanced settings")

        def form() -> tuple:
            names = ("width", "height", "steps", "guidance_scale")
            return tuple(page.input_value(f"#id_{name}") for name in names)

        assert form() == ("128", "128", "20", "7.5")  # the demo model's own size
        page.select_option("#id_model", "/models/sd-turbo")
        assert form() == ("512", "512", "1", "0")
        page.select_option("#id_model", "demo")
        assert form() == ("128", "128", "20", "7.5")

        # A photo far above the model's size: its shape at about the model's size.
        Image.new("RGB", (1024, 768), "orange").save(tmp_path / "photo.png")
        page.click("#image-inputs summary")
        page.set_input_files("#id_init_image", str(tmp_path / "photo.png"))
        page.wait_for_selector("#mask-editor", state="visible")
        assert form()[:2] == ("144", "104")
        page.select_option("#id_model", "/models/sd-turbo")
        assert form()[:2] == ("584", "440")
    finally:
        server.stop()
