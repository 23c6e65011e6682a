"""``python -m streams worker -l info``: run a Faust worker of the stylestream app."""

from streams import agents  # noqa: F401 - registers the agents, timers and pages
from streams.app import app

if __name__ == "__main__":
    app.main()
