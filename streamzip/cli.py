"""The ``streamzip`` command.

Exit codes: 0 success; 1 some input failed (the others were still written); 2 a usage or pipeline
error (nothing ran). Errors print one clear message, no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

from streamzip._version import __version__
from streamzip.errors import ConfigError, StreamzipError
from streamzip.sources._names import redact

__all__ = ["main"]


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{s % 60:04.1f}s"
    return f"{s:.1f}s"


def summary_table(results: Sequence[Any]) -> str:
    """The end-of-run table: one row per input and a total row."""
    head = ["input", "media", "frames", "tokens in", "tokens out", "reduction", "fidelity", "wall", "status"]
    rows = []
    for r in results:
        red = r.reduction
        status = "ok" if r.ok else f"FAILED ({r.error_type})"
        if r.ok and r.corrupt_packets:
            status = f"ok, {r.corrupt_packets} corrupt packets skipped"
        rows.append([r.input if len(r.input) <= 40 else "…" + r.input[-39:], _fmt_seconds(r.media_s),
                     str(r.frames), f"{r.tokens_in:,}", f"{r.tokens_out:,}",
                     f"{red:.1%}" if red is not None else "-",
                     f"{r.fidelity:.3f}" if r.fidelity is not None else "-", _fmt_seconds(r.wall_s), status])
    if len(results) > 1:
        tin = sum(r.tokens_in for r in results)
        tout = sum(r.tokens_out for r in results)
        rows.append(["total", _fmt_seconds(sum(r.media_s for r in results)), str(sum(r.frames for r in results)),
                     f"{tin:,}", f"{tout:,}", f"{1 - tout / tin:.1%}" if tin else "-", "-",
                     _fmt_seconds(sum(r.wall_s for r in results)),
                     f"{sum(r.ok for r in results)}/{len(results)} ok"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def stage_table(results: Sequence[Any]) -> str:
    """Per stage, over all inputs: packets, frames/s, tokens in/out, busy time, restarts."""
    agg: dict[str, dict[str, float]] = {}
    for r in results:
        for st in r.stages:
            a = agg.setdefault(st.step_id, {"op": st.op, "packets": 0, "frames": 0, "tin": 0, "tout": 0,
                                             "s": 0.0, "restarts": 0})  # type: ignore[dict-item]
            a["packets"] += st.packets_in
            a["frames"] += st.frames_in
            a["tin"] += st.tokens_in
            a["tout"] += st.tokens_out
            a["s"] += st.seconds
            a["restarts"] += st.restarts
    if not agg:
        return ""
    head = ["stage", "op", "packets", "frames/s", "tokens in", "tokens out", "busy", "restarts"]
    rows = [[sid, str(a["op"]), f"{int(a['packets']):,}",
             f"{a['frames'] / a['s']:.0f}" if a["frames"] and a["s"] > 0 else "-",
             f"{int(a['tin']):,}", f"{int(a['tout']):,}", _fmt_seconds(a["s"]), str(int(a["restarts"]))]
            for sid, a in agg.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    extra = [f"{r.input}: queue depth max {r.max_queue_depth}, drops {r.drops}, recoveries {r.restarts}"
             for r in results if r.max_queue_depth or r.drops or r.restarts]
    return "\n".join(out + extra)


class _Progress:
    """A tqdm bar per input: media seconds done, frames/s, tokens in/out."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, result: Any) -> None:
        self.close()
        if not self.enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(desc=result.input[-30:], unit="s", unit_scale=False, file=sys.stderr, leave=False,
                        bar_format="{desc}: {n:.1f}s media [{elapsed}] {postfix}")

    def update(self, result: Any) -> None:
        if self.bar is None:
            return
        self.bar.n = result.media_s
        fps = result.frames / result.wall_s if result.wall_s > 0 else 0.0
        self.bar.set_postfix_str(f"{fps:.0f} frames/s, tokens {result.tokens_in:,} → {result.tokens_out:,}",
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_run(args: argparse.Namespace) -> int:
    from streamzip.job import run_job
    from streamzip.pipeline import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    for item in args.set or []:
        _apply_override(pipeline, item)
    if args.query is not None:
        pipeline.query = args.query
    pipeline.validate()
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    options: dict[str, Any] = {}
    if args.address:
        if args.runtime != "ray":
            raise ConfigError("--address joins a Ray cluster: use it with --runtime ray")
        options["address"] = args.address
    if args.encoder_pool is not None:
        if args.runtime != "ray":
            raise ConfigError("--encoder-pool sizes the Ray runtime's encoder pool: use it with --runtime ray")
        if args.encoder_pool < 0:
            raise ConfigError(f"--encoder-pool must be >= 0 (actors per encoder step; 0: one per stream), "
                              f"got {args.encoder_pool}")
        options["encoder_pool"] = args.encoder_pool
    if args.no_encoder_gather:
        if args.runtime != "ray":
            raise ConfigError("--no-encoder-gather turns off the Ray runtime's gathering: use it with --runtime ray")
        options["encoder_gather"] = False
    try:
        results = run_job(pipeline, args.input, args.output, runtime=args.runtime,
                          progress=progress.update, on_start=progress.start, runtime_options=options)
    finally:
        progress.close()
    print(summary_table(results))
    stages = stage_table([r for r in results if r.ok])
    if stages:
        print()
        print(stages)
    for r in results:
        if not r.ok:
            print(f"error: {r.error}", file=sys.stderr)
    if args.output:
        done = [r.output for r in results if r.ok]
        if done:
            print(f"outputs in {args.output} ({len(done)} folder{'s' if len(done) != 1 else ''})")
    return 0 if all(r.ok for r in results) else 1


def _cmd_batch(args: argparse.Namespace) -> int:
    from streamzip.batch import run_batch
    from streamzip.pipeline import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    for item in args.set or []:
        _apply_override(pipeline, item)
    if args.query is not None:
        pipeline.query = args.query
    pipeline.validate()
    if args.segment_s is not None and not args.segment_s > 0:
        raise ConfigError(f"--segment-s must be a number of seconds > 0, got {args.segment_s:g}")
    bar: Any = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="inputs", unit="input", file=sys.stderr)
    started = time.perf_counter()
    # Segments of inputs still being cut count in frames/s and tokens before their input is done.
    segs: dict[str, list[int]] = {}  # input -> [frames, tokens in, tokens out] of its finished segments
    seg_count = [0, 0]
    last: list[Any] = []

    def progress(results: list[Any], total: int) -> None:
        last[:] = results
        if bar is None:
            return
        bar.total = total
        bar.n = len(results)
        whole = [r for r in results if r.input not in segs]
        frames = sum(r.frames for r in whole) + sum(v[0] for v in segs.values())
        tin = sum(r.tokens_in for r in whole) + sum(v[1] for v in segs.values())
        tout = sum(r.tokens_out for r in whole) + sum(v[2] for v in segs.values())
        rate = frames / max(1e-9, time.perf_counter() - started)
        parts = f", segments {seg_count[0]}/{seg_count[1]}" if seg_count[1] else ""
        bar.set_postfix_str(f"{rate:.0f} frames/s, tokens {tin:,} → {tout:,}{parts}, "
                            f"{sum(not r.ok for r in results)} failed", refresh=False)
        bar.refresh()

    def on_segment(r: Any, done: int, total: int) -> None:
        acc = segs.setdefault(r.input, [0, 0, 0])
        acc[0] += r.frames
        acc[1] += r.tokens_in
        acc[2] += r.tokens_out
        seg_count[:] = [done, total]
        progress(last, bar.total if bar is not None else 0)

    try:
        results = run_batch(pipeline, args.inputs, args.output, address=args.address,
                            cpus_per_input=args.cpus_per_input, parquet=args.parquet, segment_s=args.segment_s,
                            progress=progress, on_segment=on_segment)
    finally:
        if bar is not None:
            bar.close()
    print(summary_table([r for r in results if not r.skipped]) if any(not r.skipped for r in results) else "")
    skipped = sum(r.skipped for r in results)
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} inputs: {len(results) - skipped - len(failed)} done, {skipped} already done (skipped), "
          f"{len(failed)} failed{' (see ' + os.path.join(args.output, 'errors.jsonl') + ')' if failed else ''}")
    return 1 if failed else 0


def _apply_override(pipeline: Any, item: str) -> None:
    """``--set STEP.OPTION=VALUE`` (YAML value) or ``--set decode.OPTION=VALUE``."""
    import yaml

    from streamzip.errors import Problem

    key, sep, raw = item.partition("=")
    target, dot, option = key.partition(".")
    if not sep or not dot or not option:
        raise ConfigError([Problem("--set", f"expected STEP.OPTION=VALUE, got {item!r}")])
    value = yaml.safe_load(raw)
    if target == "decode":
        decode = dict(pipeline.to_dict().get("decode", {}))
        decode[option] = value
        pipeline._decode_raw = decode
        return
    for step in pipeline.steps:
        if step.id == target:
            step.params[option] = value
            return
    ids = ", ".join(s.id for s in pipeline.steps)
    raise ConfigError([Problem("--set", f"no step with id {target!r}; step ids: {ids}, or 'decode'")])


def _cmd_validate(args: argparse.Namespace) -> int:
    from streamzip.pipeline import load_pipeline

    bad = 0
    for name in args.pipelines:
        try:
            pipe = load_pipeline(name).validate()
        except ConfigError as err:
            bad += 1
            print(f"{name}: {err}")
            continue
        print(f"{name}: ok ({len(pipe.steps)} steps)")
        if args.graph:
            print(pipe.graph())
    return 2 if bad else 0


def _cmd_env(args: argparse.Namespace) -> int:
    import torch

    from streamzip._av import av
    from streamzip.output import versions
    from streamzip.registry import available

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        **versions(),
        "cuda": torch.cuda.is_available(),
        "ffmpeg_decoders_h264": "h264" in av.codecs_available,
        "steps": sorted(available()),
    }
    for mod, key in (("ray", "ray"), ("webrtcvad", "webrtcvad"), ("torchaudio", "torchaudio"),
                     ("transformers", "transformers")):
        try:
            m = __import__(mod)
            info[key] = getattr(m, "__version__", "installed")
        except ImportError:
            info[key] = None
    env = {k: v for k, v in os.environ.items() if k.startswith("STREAMZIP_")}
    if env:
        info["environment"] = {k: redact(v) for k, v in env.items()}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:>22}: {', '.join(v) if isinstance(v, list) else v}")
    return 0


def _cmd_steps(args: argparse.Namespace) -> int:
    from streamzip.config import config_fields
    from streamzip.registry import available

    for name, info in available().items():
        print(f"{name} ({info.kind}): {info.summary}")
        if args.verbose:
            # The declared defaults; an option whose default does not validate must be given.
            try:
                info.cls.config_class()
                required: set[str] = set()
            except ConfigError as err:
                required = {p.path for p in err.problems}
            for f in dataclasses.fields(info.cls.config_class):
                if f.name in config_fields(info.cls.config_class):
                    if f.default is not dataclasses.MISSING:
                        value = f.default
                    else:
                        # config_class() above got past argument binding, so every init field has a
                        # default or a default_factory
                        assert f.default_factory is not dataclasses.MISSING
                        value = f.default_factory()
                    print(f"    {f.name} = {value!r}{'  (required)' if f.name in required else ''}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from streamzip.synthetic import make_clip, scene_cycle

    if not args.duration >= 1.0:  # also NaN
        raise ConfigError(f"--duration must be at least 1 second, got {args.duration:g}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    info = make_clip(args.output, scenes=scene_cycle(args.duration), width=args.width, height=args.height,
                     seed=args.seed)
    print(f"wrote {info.path}: {info.duration_s:.0f} s, scenes "
          f"{', '.join(f'{s.kind}@{s.start_s:g}s' for s in info.scenes[:6])}{' …' if len(info.scenes) > 6 else ''}; "
          f"speech bursts {len(info.speech)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamzip", description="Compress video and audio into bounded token streams.")
    p.add_argument("--version", action="version", version=f"streamzip {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a pipeline on inputs, write tokens")
    r.add_argument("pipeline", help="a pipeline YAML file, or a built-in pipeline name (e.g. default)")
    r.add_argument("-i", "--input", action="append", required=True, help="an input file (repeat for several)")
    r.add_argument("-o", "--output", help="output folder (one sub-folder per input)")
    r.add_argument("--runtime", default="ray", choices=["local", "ray"],
                   help="ray (default): stages as Ray actors, Ray embedded unless --address; local: in-process")
    r.add_argument("--address", help="a Ray cluster to join (host:port, ray://host:10001 or auto)")
    r.add_argument("--encoder-pool", type=int, metavar="N",
                   help="ray runtime: actors per encoder step, shared by every stream (default 1; "
                        "0: an encoder actor per stream)")
    r.add_argument("--no-encoder-gather", action="store_true",
                   help="ray runtime: send each stream's frames to its encoder on their own (by default an "
                        "hf_encoder pool actor encodes the frames of its streams together)")
    r.add_argument("--set", action="append", metavar="STEP.OPTION=VALUE", help="override an option")
    r.add_argument("--query", help="query-guided compression: keep more of what is relevant to this text "
                                   "(needs an hf_encoder with a SigLIP or CLIP model)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    b = sub.add_parser("batch", help="preprocess many files over Ray (re-runs skip finished inputs)")
    b.add_argument("inputs", nargs="+", help="files or folders")
    b.add_argument("-o", "--output", required=True, help="output folder (one sub-folder per input)")
    b.add_argument("-p", "--pipeline", default="default", help="pipeline YAML or built-in name (default: default)")
    b.add_argument("--address", help="a Ray cluster to join; embedded Ray when left out")
    b.add_argument("--cpus-per-input", type=float, default=1.0, help="CPUs each input's task reserves")
    b.add_argument("--parquet", action="store_true", help="also write tokens.parquet per input")
    b.add_argument("--segment-s", type=float, metavar="SECONDS",
                   help="cut inputs longer than this into segments run in parallel, stitched back into one "
                        "output (cuts on window boundaries: rounded to a multiple of the windows)")
    b.add_argument("--set", action="append", metavar="STEP.OPTION=VALUE", help="override an option")
    b.add_argument("--query", help="query-guided compression for every input (see run --query)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_batch)

    v = sub.add_parser("validate", help="check pipelines without running them")
    v.add_argument("pipelines", nargs="+")
    v.add_argument("--graph", action="store_true", help="print the dataflow")
    v.set_defaults(func=_cmd_validate)

    e = sub.add_parser("env", help="versions and capabilities of this installation")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_env)

    s = sub.add_parser("steps", help="list the pipeline steps available")
    s.add_argument("-v", "--verbose", action="store_true", help="with options and defaults")
    s.set_defaults(func=_cmd_steps)

    y = sub.add_parser("synth", help="write a synthetic clip (scenes, cuts, speech-like audio, silence)")
    y.add_argument("output")
    y.add_argument("--duration", type=float, default=20.0,
                   help="seconds (default 20): static, pan, motion, static, pan scenes of 4 s, cycled and cut to this length")
    y.add_argument("--width", type=int, default=640)
    y.add_argument("--height", type=int, default=360)
    y.add_argument("--seed", type=int, default=0)
    y.set_defaults(func=_cmd_synth)

    from streamzip.bench import add_cli as add_bench_cli
    from streamzip.inspect import add_cli as add_inspect_cli
    from streamzip.k8s import add_cli as add_k8s_cli
    from streamzip.live import add_cli as add_live_cli

    add_live_cli(sub)
    add_inspect_cli(sub)
    add_bench_cli(sub)
    add_k8s_cli(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        if args.debug:
            raise
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2
    except StreamzipError as err:
        if args.debug:
            raise
        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
