"""``python -m indexer worker -l info``: run the indexer's Faust worker."""

from indexer import agents  # noqa: F401 - registers the agent and its pages
from indexer.app import app
from stylestream.faust_app import worker_tables

if __name__ == "__main__":
    with worker_tables(app):
        app.main()
