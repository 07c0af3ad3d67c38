"""A run's log, OUT/log.jsonl: one JSON record per iteration (iteration, loss, loss_cls, loss_bbox,
accuracy, lr, rois, seconds), appended as training goes, so that any tool can plot it."""
import json
import os

from minidet.atomic import atomic_write

LOG_NAME = "log.jsonl"


def read_log(path):
    """The JSON lines of a training log, as a list of dicts ([] when there is no log)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_log(path, iteration):
    """Keep the log's records up to `iteration` (those after it are about to be redone)."""
    records = [r for r in read_log(path) if r["iteration"] <= iteration]
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
