"""The HTML reports: one self-contained file (every image a decodable data URI), escaped text, curves as SVG whose
points follow the stats, grids per eval point, the GenEval table, cost rows."""

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from microt2i import presets
from microt2i.cli import main
from microt2i.config import apply_overrides, save_yaml
from microt2i.report import run_report, svg_curve
from microt2i.eval.pages import save_grid, write_report


class Page(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.images, self.polylines, self.svgs, self.text, self.tables = [], [], 0, [], 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "polyline":
            self.polylines.append(a["points"])
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table":
            self.tables += 1
        assert tag != "script", "no script tag may appear (text must be escaped)"

    def handle_data(self, data):
        self.text.append(data)


def _decode(src):
    head, b64 = src.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture
def run_dir(tmp_path):
    cfg = apply_overrides(presets.get("world-tiny"), ["name=<script>alert(1)</script>"])
    save_yaml(cfg, tmp_path / "config.yaml")
    lines = [{"nimg": n, "step": n // 16, "loss": 1.0 / n, "grad_norm": 0.5, "lr": 1e-3, "img_per_s": 100.0,
              "elapsed_s": n / 100.0, "nan_skips": 0, "maxrss_mib": 512.0} for n in (16, 32, 48, 64)]
    rng = np.random.default_rng(0)
    for n in (32, 64):  # in-training evaluations (eval/live.py layout)
        grid = f"eval/grid-{n:012d}.png"
        save_grid(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), tmp_path / grid, nrow=2, upscale=1)
        lines.append({"nimg": n, "eval/grid": grid, "eval/geneval": n / 128, "eval/seconds": 1.5})
    (tmp_path / "stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    ev = tmp_path / "eval" / "geneval"
    ev.mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({"metrics": {"overall": 0.4}, "summary": {
        "overall": 0.4, "tags": {"single_object": {"score": 0.75, "correct": 3, "total": 4},
                                 "colors": {"score": 0.05, "correct": 0, "total": 4}}}}))
    return tmp_path


def test_run_report_is_self_contained(run_dir):
    path = run_report(run_dir)
    assert path == run_dir / "run_report.html"
    text = path.read_text()
    page = Page(text)
    assert len(page.images) == 2 and all(src.startswith("data:") for src in page.images)
    sizes = [_decode(src).size for src in page.images]
    assert sizes == [(2 + 2 * 18, 2 + 2 * 18)] * 2  # both eval grids, decoded back
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the name, escaped
    words = " ".join(page.text)
    assert "EMA samples at 32 images" in words and "EMA samples at 64 images" in words
    assert "single_object" in words and "0.75" in words  # GenEval table
    assert "training FLOPs per image" in words and "mean throughput (img/s)" in words
    assert page.svgs >= 5  # loss, grad_norm, lr, img_per_s, eval/geneval
    loss = page.polylines[0].split()
    assert len(loss) == 4  # one point per training report
    # log-y: 1/n halves per doubling → equal steps between 16→32 and 32→64 in pixels
    y = [float(p.split(",")[1]) for p in loss]
    assert y[0] < y[1] < y[2] < y[3] and abs((y[1] - y[0]) - (y[3] - y[1])) < 0.2  # loss falls: y grows (SVG down)


def test_svg_curve_maps_the_data_range_to_the_plot():
    svg = svg_curve([(0, 0.0), (5, 2.0), (10, 1.0), (11, float("nan"))], title="a<b", width=200, height=100)
    pts = [tuple(map(float, p.split(","))) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert len(pts) == 3 and "a&lt;b" in svg
    assert pts[0][0] == 58 and pts[-1][0] == 200 - 10  # x range → [left margin, width - right margin]
    assert pts[1][1] == 24 and pts[0][1] == 100 - 34  # y max at the top, y min at the bottom
    assert "no data" in svg_curve([], title="empty")
    flat = svg_curve([(0, 0.0), (1, 0.0)], title="flat", width=200, height=100)  # constant: mid-height
    assert re.search(r'points="([^"]+)"', flat).group(1) == f"58.0,{(24 + 66) / 2:.1f} 190.0,{(24 + 66) / 2:.1f}"


def test_write_report_inlines_images(tmp_path):
    save_grid(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "grid.png", nrow=1, upscale=1)
    path = write_report(tmp_path, title="t & t", metrics={"hit_rate": 0.5}, images={"grid": "grid.png"},
                        samples=[{"prompt": "<b>x</b>"}], config_text="a: 1")
    page = Page(path.read_text())
    assert [_decode(s).size for s in page.images] == [(12, 12)] and "<b>x</b>" in " ".join(page.text)


def test_cli_report_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0 and out.is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
