"""The run report, one self-contained HTML file (images base64-inlined, every text HTML-escaped; the page parts
and `write_report`, the demo's and `microt2i eval`'s page, are in `eval/pages.py`).

- `run_report` (`microt2i report RUN`): a run's config, loss / grad-norm / lr / eval-metric curves from
  stats.jsonl (inline SVG, no plotting library needed), the grid of every in-training evaluation (eval/live.py),
  the GenEval tables of `microt2i eval geneval`, other eval results, and cost / throughput.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from .eval.pages import data_uri, html_figure, html_page, html_table, read_stats, save_grid
from .io import atomic_write_text
from .config import ConfigError, load_yaml
from .cost import count_train_flops
from .data.prompts import grid_nrow, grid_prompts
from .sample import Source


# ------------------------------------------------------------------------------------------------ run report


def run_metrics(run_dir: str | Path) -> dict[str, dict]:
    """Every metric file of a run: {"demo": metrics.json, "eval/<suite>": results.json["metrics"], ...}."""
    run_dir = Path(run_dir)
    out = {}
    if (run_dir / "metrics.json").is_file():
        out["demo"] = json.loads((run_dir / "metrics.json").read_text())
    for f in sorted(run_dir.glob("eval/*/results.json")):
        out[f"eval/{f.parent.name}"] = json.loads(f.read_text()).get("metrics", {})
    return out


def svg_curve(points: list[tuple[float, float]], *, title: str, xlabel: str = "images seen", log_y: bool = False,
              width: int = 480, height: int = 240) -> str:
    """A line chart as inline SVG: axes with min/max ticks, one polyline (drops non-finite and, on log_y, ≤ 0)."""
    pts = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)]
    esc = html.escape
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">' \
           f'<title>{esc(title)}</title><text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{esc(title)}</text>'
    if not pts:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>'
    f = math.log10 if log_y else (lambda v: v)
    xs, ys = [p[0] for p in pts], [f(p[1]) for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 <= y0:  # a constant series: centre it in a band of ±10 % (±0.5 around 0)
        pad = abs(y0) * 0.1 or 0.5
        y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1
    left, right, top, bottom = 58, 10, 24, 34
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    lab = (lambda v: f"{10 ** v:.3g}") if log_y else (lambda v: f"{v:.3g}")
    axes = (f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>'
            f'<text x="{left - 4}" y="{py(y1) + 4:.1f}" text-anchor="end" font-size="10">{lab(y1)}</text>'
            f'<text x="{left - 4}" y="{py(y0) + 4:.1f}" text-anchor="end" font-size="10">{lab(y0)}</text>'
            f'<text x="{left}" y="{height - bottom + 14}" font-size="10">{x0:.4g}</text>'
            f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end" font-size="10">{x1:.4g}</text>'
            f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{esc(xlabel)}'
            f'{" (log y)" if log_y else ""}</text>')
    marker = "".join(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="#1f77b4"/>' for x, y in zip(xs, ys)) \
        if len(xs) <= 40 else ""
    return head + axes + f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>{marker}</svg>'


def _curves(stats: list[dict]) -> str:
    train = [s for s in stats if s.get("loss") is not None]
    evals = [s for s in stats if any(k.startswith("eval/") for k in s)]
    charts = [svg_curve([(s["nimg"], s["loss"]) for s in train], title="training loss", log_y=True)]
    val = [s for s in stats if s.get("val_loss") is not None]  # train.val_every_nimg (train/validation.py)
    if val:
        charts.append(svg_curve([(s["nimg"], s["val_loss"]) for s in val], title="held-out loss (fixed σ and noise)",
                                log_y=True))
    for key, log_y in (("grad_norm", True), ("lr", False), ("img_per_s", False)):
        if any(key in s for s in train):
            charts.append(svg_curve([(s["nimg"], s[key]) for s in train if s.get(key) is not None], title=key, log_y=log_y))
    keys = sorted({k for s in evals for k, v in s.items() if k.count("/") == 1 and isinstance(v, (int, float))
                   and k not in ("eval/seconds", "eval/fd_n")})  # per-tag values go to the table below
    charts += [svg_curve([(s["nimg"], s[k]) for s in evals if k in s], title=k) for k in keys]
    rows = [{"images seen": s["nimg"], **{k[5:]: v for k, v in s.items() if k.startswith("eval/") and k != "eval/grid"}}
            for s in evals]
    return "".join(charts) + (f"<h3>In-training evaluation</h3>{html_table(rows)}" if rows else "")


def _cost(run_dir: Path, stats: list[dict], cfg) -> list[dict]:
    train = [s for s in stats if "loss" in s]
    if not train:
        return []
    last = train[-1]
    rows = [{"quantity": "images seen", "value": last["nimg"]}, {"quantity": "optimizer steps", "value": last["step"]},
            {"quantity": "training time (s)", "value": float(last.get("elapsed_s", 0.0))},
            {"quantity": "mean throughput (img/s)", "value": last["nimg"] / max(float(last.get("elapsed_s", 0.0)), 1e-9)},
            {"quantity": "last reported throughput (img/s)", "value": float(last.get("img_per_s", 0.0))},
            {"quantity": "skipped non-finite steps", "value": last.get("nan_skips", 0)},
            {"quantity": "peak host memory (MiB)", "value": float(last.get("maxrss_mib", 0.0))}]
    evals = [s["eval/seconds"] for s in stats if "eval/seconds" in s]
    if evals:
        rows.append({"quantity": "in-training evaluation time (s)", "value": float(sum(evals))})
    if cfg is not None:
        flops = count_train_flops(cfg).train
        rows.append({"quantity": "training FLOPs per image (forward + backward)", "value": float(flops)})
        rows.append({"quantity": "training FLOPs total", "value": float(flops) * last["nimg"]})
        rows.append({"quantity": "achieved FLOP/s (mean)", "value": float(flops) * last["nimg"]
                     / max(float(last.get("elapsed_s", 0.0)), 1e-9)})
    return rows


def _geneval_tables(run_dir: Path) -> str:
    f = run_dir / "eval" / "geneval" / "results.json"
    if not f.is_file():
        return "<p>(no GenEval yet: <code>microt2i eval geneval RUN</code>)</p>"
    summary = json.loads(f.read_text()).get("summary", {})
    rows = [{"tag": tag, **{k: v for k, v in s.items() if isinstance(v, (int, float, str))}}
            for tag, s in summary.get("tags", {}).items()]
    rows.append({"tag": "overall", "score": summary.get("overall")})
    return html_table(rows)


def final_grid(run_dir: str | Path, *, device="cpu", progress: bool = False) -> Path:
    """`<run>/grid.png`: the run's fixed-prompt, fixed-seed grid with its final EMA weights (the demo's grid; the
    prompts are listed in the run report)."""
    src = Source(run=run_dir, device=device)
    e = src.cfg.eval
    prompts, _ = grid_prompts(src.cfg)
    images, _ = src(prompts, seed=e.seed, progress=progress)
    return save_grid(images, Path(run_dir) / "grid.png", nrow=grid_nrow(len(prompts), e.grid_size),
                     upscale=max(1, 128 // images.shape[1]))


def run_report(run_dir: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write the self-contained HTML report of a run folder (default `<run>/run_report.html`); returns its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "stats.jsonl").is_file() and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} has neither stats.jsonl nor config.yaml: not a run folder "
                                f"(`microt2i train PRESET --run-dir {run_dir}` makes one)")
    stats = read_stats(run_dir / "stats.jsonl")
    cfg_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    cfg = load_yaml(run_dir / "config.yaml") if cfg_text else None
    parts = [f"<p>Run folder: <code>{html.escape(str(run_dir))}</code></p>"]
    parts.append(f"<h2>Curves</h2>{_curves(stats)}")
    grids = [(s["nimg"], s["eval/grid"]) for s in stats if isinstance(s.get("eval/grid"), str)
             and (run_dir / s["eval/grid"]).is_file()]
    if (run_dir / "grid.png").is_file():
        grids.append(("final", "grid.png"))
    prompts = ""
    if cfg is not None:
        try:
            listed = grid_prompts(cfg)[0]
        except (ConfigError, OSError) as e:  # a prompts file or store moved since training: the page still renders
            listed = [f"(prompts unavailable: {e})"]
        prompts = "<ol>" + "".join(f"<li>{html.escape(p)}</li>" for p in listed) + "</ol>"
    figs = "".join(html_figure(data_uri(run_dir / p), f"EMA samples at {n} images" if n != "final" else "final EMA samples")
                   for n, p in grids)
    parts.append(f"<h2>Sample grids per evaluation</h2>{figs or '<p>(none yet: a finished run gets its final grid; set eval.every_nimg for grids during training)</p>'}"
                 f"<details><summary>grid prompts (row-major)</summary>{prompts}</details>")
    if (run_dir / "finetune_before.png").is_file() and (run_dir / "finetune_after.png").is_file():  # train --init
        parts.append("<h2>Fine-tuning: before / after</h2>" + "".join(
            html_figure(data_uri(run_dir / f"finetune_{w}.png"), f"{w} fine-tuning (same prompts and seed)")
            for w in ("before", "after")))
    parts.append(f"<h2>GenEval</h2>{_geneval_tables(run_dir)}")
    metrics = run_metrics(run_dir)
    rows = [{"source": src, "metric": k, "value": v} for src, vals in metrics.items() for k, v in vals.items()
            if isinstance(v, (int, float, str))]
    parts.append(f"<h2>Metrics</h2>{html_table(rows)}")
    parts.append(f"<h2>Cost and throughput</h2>{html_table(_cost(run_dir, stats, cfg))}")
    parts.append(f"<h2>Config</h2><pre>{html.escape(cfg_text)}</pre>")
    path = Path(out) if out else run_dir / "run_report.html"
    atomic_write_text(path, html_page(title or f"microt2i run — {cfg.name if cfg else run_dir.name}", "\n".join(parts)))
    return path
