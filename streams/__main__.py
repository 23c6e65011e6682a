"""``python -m streams worker -l info``: run a Faust worker of the stylestream app.

The event loop is chosen before anything creates one (``STYLESTREAM_EVENT_LOOP``): uvloop makes
the loop's own work cheaper (one worker 3,112 against 2,736 events/s, bench/results/stream*.json).
"""

from stylestream.config import Settings

if Settings.from_env().event_loop == "uvloop":
    import mode.loop

    mode.loop.use("uvloop")

from streams import agents  # noqa: E402, F401 - registers the agents, timers and pages
from streams.app import app  # noqa: E402
from stylestream.faust_app import worker_tables  # noqa: E402

if __name__ == "__main__":
    with worker_tables(app):
        app.main()
