"""kdlib.train under torchrun: 2 CPU processes (gloo) end where one process ends."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_distill.py")


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, str(SCRIPT), str(one), "64"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          str(SCRIPT), str(two), "64"], tmp_path)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_init_distributed_outside_torchrun_says_how():
    from kdlib.distributed import init_distributed

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    if env != dict(os.environ):
        pytest.skip("running under torchrun")
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()
