"""Timing models run by run, alternating, and measuring the host memory a session takes."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import numpy as np



def _proc_status() -> dict[str, int] | None:
    try:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in fh)
                    if k in ("VmRSS", "VmHWM")}
    except (OSError, ValueError):
        return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    gc.collect()
    try:  # glibc keeps freed heap; give it back so the next RSS growth is this session's own
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory(fn: Callable[[], object]) -> tuple[object, int | None]:
    """fn()'s result and how much this process's peak RSS grew while it ran (None off Linux)."""
    _release_freed_memory()
    before = _proc_status()
    reset = _reset_peak()
    result = fn()
    after = _proc_status()
    if not before or not after or "VmRSS" not in before:
        return result, None
    top = after.get("VmHWM") if reset else None
    top = after.get("VmRSS", 0) if top is None else top
    return result, max(0, top - before["VmRSS"])


# ------------------------------------------------------------------------------------------ timing


def time_alternating(runners: Sequence[Callable[[], object]], *, warmup: int = 3, min_runs: int = 10,
                     min_time: float = 2.0, timer: Callable[[], float] = time.perf_counter,
                     max_runs: int | None = None, on_round: Callable[[int], None] | None = None
                     ) -> tuple[list[list[float]], dict[int, str]]:
    """Run the runners in turn, A B A B ...: `warmup` untimed rounds, then timed rounds until every
    runner has `min_runs` runs and `min_time` seconds of them (or `max_runs` rounds).

    Returns (seconds per run for each runner, aligned by round; {index: error} for runners that
    raised, which leave the rotation and keep the runs they had)."""
    errors: dict[int, str] = {}
    active = list(range(len(runners)))

    def call(i: int) -> bool:
        try:
            runners[i]()
            return True
        except Exception as exc:  # noqa: BLE001 -- a runtime error mid-way: report it, time the others
            errors[i] = _short(exc)
            active.remove(i)
            return False

    for _ in range(warmup):
        for i in list(active):
            call(i)
    times: list[list[float]] = [[] for _ in runners]
    rounds = 0
    while active and (rounds < min_runs or min(sum(times[i]) for i in active) < min_time):
        if max_runs is not None and rounds >= max_runs:
            break
        for i in list(active):
            start = timer()
            if call(i):
                times[i].append(timer() - start)
        rounds += 1
        if on_round:
            on_round(rounds)
    return times, errors


def pair_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
    """other's run / base's run, round by round (both lists aligned from the first round)."""
    return [o / b for b, o in zip(base, other) if b > 0]


def summarize(seconds: Sequence[float], batch: int) -> dict:
    if not len(seconds):
        return {"runs": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "mean_ms": None, "images_per_s": None}
    a = np.asarray(seconds, dtype=np.float64)
    median = float(np.median(a))
    return {"runs": int(a.size), "median_ms": median * 1e3, "p90_ms": float(np.percentile(a, 90)) * 1e3,
            "min_ms": float(a.min()) * 1e3, "mean_ms": float(a.mean()) * 1e3,
            "images_per_s": batch / median if median > 0 else None}


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")
