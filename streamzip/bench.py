"""``streamzip bench``: run the scripts of ``benchmarks/`` and write one markdown report.

Each script answers one question and writes ``benchmarks/results/NAME.json`` (with the machine, the
library versions and the date, through ``benchmarks/_common.py``). This module runs them (or, with
``--from-results``, only reads the JSON files already there) and renders one report: the decode-limit
ratio, DPC-KNN's speed-up and agreement, fidelity at each budget against the baselines, the audio
real-time factor, memory flatness, Ray overhead and live latency, with the machine and versions. A
question without a result says "not measured" and why, never a blank.

``--quick`` runs each script on smaller inputs where it offers an option for that, in a scratch copy
of ``benchmarks/`` so the full results are not overwritten; its numbers are marked as quick.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamzip.errors import InputError

__all__ = ["BENCHMARKS", "Run", "add_cli", "find_benchmarks", "headline", "load_results", "render_report",
           "run_benchmarks"]

#: The scripts, in report order. (The Ray one is ``ray_runtime.py``: a ``ray.py`` would shadow the
#: ray package; ``ray.py`` / ``ray.json`` are read too.)
BENCHMARKS = ("decode", "dpc_knn", "fidelity", "audio", "memory", "ray_runtime", "live", "encoders")
ALIASES = {"ray_runtime": ("ray",)}
#: Smaller inputs for ``--quick``; a flag is passed only when the script defines it. A script that
#: defines ``--quick`` itself gets that instead.
QUICK_ARGS: dict[str, list[str]] = {
    "decode": ["--seconds", "10", "--repeats", "1"],
    "dpc_knn": ["--large", "16384"],
    "audio": ["--minutes", "1", "--repeats", "1"],
    "memory": ["--minutes", "10", "--baseline-minutes", "2"],
    "ray_runtime": ["--files", "2", "--seconds", "4", "--repeats", "1"],
    "live": ["--seconds", "5", "--warmup", "3", "--max-levels", "2"],
    "encoders": ["--frames", "8", "--repeats", "1", "--audio-s", "10"],
}
#: Extra result files read with a benchmark's own (variants written with ``--name``).
VARIANTS = {"memory": ("memory_window_only",), "encoders": ("encoders_gpu",), "dpc_knn": ("dpc_knn_gpu",)}


# -- running --------------------------------------------------------------------------------------
@dataclass
class Run:
    """What happened to one script in this invocation."""

    name: str
    status: str  # "ok", "failed", "missing", "skipped" (from results only)
    seconds: float = 0.0
    detail: str = ""


def find_benchmarks(path: str | os.PathLike[str] | None = None) -> Path:
    """The ``benchmarks/`` folder: ``path``, else ``./benchmarks``, else the checkout this package is in."""
    candidates = [Path(path)] if path is not None else [Path.cwd() / "benchmarks",
                                                        Path(__file__).resolve().parent.parent / "benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise InputError("no benchmarks/ folder", input=str(candidates[0]),
                     fix="run from a streamzip checkout (the benchmarks are not in the wheel), or pass --benchmarks DIR")


def _quick_args(name: str, script: Path) -> list[str]:
    text = script.read_text(encoding="utf-8", errors="replace")
    if '"--quick"' in text or "'--quick'" in text:
        return ["--quick"]
    args, out = QUICK_ARGS.get(name, []), []
    for i in range(0, len(args), 2):
        flag = args[i]
        if f'"{flag}"' in text or f"'{flag}'" in text:
            out += args[i:i + 2]
    return out


def run_benchmarks(bench_dir: Path, names: Sequence[str] = BENCHMARKS, *, quick: bool = False,
                   timeout_s: float | None = None, log: Callable[[str], None] | None = None) -> list[Run]:
    """Run ``bench_dir/NAME.py`` for each name present; each writes ``bench_dir/results/NAME.json``."""
    log = log or (lambda _msg: None)
    runs = []
    for name in names:
        script = next((bench_dir / f"{n}.py" for n in (name, *ALIASES.get(name, ()))
                       if (bench_dir / f"{n}.py").is_file()), bench_dir / f"{name}.py")
        if not script.is_file():
            runs.append(Run(name, "missing", detail=f"no {script.name} in {bench_dir}"))
            continue
        args = _quick_args(name, script) if quick else []
        log(f"== {name}: python {script.name} {' '.join(args)}".rstrip())
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(script), *args], cwd=bench_dir.parent, timeout=timeout_s,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            runs.append(Run(name, "failed", time.perf_counter() - started, f"timed out after {timeout_s:g} s"))
            log(f"   {name}: timed out")
            continue
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            runs.append(Run(name, "failed", seconds, f"exit {proc.returncode}: {tail[0][:300]}"))
        else:
            runs.append(Run(name, "ok", seconds))
        log(f"   {name}: {runs[-1].status} in {seconds:.0f} s")
    return runs


def load_results(results_dir: Path, names: Iterable[str] = BENCHMARKS) -> dict[str, dict[str, Any]]:
    """``NAME -> parsed JSON`` for every result file present (and its variants)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        for n in (name, *VARIANTS.get(name, ())):
            path = next((results_dir / f"{a}.json" for a in (n, *ALIASES.get(n, ()))
                         if (results_dir / f"{a}.json").is_file()), None)
            if path is not None:
                try:
                    out[n] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    out[n] = {"_unreadable": f"{type(err).__name__}: {err}"}
    return out


# -- formatting helpers ---------------------------------------------------------------------------
def _num(v: Any, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.{digits}g}"
        return f"{v:,.{digits}f}"
    return str(v)


def _pct(v: Any, digits: int = 1) -> str:
    return f"{v * 100:.{digits}f} %" if isinstance(v, (int, float)) else "-"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _met(v: Any) -> str:
    return "met" if v is True else "not met" if v is False else "-"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(d, list) and len(d) <= 8 and all(isinstance(x, (int, float)) for x in d):
        return [(prefix, ", ".join(_num(x) for x in d))]
    if isinstance(d, list):
        return [kv for i, v in enumerate(d) for kv in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, d)]


def _goals(d: dict[str, Any]) -> list[str]:
    goals = d.get("goals") or {}
    lines = []
    for k, v in _flatten(goals):
        lines.append(f"- goal `{k}`: {_met(v) if isinstance(v, bool) else v}")
    if "goal" in d:
        lines.append(f"- goal: {d['goal']}" + (f" — {_met(d['met'])}" if "met" in d else ""))
    return lines


# -- sections -------------------------------------------------------------------------------------
def _spread(d: dict[str, Any]) -> str:
    """"; each of the N interleaved repeats lo–hi×", from a result's ``ratio_per_repeat``."""
    r = d.get("ratio_per_repeat")
    return f"; each of the {len(r)} interleaved repeats {min(r):.2f}–{max(r):.2f}×" if r else ""


def _decode(d: dict[str, Any]) -> list[str]:
    clip, dec, pipe = d.get("clip", {}), d["decode_only"], d["pipeline"]
    ratio = d["ratio_pipeline_to_decode"]
    m = re.match(r"\s*>=\s*([\d.]+)", str(d.get("goal", "")))
    met = f" — {_met(ratio >= float(m.group(1)))}" if m else ""
    return [f"The `run` pipeline ({pipe.get('encoder', 'encoder')}, sampled at {pipe.get('sampling_fps', '?')} fps) "
            f"reaches **{ratio:.2f}×** the decode-only throughput (goal {d.get('goal', '-')}{met}{_spread(d)}), on a "
            f"{_num(clip.get('seconds'), 0)} s {clip.get('size', '')} {clip.get('codec', '')} clip at "
            f"{clip.get('fps', '?')} fps ({_num(clip.get('frames'))} frames).", "",
            *_table(["", "median s", "source frames/s"],
                    [["decode only", _num(dec["median_s"]), _num(dec["frames_per_s"], 0)],
                     ["pipeline", _num(pipe["median_s"]), _num(pipe["source_frames_per_s"], 0)]])]


def _dpc_knn(d: dict[str, Any], variants: dict[str, dict[str, Any]] | None = None) -> list[str]:
    out = _dpc_knn_cpu(d)
    gpu = (variants or {}).get("dpc_knn_gpu")
    if gpu:
        rows = [[_num(c["n"]), _num(c.get("blobs")), _num(c["reference_s"]), _num(c["ours_s"]),
                 f"**{_num(c['speedup'])}×**", _pct(c["assignment_agreement"]),
                 f"{_num(c.get('reference_peak_gib'))} / **{_num(c.get('ours_peak_gib'))}**"]
                for c in gpu.get("compare", [])]
        out += ["", f"On a GPU ({gpu.get('gpu') or _short_machine(gpu.get('machine', {}))}, "
                    f"{gpu.get('date', 'undated')}, `benchmarks/gpu_dpc_knn.py`): the exact blocked search "
                    "against the O(N²) form on the same GPU.", "",
                *_table(["N", "blobs", "reference s", "ours s", "speed-up", "agreement",
                         "peak GPU GiB reference / ours"], rows)]
    return out


def _dpc_knn_cpu(d: dict[str, Any]) -> list[str]:
    rows = []
    for c in d.get("compare", []):
        for index, r in c.get("faiss", {}).items():
            rows.append([_num(c["n"]), _num(c.get("dim")), _num(c.get("blobs")), _num(c.get("clusters")),
                         _num(c["reference_s"]), index, _num(r["seconds"]), f"**{_num(r['speedup'])}×**",
                         _pct(r["assignment_agreement"]), _num(r.get("same_centres"))])
    out = ["FAISS search against the O(N²) torch reference, same formulas, in one run (speed-up = reference "
           "seconds / FAISS seconds; agreement = tokens assigned to the same centre).", "",
           *_table(["N", "D", "blobs", "clusters", "reference s", "index", "FAISS s", "speed-up", "agreement",
                    "same centres"], rows)]
    large = d.get("large")
    if large:
        out += ["", f"Scale: N = {_num(large['n'])} × D = {_num(large.get('dim'))} ({_num(large.get('data_gib'))} GiB) "
                f"with `{large.get('index', '?')}`: {_num(large['seconds'])} s to {_num(large.get('tokens_out'))} "
                f"tokens, peak RSS {_num(large.get('peak_rss_gb'))} GB."]
    return out + ["", *_goals(d)]


_BASELINES = ("uniform_sampling", "spatial_pool", "temporal_pool", "tome")


def _fidelity(d: dict[str, Any]) -> list[str]:
    budgets = d["budgets"]
    keys = list(budgets)
    methods: list[str] = []
    for b in keys:
        methods += [m for m in budgets[b]["methods"] if m not in methods]
    clip = d.get("clip", {})
    out = [f"Mean cosine of each original token to its representative (dropped = 0) and the measured token "
           f"reduction, each method at the same per-window budget, on a {_num(clip.get('frames'))}-frame clip "
           f"({clip.get('encoder', '')}, {_num(clip.get('tokens_per_window'))} tokens per window). "
           f"Baselines in italics.", ""]
    rows = []
    for m in methods:
        name = f"*{m}*" if m.startswith(_BASELINES) else f"**{m}**" if m == "framefusion->dpc_knn" else m
        cells = []
        for b in keys:
            r = budgets[b]["methods"].get(m)
            cells.append(f"{r['fidelity']:.3f} ({_pct(r['reduction'], 0)})" if r else "-")
        rows.append([name, *cells])
    head = ["method"] + [f"budget {float(b):.0%} ({_num(budgets[b].get('max_tokens_per_window'))}/window)"
                         for b in keys]
    out += _table(head, rows)
    out += [""]
    for b in keys:
        ms = budgets[b]["methods"]
        ours = ms.get("framefusion->dpc_knn")
        base = [(r["fidelity"], m) for m, r in ms.items() if m.startswith(_BASELINES)]
        if ours and base:
            best, who = max(base)
            out.append(f"- budget {float(b):.0%}: default chain {ours['fidelity']:.3f} vs best baseline "
                       f"{best:.3f} ({who})")
    return out + _goals(d)


def _audio(d: dict[str, Any]) -> list[str]:
    s, a = d["speed"], d.get("audio", {})
    out = [f"VAD (webrtc) + fbank + A-ToMe streamed in {a.get('chunk_s', '?')} s chunks on one core, on "
           f"{_num(a.get('seconds'), 0)} s of 16 kHz audio ({_pct(a.get('speech_fraction'), 0)} speech, "
           f"{len(a.get('clips', []))} clips): **{_num(s['webrtc_chain_rtf_cpu_time'], 0)}× real time** in "
           f"process CPU time, {_num(s.get('webrtc_chain_rtf_wall_median'), 0)}× in wall time (median; goal "
           f"{_num(s.get('goal_rtf'), 0)}×: {', '.join(f'{k} {_met(v)}' for k, v in s.get('goal_met', {}).items())}). "
           f"With silero-vad: {_num(s.get('silero_chain_rtf_cpu_time'), 0)}× (CPU time).", ""]
    if s.get("stage_rtf_wall"):
        out += _table(["stage", "real-time factor (wall)"],
                      [[k, f"{_num(v, 0)}×"] for k, v in s["stage_rtf_wall"].items()]) + [""]
    if d.get("vad"):
        out += _table(["VAD backend", "speech recall", "planted silence removed", "audio kept", "segments"],
                      [[k, _pct(v.get("speech_recall")), _pct(v.get("planted_silence_removed")),
                        _pct(v.get("kept_fraction")), _num(v.get("segments"))] for k, v in d["vad"].items()]) + [""]
    if d.get("atome"):
        out += _table(["A-ToMe threshold", "reduction", "fidelity", "uniform pooling (same count)", "gain"],
                      [[_num(r["threshold"]), _pct(r["reduction"]), f"{r['fidelity_mean_cos']:.4f}",
                        f"{r.get('baseline_uniform_pool_fidelity', float('nan')):.4f}",
                        f"{r.get('fidelity_gain_vs_baseline', float('nan')):+.4f}"] for r in d["atome"]])
    return out


def _encoders(d: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[str]:
    runs = [("this machine", d), *((f"GPU machine ({v.get('gpu', '?')})", v) for v in variants.values())]
    out = [d.get("question", ""), ""]
    rows = []
    for where, r in runs:
        for v in r["vision"]:
            rows.append([where, v["model"], f"{v['device']} {v['dtype']}", v["batch_size"],
                         f"**{_num(v['frames_per_s'], 1)}**", f"{v['tokens_per_frame']}×{v['dim']}"])
        for a in r.get("audio", []):
            rows.append([where, a["model"], a["device"], f"{a.get('batch_size', 1)} × 30 s",
                         f"**{_num(a['audio_s_per_s'], 1)}** s audio/s", "50/s"])
    out += _table(["machine", "model (random init, real size)", "device", "batch", "frames/s", "tokens/frame"], rows)
    for where, r in runs:
        if r.get("gpu_speedup"):
            out += ["", f"GPU over the same machine's CPU ({where}): "
                    + ", ".join(f"{m} **{_num(x, 1)}×**" for m, x in r["gpu_speedup"].items())]
        w = r.get("window")
        if w:
            dpc = ", ".join(f"{k[8:-2]} {_num(v * 1000, 1)} ms" for k, v in w.items()
                            if k.startswith("dpc_knn_") and k.endswith("_s"))
            out += ["", f"One 4 s window ({w['tokens']} SigLIP tokens → {w['budget']}), {where}: encoder "
                    f"{_num(w['encoder_s'] * 1000, 1)} ms on {w['encoder_device']}, FrameFusion "
                    f"{_num(w['framefusion_s'] * 1000, 1)} ms, DPC-KNN {dpc}."]
    return out


def _rss_end(rss: dict[str, Any]) -> tuple[int, float] | None:
    ends = [(int(k.split("_")[1]), v) for k, v in rss.items() if re.fullmatch(r"minute_\d+", k) and k != "minute_5"]
    return max(ends) if ends else None


def _memory_row(name: str, d: dict[str, Any]) -> list[str]:
    f = d["full"]
    rss = f.get("rss_mb", {})
    end = _rss_end(rss)
    lat = f.get("pipeline_s_per_window", {})
    wm = f.get("window_memory_ms_per_window", {})
    return [name, ", ".join(f.get("stages", [])), _num(f.get("media_minutes"), 0),
            _num(rss.get("minute_5"), 1), f"{_num(end[1], 1)} (min {end[0]})" if end else "-",
            f"**{rss['ratio_end_to_minute_5']:.4f}**" if "ratio_end_to_minute_5" in rss else "-",
            _num(rss.get("slope_mb_per_hour_after_minute_5")),
            f"{lat.get('p50', 0) * 1000:.0f} / {lat.get('p95', 0) * 1000:.0f}",
            f"{_num(wm.get('p50'), 1)} / {_num(wm.get('p95'), 1)}", f"{_num(f.get('speed_x_realtime'), 1)}×",
            _met(d.get("met"))]


def _memory(d: dict[str, Any], variants: dict[str, dict[str, Any]]) -> list[str]:
    head = ["run", "stages", "media min", "RSS min 5 (MB)", "RSS at end (MB)", "end / min 5", "slope MB/h",
            "ms per 4 s window p50 / p95", "window+memory ms p50 / p95", "speed", "goal"]
    rows = [_memory_row("memory", d)] + [_memory_row(n, v) for n, v in variants.items() if "full" in v]
    f = d["full"]
    tokens = f.get("tokens", {})
    out = [f"A long synthetic stream through the pipeline; resident memory sampled every window. Goal: "
           f"{d.get('goal', '-')}.", "", *_table(head, rows), ""]
    if tokens:
        per_window = ", ".join(f"{k.removesuffix('_windows')} {_num(v.get('max_tokens'))}"
                               for k, v in tokens.items() if k.endswith("_windows"))
        at_end = ", ".join(f"{k} {v}" for k, v in tokens.get("memory_at_end", {}).items())
        out.append(f"Tokens: memory ≤ {_num(tokens.get('memory_max'))} (at the end: {at_end}), read ≤ "
                   f"{_num(tokens.get('read_max'))}; per window at most {per_window}.")
    if "latency_ratio_p50_full_vs_baseline" in d:
        out.append(f"Per-window latency is {_num(d['latency_ratio_p50_full_vs_baseline'])}× the encoders alone "
                   f"(p50, same run).")
    return out


def _goal_check(goal: Any, value: float) -> str:
    m = re.search(r">=\s*([\d.]+)", str(goal or ""))
    return f" — {_met(value >= float(m.group(1)))}" if m else ""


def _ray(d: dict[str, Any]) -> list[str]:
    ratio = d["ratio_ray_to_local"]
    loc, ray = d["local"], d["ray"]
    out = [f"The `{d.get('pipeline', 'default')}` pipeline on {_num(d.get('files'))} generated "
           f"{_num(d.get('seconds_each'), 0)} s files, local and Ray runtimes interleaved in one run: Ray runs at "
           f"**{ratio:.2f}×** the local throughput (goal {d.get('goal', '-')}{_goal_check(d.get('goal'), ratio)}"
           f"{_spread(d)}); an actor edge costs **{_num(d.get('edge_overhead_ms_per_packet'))} ms** per packet "
           f"({_num(ray.get('actors_per_stream'))} actors per stream).", "",
           *_table(["runtime", "actors per stream", "median s", "media s per wall s"],
                   [["local", "-", _num(loc["median_s"]), _num(loc.get("media_s_per_s"), 1)],
                    ["ray", _num(ray.get("actors_per_stream")), _num(ray["median_s"]), _num(ray.get("media_s_per_s"), 1)],
                    *([["ray, an actor per step", _num(d["ray_unfused"].get("actors_per_stream")),
                        _num(d["ray_unfused"]["median_s"]), _num(d["ray_unfused"].get("media_s_per_s"), 1)]]
                      if d.get("ray_unfused") else [])])]
    longer = d.get("longer_files")
    if longer:
        out += ["", f"On {_num(longer.get('files'))} files of {_num(longer.get('seconds_each'), 0)} s (what a stream pays "
                    f"once weighs less): Ray at **{longer['ratio_ray_to_local']:.2f}×** local."]
    par = d.get("parallel_streams_media_s_per_s") or {}
    if par:
        one = par.get("1")
        out += ["", *_table(["streams at once (Ray)", "media s per wall s", "vs 1 stream"],
                            [[k, _num(v, 1), f"{v / one:.2f}×" if one else "-"] for k, v in par.items()])]
    return out


def _live(d: dict[str, Any]) -> list[str]:
    one, setup, levels = d["latency_one_stream_s"], d.get("setup", {}), d.get("levels", [])
    most = d.get("max_streams_real_time")
    every = bool(levels) and all(lv.get("keeps_up") for lv in levels) and most == max(lv["streams"] for lv in levels)
    out = [f"Capture-to-consumer latency of a window with one stream: **p50 {one['window_p50']:.2f} s**, p95 "
           f"{one['window_p95']:.2f} s (baseline in the same run, capture to decoded frame: p50 "
           f"{one.get('baseline_frame_p50', float('nan')):.2f} s). This machine keeps up with "
           f"**{_num(most)}** streams at once{' (every level tried: the limit is higher)' if every else ''} "
           f"({_num(d.get('median_cores_per_stream'))} cores per stream, median).", ""]
    out += [f"- {k.replace('_', ' ')}: {v}" for k, v in setup.items()] + [""]
    rows = [[_num(lv["streams"]), f"{_num(lv.get('frames_encoded'))}/{_num(lv.get('frames_due'), 0)}",
             _pct(lv.get("drop_rate")),
             f"{lv['window_latency_s']['p50']:.2f} / {lv['window_latency_s']['p95']:.2f}",
             f"{lv['frame_latency_s']['p50']:.2f} / {lv['frame_latency_s']['p95']:.2f}"
             if lv.get("frame_latency_s") else "-", _num(lv.get("cpu_cores_used")), _num(lv.get("reconnects")),
             _num(lv.get("keeps_up"))] for lv in d.get("levels", [])]
    out += _table(["streams", "frames encoded/due", "drop rate", "window latency s p50 / p95",
                   "frame latency s p50 / p95", "cores used", "reconnects", "keeps up"], rows)
    return out


def _generic(keys: str) -> Callable[[dict[str, Any]], list[str]]:
    """A section for a result whose fields this report does not know yet: its question, its goals and
    the numbers whose names match ``keys`` (a regex), then every number in a folded table."""
    pattern = re.compile(keys, re.IGNORECASE)

    def render(d: dict[str, Any]) -> list[str]:
        flat = [(k, v) for k, v in _flatten({k: v for k, v in d.items() if k not in ("machine", "date", "benchmark")})
                if isinstance(v, (int, float, str)) and not isinstance(v, bool) or isinstance(v, bool)]
        picked = [(k, v) for k, v in flat if pattern.search(k) and not isinstance(v, str)]
        out = [f"{d['question']}" if "question" in d else "", ""]
        if picked:
            out += _table(["measure", "value"], [[f"`{k}`", f"**{_num(v)}**"] for k, v in picked[:20]]) + [""]
        out += _goals(d)
        out += ["", "<details><summary>every number</summary>", "",
                *_table(["field", "value"], [[f"`{k}`", _num(v)] for k, v in flat]), "", "</details>"]
        return out

    return render


@dataclass
class _Section:
    name: str
    title: str
    what: str
    render: Callable[..., list[str]]
    fallback: Callable[[dict[str, Any]], list[str]] | None = None  # when the fields are not the known ones


SECTIONS = [
    _Section("decode", "Decode limit", "is the pipeline decode-bound?", _decode),
    _Section("dpc_knn", "DPC-KNN on FAISS: speed-up and agreement", "FAISS vs the O(N²) reference", _dpc_knn),
    _Section("fidelity", "Fidelity at each budget, against the baselines", "what the operators keep", _fidelity),
    _Section("audio", "Audio real-time factor", "VAD + fbank + A-ToMe on one core", _audio),
    _Section("memory", "Memory flatness", "RSS over a long stream, per-window latency", _memory),
    _Section("ray_runtime", "Ray overhead", "the Ray runtime against the local one", _ray,
             _generic(r"overhead|ratio|media_s_per_s|median_s|latency|_ms$")),
    _Section("live", "Live latency", "from capture to tokens, on a live source", _live,
             _generic(r"latency|p50|p95|drop|reconnect|max_streams|cores")),
    _Section("encoders", "Encoder-bound throughput, CPU and GPU", "the hf encoders at base size", _encoders,
             _generic(r"frames_per_s|audio_s_per_s|speedup|_s$")),
]


# -- the report -----------------------------------------------------------------------------------
def _machine_line(m: dict[str, Any]) -> str:
    mem = m.get("mem_total_kb")
    parts = [f"{m.get('cpus', '?')} CPUs", m.get("cpu_model") or m.get("processor") or "",
             f"{mem / 1024 ** 2:.1f} GiB RAM" if isinstance(mem, (int, float)) else "", m.get("platform", ""),
             f"Python {m['python']}" if m.get("python") else ""]
    return ", ".join(p for p in parts if p)


def _short_machine(m: dict[str, Any]) -> str:
    return f"{m.get('cpus', '?')}-core {m.get('cpu_model') or m.get('processor') or 'machine'}"


def _ok(d: dict[str, Any] | None) -> bool:
    return bool(d) and "_unreadable" not in d  # type: ignore[operator]


def _span(lo: float, hi: float, fmt: str) -> str:
    a, b = fmt.format(lo), fmt.format(hi)
    return a if a == b else f"{a}–{b}"


def headline(results: dict[str, dict[str, Any]]) -> str:
    """One line of the numbers that matter most, with the date and the machine they came from."""
    bits = []
    try:
        if _ok(results.get("decode")):
            bits.append(f"pipeline at {results['decode']['ratio_pipeline_to_decode']:.2f}× decode-only throughput")
        if _ok(results.get("fidelity")):
            budgets = results["fidelity"]["budgets"]
            b = "0.10" if "0.10" in budgets else list(budgets)[len(budgets) // 2]
            ms = budgets[b]["methods"]
            ours = ms.get("framefusion->dpc_knn")
            uni = ms.get("uniform_sampling")
            if ours:
                bits.append(f"fidelity {ours['fidelity']:.2f} at {float(b):.0%} of the video tokens"
                            + (f" (uniform frame sampling {uni['fidelity']:.2f})" if uni else ""))
        if _ok(results.get("dpc_knn")):
            big = max(c["n"] for c in results["dpc_knn"]["compare"])
            at = [c["faiss"] for c in results["dpc_knn"]["compare"] if c["n"] == big]
            idx = max((r["speedup"], k) for f in at for k, r in f.items())[1]
            sp = sorted(f[idx]["speedup"] for f in at if idx in f)
            ag = sorted(f[idx]["assignment_agreement"] for f in at if idx in f)
            bits.append(f"DPC-KNN on FAISS ({idx}) {_span(sp[0], sp[-1], '{:.1f}')}× the O(N²) reference at "
                        f"N = {big:,} ({_span(ag[0] * 100, ag[-1] * 100, '{:.0f}')}% same assignment)")
        if _ok(results.get("audio")):
            bits.append(f"audio path {results['audio']['speed']['webrtc_chain_rtf_cpu_time']:.0f}× real time on one core")
        if _ok(results.get("memory")):
            f = results["memory"]["full"]
            ratio = f["rss_mb"]["ratio_end_to_minute_5"]
            end = _rss_end(f["rss_mb"])
            bits.append(f"RSS {ratio - 1:+.1%} from minute 5 to minute {end[0] if end else '?'} of a "
                        f"{f.get('media_minutes', 0):.0f}-minute stream")
        if _ok(results.get("ray_runtime")):
            r = results["ray_runtime"]
            bits.append(f"Ray runtime at {r['ratio_ray_to_local']:.2f}× local throughput "
                        f"({r['edge_overhead_ms_per_packet']:.1f} ms per actor edge)")
        if _ok(results.get("live")):
            lv = results["live"]
            bits.append(f"live window latency p50 {lv['latency_one_stream_s']['window_p50']:.2f} s, "
                        f"{lv['max_streams_real_time']} 720p25 RTSP streams at once in real time")
    except (KeyError, TypeError, ValueError, IndexError):
        pass  # the sections say what is wrong; the headline keeps what it could read
    dated = [r for r in results.values() if _ok(r) and r.get("date")]
    if not bits:
        return "No benchmark results yet."
    dates = sorted({str(r["date"])[:10] for r in dated})
    machines = sorted({_short_machine(r.get("machine", {})) for r in dated})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else "undated"
    return "; ".join(bits) + f" ({', '.join(machines)}, {when})."


def render_report(results: dict[str, dict[str, Any]], *, runs: Sequence[Run] = (), quick: bool = False,
                  source: str = "benchmarks/results", generated: _dt.datetime | None = None,
                  scripts: Iterable[str] | None = None) -> str:
    """The markdown report. ``scripts``: the benchmark scripts that exist (to say why a result is missing)."""
    now = generated or _dt.datetime.now(_dt.UTC)
    by_run = {r.name: r for r in runs}
    have_script = set(scripts) if scripts is not None else None
    lines = ["# streamzip benchmarks", "",
             f"Generated {now:%Y-%m-%d %H:%M} UTC by `streamzip bench"
             f"{' --quick' if quick else ''}{' --from-results' if not runs else ''}` from `{source}`.", ""]
    if quick:
        lines += ["> **Quick run**: smaller inputs than the full benchmarks; indicative only, not comparable "
                  "with the full results.", ""]
    lines += [f"**Headline:** {headline(results)}", "",
              "Each script answers one question and compares against a baseline measured in the same run; "
              "the numbers are ratios on the machine named below each result.", ""]
    for sec in SECTIONS:
        lines += [f"## {sec.title}", ""]
        d = results.get(sec.name)
        run = by_run.get(sec.name)
        if d is None or not _ok(d):
            if d is not None:
                why = f"the result file is unreadable ({d['_unreadable']})"
            elif run is not None and run.status == "failed":
                why = f"`benchmarks/{sec.name}.py` failed ({run.detail})"
            elif (run is not None and run.status == "missing") or (
                    have_script is not None and not have_script & {sec.name, *ALIASES.get(sec.name, ())}):
                why = f"there is no `benchmarks/{sec.name}.py` yet"
            else:
                why = f"no `{source}/{sec.name}.json`; run `python benchmarks/{sec.name}.py` or `streamzip bench`"
            lines += [f"**Not measured**: {why}.", ""]
            continue
        if run is not None and run.status == "failed":
            lines += [f"> This run's `{sec.name}.py` failed ({run.detail}); the result below is an older one.", ""]
        try:
            if sec.name in VARIANTS:
                body = sec.render(d, {n: results[n] for n in VARIANTS[sec.name] if _ok(results.get(n))})
            else:
                body = sec.render(d)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            fallback = sec.fallback or _generic(r"ratio|speed|fidelity|latency|rss|_s$|_ms$")
            body = [f"> The result's fields are not the ones this report knows (missing {err}); its numbers:", "",
                    *fallback(d)]
        m = d.get("machine", {})
        lines += body + ["", f"<sub>`benchmarks/{sec.name}.py`, {d.get('date', 'undated')}, "
                         f"{_machine_line(m)}, git {m.get('git') or '?'}</sub>", ""]
    lines += _machines(results)
    return "\n".join(lines).rstrip() + "\n"


def _machines(results: dict[str, dict[str, Any]]) -> list[str]:
    ok = {k: v for k, v in results.items() if _ok(v)}
    out = ["## Machines and versions", ""]
    if not ok:
        return out + ["Not measured: no results.", ""]
    out += _table(["result", "date", "machine", "torch threads", "git"],
                  [[n, d.get("date", "-"), _machine_line(d.get("machine", {})),
                    _num(d.get("machine", {}).get("torch_threads", d.get("torch_threads"))),
                    d.get("machine", {}).get("git") or "-"] for n, d in ok.items()])
    seen: dict[str, dict[str, list[str]]] = {}
    for n, d in ok.items():
        for pkg, ver in (d.get("machine", {}).get("versions") or {}).items():
            seen.setdefault(pkg, {}).setdefault(str(ver), []).append(n)
    if seen:
        out += ["", *_table(["package", "version (results)"],
                            [[pkg, "; ".join(f"{v}" + (f" ({', '.join(ns)})" if len(vs) > 1 else "")
                                             for v, ns in vs.items())] for pkg, vs in sorted(seen.items())])]
    return out + [""]


# -- command line ---------------------------------------------------------------------------------
def _cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = find_benchmarks(args.benchmarks)
    names = args.only or list(BENCHMARKS)
    runs: list[Run] = []
    results_dir = Path(args.results) if args.results else bench_dir / "results"
    scratch = None
    if not args.from_results:
        work = bench_dir
        if args.quick and not args.results:
            scratch = Path(tempfile.mkdtemp(prefix="streamzip-bench-"))
            work = scratch / "benchmarks"
            work.mkdir()
            for script in bench_dir.glob("*.py"):
                shutil.copy2(script, work / script.name)
            results_dir = work / "results"
        runs = run_benchmarks(work, names, quick=args.quick, timeout_s=args.timeout,
                              log=lambda msg: print(msg, file=sys.stderr, flush=True))
        if work != bench_dir and args.results:
            results_dir.mkdir(parents=True, exist_ok=True)
            for f in (work / "results").glob("*.json"):
                shutil.copy2(f, results_dir / f.name)
    try:
        results = load_results(results_dir, names)
        scripts = [p.stem for p in bench_dir.glob("*.py")]
        source = os.path.relpath(results_dir) if scratch is None else "a scratch copy of benchmarks/ (quick run)"
        report = render_report(results, runs=runs, quick=args.quick, source=source, scripts=scripts)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report, encoding="utf-8")
        print(f"wrote {args.out}: {sum(n in results for n in names)}/{len(names)} results", file=sys.stderr)
    else:
        sys.stdout.write(report)
    return 1 if any(r.status == "failed" for r in runs) else 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``streamzip bench [--quick] [--from-results] [--out REPORT.md]``."""
    p = subparsers.add_parser("bench", help="run benchmarks/ and write one markdown report",
                              description=__doc__.split("\n\n")[0].replace("``", "") if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smaller inputs, in a scratch copy (full results untouched)")
    p.add_argument("--from-results", action="store_true", help="run nothing: report the JSON results already there")
    p.add_argument("--out", help="write the report here (default: print it)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"these benchmarks only ({', '.join(BENCHMARKS)})")
    p.add_argument("--benchmarks", help="the benchmarks/ folder (default: ./benchmarks or the checkout's)")
    p.add_argument("--results", help="where the JSON results are (default: BENCHMARKS/results)")
    p.add_argument("--timeout", type=float, help="seconds each script may run")
    p.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamzip")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
