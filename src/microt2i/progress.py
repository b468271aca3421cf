"""Progress of long jobs, one helper for every command (train, sample, eval, caption, precompute, cutmix, export,
experiment, recipe stages).

- At the start: one line with the work size (`[sample] 64 img (16 prompts × 4 seeds, heun 30 steps)`), then, after
  a short measured warm-up, one line with the estimated time (`[sample] estimate: 2m 10s (0.49 img/s over the
  first 3.2 img)`). The estimate is measured here, on this machine under its current load; nothing is assumed.
- On a terminal: a tqdm bar with rate and ETA. Not on a terminal (a log file, CI): a status line every
  `MICROT2I_STATUS_EVERY` seconds (default 10) — also while one slow step is running, so a slow job never looks
  hung — and a last line with the total time. Logs get lines, never bars.
- `MICROT2I_PROGRESS=bar|lines|off` overrides the terminal check (`auto`, the default).

Work may advance in fractions (a sampler step is 1/steps of an image), so ETAs move smoothly inside a batch.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from tqdm import tqdm


def format_seconds(s: float) -> str:
    """42 s, 3m 20s, 1h 05m."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _mode(enabled: bool, stream, bar: bool) -> str:
    if not enabled:
        return "off"
    forced = os.environ.get("MICROT2I_PROGRESS", "auto").strip().lower()
    if forced in ("off", "lines", "bar"):
        return forced if (forced != "bar" or bar) else "lines"
    if forced != "auto":
        raise ValueError(f"MICROT2I_PROGRESS={forced!r}: use auto, bar, lines or off")
    isatty = getattr(stream, "isatty", None)
    return "bar" if bar and isatty is not None and isatty() else "lines"


class Progress:
    """`with Progress(total, desc="sample", unit="img", work="16 prompts × 4 seeds") as p: p.update(k)`.

    `bar=False` never draws a bar (an outer loop, e.g. experiment arms, whose inner jobs draw theirs);
    `heartbeat=False` prints status lines only when work advances (outer loops again). `enabled=False` prints
    nothing (`--no-progress`, `-q`)."""

    def __init__(self, total: float, *, desc: str, unit: str = "img", work: str = "", initial: float = 0,
                 enabled: bool = True, stream=None, bar: bool = True, heartbeat: bool = True,
                 interval_s: float | None = None, warmup_s: float = 2.0, decimals: int = 0):
        self.total, self.desc, self.unit, self.initial = float(total), desc, unit, float(initial)
        self.n, self.postfix, self.decimals, self.warmup_s = float(initial), "", decimals, warmup_s
        self.stream = stream if stream is not None else sys.stderr
        self.mode = _mode(enabled, self.stream, bar)
        every = os.environ.get("MICROT2I_STATUS_EVERY", "10")
        try:
            self.interval_s = float(interval_s if interval_s is not None else every)
        except ValueError:
            raise ValueError(f"MICROT2I_STATUS_EVERY={every!r} must be a number of seconds") from None
        self.t0 = self._last_line = time.perf_counter()
        self._first: tuple[float, float] | None = None  # (time, n) of the first update: start-up costs excluded
        self._updates, self._estimated, self._closed, self._last_t = 0, False, False, self.t0
        self._lock = threading.Lock()
        self._bar = None
        size = f"{self._num(self.total)} {unit}" + (f" ({work})" if work else "")
        done = f", {self._num(self.initial)} already done" if self.initial else ""
        self._print(f"[{desc}] {size}{done}; timing a short warm-up for the estimate")
        if self.mode == "bar":
            count = f"{{n:.{decimals}f}}/{{total:.{decimals}f}}"
            self._bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, bar_format="{l_bar}{bar}| " + count + " {unit} "
                             "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self._stop = threading.Event()
        self._thread = None
        if self.mode != "off" and heartbeat and self.total > self.initial:
            self._thread = threading.Thread(target=self._beat, name=f"progress-{desc}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------------------------------ public

    def update(self, k: float = 1) -> None:
        now = time.perf_counter()
        with self._lock:
            self.n = min(self.total, self.n + k)
            self._updates += 1
            self._last_t = now
            if self._first is None:
                self._first = (now, self.n)
            if self._bar is not None:
                self._bar.update(k)
            self._maybe_estimate(now)
            if self.mode == "lines" and (now - self._last_line >= self.interval_s or self._thread is None):
                self._status(now)

    def set_postfix(self, **kw) -> None:
        with self._lock:
            self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
            if self._bar is not None:
                self._bar.set_postfix_str(self.postfix, refresh=False)

    def write(self, msg: str) -> None:
        """A log line that does not break the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(msg, file=self.stream)
            elif self.mode != "off":
                self._print(msg)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            elapsed = time.perf_counter() - self.t0
            done = self.n - self.initial
            if self.mode != "off":
                rate = f" ({self._rate_str(done / elapsed)})" if done and elapsed > 0 else ""
                self._print(f"[{self.desc}] {self._num(self.n)}/{self._num(self.total)} {self.unit} in "
                            f"{format_seconds(elapsed)}{rate}" + (f", {self.postfix}" if self.postfix else ""))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------------------------- private

    def _num(self, x: float) -> str:
        x = round(x, self.decimals)
        return f"{x:.{self.decimals}f}" if self.decimals and x != int(x) else f"{int(x)}"

    def _rate(self, now: float) -> float | None:
        """Work per second up to the last update, from the first update on once there are several (start-up costs
        excluded). Between two updates of a slow step the rate and ETA hold; the elapsed time moves on."""
        if self._first is not None and self._updates >= 3 and self._last_t > self._first[0]:
            return (self.n - self._first[1]) / (self._last_t - self._first[0])
        done, elapsed = self.n - self.initial, self._last_t - self.t0
        return done / elapsed if done > 0 and elapsed > 0 else None

    def _rate_str(self, rate: float) -> str:
        return f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}"

    def _maybe_estimate(self, now: float) -> None:
        if self._estimated or self.n <= self.initial or now - self.t0 < self.warmup_s or self.n >= self.total:
            return
        self._estimated = True
        rate = self._rate(now)
        if rate and self.mode != "off":
            line = (f"[{self.desc}] estimate: {format_seconds((self.total - self.n) / rate)} left, "
                    f"{format_seconds(now - self.t0 + (self.total - self.n) / rate)} in all ({self._rate_str(rate)} "
                    f"over the first {self._num(self.n - self.initial)} {self.unit})")
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                self._print(line)

    def _status(self, now: float) -> None:
        self._last_line = now
        rate = self._rate(now)
        pct = 100 * self.n / self.total if self.total else 100.0
        speed = f"{self._rate_str(rate)}, " if rate else ""
        left = max(0.0, (self.total - self.n) / rate - (now - self._last_t)) if rate else 0.0  # a step under way
        eta = f", ETA {format_seconds(left)}" if rate else f", still on the first {self.unit}"
        self._print(f"[{self.desc}] {self._num(self.n)}/{self._num(self.total)} {self.unit} ({pct:.0f}%), {speed}"
                    f"{format_seconds(now - self.t0)} elapsed{eta}" + (f", {self.postfix}" if self.postfix else ""))

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval_s, 1.0)):
            with self._lock:
                now = time.perf_counter()
                if self._bar is not None:
                    self._bar.refresh()
                elif now - self._last_line >= self.interval_s:
                    self._status(now)

    def _print(self, line: str) -> None:
        if self.mode == "off":
            return
        print(line, file=self.stream, flush=True)


class heartbeat:
    """`with heartbeat("data", "building the world store"):` — a job step with no countable work. Prints nothing if
    it ends within `MICROT2I_STATUS_EVERY` seconds, else a line each interval (`[data] still building the world
    store: 20 s elapsed`) and a last one with the total, so no step is silent for long."""

    def __init__(self, desc: str, what: str, *, enabled: bool = True, stream=None):
        self.desc, self.what, self.stream = desc, what, stream if stream is not None else sys.stderr
        self.enabled = enabled and _mode(True, self.stream, False) != "off"
        self.interval_s = float(os.environ.get("MICROT2I_STATUS_EVERY", "10"))
        self._stop, self._spoke = threading.Event(), False

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.desc}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._spoke = True
            print(f"[{self.desc}] still {self.what}: {format_seconds(time.perf_counter() - self.t0)} elapsed",
                  file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            if self._spoke:
                print(f"[{self.desc}] {self.what}: done in {format_seconds(time.perf_counter() - self.t0)}",
                      file=self.stream, flush=True)
