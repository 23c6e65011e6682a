"""A worker's local table store is kept across restarts only if the last run stopped cleanly.

Faust writes a table's RocksDB store at once and its changelog later, through the producer;
at start it replays the changelog from the last offset it knows was sent. After a SIGKILL the
store holds writes whose changelog records were never sent, and the replay puts back the
older versions of only those keys that have a record in the replayed stretch: the store is
then no state the worker ever had. Seen in tests/streams/test_pipeline.py (4 in 11 runs on a
loaded machine): one shopper's sequence went back a few events while the checkpoint of its
partition (streams.source_offsets) stayed ahead, so the events in between were taken for
redeliveries and lost. The changelog alone is always a state the worker had (a prefix of
its writes, each checkpoint after the sequences it covers).

So, as Kafka Streams does after an unclean stop under exactly-once, a store whose worker did
not leave a clean-stop mark is deleted, and the tables are rebuilt from their changelogs
(compacted: one record per key). A clean stop flushes the producer first, so its store is
what the changelog holds and is kept: a planned restart replays nothing.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

CLEAN_MARK = ".stopped-cleanly"


@contextmanager
def kept_if_stopped_cleanly(tabledir: Path) -> Iterator[None]:
    """Around a worker's run: delete ``tabledir`` unless the previous run marked it clean;
    mark it when this run ends with exit status 0 (a stop, not a crash or a kill)."""
    mark = tabledir / CLEAN_MARK
    if mark.exists():
        mark.unlink()  # from here on a kill leaves no mark
    elif tabledir.is_dir() and any(tabledir.iterdir()):
        log.warning("%s: the last worker here did not stop cleanly; its local tables are deleted and "
                    "rebuilt from their changelogs", tabledir)
        shutil.rmtree(tabledir)
    try:
        yield
    except SystemExit as exc:
        if exc.code in (None, 0) and tabledir.is_dir():
            mark.touch()
        raise
