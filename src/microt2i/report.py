"""HTML report of a run: sample grid, loss curve, metrics table, per-sample detections, resolved config."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_write_bytes, atomic_write_text


def save_grid(images: np.ndarray, path: str | Path, *, nrow: int, upscale: int = 4, pad: int = 2) -> Path:
    """uint8 [N, H, W, 3] → one PNG, `nrow` per row, nearest-neighbour upscaled so small samples are visible."""
    n, h, w, _ = images.shape
    ncol = -(-n // nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    im = Image.fromarray(grid).resize((grid.shape[1] * upscale, grid.shape[0] * upscale), Image.NEAREST)
    return _save_png(im, path)


def _save_png(im: Image.Image, path: str | Path) -> Path:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_stats(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def loss_plot(stats: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [s for s in stats if "loss" in s]  # in-training eval lines (eval/live.py) carry no loss
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    if stats:
        ax.plot([s["nimg"] for s in stats], [s["loss"] for s in stats], lw=1.5)
    ax.set_xlabel("images seen")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(run_dir: str | Path, *, title: str, metrics: dict, images: dict[str, str], samples: list[dict],
                 config_text: str) -> Path:
    """Write run_dir/report.html; `images` maps captions to PNG paths relative to run_dir."""
    run_dir = Path(run_dir)
    figs = "".join(f'<figure><img src="{html.escape(src)}"><figcaption>{html.escape(cap)}</figcaption></figure>'
                   for cap, src in images.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top}}img{{max-width:520px;image-rendering:pixelated}}
pre{{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Metrics</h2>{_table([{"metric": k, "value": v} for k, v in metrics.items()])}
<h2>Figures</h2>{figs}
<h2>Samples</h2>{_table(samples)}
<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>
</body></html>"""
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path
