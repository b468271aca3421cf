"""`microt2i serve RUN [RUN ...]`: a local page to try prompts on trained runs (DESIGN §5: app layer).

The page (one HTML document, inline CSS and JS, no CDN) has a prompt, seed, CFG scale, steps, sampler, images per
prompt, the world prompt extender as a toggle and the run picker; beside the images it shows the run's
fixed-prompt grid and its metrics. Images are requested one at a time (`POST /api/sample` with `index` k), so each
appears as soon as it is done; image k uses the noise of (seed, k), so the page shows exactly what
`microt2i sample RUN --prompt P --seed S --n N` writes (`sample.Source`, the same code path as the CLI).

Built on the standard library's `http.server`: the well-kept alternative (Gradio) would downgrade our Pillow
(13 → 12.x) and add ~19 packages (FastAPI, uvicorn, ...). It listens on 127.0.0.1 by default. Bad input (an empty
prompt, steps 0, a run still training, a diverged run) is answered with a message the page shows; any other
failure of a request is answered with HTTP 500 and the server keeps serving. One request samples at a time, and
at most `MAX_LOADED` runs stay loaded, so memory stays bounded however many requests come in.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from .config import ConfigError, load_yaml
from .encoders.extender import make_extender
from .report import run_metrics
from .eval.pages import read_stats
from .sample import Source

MAX_LOADED = 2  # runs kept in memory (least recently used one is dropped)
MAX_BODY = 64 * 1024
MAX_PROMPT = 2000
MAX_STEPS = 500  # a browser request should finish in minutes on a CPU
MAX_IMAGES = 16


class BadRequest(ValueError):
    """Input the page reports to the user (HTTP 400)."""


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (with config.yaml) among `paths`; a folder without config.yaml contributes its sub-folders that
    have one (`microt2i serve runs` serves every run under runs/)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(q for q in p.iterdir() if (q / "config.yaml").is_file())
        else:
            raise FileNotFoundError(f"{p} is not a folder; pass a run folder (runs/demo) or a folder of runs (runs)")
    if not out:
        raise FileNotFoundError(f"no run folder (with config.yaml) in {', '.join(map(str, paths))}; train one first "
                                f"(`microt2i demo` writes runs/demo)")
    return out


def run_status(run_dir: Path) -> str:
    """'' when the run can be sampled, else the reason (still training, diverged)."""
    stats = read_stats(run_dir / "stats.jsonl") if (run_dir / "stats.jsonl").is_file() else []
    losses = [s["loss"] for s in stats if isinstance(s.get("loss"), (int, float))]
    if losses and not math.isfinite(losses[-1]):
        return f"{run_dir.name} diverged (its last logged loss is {losses[-1]}); train it again with a lower train.lr"
    if not (run_dir / "ema" / "model.safetensors").is_file():
        seen = stats[-1]["nimg"] if stats else 0
        return (f"{run_dir.name} is still training ({seen} images so far); its weights (ema/) are written when it "
                f"finishes — try again then")
    return ""


def _png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class App:
    """The runs, their loaded models (an LRU of `MAX_LOADED`) and the request logic, independent of HTTP."""

    def __init__(self, runs: list[Path], device: str = "cpu"):
        self.runs, self.device = [Path(r) for r in runs], device
        self._loaded: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()  # one sampling call at a time: CPU threads and memory stay bounded
        self._extender = None

    def run_info(self, i: int) -> dict:
        run = self.runs[i]
        e = load_yaml(run / "config.yaml").eval
        grids = sorted(run.glob("eval/grid-*.png"), key=lambda p: int(p.stem.split("-")[-1]))
        grid = "grid.png" if (run / "grid.png").is_file() else (grids[-1].relative_to(run).as_posix() if grids else "")
        metrics = {f"{src}: {k}": v for src, vals in run_metrics(run).items() for k, v in vals.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {"index": i, "name": run.name, "path": str(run), "status": run_status(run), "grid": grid,
                "defaults": {"sampler": e.sampler, "steps": e.steps, "cfg": e.cfg_scale, "seed": e.seed},
                "metrics": metrics}

    def _source(self, i: int):
        if i in self._loaded:
            self._loaded.move_to_end(i)
            return self._loaded[i]
        while len(self._loaded) >= MAX_LOADED:
            self._loaded.popitem(last=False)
        src = Source(run=self.runs[i], device=self.device)
        if any(not bool(p.isfinite().all()) for p in src.net.parameters()):
            raise BadRequest(f"{self.runs[i].name} diverged: its EMA weights hold NaN/Inf; train it again with a "
                             f"lower train.lr")
        self._loaded[i] = src
        return src

    def sample(self, req: dict) -> dict:
        """One image of a request: {run, prompt, seed, cfg, steps, sampler, index, extend} → {image (data URI), ...}."""
        def num(key, kind, lo, hi, default=None):
            v = req.get(key, default)
            if v is None or v == "":
                return None
            try:
                v = kind(v)
            except (TypeError, ValueError):
                raise BadRequest(f"{key} must be a {kind.__name__}, got {v!r}") from None
            if not lo <= v <= hi:
                raise BadRequest(f"{key} = {v} is outside [{lo}, {hi}]")
            return v

        run = num("run", int, 0, len(self.runs) - 1, 0)
        prompt = str(req.get("prompt") or "").strip()
        if not prompt:
            raise BadRequest("type a prompt first (e.g. \"A big red star in the middle on a plain grey background.\")")
        if len(prompt) > MAX_PROMPT:
            raise BadRequest(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT}")
        seed = num("seed", int, 0, 2**31 - 1)
        steps = num("steps", int, 1, MAX_STEPS)
        if "steps" in req and steps is None:
            raise BadRequest(f"steps must be a number in [1, {MAX_STEPS}]")
        cfg_scale = num("cfg", float, 0.0, 100.0)
        index = num("index", int, 0, MAX_IMAGES - 1, 0)
        sampler = str(req.get("sampler") or "") or None
        status = run_status(self.runs[run])
        if status:
            raise BadRequest(status)
        used = prompt
        if req.get("extend"):
            self._extender = self._extender or make_extender("world")
            try:
                used = self._extender.extend([prompt])[0]
            except ValueError as e:
                raise BadRequest(f"the world extender cannot read this prompt ({e}); switch the extender off or "
                                 f"write a GenEval-style prompt such as \"a photo of two red stars\"") from None
        with self._lock:
            src = self._source(run)
            try:
                images, settings = src([used], n=1, sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed,
                                       first_index=index)
            except (ConfigError, ValueError) as e:
                raise BadRequest(str(e)) from None
        uri = "data:image/png;base64," + base64.b64encode(_png(images[0])).decode()
        return {"image": uri, "prompt": used, "index": index, "settings": settings}


class Handler(BaseHTTPRequestHandler):
    app: App  # set by make_server
    quiet = False
    server_version = "microt2i-serve"

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self):
        try:
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if path == "/api/runs":
                return self._json(200, [self.app.run_info(i) for i in range(len(self.app.runs))])
            parts = path.strip("/").split("/")
            if len(parts) >= 3 and parts[0] == "runs" and parts[1].isdigit() and int(parts[1]) < len(self.app.runs):
                run = self.app.runs[int(parts[1])]
                rel = "/".join(parts[2:])
                f = (run / rel).resolve()
                allowed = rel == "grid.png" or (rel.startswith("eval/grid-") and rel.endswith(".png"))
                if allowed and f.is_file() and f.is_relative_to(run.resolve()):
                    return self._send(200, f.read_bytes(), "image/png")
            return self._json(404, {"error": f"no such page: {path}"})
        except Exception as e:  # the server keeps serving whatever one request did
            return self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def do_POST(self):
        try:
            if self.path != "/api/sample":
                return self._json(404, {"error": f"no such endpoint: {self.path}"})
            size = int(self.headers.get("Content-Length") or 0)
            if size > MAX_BODY:
                self.rfile.read(min(size, 16 * MAX_BODY))
                return self._json(413, {"error": f"request of {size} bytes; at most {MAX_BODY}"})
            try:
                req = json.loads(self.rfile.read(size) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._json(400, {"error": "the request body is not JSON"})
            if not isinstance(req, dict):
                return self._json(400, {"error": "the request body must be a JSON object"})
            return self._json(200, self.app.sample(req))
        except BadRequest as e:
            return self._json(400, {"error": str(e)})
        except Exception as e:
            return self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})


def make_server(runs: list[str | Path], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server (not started: call `serve_forever`) for the run folders `runs`; port 0 picks a free port."""
    app = App(find_runs(runs), device=device)
    handler = type("BoundHandler", (Handler,), {"app": app, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.app = app
    return server


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>microt2i</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .6em}
main{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em}
#form{width:22em} #form label{display:block;margin:.45em 0 .15em;font-size:.9em;color:#555}
#form input[type=number],#form select,#form textarea{width:100%;box-sizing:border-box;font:inherit}
textarea{height:5em} button{margin-top:.8em;font-size:1em;padding:.35em 1.2em}
#images{flex:1 1 18em;max-width:40em} #side{flex:0 1 340px} #images img,#grid img{image-rendering:pixelated}
#images img{width:160px;height:160px;margin:3px;border:1px solid #ccc}
#grid img{max-width:320px} .error{color:#b00020;font-weight:600} .note{color:#666;font-size:.85em}
table{border-collapse:collapse;font-size:.85em} td{border-bottom:1px solid #eee;padding:2px 6px}
</style></head><body>
<h1>microt2i — try a prompt</h1>
<main>
<section id="form">
<label for="run">run</label><select id="run"></select>
<div id="runstatus" class="note"></div>
<label for="prompt">prompt</label>
<textarea id="prompt">A big red star in the middle on a plain grey background.</textarea>
<label><input type="checkbox" id="extend"> prompt extender (world: short prompt → training-style long caption)</label>
<label for="seed">seed</label><input type="number" id="seed" value="0" min="0">
<label for="n">images (image k uses the noise of (seed, k))</label><input type="number" id="n" value="1" min="1" max="16">
<label for="cfg">CFG scale</label><input type="number" id="cfg" step="0.5" min="0">
<label for="steps">steps</label><input type="number" id="steps" min="1">
<label for="sampler">sampler</label>
<select id="sampler"><option>heun</option><option>euler</option><option>ddim</option><option>dpmpp_2m</option></select>
<button id="go">Generate</button>
<p id="msg" role="status"></p>
</section>
<section id="images"><b>images</b><div id="out"></div><p id="used" class="note"></p></section>
<section id="side"><b>the run's fixed-prompt grid</b><div id="grid"></div><b>metrics</b><table id="metrics"></table></section>
</main>
<script>
let runs = [];
const $ = (id) => document.getElementById(id);
function say(text, error) { $("msg").textContent = text; $("msg").className = error ? "error" : "note"; }
function showRun() {
  const r = runs[$("run").value]; if (!r) return;
  $("runstatus").textContent = r.status || r.path;
  $("runstatus").className = r.status ? "error" : "note";
  $("cfg").value = r.defaults.cfg; $("steps").value = r.defaults.steps; $("sampler").value = r.defaults.sampler;
  $("grid").innerHTML = r.grid ? `<img id="rungrid" alt="grid" src="/runs/${r.index}/${r.grid}">`
                               : "<p class='note'>no grid yet</p>";
  const t = $("metrics"); t.innerHTML = "";
  if (!Object.keys(r.metrics).length) t.insertRow().insertCell().textContent = "none yet: microt2i eval geneval RUN";
  for (const [k, v] of Object.entries(r.metrics)) {
    const row = t.insertRow(); row.insertCell().textContent = k;
    row.insertCell().textContent = Number.isInteger(v) ? v : v.toPrecision(4);
  }
}
async function loadRuns() {
  runs = await (await fetch("/api/runs")).json();
  $("run").innerHTML = "";
  runs.forEach((r, i) => $("run").add(new Option(r.name + (r.status ? " (not ready)" : ""), i)));
  showRun();
}
async function generate() {
  $("go").disabled = true; $("out").innerHTML = ""; $("used").textContent = "";
  const n = Math.max(1, Math.min(16, parseInt($("n").value || "1")));
  const t0 = performance.now();
  try {
    for (let k = 0; k < n; k++) {
      say(`image ${k + 1} of ${n}…`, false);
      const body = {run: $("run").value, prompt: $("prompt").value, seed: $("seed").value, cfg: $("cfg").value,
                    steps: $("steps").value, sampler: $("sampler").value, extend: $("extend").checked, index: k};
      const res = await fetch("/api/sample", {method: "POST", headers: {"Content-Type": "application/json"},
                                              body: JSON.stringify(body)});
      const data = await res.json();
      if (!res.ok) { say(data.error || `HTTP ${res.status}`, true); return; }
      const img = document.createElement("img");
      img.id = `out${k}`; img.src = data.image; img.alt = `image ${k}`; img.title = `seed ${body.seed}, image ${k}`;
      $("out").appendChild(img);
      if (data.prompt !== body.prompt.trim()) $("used").textContent = "extended prompt: " + data.prompt;
    }
    say(`done: ${n} image${n > 1 ? "s" : ""} in ${((performance.now() - t0) / 1000).toFixed(1)} s`, false);
  } catch (e) { say("the server did not answer: " + e, true); }
  finally { $("go").disabled = false; }
}
$("run").addEventListener("change", showRun);
$("go").addEventListener("click", generate);
loadRuns().catch((e) => say("could not list the runs: " + e, true));
</script></body></html>
"""


def serve(runs: list[str | Path], *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    server = make_server(runs, host=host, port=port, device=device)
    h, p = server.server_address[:2]
    print(f"[serve] {len(server.app.runs)} run(s): {', '.join(r.name for r in server.app.runs)}")
    print(f"[serve] open http://{h}:{p}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[serve] stopped")
    finally:
        server.server_close()


__all__ = ["App", "BadRequest", "find_runs", "make_server", "run_status", "serve"]
