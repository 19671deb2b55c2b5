"""The tab's HTML: escaped, inline images only, progress and loss drawn from the real status."""

import math

from lib_lora_train.jobs import JobStatus
from lib_lora_train.ui import render
from lib_lora_train.ui.adapters import AdapterRow

HOSTILE = '<script>alert("x")</script>'


def test_every_shown_text_is_escaped():
    row = AdapterRow(HOSTILE, HOSTILE, "o", "d", "2026-01-01", "2027-01-01", "never", "1 KB", "active")
    pages = [render.adapters_table([row]), render.message(HOSTILE, "error"), render.notices([HOSTILE]),
             render.dataset_summary({"rejected": [{"input": "file 1", "reason": HOSTILE}], "warnings": [HOSTILE]}),
             render.receipt({"name": HOSTILE}), render.gallery([(HOSTILE, b"png")], {HOSTILE: HOSTILE}),
             render.before_after(b"a", b"b", HOSTILE), render.generated(b"png", HOSTILE)]
    for html in pages:
        assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_gallery_embeds_images_as_data_uris():
    html = render.gallery([("images/a.png", b"\x89PNG-bytes")])
    assert 'src="data:image/png;base64,iVBORy1ieXRlcw=="' in html and "file=" not in html


def test_progress_reflects_the_status():
    running = JobStatus("job-1", state="running", step=3, total_steps=12, epoch=1, loss=0.125, eta_seconds=75,
                        steps_per_second=2.5)
    html = render.progress(running)
    assert 'data-state="running"' in html and 'aria-valuenow="3"' in html and "width:25.0%" in html
    assert "step 3/12" in html and "2.50 it/s" in html and "ETA 1:15" in html and "loss 0.1250" in html
    failed = JobStatus("job-2", state="failed", error="out of memory: lower batch_size")
    assert 'role="alert"' in render.progress(failed) and "out of memory" in render.progress(failed)
    assert 'data-state="idle"' in render.progress(None)


def test_the_loss_curve_draws_every_step_and_survives_nan():
    html = render.loss_curve([0.5, 0.4, math.nan, 0.3])
    raw = html.split('class="medlora-loss-raw" fill="none" points="')[1].split('"')[0]
    assert len(raw.split()) == 4 and "nan" not in raw
    assert "last 0.3000" in html
    assert "appears once training starts" in render.loss_curve([])


def test_the_result_offers_the_exact_snippet_to_copy():
    class View:
        snippet = "<lora:chest_ct:0.7>"

        class adapter:
            name, size_bytes, expires_at = "chest_ct", 77_000, "2027-06-30T00:00:00+00:00"

    html = render.result(View)
    assert 'data-copy="&lt;lora:chest_ct:0.7&gt;"' in html and "75.2 KB" in html and "2027-06-30" in html


def test_image_tiles_carry_their_caption_and_class():
    html = render.generated(b"png", "a ct scan <lora:x:0.7>")
    assert 'class="medlora-tile medlora-generated"' in html
    assert "<figcaption>a ct scan &lt;lora:x:0.7&gt;</figcaption>" in html
    tile = render.gallery([("images/ab12.png", b"png")], {"images/ab12.png": "CT scan of chest"})
    assert 'alt="CT scan of chest" loading="lazy"' in tile and "<figcaption>ab12.png</figcaption>" in tile
