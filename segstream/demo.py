"""``segstream demo``: the main job on the embedded default, end to end.

Like the CLI, this is the face of the project: it may import every stage, and no stage or
vocabulary module imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from segstream.settings import Settings

__all__ = ["run_demo", "sample_path"]


def sample_path() -> Path:
    """The bundled synthetic Olist sample (see its README for how it was generated)."""
    return Path(str(resources.files("replay") / "data" / "sample"))


def run_demo(
    settings: Settings,
    *,
    data: Path | None = None,
    speed: float | None = None,
    keep_services: bool = True,
    echo: Callable[[str], None] = print,
) -> bool:
    """Start services if needed, replay ``data`` (default: the bundled sample), read it back.

    Returns whether every partition's read-back matched what the replay sent.
    """
    import sys

    from replay.producer import run_replay, summary_lines
    from replay.readback import read_back
    from segstream.services import services_down, services_up

    echo("services:")
    for status in services_up(settings):
        echo("  " + status.line())
    data = data or sample_path()
    echo(f"replaying {data} (event time order, speed {'max' if speed is None else speed})")
    try:
        history, summary = run_replay(data, settings, speed=speed, restart=True, progress=sys.stderr.isatty())
        for line in summary_lines(history, summary):
            echo(line)
        echo("read back from Kafka (until each partition's end-of-replay tick):")
        check = read_back(settings, summary.replay_id, timeout_s=120)
        for line in check.lines():
            echo(line)
        echo("every event arrived" if check.matches else "READ-BACK INCOMPLETE: see the lines above")
        echo("streaming profile workers are not part of segstream yet (next: issue 4)")
    finally:
        if not keep_services:
            for message in services_down(settings):
                echo("  " + message)
    if keep_services:
        echo("services keep running: `segstream services status`, `segstream services down`")
    return check.matches
