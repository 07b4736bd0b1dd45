"""`python tests/kill_at_step.py N MAIN_ARGS...`: main.py, except that every process SIGKILLs itself once the
checkpoint of optimisation step N has been written inside an epoch (with checkpoint_interval_steps), as a
power cut or the out-of-memory killer would stop it. Deterministic where a timed signal is not: tiny runs
take milliseconds a step. Under torchrun the ranks wait for rank 0's write first."""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime import distributed  # noqa: E402
from training.trainer import Trainer  # noqa: E402

kill_step = int(sys.argv.pop(1))
save_resumable = Trainer.save_resumable


def save_then_die(self: Trainer, path: Path | None = None) -> Path:
    saved = save_resumable(self, path)
    if self.state.step == kill_step and self.state.batch > 0:  # mid-epoch (an epoch end has batch 0)
        distributed.barrier()  # rank 0 has written it
        os.kill(os.getpid(), signal.SIGKILL)
    return saved


Trainer.save_resumable = save_then_die
sys.argv[0] = str(REPO / "main.py")
runpy.run_path(sys.argv[0], run_name="__main__")
