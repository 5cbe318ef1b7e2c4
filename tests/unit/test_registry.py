"""The stage registry under threads: its first lookup imports the built-in stages."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_first_lookups_from_several_threads_at_once_all_find_every_stage() -> None:
    # A fresh interpreter: in this one the registry is filled already. Before the fix, 7 of the 8
    # threads saw the registry half filled (the encoders only) while the first imported the rest.
    code = textwrap.dedent("""
        import threading
        from streamzip import registry
        barrier, errors = threading.Barrier(8), []
        def look():
            barrier.wait()
            try:
                registry.get("framefusion")
                registry.get("window")
            except Exception as err:
                errors.append(repr(err))
        threads = [threading.Thread(target=look) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(errors), errors[:1])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[0] == "0", out.stdout
