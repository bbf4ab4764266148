"""The dashboard at `/`, in headless Chromium against a live `alignd serve` (see conftest.py).

The journey of issue 10: sign in, upload (and read a refused upload's line errors), preview rows,
submit a job from the schema-generated form, watch its charts gain points from the SSE stream, read
rollout samples, download the checkpoint (its sha256 checked), cancel a job; and another tenant's key
sees none of it. Screenshots go to $ALIGND_SCREENSHOTS_DIR when set (docs/ holds the committed ones).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import Live
from tests.shared_data import shared_data
from tests.worker.conftest import short_preference_pairs

LAPTOP_WIDTH = 1366


def prompt_rows(count: int = 12) -> bytes:
    """GSM8K questions (real rows) as prompt-only rows, with the answer's final number as a column."""
    rows = []
    for line in shared_data("gsm8k-train.jsonl").read_text().splitlines()[:count]:
        row = json.loads(line)
        rows.append({"prompt": row["question"], "answer": row["answer"].rsplit("####", 1)[-1].strip()})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ALIGND_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.fill("input[name=api_key]", key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()


def no_horizontal_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP_WIDTH


def api_upload(live: Live, key: str, name: str, body: bytes) -> dict[str, Any]:
    r = httpx.post(
        f"{live.url}/v1/datasets",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": (name, body, "application/jsonl")},
    )
    assert r.status_code == 201, r.text
    return r.json()


def points(page: Page, chart: str) -> int:
    value = page.locator(f'figure[data-chart="{chart}"]').get_attribute("data-points")
    return int(value or 0)


def test_the_page_needs_no_key_and_docs_healthz_and_metrics_still_answer(live: Live) -> None:
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/dashboard/app.js">' in page.text
    assert httpx.get(f"{live.url}/dashboard/vendor/uplot/uPlot.esm.js").status_code == 200
    assert httpx.get(f"{live.url}/docs").status_code == 200
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{live.url}/metrics").status_code == 200
    # the data is not public
    assert httpx.get(f"{live.url}/v1/jobs").status_code == 401
    assert httpx.get(f"{live.url}/v1/hyperparameters/dpo/schema").status_code == 401
    schema = httpx.get(
        f"{live.url}/v1/hyperparameters/grpo/schema", headers={"Authorization": f"Bearer {live.key}"}
    ).json()
    assert schema["additionalProperties"] is False and "num_generations" in schema["properties"]


def test_a_wrong_key_is_refused_and_the_right_one_opens_the_jobs_list(page: Page, live: Live) -> None:
    page.goto("/")
    page.fill("input[name=api_key]", "sk-not-a-key")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in .error")).to_contain_text("401")
    expect(page.locator("#nav")).to_be_hidden()
    page.fill("input[name=api_key]", live.key)
    page.click("#sign-in button[type=submit]")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('alignd.apiKey')") == live.key
    assert live.key not in page.url


def test_a_refused_upload_lists_its_line_errors_and_a_valid_one_uploads_and_previews(
    page: Page, live: Live, tmp_path: Path
) -> None:
    sign_in(page, live.key)
    page.goto("/#/datasets")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "What is 2 + 2?"}\nnot json at all\n{"chosen": "only chosen"}\n')
    page.set_input_files("#upload input[name=file]", str(bad))
    page.click("#upload button[type=submit]")
    errors = page.locator("#upload-result .error")
    expect(errors).to_contain_text("422 invalid_dataset")
    expect(errors.locator("table.details th").first).to_have_text("line")
    expect(errors.locator("table.details tbody tr")).to_have_count(2)
    expect(errors.locator("table.details tbody")).to_contain_text("2")
    screenshot(page, "dashboard-upload-refused.png", tmp_path)

    good = tmp_path / "hh-rlhf-short.jsonl"
    good.write_bytes(short_preference_pairs(12))
    page.set_input_files("#upload input[name=file]", str(good))
    page.fill("#upload input[name=name]", "hh-rlhf short pairs")
    page.click("#upload button[type=submit]")
    expect(page.locator("#upload-result .ok")).to_contain_text("12 preference rows")
    expect(page.locator("#upload progress")).to_have_attribute("value", "1")
    row = page.locator("tr[data-dataset]", has_text="hh-rlhf short pairs")
    expect(row).to_be_visible()
    no_horizontal_scroll(page)

    row.get_by_role("link").click()
    expect(page.locator("#rows article")).to_have_count(5)
    # By default as the trainer splits the rows (hh-rlhf: the shared prefix is the prompt) ...
    first = page.locator('#rows article[data-row="0"]')
    expect(first.locator(".key")).to_have_text(["prompt", "chosen", "rejected"])
    expect(first).to_contain_text("Human:")
    # ... and as stored.
    page.select_option("select[name=view]", "rows")
    expect(first.locator(".key")).to_have_text(["chosen", "rejected"])
    page.select_option("select[name=view]", "examples")
    expect(first.locator(".key")).to_have_text(["prompt", "chosen", "rejected"])
    page.get_by_role("button", name="Next →").click()
    expect(page.locator('#rows article[data-row="5"]')).to_be_visible()
    page.get_by_role("button", name="← Previous").click()
    no_horizontal_scroll(page)
    screenshot(page, "dashboard-dataset-preview.png", tmp_path)


def test_the_dataset_page_renders_conversations_with_the_chosen_models_chat_template(
    page: Page, live: Live, tmp_path: Path
) -> None:
    lines = shared_data("orca-dpo-pairs.openai-dpo.jsonl").read_bytes().splitlines(keepends=True)[:6]
    dataset = api_upload(live, live.key, "orca-dpo-pairs.jsonl", b"".join(lines))
    sign_in(page, live.key)
    page.goto(f"/#/datasets/{dataset['id']}")
    expect(page.locator('#rows article[data-row="0"]')).to_be_visible()
    expect(page.locator("input[name=model]")).to_be_hidden()
    page.select_option("select[name=view]", "rendered")
    expect(page.locator("#rows")).to_contain_text("Pick the base model")
    # A model without a tokenizer: the API's 422 is shown, nothing breaks.
    page.fill("input[name=model]", "tiny")
    page.locator("input[name=model]").dispatch_event("change")
    # The first preview starts the server's forkserver (imports torch): seconds on a busy machine.
    expect(page.locator("#rows .error")).to_contain_text("tokenizer", timeout=90_000)
    page.fill("input[name=model]", "tiny-chat")
    page.locator("input[name=model]").dispatch_event("change")
    first = page.locator('#rows article[data-row="0"]')
    # Each preview forks a child that loads the tokenizer: a few seconds when the machine is busy.
    rendered = 30_000
    expect(first.locator(".key")).to_have_text(["prompt", "chosen", "rejected"], timeout=rendered)
    expect(first.locator("pre.rendered").first).to_contain_text("<|im_start|>user")
    expect(first.locator("pre.rendered").first).to_contain_text("<|im_start|>assistant")
    expect(first.locator(".row-summary")).to_contain_text("chat template applied")
    expect(first.locator(".tokens").first).to_contain_text(re.compile(r"^\d+ tokens$"))
    # One token per byte: this row's ~2,600 bytes are cut at the default max_length 1024, not at 8192.
    expect(first.locator(".row-summary .badge")).to_have_count(1)
    page.fill("input[name=max_length]", "8192")
    page.locator("input[name=max_length]").dispatch_event("change")
    expect(first.locator(".row-summary .badge")).to_have_count(0, timeout=rendered)
    page.fill("input[name=max_length]", "64")
    page.locator("input[name=max_length]").dispatch_event("change")
    expect(first.locator(".row-summary .badge")).to_have_text(
        ["prompt cut to max_prompt_length", "completion cut to fit max_length"], timeout=rendered
    )
    page.fill("input[name=max_length]", "")
    page.locator("input[name=max_length]").dispatch_event("change")
    page.get_by_role("button", name="Next →").click()
    expect(page.locator('#rows article[data-row="5"] pre.rendered').first).to_contain_text(
        "<|im_start|>", timeout=rendered
    )
    page.get_by_role("button", name="← Previous").click()
    expect(first.locator(".key")).to_have_text(["prompt", "chosen", "rejected"], timeout=rendered)
    no_horizontal_scroll(page)
    screenshot(page, "dashboard-dataset-rendered.png", tmp_path)


def test_a_grpo_job_from_the_form_charts_live_shows_samples_and_downloads_its_checkpoint(
    page: Page, live: Live, tmp_path: Path
) -> None:
    dataset = api_upload(live, live.key, "gsm8k-prompts.jsonl", prompt_rows())
    sign_in(page, live.key)
    page.goto("/#/jobs/new")
    form = page.locator("#job-form")
    form.locator('[data-field="algorithm"] select').select_option('"grpo"')
    hyper = form.locator('[data-field="hyperparameters"]')
    expect(hyper.locator('[data-field="num_generations"]')).to_be_visible()  # GRPO's own schema loaded
    form.locator('[data-field="base_model"] input').fill("tiny")
    form.locator('[data-field="dataset_id"] input').fill(dataset["id"])
    form.locator('[data-field="name"] input').fill("grpo from the form")
    reward = [{"type": "rule", "rule": "length", "target_length": 40, "name": "brevity"}]
    form.locator('[data-field="reward"] textarea').fill(json.dumps(reward))

    # The server's validation comes back with the field named.
    hyper.locator('[data-field="learning_rate"] input').fill("5")
    form.locator("button[type=submit]").click()
    expect(form.locator(".error")).to_contain_text("hyperparameters.learning_rate")
    expect(hyper.locator('[data-field="learning_rate"]')).to_have_class(re.compile("invalid"))
    no_horizontal_scroll(page)
    screenshot(page, "dashboard-new-job.png", tmp_path)
    hyper.locator('[data-field="learning_rate"] input').fill("")
    hyper.locator('[data-field="max_steps"] input').fill("40")
    lora = form.locator('[data-field="lora"]')
    expect(lora.locator('[data-field="r"]')).to_be_hidden()  # null (full fine-tuning) unless switched on
    lora.locator('input[name="lora.enabled"]').check()
    lora.locator('[data-field="r"] input').fill("8")
    form.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"#/jobs/job[-_]"))
    job_id = page.url.rsplit("/", 1)[-1]

    # Live: the loss chart gains points while the job runs (events arrive over the SSE stream).
    expect(page.locator("#top + main .badge[data-status=running]")).to_be_visible(timeout=30_000)
    page.wait_for_function("() => +document.querySelector('figure[data-chart=\"Loss\"]')?.dataset.points >= 2")
    seen = points(page, "Loss")
    page.wait_for_function(
        f"() => +document.querySelector('figure[data-chart=\"Loss\"]').dataset.points > {seen}", timeout=10_000
    )
    assert page.locator(".badge[data-status]").first.get_attribute("data-status") == "running"
    for chart in (
        "Learning rate",
        "Grad norm",
        "Tokens / s",
        "Reward (total and per component)",
        "KL",
        "Clip fraction",
        "Completion length",
    ):
        expect(page.locator(f'figure[data-chart="{chart}"]')).to_be_visible()
    expect(page.locator('figure[data-chart="Reward (total and per component)"]')).to_contain_text("rewards/brevity")

    # Samples: prompt (a real GSM8K question), completion, reward per component.
    expect(page.locator("#samples")).to_be_visible()
    first = page.locator("#samples tr.sample").first
    expect(first).to_contain_text("fake completion at step")
    expect(first).to_contain_text("brevity:")

    expect(page.locator(".badge[data-status=succeeded]").first).to_be_visible(timeout=40_000)
    page.wait_for_function("() => +document.querySelector('figure[data-chart=\"Loss\"]').dataset.points === 40")
    expect(page.locator("#events")).to_contain_text("succeeded")
    no_horizontal_scroll(page)

    # The checkpoint: fetched with the Bearer header, saved as a file whose sha256 is the one shown.
    row = page.locator("tr[data-checkpoint]").first
    expect(row).to_be_visible()
    shown = row.locator("td.sha").inner_text().strip()
    with page.expect_download() as info:
        row.get_by_role("button", name="Download").click()
    saved = tmp_path / "checkpoint.tar"
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == shown
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dashboard-job.png", tmp_path)

    listed = httpx.get(f"{live.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {live.key}"}).json()
    assert listed["name"] == "grpo from the form" and listed["hyperparameters"]["max_steps"] == 40
    assert listed["hyperparameters"]["learning_rate"] == 1e-6  # left blank: the server's default
    assert listed["lora"]["r"] == 8 and listed["lora"]["alpha"] == 32
    assert listed["reward"][0]["name"] == "brevity"


def test_a_dpo_job_draws_margins_with_their_eval_twins_is_paused_resumed_and_cancelled_from_its_page(
    page: Page, live: Live
) -> None:
    dataset = api_upload(live, live.key, "pairs.jsonl", short_preference_pairs(12))
    headers = {"Authorization": f"Bearer {live.key}"}
    body = {
        "algorithm": "dpo",
        "base_model": "tiny",
        "dataset_id": dataset["id"],
        "eval_dataset_id": dataset["id"],
        "hyperparameters": {"max_steps": 400},
    }
    job = httpx.post(f"{live.url}/v1/jobs", headers=headers, json=body).json()
    sign_in(page, live.key)
    page.goto(f"/#/jobs/{job['id']}")
    margins = page.locator('figure[data-chart="DPO reward margin"]')
    expect(margins).to_contain_text("eval/rewards/margins", timeout=30_000)
    expect(page.locator('figure[data-chart="Loss"]')).to_contain_text("eval/loss")
    expect(page.locator('figure[data-chart="DPO reward accuracy"]')).to_be_visible()
    expect(page.locator("#samples")).to_be_hidden()
    expect(page.locator(".toolbar .progress")).to_contain_text("10/400", timeout=30_000)  # idle from here
    expect(page.locator("#resume")).to_be_hidden()
    page.locator("#pause").click()
    expect(page.locator(".badge[data-status=paused]").first).to_be_visible(timeout=30_000)
    expect(page.locator("#pause")).to_be_hidden()
    page.locator("#resume").click()
    expect(page.locator(".badge[data-status=running]").first).to_be_visible(timeout=30_000)
    expect(page.locator("#resume")).to_be_hidden()
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel").click()
    expect(page.locator(".badge[data-status=cancelled]").first).to_be_visible(timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()


def test_the_jobs_list_shows_status_and_progress_and_filters(page: Page, live: Live, tmp_path: Path) -> None:
    sign_in(page, live.key)
    expect(page.locator("tr[data-job]").first).to_be_visible()
    rows = page.locator("tr[data-job]")
    assert rows.count() >= 2
    expect(page.locator("tr[data-job]", has_text="grpo from the form").locator(".progress")).to_contain_text("40/40")
    no_horizontal_scroll(page)
    screenshot(page, "dashboard-jobs.png", tmp_path)
    page.select_option("select[name=status]", "cancelled")
    expect(page.locator("tr[data-job] .badge")).to_have_text(["cancelled"])
    no_horizontal_scroll(page)


def test_a_second_tenants_key_sees_none_of_it(page: Page, live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    theirs = httpx.get(f"{live.url}/v1/jobs", headers=headers).json()["data"]
    assert theirs, "the earlier tests created jobs for the first tenant"
    sign_in(page, live.other_key)
    expect(page.locator("table.list")).to_contain_text("No jobs yet.")
    page.goto("/#/datasets")
    expect(page.locator("table.list")).to_contain_text("No datasets yet.")
    page.goto(f"/#/jobs/{theirs[0]['id']}")
    expect(page.locator(".error")).to_contain_text("404")
    page.goto(f"/#/datasets/{theirs[0]['dataset_id']}")
    expect(page.locator(".error")).to_contain_text("404")


def test_long_series_are_drawn_with_at_most_2000_points_keeping_the_extremes(page: Page, live: Live) -> None:
    page.goto("/")
    started = time.monotonic()
    result = page.evaluate(
        """async () => {
            const { downsample, MAX_POINTS } = await import('/dashboard/charts.js');
            const xs = [], ys = [];
            for (let i = 0; i < 200000; i++) { xs.push(i); ys.push(Math.sin(i / 1000)); }
            ys[123457] = 50; ys[7] = -50;
            const [ox, oy] = downsample(xs, ys);
            const sorted = ox.every((x, i) => i === 0 || x > ox[i - 1]);
            return { max: MAX_POINTS, n: ox.length, hi: Math.max(...oy), lo: Math.min(...oy), sorted };
        }"""
    )
    assert result["n"] <= result["max"] == 2000
    assert result["hi"] == 50 and result["lo"] == -50 and result["sorted"]
    assert time.monotonic() - started < 5


def test_the_sse_reader_splits_events_across_chunks_and_line_endings(page: Page, live: Live) -> None:
    """The fetch-based reader (EventSource cannot send the Bearer header) against awkward chunking:
    CRLF split between chunks, comments (pings), multi-line data, an event cut mid-field."""
    page.goto("/")
    events = page.evaluate(
        """async () => {
            const { sse } = await import('/dashboard/api.js');
            const chunks = [': ping\\r\\n\\r', '\\nid: 1\\r\\nevent: metrics\\r\\ndata: {"seq": 1, ',
                            '"type": "metrics"}\\r\\n\\r\\n', 'id: 2\\nevent: log\\ndata: line one\\ndata: line two\\n',
                            '\\nid: 3\\rdata: {"seq"', ': 3}\\r\\r'];
            const seen = {};
            window.fetch = async (url, init) => {
                seen.url = url; seen.headers = init.headers;
                const body = new ReadableStream({ start(c) {
                    for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
                    c.close();
                } });
                return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
            };
            const out = [];
            for await (const ev of sse('/v1/jobs/job_x/events/stream', { lastEventId: 7 })) out.push(ev);
            return { out, seen };
        }"""
    )
    assert events["out"] == [
        {"id": "1", "event": "metrics", "data": {"seq": 1, "type": "metrics"}},
        {"id": "2", "event": "log", "data": "line one\nline two"},
        {"id": "3", "event": "message", "data": {"seq": 3}},
    ]
    assert events["seen"]["headers"]["Last-Event-ID"] == "7"
    assert events["seen"]["headers"]["Accept"] == "text/event-stream"
    assert "key" not in events["seen"]["url"] and "token" not in events["seen"]["url"]


def test_the_pipelines_list_shows_each_stage_with_its_status_and_job(page: Page, live: Live) -> None:
    dataset = api_upload(live, live.key, "pairs.jsonl", short_preference_pairs(8))
    job = {"algorithm": "dpo", "dataset_id": dataset["id"], "hyperparameters": {"max_steps": 2}}
    first, second = {**job, "base_model": "tiny"}, {**job, "base_model": "stage:first"}
    body = {"name": "two dpo stages", "stages": [{"name": "first", "job": first}, {"name": "second", "job": second}]}
    created = httpx.post(f"{live.url}/v1/pipelines", headers={"Authorization": f"Bearer {live.key}"}, json=body)
    assert created.status_code == 201, created.text
    sign_in(page, live.key)
    page.goto("/#/pipelines")
    row = page.locator(f"tr[data-pipeline='{created.json()['id']}']")
    expect(row).to_contain_text("two dpo stages")
    expect(row.locator("[data-stage=second] .badge")).to_have_text("succeeded", timeout=60_000)
    expect(row.locator("td").nth(1).locator(".badge")).to_have_text("succeeded")
    row.locator("[data-stage=first] a").click()
    expect(page).to_have_url(re.compile(r"#/jobs/job_"))
    no_horizontal_scroll(page)


# Last in the module on purpose: its 30 queued jobs would hold up the module's one worker (~1 s a job)
# for every test after it (the pipelines test waited ~30 s for them when it came later); here the
# module's teardown stops the worker instead.
def test_hundreds_of_jobs_are_paged_25_at_a_time(page: Page, live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.other_key}"}
    dataset = api_upload(live, live.other_key, "pairs.jsonl", short_preference_pairs(4))
    for i in range(30):  # one fake step each; the worker works through them while the list is paged
        body = {
            "algorithm": "dpo",
            "base_model": "tiny",
            "dataset_id": dataset["id"],
            "name": f"many-{i:02d}",
            "hyperparameters": {"max_steps": 1},
        }
        assert httpx.post(f"{live.url}/v1/jobs", headers=headers, json=body).status_code == 201
    sign_in(page, live.other_key)
    rows = page.locator("tr[data-job]")
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text("many-29")
    page.get_by_role("button", name="Older →").click()
    expect(rows).to_have_count(5)
    expect(rows.last).to_contain_text("many-00")
    expect(page.get_by_role("button", name="Older →")).to_be_disabled()
    page.get_by_role("button", name="← Newer").click()
    expect(rows).to_have_count(25)
    expect(rows.first).to_contain_text("many-29")
