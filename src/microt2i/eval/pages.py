"""What evaluation writes for people to look at: PNG grids of samples, and self-contained HTML pages (images
base64-inlined, every text HTML-escaped). `report.py` (the run report) and the experiments build on these."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_write_bytes, atomic_write_text


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
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_stats(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def loss_plot(stats: list[dict], path: str | Path) -> Path:
    import matplotlib  # heavy (about a second to import): only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    stats = [s for s in stats if s.get("loss") is not None]  # eval lines carry no loss; all-skipped intervals None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    if stats:
        ax.plot([s["nimg"] for s in stats], [s["loss"] for s in stats], lw=1.5)
    ax.set_xlabel("images seen")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(dict.fromkeys(c for r in rows for c in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def data_uri(path: str | Path) -> str:
    """A PNG / JPEG file as a `data:` URI, so the page needs no other file."""
    p = Path(path)
    mime = "image/jpeg" if p.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode()}"


def html_figure(src: str, caption: str) -> str:
    return f'<figure><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}img{max-width:520px;image-rendering:pixelated}
figcaption{font-size:12px;color:#555;max-width:520px}svg{margin:0 1em 1em 0}
pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}"""


def html_page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, *, title: str, metrics: dict, images: dict[str, str], samples: list[dict],
                 config_text: str) -> Path:
    """Write run_dir/report.html; `images` maps captions to PNG paths relative to run_dir (inlined as data URIs,
    each followed by an HTML comment naming the file)."""
    run_dir = Path(run_dir)
    figs = "".join(html_figure(data_uri(run_dir / src), cap) + f"<!-- {html.escape(src)} -->" for cap, src in images.items())
    body = (f'<h2>Metrics</h2>{html_table([{"metric": k, "value": v} for k, v in metrics.items()])}'
            f"<h2>Figures</h2>{figs}<h2>Samples</h2>{html_table(samples)}"
            f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>")
    path = run_dir / "report.html"
    atomic_write_text(path, html_page(title, body))
    return path
