"""The parking queue and what serves it: parking one job (`queue.py`), passes that requeue
or delete by selection (`passes.py`), the SQLite index that lists and filters parked items
(`index.py`), reading items from messages (`items.py`) and keeping the index true to the
queue (`watch.py`)."""
