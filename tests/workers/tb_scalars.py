"""Print one TensorBoard scalar of a run as JSON ``{iteration: value}`` (run with .venv-mcore019's
Python, which has ``tensorboard``): ``tb_scalars.py DIR TAG``. Every events file in DIR is read in
name order (a resumed run appends a new file), so a later value for an iteration wins."""

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

folder, tag = Path(sys.argv[1]), sys.argv[2]
values = {}
for path in sorted(folder.glob("events.out.tfevents.*")):
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag == tag:
                values[event.step] = value.simple_value if value.HasField("simple_value") else float(
                    value.tensor.float_val[0])
print(json.dumps(values))
