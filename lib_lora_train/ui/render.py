"""HTML for the tab's read-only panels: summary, gallery, progress, loss curve, tables.

Everything shown is escaped; images are inline ``data:`` URIs (nothing is copied into
Gradio's cache, where an erasure could not reach it). Class names start with ``medlora-``.
"""

import base64
import html
import json
import math


def _e(value):
    return html.escape(str(value), quote=True)


def notices(lines):
    """Start-up problems and warnings, or nothing."""
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f'<div class="medlora-notice" role="status"><ul>{items}</ul></div>'


def message(text, kind="info"):
    """One line of feedback: ``info``, ``ok`` or ``error`` (``role=alert`` for errors)."""
    if not text:
        return ""
    role = "alert" if kind == "error" else "status"
    return f'<div class="medlora-message medlora-{_e(kind)}" role="{role}">{_e(text)}</div>'


def dataset_summary(report):
    """Counts (pseudonymous), modality mix, rejections by position with reasons, warnings."""
    counts = report.get("counts", {})
    facts = [("files", counts.get("inputs", 0)), ("accepted", counts.get("accepted_files", 0)),
             ("rejected", counts.get("rejected_files", 0)), ("images", counts.get("images", 0)),
             ("patients", counts.get("patients", 0)), ("studies", counts.get("studies", 0))]
    cells = "".join(f'<div class="medlora-fact"><span class="medlora-fact-value">{_e(v)}</span>'
                    f'<span class="medlora-fact-label">{_e(k)}</span></div>' for k, v in facts)
    modalities = ", ".join(f"{_e(m or 'unknown')}: {_e(n)}" for m, n in sorted(report.get("modalities", {}).items()))
    parts = [f'<div class="medlora-facts">{cells}</div>']
    if modalities:
        parts.append(f'<p class="medlora-modalities">Modalities: {modalities}</p>')
    rejected = report.get("rejected", [])
    if rejected:
        rows = "".join(f"<li><b>{_e(r.get('input', '?'))}</b>: {_e(r.get('reason') or r.get('code'))}</li>"
                       for r in rejected)
        parts.append(f'<details class="medlora-rejected" open><summary>Rejected files ({len(rejected)})</summary>'
                     f"<ul>{rows}</ul></details>")
    warnings = report.get("warnings", [])
    if warnings:
        parts.append('<ul class="medlora-warnings">' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    parts.append('<p class="medlora-hint">Patients and studies are counted by keyed pseudonyms; file names are '
                 "not kept (files are named by their position in the upload).</p>")
    return f'<div class="medlora-summary" data-dataset-id="{_e(report.get("dataset_id", ""))}">' + "".join(parts) + "</div>"


def _tile(png, alt, caption=None, extra_class="", lazy=False):
    """One inline PNG in a ``<figure>``; the caption is the alt text unless given."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    loading = ' loading="lazy"' if lazy else ""
    return (f'<figure class="medlora-tile {extra_class}"><img src="{uri}" alt="{_e(alt)}"{loading}>'
            f"<figcaption>{_e(alt if caption is None else caption)}</figcaption></figure>")


def gallery(thumbnails, captions=None):
    """Thumbnails as ``<figure>`` tiles with inline PNGs; ``captions`` maps file name to text."""
    if not thumbnails:
        return '<div class="medlora-gallery medlora-empty">No images yet.</div>'
    captions = captions or {}
    tiles = [_tile(data, captions.get(file_name) or file_name, file_name.rsplit("/", 1)[-1], lazy=True)
             for file_name, data in thumbnails]
    return f'<div class="medlora-gallery" aria-label="de-identified images">{"".join(tiles)}</div>'


def _duration(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress(status, polled_at=""):
    """The job's progress bar with step, epoch, speed, ETA and loss; the state as a data attribute.

    ``polled_at`` marks each answer, so the page's script sends the next poll only once this one
    has arrived instead of piling requests up behind a busy server.
    """
    mark = f' data-polled="{_e(polled_at)}"'
    if status is None:
        return (f'<div class="medlora-progress" data-state="idle"{mark}>No training job has run since the server '
                "started.</div>")
    total = max(status.total_steps or 0, 1)
    fraction = min(1.0, (status.step or 0) / total) if status.state != "done" else 1.0
    speed = f"{status.steps_per_second:.2f} it/s" if status.steps_per_second else "-- it/s"
    loss = f"{status.loss:.4f}" if status.loss is not None else "--"
    details = (f"step {status.step}/{status.total_steps or '?'} · epoch {status.epoch} · {speed} · "
               f"ETA {_duration(status.eta_seconds) if status.state == 'running' else '--:--'} · loss {loss}")
    error = f'<div class="medlora-message medlora-error" role="alert">{_e(status.error)}</div>' if status.error else ""
    return (f'<div class="medlora-progress" data-state="{_e(status.state)}" data-job-id="{_e(status.job_id)}" '
            f'data-step="{int(status.step or 0)}"{mark}>'
            f'<div class="medlora-progress-head"><span class="medlora-state">{_e(status.state)}</span>'
            f'<span class="medlora-progress-details">{_e(details)}</span></div>'
            f'<div class="medlora-bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" '
            f'aria-valuenow="{int(status.step or 0)}" aria-label="training progress">'
            f'<div class="medlora-bar-fill" style="width:{fraction * 100:.1f}%"></div></div>{error}</div>')


def loss_curve(losses, width=480, height=160):
    """An inline SVG of the loss per step (raw, light) and its running mean (bold)."""
    if not losses:
        return '<div class="medlora-loss medlora-empty">The loss curve appears once training starts.</div>'
    finite = [value for value in losses if math.isfinite(value)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (high - low) or 1.0
    pad = 24

    def points(values):
        count = max(len(values) - 1, 1)
        return " ".join(f"{pad + (width - 2 * pad) * i / count:.1f},"
                        f"{height - pad - (height - 2 * pad) * ((v if math.isfinite(v) else high) - low) / span:.1f}"
                        for i, v in enumerate(values))

    window = max(1, len(losses) // 10)
    mean = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
            for i in range(len(losses))]
    return (f'<svg class="medlora-loss" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="loss per step, {len(losses)} steps, last {losses[-1]:.4f}">'
            f'<text x="{pad}" y="14" class="medlora-axis">loss {high:.3f}</text>'
            f'<text x="{pad}" y="{height - 6}" class="medlora-axis">{low:.3f} · step {len(losses)}</text>'
            f'<polyline class="medlora-loss-raw" fill="none" points="{points(losses)}"/>'
            f'<polyline class="medlora-loss-mean" fill="none" points="{points(mean)}"/></svg>')


def before_after(without_png, with_png, snippet):
    """The result's preview: the same prompt and seed without and with the adapter."""
    return ('<div class="medlora-gallery medlora-previews">' + _tile(without_png, "without the adapter") +
            _tile(with_png, f"with {snippet}") + "</div>")


def generated(png, prompt):
    """One image of the standalone generate panel, captioned with its prompt."""
    return _tile(png, prompt, extra_class="medlora-generated")


def sample(path):
    """The newest training preview (``sample_prompt``) as an inline image, or nothing."""
    if path is None:
        return ""
    try:
        data = path.read_bytes()
    except OSError:  # erased meanwhile
        return ""
    return _tile(data, "training preview, " + path.stem.replace("_", " "), extra_class="medlora-sample")


def result(view):
    """The finished adapter: name, size, the prompt snippet with a copy button."""
    if view.adapter is None:
        return ""
    from .adapters import human_size

    snippet = view.snippet
    return (f'<div class="medlora-result" data-adapter="{_e(view.adapter.name)}">'
            f"<p>Adapter <b>{_e(view.adapter.name)}</b> is registered and ready ({_e(human_size(view.adapter.size_bytes))}, "
            f"expires {_e(view.adapter.expires_at[:10])}).</p>"
            f'<p>Use it in a prompt: <code class="medlora-snippet">{_e(snippet)}</code> '
            f'<button type="button" class="medlora-copy" data-copy="{_e(snippet)}" '
            f'aria-label="copy the prompt snippet">Copy</button></p></div>')


def adapters_table(rows):
    """The registered adapters with a Delete button per row (confirmed in ``javascript/``)."""
    from .adapters import ADAPTER_COLUMNS

    if not rows:
        return '<div class="medlora-adapters medlora-empty">No adapters are registered.</div>'
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in ADAPTER_COLUMNS) + '<th scope="col">action</th>'
    body = []
    for row in rows:
        cells = "".join(f"<td>{_e(c)}</td>" for c in row.cells())
        button = (f'<button type="button" class="medlora-delete" data-name="{_e(row.name)}" '
                  f'aria-label="delete adapter {_e(row.name)}">Delete</button>') if row.status == "active" else ""
        body.append(f'<tr data-name="{_e(row.name)}">{cells}<td>{button}</td></tr>')
    return (f'<table class="medlora-adapters"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def receipt(payload):
    """An erasure receipt as pretty JSON."""
    if not payload:
        return ""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    return f'<details class="medlora-receipt" open><summary>Erasure receipt</summary><pre>{_e(text)}</pre></details>'


def audit(view):
    """The chain check and the latest entries."""
    from .adapters import AUDIT_COLUMNS

    state = (f"intact ({view.lines} entries)" if view.intact
             else f"NOT intact: {view.problem}")
    kind = "ok" if view.intact else "error"
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in AUDIT_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in view.rows)
    return (message(f"Audit log check: {state}", kind) +
            f'<table class="medlora-audit"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
