"""One DDP run (torchrun, 2 gloo processes, egs/synthetic/train.py + the demo yaml) with
several faults at once: a corrupt FLAC and a sample without its lips in rank 0's shards, an
npy cut short and a tar cut inside its last sample in rank 1's, and a NaN loss on rank 1 at
optimiser step 2 (``AVSE_FAULTS="loss=2:nan@1"``). A hang is a failure (a timeout kills the
whole process group)."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np

from avse.data import lists
from avse.data.shards import write_split
from tests.conftest import REPO
from tests.reliability.test_data_faults import corrupt_four, make_split

STEPS, TIMEOUT = 4, 240
DEMO_YAML = os.path.join(REPO, "egs", "synthetic", "hparams", "demo.yaml")


def _data(root):
    """``root/shards/train`` (16 utterances, 8 shards: 4 per rank, 4 of them corrupted) and
    a 2-row test list (4 other speakers)."""
    make_split(root / "shards" / "train", frames=30, visual="lips")
    rng = np.random.default_rng(1)
    test = [{"__key__": f"id0010{s}/vidtestxxxx/00001", "flac": 0.1 * rng.standard_normal(640 * 30),
             "lips.npy": rng.integers(0, 255, (30, 88, 88), dtype=np.uint8),
             "json": {"spk": f"id0010{s}", "duration": 1.2}} for s in range(4)]
    write_split(test, str(root / "shards" / "test"), shard_size=4)
    rows = [lists.parse_row(f"test,test,id0010{a},vidtestxxxx/00001,0,test,id0010{b},"
                            "vidtestxxxx/00001,-2.5,1.1") for a, b in ((0, 1), (2, 3))]
    lists.write_list(rows, str(root / "lists" / "voxmix_2mix.csv"))
    return corrupt_four(str(root / "shards" / "train"), "lips.npy")


def _run(args, env):
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        out, _ = proc.communicate()
        raise AssertionError(f"the DDP run hung (killed after {TIMEOUT} s):\n{out[-4000:]}")
    assert proc.returncode == 0, f"the DDP run failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def test_ddp_run_survives_corrupt_samples_and_a_nan_on_one_rank(tmp_path):
    bad = _data(tmp_path)
    out, trace = tmp_path / "exp", tmp_path / "trace"
    env = {**os.environ, "AVSE_FAULTS": "loss=2:nan@1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    log = _run(["torchrun", "--standalone", "--nproc_per_node=2",
                os.path.join(REPO, "egs", "synthetic", "train.py"), DEMO_YAML,
                f"--data_folder={tmp_path}", f"--output_folder={out}", f"--trace_dir={trace}",
                "--distributed_backend=gloo", "--number_of_epochs=1", f"--epoch_steps={STEPS}",
                "--batch_size=2", "--num_workers=1", "--crop_seconds=1.0", "--shuffle_buffer=8",
                "--valid_list=null", "--noprogressbar", "--device=cpu"], env)
    r0, r1 = (json.load(open(trace / f"rank{r}_epoch1.json")) for r in (0, 1))
    # the NaN step is skipped on both ranks: they stay in step (and their weights agree)
    assert r0["optimizer_step"] == r1["optimizer_step"] == STEPS - 1
    assert r0["steps"] == r1["steps"] == STEPS
    assert abs(r0["param_checksum"] - r1["param_checksum"]) <= 1e-6 * max(
        1.0, abs(r0["param_checksum"]))
    # every corrupt sample was skipped by the rank that reads its shard, and nothing else
    skipped = re.findall(r"rank (\d) worker \d: skipped a bad sample: shard (\S+), sample (\S+):",
                         log)
    assert skipped, log[-4000:]
    for rank in (0, 1):
        mine = {(s, k) for i, (s, k) in enumerate(sorted(bad.items())) if i % 2 == rank}
        assert {(s, k) for r, s, k in skipped if int(r) == rank} == mine
    assert not {k for k in r0["keys"] + r1["keys"]} & set(bad.values())
    train_log = (out / "train_log.txt").read_text()
    assert re.search(r"skipped_steps: 1\b", train_log)  # one step, skipped by both ranks
    n = int(re.search(r"skipped_samples: (\d+)", train_log).group(1))  # summed over the ranks
    assert n >= len(bad)  # every corrupt sample at least once (once a pass over the shards)
    faults = [r["data_faults"] for r in (r0, r1)]  # each rank's own count, in its trace
    assert n == sum(f["skipped"] for f in faults)
    for rank, f in enumerate(faults):
        mine = {f"{s}:{k}" for i, (s, k) in enumerate(sorted(bad.items())) if i % 2 == rank}
        assert set(f["bad_samples"]) == mine
    assert (out / "eval" / "test.json").is_file()
