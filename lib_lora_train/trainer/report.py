"""The loss log (CSV) and loss curve (PNG) written next to an exported adapter.

The curve is drawn with Pillow, which every host already has, rather than pulling in a
plotting library for one line chart.
"""

import csv
import io
import math

from ..fileio import write_bytes_atomic, write_text_atomic

CURVE_SIZE = (640, 360)
MARGIN = (56, 20, 20, 36)  # left, top, right, bottom


def write_loss_log(path, losses):
    """``step,epoch,loss,learning_rate`` per optimizer step, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "epoch", "loss", "learning_rate"])
    writer.writerows([e["step"], e["epoch"], f"{e['loss']:.6g}", f"{e['learning_rate']:.6g}"] for e in losses)
    write_text_atomic(path, buffer.getvalue())


def smoothed(values, window=None):
    """Trailing moving average (window ~ 5% of the run, at least 1)."""
    window = window or max(1, len(values) // 20)
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def render_loss_curve(losses):
    """A PIL image of the raw (light) and smoothed (dark) loss against the step."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], CURVE_SIZE[0] - MARGIN[2], CURVE_SIZE[1] - MARGIN[3]
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    values = [e["loss"] for e in losses if math.isfinite(e["loss"])]
    if not values:
        draw.text((left + 8, top + 8), "no loss recorded", fill="black")
        return image
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def point(index, value):
        x = left + (right - left) * (index / max(len(values) - 1, 1))
        return x, bottom - (bottom - top) * ((value - low) / span)

    for series, colour in ((values, (170, 200, 235)), (smoothed(values), (20, 70, 160))):
        draw.line([point(i, v) for i, v in enumerate(series)] or [point(0, series[0])], fill=colour, width=2)
    draw.text((4, top), f"{high:.4g}", fill="black")
    draw.text((4, bottom - 12), f"{low:.4g}", fill="black")
    draw.text((left, bottom + 8), "step 1", fill="black")
    draw.text((right - 70, bottom + 8), f"step {losses[-1]['step']}", fill="black")
    draw.text((left + 8, top + 4), "training loss (light: per step, dark: moving average)", fill="black")
    return image


def write_loss_curve(path, losses):
    """Save :func:`render_loss_curve` as a PNG, atomically."""
    buffer = io.BytesIO()
    render_loss_curve(losses).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
