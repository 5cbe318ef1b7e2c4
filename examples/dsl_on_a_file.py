"""The Python DSL on a file: build a pipeline, run it, look at the tokens, save and load them.

    python examples/dsl_on_a_file.py [VIDEO]      # without VIDEO, a synthetic clip is generated
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import streamzip
from streamzip import Pipeline, Tokens
from streamzip.output import write_output
from streamzip.synthetic import make_clip


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="streamzip-example-"))
    video = sys.argv[1] if len(sys.argv) > 1 else make_clip(work / "clip.mp4").path

    # Decode at 2 fps to 224x224, cut each frame into 16 px patches (196 tokens of 768 values).
    pipe = (
        Pipeline("example", decode={"fps": 2, "width": 224, "height": 224})
        .add("patch_encoder", id="encode", patch_size=16)
    )
    # Add compression steps the same way, e.g. .add("framefusion", threshold=0.9); list them with
    # `streamzip steps -v`.
    print(pipe.graph())

    packets = [p for p in pipe.run(video) if isinstance(p, Tokens)]
    video_tokens = [p for p in packets if p.modality == "video"]
    n = sum(p.num_tokens for p in video_tokens)
    print(f"{len(video_tokens)} video packets, {n} tokens of dimension {video_tokens[0].dim}")
    first = video_tokens[0]
    print(f"first token covers {float(first.t0[0]):.2f}-{float(first.t1[0]):.2f} s at patch {first.pos[0].tolist()}")

    folder = write_output(work / "out", "clip", packets, manifest={"input": str(video)})
    back = streamzip.load(folder)
    print(f"saved to {folder}; groups {back.groups}; {back.tokens('tokens/video').num_tokens} tokens read back")


if __name__ == "__main__":
    main()
