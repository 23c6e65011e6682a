"""``python -m indexer worker -l info``: run the indexer's Faust worker."""

from indexer import agents  # noqa: F401 - registers the agent and its pages
from indexer.app import app

if __name__ == "__main__":
    app.main()
