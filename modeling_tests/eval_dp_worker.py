"""Worker of test_eval_distributed.py: `parrot-eval` (its `main`) in one rank of a torchrun run, optionally made to
fail on one rank: `--fail RANK:raise:N` raises after N batches on RANK, `--fail RANK:kill:N` SIGKILLs that process
after N batches. Every row a rank is asked to predict is appended to `<--log_dir>/rows.rank<r>.jsonl`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from transformers_parrot.evaluation import cli, runner


class Failing:
    """Wraps a predictor; fails as `--fail` says and logs the rows it is asked for."""

    def __init__(self, predictor, log: Path, how: str | None, after: int):
        self.predictor, self.log, self.how, self.after, self.batches = predictor, log, how, after, 0
        self.name = predictor.name

    def predict(self, items):
        if self.how is not None and self.batches >= self.after:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {os.environ['RANK']} broke on purpose")
        self.batches += 1
        with open(self.log, "a", encoding="utf-8") as f:
            f.writelines(json.dumps([it.language, it.index, it.prompt]) + "\n" for it in items)
        return self.predictor.predict(items)


if __name__ == "__main__":
    argv = sys.argv[1:]
    log_dir = Path(argv.pop(argv.index("--log_dir") + 1))
    argv.remove("--log_dir")
    fail = None
    if "--fail" in argv:
        fail = argv.pop(argv.index("--fail") + 1)
        argv.remove("--fail")
    rank = int(os.environ["RANK"])
    how, after = None, 0
    if fail is not None and int(fail.split(":")[0]) == rank:
        how, after = fail.split(":")[1], int(fail.split(":")[2])
    load = runner.load_predictor
    runner.load_predictor = lambda *a, **k: Failing(load(*a, **k), log_dir / f"rows.rank{rank}.jsonl", how, after)
    sys.exit(cli.main(argv))
