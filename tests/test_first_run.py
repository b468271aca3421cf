"""First-run experience: progress on every long job, sample folders that hold exactly one call, the final
grid in the run report, `microt2i serve` (bad input, 50 requests with a memory bound) and the page and run report
in a real headless browser."""

import base64
import contextlib
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microt2i.cli import main
from microt2i.progress import Progress, format_seconds, heartbeat

from _cdp import Browser, find_chromium

REPO = Path(__file__).resolve().parents[1]
STATUS = r"\[{}\] [\d.]+/[\d.]+ \w+ \(\d+%\)"  # a periodic status line of progress.py


def run_cli(args: list[str]) -> str:
    """Run `microt2i ARGS` in this process, stdout and stderr captured (not a terminal); returns both."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(args) == 0, err.getvalue()[-2000:]
    return out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("firstrun")
    mp.setenv("MICROT2I_CACHE", str(root / "cache"))
    mp.setenv("MICROT2I_STATUS_EVERY", "0.01")  # a status line on every update, as a slow job prints one every 10 s
    mp.setenv("MICROT2I_PROGRESS", "auto")
    mp.chdir(root)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def tiny(env, one_thread):
    """A finished world-tiny run trained through the CLI, and what it printed (not on a terminal)."""
    text = run_cli(["train", "world-tiny", "--run-dir", str(env / "runs" / "tiny")])
    return env / "runs" / "tiny", text


# ------------------------------------------------------------------------------------------------- progress.py


def test_progress_lines_start_estimate_status_and_end():
    s = io.StringIO()  # not a terminal: lines, never a bar
    with Progress(10, desc="job", unit="img", work="5 prompts × 2 seeds", stream=s, interval_s=0, warmup_s=0,
                  heartbeat=False) as p:
        for _ in range(4):
            time.sleep(0.01)
            p.update(2.5)
    lines = s.getvalue().splitlines()
    assert lines[0] == "[job] 10 img (5 prompts × 2 seeds); timing a short warm-up for the estimate"
    assert re.fullmatch(r"\[job\] estimate: .+ left, .+ in all \(.+ over the first 2 img\)", lines[1])
    assert re.match(STATUS.format("job"), lines[2]) and "ETA" in lines[2]
    assert re.fullmatch(r"\[job\] 10/10 img in .+ \(.+\)", lines[-1])
    assert "\r" not in s.getvalue()


def test_progress_heartbeat_speaks_while_one_step_is_slow(monkeypatch):
    monkeypatch.setenv("MICROT2I_STATUS_EVERY", "0.05")
    s = io.StringIO()
    with Progress(3, desc="slow", unit="step", stream=s):
        time.sleep(0.3)  # no update at all: the status thread still reports
    assert re.search(r"\[slow\] 0/3 step \(0%\), .* elapsed, still on the first step", s.getvalue())
    s = io.StringIO()
    with heartbeat("data", "building", stream=s):
        time.sleep(0.3)
    assert "[data] still building:" in s.getvalue() and "[data] building: done in" in s.getvalue()
    s = io.StringIO()
    with heartbeat("data", "quick", stream=s):
        pass
    assert s.getvalue() == ""  # a quick step prints nothing


def test_progress_off_and_format(monkeypatch):
    s = io.StringIO()
    with Progress(5, desc="x", stream=s, enabled=False) as p:
        p.update(5)
    assert s.getvalue() == ""
    monkeypatch.setenv("MICROT2I_PROGRESS", "off")
    with Progress(5, desc="x", stream=s) as p:
        p.update(5)
    assert s.getvalue() == ""
    assert [format_seconds(x) for x in (4.25, 42, 200, 3900)] == ["4.2 s", "42 s", "3m 20s", "1h 05m"]


# ----------------------------------------------------------------------------------- no long command is silent


def test_train_prints_size_status_and_final_grid(tiny):
    run, text = tiny
    assert "[train] 128 img (8 steps of 16)" in text
    assert re.search(STATUS.format("train"), text) and "loss=" in text
    assert (run / "grid.png").is_file()  # the finished run's fixed-prompt grid, shown by its run report
    assert "\r" not in text  # status lines, not bars, when not on a terminal


@pytest.mark.parametrize("command, tag", [
    ("sample {run} --prompt a --n 3 --steps 2 --out-dir s", "sample"),
    ("eval geneval {run} --per-tag 1 --images-per-prompt 1 --steps 2", "eval"),
    ("export {run} exp --overwrite", "sample"),
    ("caption --source world --n 6 --batch-size 2 --out caps.tsv", "caption"),
    ("precompute world-tiny data.store_dir=store data.num_images=8 data.shard_size=4", "precompute"),
    ("recipe world-microdit-tiny --root rcp", "recipe"),
])
def test_long_commands_print_status_lines(tiny, command, tag):
    text = run_cli(command.format(run=tiny[0]).split())
    assert re.search(rf"\[{tag}\] [\d.]+ \w+ \(.+\); timing a short warm-up", text), text[-800:]
    assert re.search(STATUS.format(tag), text), text[-800:]


def test_cutmix_build_is_not_silent(tiny):
    text = run_cli(["cutmix", "world-tiny", "augment.cutmix.setting=1/4", "--show", "0"])
    assert "[cutmix] still building 1/4 composites" in text


def test_eval_defaults_are_stated(tiny):
    text = run_cli(["eval", "geneval", str(tiny[0]), "--steps", "1", "--per-tag", "1"])
    assert "1 draws per tag × 1 images per prompt (world default; the official suite: --per-tag 100" in text


# ------------------------------------------------------------------------------------------- quick-tour fixes


def test_sample_folder_holds_exactly_the_last_call(tiny, env):
    out = env / "samples-once"
    run_cli(["sample", str(tiny[0]), "--prompt", "a", "--n", "4", "--steps", "1", "--out-dir", str(out)])
    (out / "notes.txt").write_text("mine")
    run_cli(["sample", str(tiny[0]), "--prompt", "b", "--n", "2", "--steps", "1", "--out-dir", str(out)])
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert pngs == [r["file"] for r in rows] == ["0000.png", "0001.png"]
    assert {r["prompt"] for r in rows} == {"b"} and (out / "notes.txt").read_text() == "mine"
    mine = env / "my-pictures"  # not a samples folder (no samples.jsonl): nothing in it is deleted
    mine.mkdir()
    Image.new("RGB", (4, 4)).save(mine / "0007.png")
    run_cli(["sample", str(tiny[0]), "--prompt", "c", "--steps", "1", "--out-dir", str(mine)])
    assert (mine / "0007.png").is_file() and (mine / "0000.png").is_file()


def test_default_output_folders_are_git_ignored():
    paths = ["samples/0000.png", "exports/tiny/model_index.json", "runs/demo/grid.png", "world.png",
             "captions.tsv", "star.png"]
    res = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert sorted(res.stdout.split()) == sorted(paths)


def test_run_report_shows_the_final_grid(tiny):
    run_cli(["report", str(tiny[0])])
    page = (tiny[0] / "run_report.html").read_text()
    assert "final EMA samples" in page


# ------------------------------------------------------------------------------------------------------ serve


def _png_array(data_uri: str) -> np.ndarray:
    assert data_uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


def test_served_image_is_the_cli_sample(tiny, env):
    from microt2i.serve import App

    run_cli(["sample", str(tiny[0]), "--prompt", "a red star", "--n", "2", "--seed", "5", "--steps", "3",
             "--out-dir", str(env / "ref")])
    app = App([tiny[0]])
    got = app.sample({"prompt": "a red star", "seed": 5, "steps": 3, "index": 1})
    assert np.array_equal(_png_array(got["image"]), np.asarray(Image.open(env / "ref" / "0001.png")))
    assert got["settings"]["seed"] == 5


def test_serve_bad_input_is_a_message(tiny, env):
    from microt2i.serve import App, BadRequest

    training = env / "runs" / "training"
    shutil.copytree(tiny[0], training, ignore=shutil.ignore_patterns("ema"))
    diverged = env / "runs" / "diverged"
    shutil.copytree(tiny[0], diverged)
    with open(diverged / "stats.jsonl", "a") as f:
        f.write(json.dumps({"nimg": 999, "loss": float("nan")}) + "\n")
    app = App([tiny[0], training, diverged])
    cases = [({"prompt": "  "}, "type a prompt"), ({"prompt": "a", "steps": 0}, "steps = 0 is outside"),
             ({"prompt": "a", "steps": "x"}, "steps must be a int"), ({"prompt": "a", "cfg": -1}, "cfg = -1.0"),
             ({"prompt": "a", "run": 7}, "run = 7 is outside"), ({"prompt": "a", "run": 1}, "still training"),
             ({"prompt": "a", "run": 2}, "diverged"), ({"prompt": "zzz qqq", "extend": True}, "extender")]
    for req, msg in cases:
        with pytest.raises(BadRequest, match=re.escape(msg)):
            app.sample(req)
    info = [app.run_info(i) for i in range(3)]
    assert [bool(i["status"]) for i in info] == [False, True, True] and info[0]["grid"] == "grid.png"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _request(url: str, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture()
def server(tiny):
    from microt2i.serve import make_server

    srv = make_server([tiny[0].parent], port=0, quiet=True)  # a folder of runs: every run under it
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join()


MEMORY_BOUND_MIB = 64  # RSS growth allowed from request 10 to request 50 (models load once; nothing accumulates)


def test_serve_survives_50_requests_with_bounded_memory(server):
    srv, url = server
    tiny_index = [r.name for r in srv.app.runs].index("tiny")
    good = json.dumps({"run": tiny_index, "prompt": "a blue ring", "steps": 2, "seed": 1}).encode()
    kinds = [("POST", "/api/sample", good, 200), ("POST", "/api/sample", b'{"prompt": ""}', 400),
             ("POST", "/api/sample", b'{"prompt": "a", "steps": 0}', 400), ("POST", "/api/sample", b"not json", 400),
             ("GET", "/", None, 200), ("GET", "/api/runs", None, 200), ("GET", f"/runs/{tiny_index}/grid.png", None, 200),
             ("GET", "/runs/0/../../etc/passwd", None, 404), ("POST", "/api/nothing", b"{}", 404),
             ("POST", "/api/sample", b"[1, 2]", 400)]
    codes, rss = [], []
    for i in range(50):
        method, path, body, expected = kinds[i % len(kinds)]
        code, payload = _request(url + path, body if method == "POST" else None)
        codes.append((code, expected))
        if path == "/api/sample":
            assert "error" in json.loads(payload) or "image" in json.loads(payload)
        if i in (9, 49):
            rss.append(_rss_mib())
    assert all(c == e for c, e in codes), codes
    assert rss[1] - rss[0] < MEMORY_BOUND_MIB, rss
    assert len(srv.app._loaded) <= 2


# ------------------------------------------------------------------------------------ a real headless browser


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium on PATH: `make browser` installs Debian's chromium (as root), or install it yourself")
    b = Browser(exe)
    yield b
    b.close()


def test_page_in_a_browser_matches_cli_sample_and_reports_bad_input(tiny, env, server, browser):
    srv, url = server
    run_cli(["sample", str(tiny[0]), "--prompt", "a green cube", "--n", "2", "--seed", "3", "--steps", "3",
             "--out-dir", str(env / "ref-browser")])
    browser.open(url + "/")
    browser.wait_for("document.querySelectorAll('#run option').length > 0")
    browser.eval(f"(() => {{ const s = document.getElementById('run'); s.value = "
                 f"'{[r.name for r in srv.app.runs].index('tiny')}'; s.dispatchEvent(new Event('change')); }})()")
    assert browser.wait_for("document.getElementById('rungrid')?.complete && "
                            "document.getElementById('rungrid').naturalWidth > 0")
    browser.type_into("#prompt", "a green cube")
    browser.type_into("#seed", "3")
    browser.type_into("#n", "2")
    browser.type_into("#steps", "3")
    browser.eval("document.getElementById('go').click()")
    src = [browser.wait_for(f"document.getElementById('out{k}')?.src") for k in range(2)]
    for k in range(2):
        assert np.array_equal(_png_array(src[k]), np.asarray(Image.open(env / "ref-browser" / f"{k:04d}.png")))
    browser.wait_for("!document.getElementById('go').disabled")
    browser.type_into("#steps", "0")  # bad input: a message on the page, and the server keeps serving
    browser.eval("document.getElementById('go').click()")
    msg = browser.wait_for("document.querySelector('#msg.error')?.textContent")
    assert "steps = 0" in msg
    browser.wait_for("!document.getElementById('go').disabled")
    browser.type_into("#prompt", "")
    browser.type_into("#steps", "2")
    browser.eval("document.getElementById('go').click()")
    assert "type a prompt" in browser.wait_for("document.querySelector('#msg.error')?.textContent?.includes('prompt')"
                                               " && document.querySelector('#msg').textContent")


def test_run_report_loads_every_image_and_plot_in_a_browser(tiny, browser):
    report = Path(run_cli(["report", str(tiny[0])]).split("[report] ")[1].split()[0]).resolve()
    browser.open(report.as_uri())
    images = browser.wait_for("Array.from(document.images).every(i => i.complete) && "
                              "Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(images) >= 1 and all(w > 0 and h > 0 for w, h in images)
    plots = browser.eval("Array.from(document.querySelectorAll('svg')).map(s => s.getBoundingClientRect().width)")
    assert len(plots) >= 1 and all(w > 0 for w in plots)


# ---------------------------------------------------------------------------------- the README's commands, shrunk


def _readme_commands(heading: str) -> list[list[str]]:
    """The `$B …` lines of the first bash block after `heading` in README.md, as argument lists."""
    import shlex

    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    start = section.index("```bash") + len("```bash")
    block = section[start:section.index("```", start)]
    return [shlex.split(ln.split("  #")[0])[1:] for ln in block.splitlines() if ln.startswith("$B ")]


def test_readme_quick_tour_runs_shrunk(tiny, env):
    commands = _readme_commands("## Quick tour")
    assert [c[0] for c in commands] == ["train", "sample", "sample", "eval", "eval", "export", "report", "serve"]
    assert commands[0] == ["train", "world-tiny", "--run-dir", "runs/tiny"]  # what the `tiny` fixture ran
    for args in commands[1:-1]:  # serve: test_serve_command_answers
        args = ["8" if a == "256" else a for a in args]  # fewer images and steps, the same commands
        if args[0] in ("sample", "eval"):
            args += ["--steps", "1"] + (["--per-tag", "1"] if args[1] == "geneval" else [])
        run_cli(args)
    for f in ("samples/grid.png", "samples/ext/samples.jsonl", "runs/tiny/eval/geneval/results.json",
              "runs/tiny/eval/fid/results.json", "exports/tiny/model_index.json", "runs/tiny/run_report.html"):
        assert (env / f).is_file(), f


def test_serve_command_answers(tiny):
    import os
    import sys

    exe = Path(sys.executable).parent / "microt2i"
    proc = subprocess.Popen([str(exe), "serve", str(tiny[0]), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = None
        for line in proc.stdout:
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "serve printed no address"
        code, body = _request(url + "api/runs")
        assert code == 200 and json.loads(body)[0]["name"] == "tiny"
        code, body = _request(url)
        assert code == 200 and b"<script>" in body and b"http://" not in body.split(b"<body>")[1]  # no CDN
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_readme_first_ten_minutes_train_your_own_resolves():
    text = (REPO / "README.md").read_text()
    line = re.search(r"`\.venv/bin/microt2i (train world-s [^`]+ --run-dir runs/mine)`", text).group(1)
    out = run_cli(line.split() + ["--dry-run"])
    from microt2i import presets

    assert f"total_nimg: {2 * presets.get('world-s').train.total_nimg}" in out  # "twice the demo's images"


def test_quiet_prints_nothing_but_errors(tiny, monkeypatch, capsys):
    monkeypatch.setenv("MICROT2I_PROGRESS", "auto")
    assert main(["-q", "sample", str(tiny[0]), "--prompt", "a", "--steps", "1", "--out-dir", "quiet"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_experiment_reports_arms_done_and_eta(monkeypatch, capsys):
    from microt2i import experiment

    monkeypatch.setattr(experiment, "run_arm", lambda *a, **k: time.sleep(0.01) or {})
    monkeypatch.setattr(experiment, "render", lambda *a, **k: {"report": "r.html", "summary": {}})
    monkeypatch.setenv("MICROT2I_PROGRESS", "auto")
    experiment.run_experiment("captions", seeds=2, md_path=None, progress=True, log=lambda *a: None)
    err = capsys.readouterr().err
    assert re.search(r"\[experiment\] 4 arm \(2 arms × 2 seeds, captions\)", err), err
    assert re.search(STATUS.format("experiment"), err) and "[experiment] 4/4 arm in" in err
