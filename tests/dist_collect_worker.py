"""One rank of a data-parallel `mlux collect` (tests/test_distributed_collect.py launches it
with `mlx.launch`, and runs it unlaunched for the single-process reference).

usage: python dist_collect_worker.py DIE CONFIG

DIE is `none`, or `RANK:K`: that rank kills itself (SIGKILL, as `kill -9` would) when it starts
its K-th chunk (counted from 1), so the test can check that a rerun resumes.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    die, config = sys.argv[1:3]
    import mlux.collect.collector as collector_mod
    import mlux.collect.parallel as parallel_mod
    from mlux.collect.cli import main as cli_main
    from mlux.distributed import rank

    if die != "none":
        who, at = (int(x) for x in die.split(":"))
        real, seen = collector_mod.run_chunk, [0]

        def run_chunk(*args, **kwargs):
            seen[0] += 1
            if rank() == who and seen[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        collector_mod.run_chunk = parallel_mod.run_chunk = run_chunk
    return cli_main(["collect", "--config", config, "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
