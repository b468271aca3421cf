"""An experiment's results for people: Markdown tables, claim lines, curves, time-to-quality, the HTML report and
its EXPERIMENTS.md section."""

from __future__ import annotations

import hashlib
import html
import io
import json
from pathlib import Path
import numpy as np
from .io import atomic_write_bytes, atomic_write_text
from .eval.pages import data_uri, html_page, html_table, read_stats
from .experiment_stats import ArmData, Summary, lower_is_better, summarize
from .experiment_defs import (EXPERIMENTS, Experiment, RUNTIME_KEYS, arm_config, find_result, git_commit,
                              select_arms)
from .cost import recipe_cost


# ------------------------------------------------------------------------------------------------ rendering


def fmt_ci(v: tuple[float, float, float] | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    p, lo, hi = v
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table_columns(summary: Summary) -> list[str]:
    cols = ["geneval", *[f"geneval/{t}" for t in summary.tags]]
    extra = [k for k in summary.rows[0] if k not in cols and isinstance(summary.rows[0][k], tuple)]
    return cols + extra


def markdown_table(summary: Summary, labels: dict[str, str] | None = None) -> str:
    """Arms × metrics, each cell `point [lo, hi]` (95 % bootstrap)."""
    cols = table_columns(summary)
    head = ["arm", "images seen", *[c.replace("geneval/", "").replace("geneval", "GenEval") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.rows:
        name = r["arm"] + (f" ({labels[r['arm']]})" if labels and labels.get(r["arm"]) else "")
        digits = lambda c: 2 if c.startswith("FD") else 4 if c == "KID" else 3  # noqa: E731
        lines.append("| " + " | ".join([name, f"{r['nimg']:,}", *[fmt_ci(r[c], digits(c)) for c in cols]]) + " |")
    return "\n".join(lines)


def claim_lines(summary: Summary) -> list[str]:
    out = []
    for c in summary.claims:
        cl = c["claim"]
        what = f"{cl.better} vs {cl.worse} on {cl.metric}"
        if c["delta"] is None:
            out.append(f"- {what}: not run ({cl.paper})")
            continue
        d, lo, hi = c["delta"]
        unit = " (lower is better; Δ = worse − better)" if lower_is_better(cl.metric) else ""
        out.append(f"- **{c['verdict']}**: {what}, Δ = {d:+.3f} [{lo:+.3f}, {hi:+.3f}]{unit}. Paper: {cl.paper}.")
    return out


def _curves(arms: dict[str, list[Path]], keys: list[str], path: Path) -> Path | None:
    """Metric vs images seen from each arm's in-training evaluations (stats.jsonl): thin lines per seed, thick the
    mean over seeds. None when no arm has in-training evaluations."""
    series = {a: [[s for s in read_stats(f / "stats.jsonl") if any(k in s for k in keys)] for f in fs]
              for a, fs in arms.items()}
    if not any(any(runs) for runs in series.values()):
        return None
    import matplotlib  # heavy: only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only for this figure

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (arm, runs) in enumerate(series.items()):
            color = f"C{i}"
            curves = [[(s["nimg"], s[key]) for s in run if key in s] for run in runs]
            for c in curves:
                if c:
                    ax.plot(*zip(*c), color=color, lw=0.7, alpha=0.4)
            common = sorted(set.intersection(*[{x for x, _ in c} for c in curves])) if all(curves) else []
            if common:
                ax.plot(common, [np.mean([dict(c)[x] for c in curves]) for x in common], color=color, lw=2,
                        marker="o", ms=3, label=arm)
        ax.set_xlabel("images seen")
        ax.set_title(key.replace("eval/", ""), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


TTQ_KEY, TTQ_THRESHOLDS = "eval/class_accuracy", (0.5, 0.8)


def first_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """Images seen at the first in-training evaluation whose value is >= threshold (None: never reached)."""
    return next((n for n, v in sorted(curve) if v >= threshold), None)


def time_to_quality(data: list[ArmData], folders: dict[str, list[Path]]) -> list[dict]:
    """Per arm: images and training FLOPs until the class-accuracy curve (`eval.class_n`) first reaches each threshold,
    median over seeds (a seed that never reaches it counts as ∞), each seed's value, and the speed-up in FLOPs over
    the first arm; the final class accuracy (mean over seeds). The thresholds are TTQ_THRESHOLDS and, under the key
    "first", the first arm's own final class accuracy (mean over seeds; the first arm reaches it at its full budget):
    the FLOPs each arm needs for the first arm's final quality."""
    rows, base = [], {}
    for arm in data:
        curves = [[(s["nimg"], s[TTQ_KEY]) for s in read_stats(f / "stats.jsonl") if TTQ_KEY in s]
                  for f in folders[arm.name]]
        if not any(curves):
            continue
        flops = arm.results[0]["train_flops_per_image"]
        row = {"arm": arm.name, "final": float(np.mean([c[-1][1] for c in curves if c])),
               "flops_per_image": flops}
        first_final = rows[0]["final"] if rows else row["final"]
        for key, th in (("first", first_final), *((t, t) for t in TTQ_THRESHOLDS)):
            if key == "first" and not rows:  # the first arm reaches its own final quality at its full budget
                reach = [c[-1][0] if c else None for c in curves]
            else:
                reach = [first_reach(c, th) for c in curves]
            med = float(np.median([np.inf if r is None else r for r in reach]))
            row[key] = {"threshold": th, "images": med, "flops": med * flops, "seeds": reach}
            if not rows:
                base[key] = row[key]["flops"]
            row[key]["speedup"] = (base[key] / row[key]["flops"] if np.isfinite(base.get(key, np.inf))
                                   and np.isfinite(row[key]["flops"]) else None)
        rows.append(row)
    return rows


def ttq_markdown(rows: list[dict], labels: dict[str, str]) -> str:
    def cell(r, key):
        c = r[key]
        seeds = ", ".join("—" if v is None else f"{v:,}" for v in c["seeds"])
        if not np.isfinite(c["images"]):
            return f"not reached ({seeds})"
        sp = f", {c['speedup']:.2f}×" if c["speedup"] is not None else ""
        return f"{c['images']:,.0f} img = {c['flops']:.3g} FLOPs{sp} ({seeds})"

    keys = ("first", *TTQ_THRESHOLDS)
    first = f"to {rows[0]['arm']}'s final ({rows[0]['final']:.3f})" if rows else "to the first arm's final"
    head = ["arm", "final class accuracy", first, *[f"to class accuracy {th}" for th in TTQ_THRESHOLDS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['arm']}: {labels.get(r['arm'], '')} | {r['final']:.3f} | "
                     + " | ".join(cell(r, k) for k in keys) + " |")
    return "\n".join(lines)


def collect(exp: Experiment, arms: list[str], seeds: list[int], *, root: str | Path, scale: float = 1.0,
            extra: tuple[str, ...] = (), commit: str | None = None, any_commit: bool = False
            ) -> tuple[list[ArmData], dict[str, list[Path]], list[str]]:
    """(arms with every requested seed finished, their folders, what is missing)."""
    head = git_commit()[0] if commit is None else commit
    data, folders, missing = [], {}, []
    for arm in arms:
        found = [find_result(root, exp, arm, s, arm_config(exp, arm, s, scale, extra), head, any_commit) for s in seeds]
        missing += [f"{arm} seed {s}" for s, f in zip(seeds, found) if f is None]
        done = [f for f in found if f is not None]
        if done:
            folders[arm] = done
            data.append(ArmData.of(arm, [json.loads((f / "result.json").read_text()) for f in done], done))
    return data, folders, missing


def render(exp: Experiment, arms: list[str], seeds: list[int], *, root: str | Path = "runs/experiments",
           md_path: str | Path | None = "EXPERIMENTS.md", scale: float = 1.0, extra: tuple[str, ...] = (),
           command: str = "", commit: str | None = None, any_commit: bool = False, n_boot: int = 2000,
           n_boot_fd: int = 200) -> dict:
    """Summarise the finished arms into runs/experiments/<name>/report.html and, with `md_path`, this experiment's
    section of EXPERIMENTS.md (+ its curve plot under experiments/<name>/). Returns {"summary", "report", ...}."""
    data, folders, missing = collect(exp, arms, seeds, root=root, scale=scale, extra=extra, commit=commit,
                                     any_commit=any_commit)
    if not data:
        raise FileNotFoundError(f"no finished arm of {exp.name!r} under {root} (seeds {seeds}); run "
                                f"`microt2i experiment {exp.name}` first")
    summary = summarize(data, exp.claims, n_boot=n_boot, n_boot_fd=n_boot_fd)
    labels = {a.name: a.label for a in exp.arms}
    results = [r for a in data for r in a.results]
    commits = sorted({r["commit"][:10] + ("+dirty" if r.get("dirty") else "") for r in results})
    devices = sorted({r["device"] for r in results})
    wall = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    per_arm = max(r["train_seconds"] + r["eval_seconds"] for r in results)
    budget = ", ".join(f"{a.name}: {a.results[0]['nimg']:,} images × {a.results[0]['train_flops_per_image'] / 1e9:.3g} "
                       f"GFLOPs" for a in data)
    meta = [f"command: `{command or f'microt2i experiment {exp.name}'}`", f"commit: {', '.join(commits)}",
            f"preset: {exp.preset} (scale {scale:g}); seeds: {', '.join(map(str, seeds))}",
            f"budget (training images × training FLOPs per image): {budget}",
            f"evaluation: world-GenEval {exp.eval.geneval_per_tag} prompts/tag × {exp.eval.geneval_images} images, "
            f"FD-EffNetLite0 / KID / PRDC (k 5) on {exp.eval.fd_n} held-out scenes; Heun {exp.eval.steps} steps",
            f"device: {'; '.join(devices)}", f"wall time: {wall / 60:.1f} min in all, longest arm-seed "
            f"{per_arm / 60:.1f} min (training + evaluation)"]
    if missing:
        meta.append(f"missing (not in the table): {', '.join(missing)}")
    variant = section_name(exp.name, scale, extra)
    out_dir = Path(root) / exp.name
    keys = [k for k in (TTQ_KEY, "eval/geneval", "eval/FD-EffNetLite0") if any(
        k in st for fs in folders.values() for f in fs for st in read_stats(f / "stats.jsonl"))] or ["eval/geneval"]
    suffix = variant[len(exp.name):]
    curve = _curves(folders, keys, out_dir / f"curves{suffix}.png")
    ttq = time_to_quality(data, folders)
    cols = table_columns(summary)
    html_rows = [{"arm": r["arm"], "images seen": r["nimg"], **{c: fmt_ci(r[c]) for c in cols}} for r in summary.rows]
    body = (f"<p>{html.escape(exp.question)}</p><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in meta) + "</ul>"
            f"<h2>Results (95 % bootstrap intervals)</h2>{html_table(html_rows)}<h2>Paper's direction</h2><ul>"
            + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in claim_lines(summary)) + "</ul>"
            + (f'<h2>Curves</h2><img src="{data_uri(curve)}" style="max-width:100%">' if curve else "")
            + (f"<h2>Time to quality (median over seeds; speed-up in training FLOPs over the first arm)</h2>"
               f"<pre>{html.escape(ttq_markdown(ttq, labels))}</pre>" if ttq else "")
            + "<h2>Arm-seed folders</h2><ul>" + "".join(f"<li><code>{html.escape(str(f))}</code></li>"
                                                         for fs in folders.values() for f in fs) + "</ul>")
    report = out_dir / f"report{suffix}.html"
    atomic_write_text(report, html_page(f"microt2i experiment {exp.name}", body))
    out = {"summary": summary, "report": report, "missing": missing}
    if md_path:
        md_path = Path(md_path)
        plot = None
        if curve is not None:
            plot = md_path.parent / "experiments" / exp.name / f"curves{suffix}.png"
            atomic_write_bytes(plot, curve.read_bytes())
        section = [f"### `{variant}`", "", exp.question, "", *[f"- {m}" for m in meta], "",
                   markdown_table(summary, labels), "", *claim_lines(summary)]
        if ttq:
            section += ["", "Time to quality (images and training FLOPs until the in-training class accuracy first "
                        "reaches the threshold — the first arm's own final accuracy, 0.5, 0.8; median over seeds, each "
                        "seed in brackets; speed-up in FLOPs over the first arm):", "", ttq_markdown(ttq, labels)]
        if plot is not None:
            section += ["", f"![{exp.name}: metric vs images seen]({plot.relative_to(md_path.parent).as_posix()})"]
        write_section(md_path, variant, "\n".join(section))
        out["markdown"] = md_path
    return out


def section_name(name: str, scale: float = 1.0, extra: tuple[str, ...] = ()) -> str:
    """The EXPERIMENTS.md section (and report/plot suffix) of a run: the experiment's name at the default scale
    without extra overrides, else e.g. `captions@scale2` or `masking@3f1c0a9b` (a hash of the overrides), so a
    larger or modified run never replaces the default-scale table."""
    if scale != 1.0:
        name += f"@scale{scale:g}"
    runtime = {".".join(k) for k in RUNTIME_KEYS}  # where and how fast it runs, not what is measured
    extra = tuple(o for o in extra if o.split("=", 1)[0] not in runtime)
    if extra:
        name += "@" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:8]
    return name


def write_section(path: str | Path, name: str, text: str, first: bool = False) -> None:
    """Replace (or append) the generated section of experiment `name` in the markdown file, between markers; text
    outside the markers (hand-written notes) is kept. `first`: a new section goes before the first generated one
    (the summary, at the top), not at the end."""
    path = Path(path)
    start, end = f"<!-- experiment:{name}:start (generated) -->", f"<!-- experiment:{name}:end -->"
    doc = path.read_text() if path.is_file() else "# Experiments\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    elif first and "<!-- experiment:" in doc:
        at = doc.index("<!-- experiment:")
        doc = doc[:at] + block + "\n\n" + doc[at:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, doc)


# ------------------------------------------------------------------------------------------------ the summary

SUMMARY = "summary"  # EXPERIMENTS.md's summary section (no experiment may take this name)
SUMMARY_SEEDS = 3  # the summary reads seeds 0 … 2 (fewer where fewer finished: its cells say how many)
GPU_SCALE = 16.0  # the GPU route's --scale: 16× the CPU budget (131,072 images per DiT-I arm); a guess, until the
#                   time-to-quality experiment says at which budget world-s draws single objects reliably
ASSUMED_MFU = 0.18  # the H100 MFU MicroDiT Table 6's own throughputs imply (17-19 %, cost.PAPER_NOTES)


def short_verdict(verdict: str) -> str:
    """The summary's four verdicts: held / not significant / reversed / not run."""
    return verdict if verdict in ("held", "reversed", "not run") else "not significant"


def summary_experiments() -> list[Experiment]:
    """The experiments whose claims the summary lists (those with claims), in EXPERIMENTS order."""
    return [e for e in EXPERIMENTS.values() if e.claims]


def experiment_command(exp: Experiment, arms: list[str] | tuple[str, ...], seeds: int, scale: float = 1.0,
                       extra: tuple[str, ...] = ()) -> str:
    """The `microt2i experiment` line that runs `arms` (--arms only where they are not all default arms)."""
    default = select_arms(exp, None)
    parts = ["microt2i experiment", exp.name, *extra, *([f"--scale {scale:g}"] if scale != 1 else []),
             f"--seeds {seeds}"]
    if not set(arms) <= set(default):
        parts.append(f"--arms {','.join(dict.fromkeys([*default, *arms]))}")
    return " ".join(parts)


def claim_summary(exp: Experiment, *, root: str | Path = "runs/experiments", seeds: int = SUMMARY_SEEDS,
                  scale: float = 1.0, extra: tuple[str, ...] = (), commit: str | None = None,
                  any_commit: bool = False, n_boot: int = 2000, n_boot_fd: int = 200) -> list[dict]:
    """One row per claim of `exp`: its verdict from the finished arm-seeds under `root` (seeds 0 … seeds−1, those
    both arms share), the paired Δ, both arms' estimates and the command that produces it; "not run" without
    results."""
    arms = list(dict.fromkeys(a for c in exp.claims for a in (c.better, c.worse)))
    data, _, _ = collect(exp, arms, list(range(seeds)), root=root, scale=scale, extra=extra, commit=commit,
                         any_commit=any_commit)
    summary = None
    if data:
        try:
            summary = summarize(data, exp.claims, n_boot=n_boot, n_boot_fd=n_boot_fd)
        except ValueError:  # the arms share no seed: nothing can be paired yet
            summary = None
    by_arm = {r["arm"]: r for r in summary.rows} if summary else {}
    rows = []
    for i, c in enumerate(exp.claims):
        res = summary.claims[i] if summary else {"verdict": "not run", "delta": None}
        rows.append({"experiment": exp.name, "claim": c, "verdict": short_verdict(res["verdict"]),
                     "detail": res["verdict"], "delta": res["delta"],
                     "seeds": by_arm[c.better]["seeds"] if res["delta"] is not None else 0,
                     "points": (by_arm.get(c.better, {}).get(c.metric), by_arm.get(c.worse, {}).get(c.metric)),
                     "command": experiment_command(exp, [c.better, c.worse], seeds, scale, extra)})
    return rows


def gpu_route(exp: Experiment, *, scale: float = GPU_SCALE, seeds: int = SUMMARY_SEEDS, mfu: float = ASSUMED_MFU,
              img_s: float | None = None) -> dict:
    """How to run `exp`'s default arms at `--scale` on one GPU, and an estimate of its H100-hours: training FLOPs
    per image (counted, `cost.count_train_flops`) × images × seeds ÷ the throughput `cost.recipe_cost` derives from
    an assumed MFU (or a measured `img_s` per H100). Training only: evaluation and per-step overheads are not in it,
    so for the world's small networks it is a floor, not a forecast."""
    arms = select_arms(exp, None)
    costs = recipe_cost([arm_config(exp, a, 0, scale) for a in arms], img_s=None if img_s is None else [img_s],
                        mfu=None if img_s is not None else mfu)
    return {"experiment": exp.name, "arms": len(arms), "seeds": seeds, "scale": scale,
            "command": experiment_command(exp, arms, seeds, scale, ("train.device=cuda",)),
            "images": seeds * sum(c.images for c in costs), "flops": seeds * sum(c.total_flops for c in costs),
            "steps": seeds * sum(c.steps for c in costs),
            "h100_hours": seeds * sum(c.images / c.img_s for c in costs) / 3600,
            "rate": f"{img_s:g} img/s per H100 (stated)" if img_s is not None else f"MFU {mfu:.0%} assumed"}


def _ours(row: dict) -> str:
    if row["delta"] is None:
        return "not run"
    d, lo, hi = row["delta"]
    digits = 2 if row["claim"].metric.startswith("FD") else 3
    pb, pw = row["points"]
    both = f"{pb[0]:.{digits}f} vs {pw[0]:.{digits}f}, " if pb and pw else ""
    return f"{both}Δ {d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], {row['seeds']} seed{'s' * (row['seeds'] != 1)}"


def summary_markdown(rows: list[dict], routes: list[dict], *, seeds: int = SUMMARY_SEEDS, scale: float = 1.0,
                     root: str | Path = "runs/experiments") -> str:
    """The one-page table (paper claim | paper number | ours | verdict | command) and the GPU route of each
    experiment."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("held", "not significant", "reversed", "not run")}
    out = ["### Summary: the papers' claims on the world", "",
           f"One row per claim of ImageNet-T2I Tables 1, 2, 9–11 and Fig. 3 and MicroDiT Fig. 8 / Table 5, from the "
           f"finished arms under `{Path(root).as_posix()}/` (seeds 0–{seeds - 1}, scale {scale:g}; regenerate with "
           f"`microt2i experiment summary --any-commit`). Ours: the better arm vs the worse on the claim's metric "
           f"(world-GenEval, ★ = extended prompts; FD-EffNetLite0 where the paper has FID, lower is better), Δ in the "
           f"paper's direction with its paired 95 % bootstrap interval. Verdict: held (interval > 0), not significant "
           f"(contains 0), reversed (< 0), not run (no results yet: the command produces them).", "",
           "Verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + ".", "",
           "| # | paper claim | paper number | ours | verdict | command |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        c = r["claim"]
        claim = f"{c.paper} — `{c.better}` > `{c.worse}` on {c.metric}"
        out.append(f"| {i} | {claim} | {c.number or '–'} | {_ours(r)} | **{r['verdict']}** | `{r['command']}` |")
    if routes:
        out += ["", f"GPU route: each experiment at `--scale {routes[0]['scale']:g}` "
                    f"on one GPU. H100-hours are an **estimate** of training alone: counted training FLOPs per image × "
                    f"images × seeds ÷ ({routes[0]['rate']} × 989 TFLOP/s), as `microt2i cost recipe <preset> "
                    f"<overrides> --mfu` computes it per arm. The world's networks are small (batch 16, ≤ 256 "
                    f"tokens): per-step overheads and the evaluations dominate on a GPU, so read the estimate as a "
                    f"floor and the wall time as optimizer steps × the measured step time; `microt2i experiment "
                    f"summary --img-s <measured img/s per H100>` replaces the assumption.", "",
                "| experiment | command | arms × seeds | training images | optimizer steps | training FLOPs | "
                "est. H100-hours |", "|---|---|---|---|---|---|---|"]
        for g in routes:
            out.append(f"| `{g['experiment']}` | `{g['command']}` | {g['arms']} × {g['seeds']} | {g['images']:,} | "
                       f"{g['steps']:,} | {g['flops']:.3g} | {g['h100_hours']:.2g} |")
    return "\n".join(out)


def render_summary(*, root: str | Path = "runs/experiments", md_path: str | Path | None = "EXPERIMENTS.md",
                   seeds: int = SUMMARY_SEEDS, scale: float = 1.0, extra: tuple[str, ...] = (),
                   commit: str | None = None, any_commit: bool = False, experiments: list[Experiment] | None = None,
                   gpu_scale: float = GPU_SCALE, mfu: float = ASSUMED_MFU, img_s: float | None = None,
                   n_boot: int = 2000, n_boot_fd: int = 200) -> dict:
    """The summary of every claim (`claim_summary`) and every experiment's GPU route (`gpu_route`); with `md_path`,
    written between the `summary` markers near the top of EXPERIMENTS.md. Trains nothing."""
    exps = summary_experiments() if experiments is None else experiments
    head = git_commit()[0] if commit is None else commit
    rows = [r for e in exps for r in claim_summary(e, root=root, seeds=seeds, scale=scale, extra=extra, commit=head,
                                                   any_commit=any_commit, n_boot=n_boot, n_boot_fd=n_boot_fd)]
    routes = [gpu_route(e, scale=gpu_scale, seeds=seeds, mfu=mfu, img_s=img_s) for e in exps] if gpu_scale else []
    text = summary_markdown(rows, routes, seeds=seeds, scale=scale, root=root)
    out = {"rows": rows, "routes": routes, "text": text}
    if md_path:
        write_section(md_path, section_name(SUMMARY, scale, extra), text, first=True)
        out["markdown"] = Path(md_path)
    return out
