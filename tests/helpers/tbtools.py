"""Reading TensorBoard event files back, as TensorBoard shows them (shared by the tests)."""

from __future__ import annotations

import struct
from pathlib import Path


def tensorboard_steps(tb_dir: Path, tag: str = "train/loss") -> list[int]:
    """Steps of `tag` that TensorBoard shows: event files in name order; a SessionLog START at
    step P (a writer's purge_step) hides the earlier files' events from step P on."""
    from tensorboardX.proto import event_pb2

    steps: list[int] = []
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4  # length, its crc, the record, its crc
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                steps = [s for s in steps if s < event.step]
            elif event.HasField("summary") and any(v.tag == tag for v in event.summary.value):
                steps.append(event.step)
    return steps
