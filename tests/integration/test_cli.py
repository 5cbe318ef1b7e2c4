"""The command line, end to end on generated media, as a subprocess (exit codes, no tracebacks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamzip.output import load


def cli(*args: str, cwd=None):  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "streamzip", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_run_writes_outputs_and_a_summary(short_clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = cli("run", "patch_only", "--input", short_clip.path, "--output", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "tokens in" in res.stdout and "reduction" in res.stdout and "short.mp4" in res.stdout
    out = load(tmp_path / "out" / "short.mp4")
    assert out.tokens("tokens/video").num_tokens == 12 * 196
    assert out.manifest["pipeline"]["name"] == "patch_only"
    assert out.manifest["summary"]["frames"] == 12


def test_a_bad_input_fails_alone(short_clip, tmp_path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    res = cli("run", "patch_only", "-i", str(junk), "-i", short_clip.path, "-o", str(tmp_path / "out"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "junk.mp4" in res.stderr and "Fix:" in res.stderr
    assert (tmp_path / "out" / "short.mp4" / "manifest.json").is_file()
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["error_type"] == "NotMediaError" and errors[0]["stage"] == "decode"


@pytest.mark.parametrize(("args", "needle"), [
    (("run", "no-such-pipeline", "-i", "x.mp4"), "no pipeline file or built-in pipeline"),
    (("run", "patch_only", "-i", "x.mp4", "--set", "video_encoder.patch_size=0"), "steps[0].patch_size"),
    (("run", "patch_only", "-i", "x.mp4", "--set", "nosuch.x=1"), "no step with id 'nosuch'"),
])
def test_config_errors_exit_2_without_traceback(args, needle) -> None:  # type: ignore[no-untyped-def]
    res = cli(*args)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_the_traceback() -> None:
    res = cli("--debug", "run", "no-such-pipeline", "-i", "x.mp4")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_validate_reports_every_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndecode: {fps: 0}\nsteps:\n  - {op: patch_encoder, patch_size: 'x'}\n  - {op: nope}\n")
    res = cli("validate", str(bad), "default")
    assert res.returncode == 2
    assert "decode.fps" in res.stdout and "steps[0].patch_size" in res.stdout and "steps[1].op" in res.stdout
    assert "default: ok" in res.stdout


def test_env_and_steps() -> None:
    res = cli("env", "--json")
    info = json.loads(res.stdout)
    assert res.returncode == 0 and info["streamzip"] and "patch_encoder" in info["steps"]
    res = cli("steps", "-v")
    assert "patch_size = 16" in res.stdout


def test_synth_writes_a_clip_of_the_length_asked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import av

    res = cli("synth", str(tmp_path / "new" / "s.mp4"), "--duration", "10", "--width", "160", "--height", "120")
    assert res.returncode == 0 and "10 s" in res.stdout
    with av.open(str(tmp_path / "new" / "s.mp4")) as f:
        video = f.streams.video[0]
        assert video.frames == 250  # 10 s at 25 fps: static, pan and half a motion scene
        assert float(f.duration / av.time_base) == pytest.approx(10.0, abs=0.1)
    res = cli("synth", str(tmp_path / "x.mp4"), "--duration", "0")
    assert res.returncode == 2 and "--duration must be at least 1 second" in res.stderr
    assert not (tmp_path / "x.mp4").exists()
