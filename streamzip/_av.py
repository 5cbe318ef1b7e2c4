"""PyAV, for the modules that decode or write media: ``from streamzip._av import av``.

Only those modules import this one, and those on the path of ``import streamzip`` (the file source)
import it where they open media, so the package, its configs, the registry, the operators and the
Kubernetes planner load without PyAV. PyAV is a hard dependency all the same: when it cannot be
imported (a broken wheel, a missing FFmpeg library, a bare environment), opening media raises a
:class:`~streamzip.errors.DependencyError` that names the fix, not a bare ``No module named 'av'``.
"""

from __future__ import annotations

from streamzip.errors import DependencyError

try:
    import av
    import av.error
    from av.video.reformatter import VideoReformatter
except ImportError as err:
    raise DependencyError(f"streamzip reads and writes media with PyAV, which cannot be imported ({err})",
                          fix="pip install av (a dependency of streamzip: reinstalling streamzip brings it)") from err

__all__ = ["VideoReformatter", "av"]
