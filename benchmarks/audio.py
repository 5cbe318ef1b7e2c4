"""How fast is the audio path, and what does A-ToMe cost in fidelity?

1. Real-time factor of VAD (webrtc) + fbank + A-ToMe, streamed in 1 s chunks on one core
   (``torch.set_num_threads(1)``; wall time, and process CPU time for shared machines), on 10 minutes of 16 kHz speech: LibriVox read speech (Debian's
   ``pocketsphinx-testdata``) and espeak-ng sentences, repeated, joined by 0.5–3 s silences over a
   -60 dBFS noise floor. Goal: >= 100x real time. The silero backend is timed too, for reference.
2. The VAD's speech recall and planted-silence removal on that audio.
3. A-ToMe at thresholds 0.8, 0.9 and 0.95 on the speech tokens: token reduction and fidelity (mean
   cosine of each original token to the token representing it), against a baseline measured in the
   same run: uniform pooling of adjacent tokens to the same token count.

Writes ``benchmarks/results/audio.json`` (with the machine and library versions). Run:
``python benchmarks/audio.py [--minutes 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamzip.encoders.fbank import FbankEncoder
from streamzip.operators.atome import ATome, ATomeConfig
from streamzip.operators.vad import VAD, VADConfig
from streamzip.packets import AudioChunk, Tokens
from streamzip.tokens import cat, cosine_to_represented, merge_groups

RESULTS = Path(__file__).resolve().parent / "results"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RATE = 16000
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming engines keep a bounded number of tokens in memory.",
    "Silence between words is removed, but the clock never shifts.",
    "Adjacent audio tokens that sound alike are merged into one.",
    "Please call Stella and ask her to bring these things with her from the store.",
]


# -- machine and versions (kept here so this script stands alone) -------------------------------

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for dist in ("streamzip", "torch", "torchaudio", "numpy", "webrtcvad-wheels", "silero-vad"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - report what is there
            versions[dist] = None
    info["versions"] = versions
    espeak = shutil.which("espeak-ng")
    if espeak:
        info["espeak_ng"] = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return info


# -- test audio ---------------------------------------------------------------------------------

def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        return x.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def speech_clips() -> tuple[list[np.ndarray], list[str]]:
    """16 kHz clips: LibriVox read speech and espeak-ng sentences (trimmed of digital silence)."""
    import torchaudio.functional as taf

    clips, sources = [], []
    for f in sorted(LIBRIVOX.glob("*.wav")):
        x, rate = read_wav(f)
        clips.append(taf.resample(torch.from_numpy(x), rate, RATE).numpy() if rate != RATE else x)
        sources.append(f"librivox:{f.name}")
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            for i, text in enumerate(SENTENCES):
                path = Path(tmp) / f"s{i}.wav"
                subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
                x, rate = read_wav(path)
                loud = np.nonzero(np.abs(x) > 1e-3)[0]
                x = x[loud[0]: loud[-1] + 1]
                clips.append(taf.resample(torch.from_numpy(x.copy()), rate, RATE).numpy())
                sources.append(f"espeak-ng:{text}")
    if not clips:
        raise SystemExit("no speech found: apt-get install pocketsphinx-testdata espeak-ng")
    return clips, sources


def long_audio(clips: list[np.ndarray], seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clips repeated in random order, joined by 0.5–3 s silences, over a -60 dBFS noise floor."""
    rng = np.random.default_rng(seed)
    parts, truth, total = [], [], 0
    while total < seconds * RATE:
        gap = int(rng.uniform(0.5, 3.0) * RATE)
        clip = clips[int(rng.integers(len(clips)))]
        parts += [np.zeros(gap, np.float32), clip]
        truth += [np.zeros(gap, bool), np.ones(clip.size, bool)]
        total += gap + clip.size
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    audio = audio + rng.normal(0, 1e-3, audio.size).astype(np.float32)
    return audio, np.concatenate(truth)[: audio.size]


# -- the measured runs --------------------------------------------------------------------------

def run_chain(audio: torch.Tensor, vad_config: VADConfig, atome_config: ATomeConfig | None,
              chunk_s: float = 1.0) -> dict[str, Any]:
    """Stream the audio through VAD → fbank (→ A-ToMe); seconds per stage and the outputs."""
    vad, enc = VAD(vad_config), FbankEncoder()
    merge = ATome(atome_config) if atome_config is not None else None
    secs = {"vad": 0.0, "fbank": 0.0, "atome": 0.0}
    speech: list[AudioChunk] = []
    encoded: list[Tokens] = []
    merged: list[Tokens] = []

    def downstream(chunks: list[Any]) -> None:
        speech.extend(chunks)
        for c in chunks:
            t = time.perf_counter()
            toks = enc.process(c)
            secs["fbank"] += time.perf_counter() - t
            feed(toks)

    def feed(toks: list[Any]) -> None:
        encoded.extend(toks)
        if merge is not None:
            t = time.perf_counter()
            for tk in toks:
                merged.extend(merge.process(tk))
            secs["atome"] += time.perf_counter() - t

    step = int(chunk_s * RATE)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    for i in range(0, audio.numel(), step):
        t = time.perf_counter()
        out = vad.process(AudioChunk("bench", audio[i:i + step], RATE, i / RATE))
        secs["vad"] += time.perf_counter() - t
        downstream(out)
    t = time.perf_counter()
    out = vad.flush()
    secs["vad"] += time.perf_counter() - t
    downstream(out)
    t = time.perf_counter()
    toks = enc.flush()
    secs["fbank"] += time.perf_counter() - t
    feed(toks)
    if merge is not None:
        t = time.perf_counter()
        merged.extend(merge.flush())
        secs["atome"] += time.perf_counter() - t
    secs["total"] = time.perf_counter() - t_all
    secs["total_cpu"] = time.process_time() - cpu_all
    return {"seconds": secs, "speech": speech, "encoded": encoded, "merged": merged, "segments": vad.segments}


def uniform_pool(tokens: Tokens, num_out: int) -> Tokens:
    """Baseline: adjacent tokens pooled in equal runs to ``num_out`` tokens."""
    n = tokens.num_tokens
    group = torch.div(torch.arange(n) * num_out, n, rounding_mode="floor")
    return merge_groups(tokens, group)


def fidelity(originals: Tokens, merged: Tokens) -> float:
    return float(cosine_to_represented(originals.data, merged, torch.arange(originals.num_tokens)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    clips, sources = speech_clips()
    audio_np, truth = long_audio(clips, args.minutes * 60)
    audio = torch.from_numpy(audio_np)
    audio_s = audio.numel() / RATE

    # 1. speed, webrtc (median of repeats), then silero once
    load_before = os.getloadavg()
    runs = [run_chain(audio, VADConfig(), ATomeConfig()) for _ in range(args.repeats)]
    totals = [r["seconds"]["total"] for r in runs]
    med = runs[totals.index(statistics.median(totals))]
    stage_s = {k: round(v, 4) for k, v in med["seconds"].items()}
    silero = run_chain(audio, VADConfig(backend="silero"), ATomeConfig())

    # 2. VAD quality
    def goals(result: dict[str, Any]) -> dict[str, float]:
        mask = np.zeros(audio.numel(), bool)
        for c in result["speech"]:
            s = round(c.start_s * RATE)
            mask[s:s + c.num_samples] = True
        return {"speech_recall": round(float(mask[truth].mean()), 4),
                "planted_silence_removed": round(float(1 - mask[~truth].mean()), 4),
                "kept_fraction": round(float(mask.mean()), 4), "segments": len(result["segments"])}

    # 3. A-ToMe thresholds on the speech tokens
    encoded = cat(med["encoded"])
    atome_rows = []
    for threshold in (0.8, 0.9, 0.95):
        op = ATome(ATomeConfig(threshold=threshold))
        t, cpu = time.perf_counter(), time.process_time()
        out: list[Any] = []
        for p in med["encoded"]:
            out += op.process(p)
        out += op.flush()
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        merged = cat(out)
        base = uniform_pool(encoded, merged.num_tokens)
        atome_rows.append({
            "threshold": threshold,
            "tokens_in": encoded.num_tokens, "tokens_out": merged.num_tokens,
            "reduction": round(1 - merged.num_tokens / encoded.num_tokens, 4),
            "tokens_per_speech_s": round(merged.num_tokens / (encoded.num_tokens / 25), 2),
            "fidelity_mean_cos": round(fidelity(encoded, merged), 4),
            "baseline_uniform_pool_fidelity": round(fidelity(encoded, base), 4),
            "fidelity_gain_vs_baseline": round(fidelity(encoded, merged) - fidelity(encoded, base), 4),
            "atome_seconds": round(secs, 4), "atome_cpu_seconds": round(cpu, 4),
        })

    result = {
        "benchmark": "audio",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "question": "real-time factor of VAD + fbank + A-ToMe on one core; A-ToMe reduction and fidelity",
        "audio": {"seconds": round(audio_s, 2), "sample_rate_hz": RATE, "speech_fraction": round(float(truth.mean()), 4),
                  "clips": sources, "chunk_s": 1.0, "noise_floor_dbfs": -60},
        "speed": {
            "goal_rtf": 100.0,
            "note": ("rtf = seconds of audio per second of compute. The machine is shared (see load_average): "
                     "process CPU time measures the cost on one core; wall time includes waiting for it"),
            "load_average": [round(x, 2) for x in load_before],
            "webrtc_chain_rtf_cpu_time": round(audio_s / med["seconds"]["total_cpu"], 1),
            "webrtc_chain_rtf_wall_median": round(audio_s / stage_s["total"], 1),
            "webrtc_chain_rtf_wall_best": round(audio_s / min(totals), 1),
            "webrtc_chain_seconds": stage_s,
            "all_runs_wall_s": [round(x, 4) for x in totals],
            "all_runs_cpu_s": [round(r["seconds"]["total_cpu"], 4) for r in runs],
            "stage_rtf_wall": {k: round(audio_s / v, 1) for k, v in stage_s.items()
                               if not k.startswith("total") and v > 0},
            "silero_chain_rtf_cpu_time": round(audio_s / silero["seconds"]["total_cpu"], 1),
            "silero_chain_rtf_wall": round(audio_s / silero["seconds"]["total"], 1),
            "silero_chain_seconds": {k: round(v, 4) for k, v in silero["seconds"].items()},
            "goal_met": {"cpu_time": audio_s / med["seconds"]["total_cpu"] >= 100.0,
                         "wall_best": audio_s / min(totals) >= 100.0,
                         "wall_median": audio_s / stage_s["total"] >= 100.0},
        },
        "vad": {"webrtc": goals(med), "silero": goals(silero)},
        "fbank": {"tokens": encoded.num_tokens, "dim": encoded.dim, "tokens_per_s": 25},
        "atome": atome_rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "audio.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
