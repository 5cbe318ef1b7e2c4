"""`streamzip bench`: the one markdown report, from result files (synthetic, and the repo's own)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from streamzip.bench import (
    BENCHMARKS,
    add_cli,
    headline,
    load_results,
    render_report,
    run_benchmarks,
)

REPO_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MACHINE = {"python": "3.11.7", "platform": "Linux-test", "cpus": 2, "cpu_model": "Test CPU 9000",
           "mem_total_kb": 16 * 1024 ** 2, "versions": {"torch": "2.14.1", "faiss": "1.15.1"}, "git": "abc1234"}
TITLES = {"decode": "Decode limit", "dpc_knn": "DPC-KNN on FAISS", "fidelity": "Fidelity at each budget",
          "audio": "Audio real-time factor", "memory": "Memory flatness", "ray_runtime": "Ray overhead",
          "live": "Live latency", "encoders": "Encoder-bound throughput"}


def _budget(ours: float, uniform: float) -> dict[str, Any]:
    r = {"reduction": 0.9, "tokens_in": 100, "tokens_out": 10, "seconds": 1.0}
    return {"max_tokens_per_window": 157, "methods": {
        "framefusion->dpc_knn": {**r, "fidelity": ours}, "uniform_sampling": {**r, "fidelity": uniform},
        "tome": {**r, "fidelity": 0.811}}}


def synthetic() -> dict[str, dict[str, Any]]:
    """One result per benchmark with the fields each script writes, and recognisable numbers."""
    base = {"date": "2031-02-03 04:05:06 UTC", "machine": MACHINE}
    lat = {"p50": 0.4321, "p95": 0.5}
    return {
        "decode": {**base, "clip": {"seconds": 60, "size": "1280x720", "fps": 25, "codec": "h264", "frames": 1500},
                   "decode_only": {"median_s": 0.8, "frames_per_s": 1875.0},
                   "pipeline": {"median_s": 1.0, "source_frames_per_s": 1500.0, "sampling_fps": 2, "encoder": "patch"},
                   "ratio_pipeline_to_decode": 0.8765, "goal": ">= 0.8"},
        "dpc_knn": {**base, "compare": [{"n": 16384, "dim": 1024, "blobs": 64, "clusters": 256, "reference_s": 9.0,
                                         "faiss": {"ivf": {"seconds": 0.7, "speedup": 12.34,
                                                           "assignment_agreement": 0.9876, "same_centres": 250}}}],
                    "large": {"n": 262144, "dim": 1024, "index": "ivf", "seconds": 61.5, "tokens_out": 256,
                              "data_gib": 1.0, "peak_rss_gb": 2.718},
                    "goals": {"large_peak_rss_lt_4gb": True}},
        "fidelity": {**base, "clip": {"frames": 120, "encoder": "patch", "tokens_per_window": 1568},
                     "budgets": {"0.30": _budget(0.9512, 0.7915), "0.10": _budget(0.9081, 0.5071)},
                     "goals": {"default_chain_beats_uniform_and_pooling": {"0.30": True, "0.10": True}}},
        "audio": {**base, "audio": {"seconds": 600.0, "speech_fraction": 0.69, "clips": ["a", "b"], "chunk_s": 1.0},
                  "speed": {"goal_rtf": 100.0, "webrtc_chain_rtf_cpu_time": 345.6, "webrtc_chain_rtf_wall_median": 163.1,
                            "silero_chain_rtf_cpu_time": 55.3, "stage_rtf_wall": {"vad": 1193.1},
                            "goal_met": {"cpu_time": True}},
                  "vad": {"webrtc": {"speech_recall": 0.9997, "planted_silence_removed": 0.7409,
                                     "kept_fraction": 0.7682, "segments": 91}},
                  "atome": [{"threshold": 0.8, "reduction": 0.3392, "fidelity_mean_cos": 0.9786,
                             "baseline_uniform_pool_fidelity": 0.9254, "fidelity_gain_vs_baseline": 0.0532}]},
        "memory": {**base, "goal": "RSS at minute 120 within 5% of minute 5", "met": True,
                   "full": {"stages": ["patch_encoder", "window", "memory"], "media_minutes": 120.0,
                            "speed_x_realtime": 37.7, "pipeline_s_per_window": lat,
                            "window_memory_ms_per_window": {"p50": 13.5, "p95": 29.7},
                            "tokens": {"memory_max": 256, "read_max": 32, "memory_at_end": {"video": 192},
                                       "video_windows": {"max_tokens": 128}},
                            "rss_mb": {"minute_5": 853.0, "minute_120": 873.7, "ratio_end_to_minute_5": 1.0243,
                                       "slope_mb_per_hour_after_minute_5": 2.22}},
                   "latency_ratio_p50_full_vs_baseline": 6.2},
        "ray_runtime": {**base, "pipeline": "default", "files": 8, "seconds_each": 10,
                        "local": {"median_s": 4.0, "media_s_per_s": 20.0},
                        "ray": {"median_s": 5.0, "media_s_per_s": 16.0, "actors_per_stream": 8},
                        "ratio_ray_to_local": 0.8123, "edge_overhead_ms_per_packet": 1.37,
                        "parallel_streams_media_s_per_s": {"1": 16.0, "2": 28.0}, "goal": "ratio >= 0.7"},
        "live": {**base, "setup": {"runtime": "local"},
                 "latency_one_stream_s": {"window_p50": 0.1295, "window_p95": 0.1358, "baseline_frame_p50": 0.0838},
                 "max_streams_real_time": 3, "median_cores_per_stream": 0.115,
                 "levels": [{"streams": 1, "frames_due": 16.0, "frames_encoded": 16, "drop_rate": 0.0,
                             "window_latency_s": lat, "frame_latency_s": lat, "cpu_cores_used": 0.13,
                             "reconnects": 0, "keeps_up": True},
                            {"streams": 4, "frames_due": 64.0, "frames_encoded": 50, "drop_rate": 0.2,
                             "window_latency_s": lat, "frame_latency_s": lat, "cpu_cores_used": 1.9,
                             "reconnects": 0, "keeps_up": False}]},
        "encoders": encoders_result(base),
    }


def encoders_result(base: dict[str, Any], gpu: bool = False) -> dict[str, Any]:
    rows = [{"model": "siglip-b16-224", "device": "cpu", "dtype": "float32", "batch_size": 16, "frames": 32,
             "frames_per_s": 4.75, "tokens_per_frame": 196, "dim": 768}]
    if gpu:
        rows.append({"model": "siglip-b16-224", "device": "cuda", "dtype": "bfloat16", "batch_size": 64,
                     "frames": 512, "frames_per_s": 2345.6, "tokens_per_frame": 196, "dim": 768})
    out = {**base, "question": "how many frames per second?", "vision": rows,
           "audio": [{"model": "whisper-base-encoder", "device": "cpu", "audio_s": 60, "audio_s_per_s": 41.5}],
           "window": {"tokens": 1568, "budget": 128, "encoder_s": 1.68, "encoder_device": "cuda" if gpu else "cpu",
                      "framefusion_s": 0.0077, "after_framefusion": 1568, "dpc_knn_cpu_s": 0.0391,
                      **({"dpc_knn_cuda_s": 0.0052} if gpu else {})}}
    if gpu:
        out.update(gpu="NVIDIA H200", gpu_speedup={"siglip-b16-224": 493.8})
    return out


def section(report: str, name: str) -> str:
    """The text of one section, from its title to the next."""
    m = re.search(rf"^## {re.escape(TITLES[name])}.*?(?=^## )", report, re.S | re.M)
    assert m, f"no section {TITLES[name]!r}"
    return m.group(0)


def write(folder: Path, results: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in results.items():
        (folder / f"{name}.json").write_text(json.dumps(doc))
    return folder


def test_every_section_and_its_numbers(tmp_path: Path) -> None:
    results = load_results(write(tmp_path, synthetic()))
    assert set(results) == set(BENCHMARKS)
    report = render_report(results, generated=dt.datetime(2031, 2, 4, 12, 0, tzinfo=dt.UTC))
    expected = {
        "decode": ["**0.88×**", "goal >= 0.8 — met", "1,875", "1280x720"],
        "dpc_knn": ["**12.34×**", "98.8 %", "262,144", "2.72 GB", "`large_peak_rss_lt_4gb`: met"],
        "fidelity": ["0.951 (90 %)", "0.908 (90 %)", "*uniform_sampling*", "budget 10%: default chain 0.908 vs best "
                     "baseline 0.811 (tome)", "`default_chain_beats_uniform_and_pooling.0.10`: met"],
        "audio": ["**346× real time**", "55×", "100.0 %", "+0.0532", "0.9254"],
        "memory": ["**1.0243**", "873.7 (min 120)", "432 / 500", "37.7×", "6.20×"],
        "ray_runtime": ["**0.81×**", "goal ratio >= 0.7 — met", "**1.37 ms**", "1.75×"],
        "live": ["**p50 0.13 s**", "**3** streams", "50/64", "20.0 %"],
        "encoders": ["**4.8**", "196×768", "**41.5** s audio/s", "DPC-KNN cpu 39.1 ms"],
    }
    for name, needles in expected.items():
        text = section(report, name)
        for needle in needles:
            assert needle in text, (name, needle)
        assert "2031-02-03 04:05:06 UTC" in text and "Test CPU 9000" in text and "git abc1234" in text
        assert "Not measured" not in text
    assert "Generated 2031-02-04 12:00 UTC" in report
    machines = report[report.index("## Machines and versions"):]
    assert "16.0 GiB RAM" in machines and "| torch | 2.14.1 |" in machines and "| faiss | 1.15.1 |" in machines


def test_missing_results_say_not_measured(tmp_path: Path) -> None:
    partial = {k: v for k, v in synthetic().items() if k not in ("ray_runtime", "live", "audio")}
    results = load_results(write(tmp_path, partial))
    report = render_report(results, scripts=["decode", "dpc_knn", "fidelity", "memory", "live", "audio"])
    assert "no `benchmarks/ray_runtime.py` yet" in section(report, "ray_runtime")
    assert "Not measured" in section(report, "live") and "live.json" in section(report, "live")
    assert "Not measured" in section(report, "audio")
    for name in ("decode", "dpc_knn", "fidelity", "memory"):
        assert "Not measured" not in section(report, name)
    assert "ray" not in headline(results).lower() and "0.88×" in headline(results)
    assert "Not measured" in render_report({})  # nothing at all still gives a report
    assert headline({}) == "No benchmark results yet."


def test_a_broken_or_unknown_result_does_not_break_the_report(tmp_path: Path) -> None:
    write(tmp_path, {"decode": synthetic()["decode"]})
    (tmp_path / "audio.json").write_text("{ not json")
    odd = {"date": "2031-01-01", "machine": MACHINE, "question": "a future layout",
           "overhead": {"edge_ms_p50": 2.5}}
    (tmp_path / "ray.json").write_text(json.dumps(odd))  # the alias name is read too
    report = render_report(load_results(tmp_path))
    assert "unreadable" in section(report, "audio")
    ray = section(report, "ray_runtime")
    assert "not the ones this report knows" in ray and "`overhead.edge_ms_p50`" in ray and "2.50" in ray


def test_the_repo_results_render(tmp_path: Path) -> None:
    results = load_results(REPO_RESULTS)
    assert {"decode", "fidelity", "memory"} <= set(results)
    report = render_report(results)
    decode = json.loads((REPO_RESULTS / "decode.json").read_text())
    assert f"**{decode['ratio_pipeline_to_decode']:.2f}×**" in section(report, "decode")
    for name in results:
        if name in TITLES:
            assert "not the ones this report knows" not in section(report, name), name
    assert f"{decode['ratio_pipeline_to_decode']:.2f}× decode-only" in headline(results)


FAKE_OK = '''import argparse, json, sys
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=60)
ap.add_argument("--repeats", type=int, default=3)
a = ap.parse_args()
out = Path(__file__).resolve().parent / "results"
out.mkdir(exist_ok=True)
(out / "decode.json").write_text(json.dumps({"date": "2031-05-06", "machine": {"cpus": 2}, "argv": sys.argv[1:],
    "clip": {}, "decode_only": {"median_s": 1.0, "frames_per_s": 100.0},
    "pipeline": {"median_s": 1.0, "source_frames_per_s": 91.0},
    "ratio_pipeline_to_decode": 0.42 if a.seconds == 10 and a.repeats == 1 else 0.91, "goal": ">= 0.8"}))
'''
FAKE_FAIL = 'import sys\nprint("boom: no test data", file=sys.stderr)\nsys.exit(3)\n'


def fake_benchmarks(tmp_path: Path) -> Path:
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "decode.py").write_text(FAKE_OK)
    (bench / "audio.py").write_text(FAKE_FAIL)
    return bench


def test_running_the_scripts(tmp_path: Path) -> None:
    bench = fake_benchmarks(tmp_path)
    runs = {r.name: r for r in run_benchmarks(bench, ["decode", "audio", "live"])}
    assert runs["decode"].status == "ok" and runs["live"].status == "missing"
    assert runs["audio"].status == "failed" and "exit 3: boom: no test data" in runs["audio"].detail
    assert json.loads((bench / "results" / "decode.json").read_text())["argv"] == []
    report = render_report(load_results(bench / "results"), runs=list(runs.values()))
    assert "**0.91×**" in section(report, "decode")
    assert "`benchmarks/audio.py` failed (exit 3: boom: no test data)" in section(report, "audio")
    assert "no `benchmarks/live.py` yet" in section(report, "live")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="streamzip")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return int(args.func(args))


def test_quick_runs_in_a_scratch_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = fake_benchmarks(tmp_path)
    write(bench / "results", {"decode": synthetic()["decode"]})
    before = (bench / "results" / "decode.json").read_text()
    assert _cli("--quick", "--only", "decode", "--benchmarks", str(bench), "--out", str(tmp_path / "r.md")) == 0
    assert (bench / "results" / "decode.json").read_text() == before  # the full result is untouched
    report = (tmp_path / "r.md").read_text()
    assert "Quick run" in report and "**0.42×**" in report  # the quick result (smaller inputs) is reported
    assert _cli("--from-results", "--benchmarks", str(bench)) == 0  # printed, from the full results
    out = capsys.readouterr().out
    assert "**0.88×**" in out and "--from-results" in out
    # a failing script makes the command fail, and the report says why
    assert _cli("--only", "audio", "--benchmarks", str(bench), "--out", str(tmp_path / "r2.md")) == 1
    assert "failed (exit 3" in (tmp_path / "r2.md").read_text()


def test_gpu_encoder_results_show_beside_the_cpu_ones(tmp_path: Path) -> None:
    base = {"date": "2031-02-03 04:05:06 UTC", "machine": MACHINE}
    results = load_results(write(tmp_path, {"encoders": encoders_result(base),
                                            "encoders_gpu": encoders_result(base, gpu=True)}))
    text = section(render_report(results), "encoders")
    assert "GPU machine (NVIDIA H200)" in text and "**2,345.6**" in text and "cuda bfloat16" in text
    assert "**493.8×**" in text and "DPC-KNN cpu 39.1 ms, cuda 5.2 ms" in text


def test_gpu_dpc_knn_results_show_in_the_dpc_knn_section(tmp_path: Path) -> None:
    docs = synthetic()
    gpu = {"date": "2031-02-03 04:05:06 UTC", "machine": MACHINE, "gpu": "NVIDIA H200",
           "compare": [{"n": 65536, "blobs": 64, "reference_s": 0.2792, "ours_s": 0.2577, "speedup": 1.08,
                        "assignment_agreement": 1.0, "reference_peak_gib": 52.28, "ours_peak_gib": 2.31}]}
    results = load_results(write(tmp_path, {"dpc_knn": docs["dpc_knn"], "dpc_knn_gpu": gpu}))
    text = section(render_report(results), "dpc_knn")
    assert "On a GPU (NVIDIA H200" in text and "52.28 / **2.31**" in text and "**1.08×**" in text
    assert "**12.34×**" in text  # the CPU table is still there
