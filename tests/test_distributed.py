"""Several processes (medseg.distributed): under torchrun (2 CPU ranks, gloo) a failure on any rank
stops every rank promptly, each with the failing rank's one-line message; nothing hangs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg.distributed import DistInfo, Ranks, _backend, describe, dist_info, process_group
from medseg.errors import MedsegError
from medseg.phantom import make_dataset, make_phantom, write_nifti

HERE = Path(__file__).resolve().parent
TINY = ["--batch-size", "2", "--width", "4", "--crop", "32", "--spacing", "10", "--val-cases", "1", "--device", "cpu",
        "--no-hd95"]


# ---------------------------------------------------------------------------------------------- one process


def test_one_process_has_no_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert dist_info() == DistInfo(0, 1, 0) and dist_info().is_main
    with process_group("cpu") as ranks:
        assert ranks.dist is None and ranks.device == torch.device("cpu")
        assert ranks.run(lambda: 41 + 1) == 42
        assert ranks.mean(2.5) == 2.5 and ranks.gather("x") == ["x"]
        assert torch.equal(ranks.sum(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))
        ranks.agree(None)
        with pytest.raises(MedsegError, match="^scan.nii: broken$"):
            ranks.run(lambda: (_ for _ in ()).throw(MedsegError("scan.nii: broken")))


def test_share_takes_every_nth_item():
    items = list("abcdefg")
    shares = [DistInfo(r, 3).share(items) for r in range(3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(sum(shares, [])) == items


@pytest.mark.parametrize("env,expect", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one': expected a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
])
def test_bad_launcher_environment_is_one_line(monkeypatch, env, expect):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(MedsegError, match=expect) as info:
        dist_info()
    assert "\n" not in str(info.value)


def test_nccl_only_where_every_rank_has_its_own_gpu(monkeypatch):
    info, gpu = DistInfo(0, 2), torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _backend(info, "auto", torch.device("cpu")) == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _backend(info, "auto", gpu) == "nccl" and _backend(info, "cuda", gpu) == "nccl"
    assert _backend(info, "cuda:0", gpu) == "gloo"  # every rank was given the same GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _backend(info, "auto", gpu) == "gloo"  # two ranks share the one GPU: NCCL would refuse


def test_describe_gives_the_line_the_cli_prints():
    assert describe(MedsegError("a.nii: truncated")) == "a.nii: truncated"
    assert describe(RuntimeError("CUDA out of memory.\nTried to allocate")) == "unexpected RuntimeError: CUDA out of memory."
    assert describe(KeyboardInterrupt()) == "interrupted"


def test_a_lost_peer_is_one_line():
    """A collective that breaks (another process died without agreeing) is a one-line MedsegError."""

    class Broken:
        def get_backend(self):
            return "gloo"

        def all_reduce(self, tensor):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:9107\nmore")

    ranks = Ranks(DistInfo(1, 2), torch.device("cpu"), Broken())
    with pytest.raises(MedsegError, match=r"^rank 1 of 2: lost contact .*Connection closed by peer") as info:
        ranks.mean(1.0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="its own reason"):  # a failing rank reports its own error, not the lost peer
        ranks.agree(ValueError("its own reason"))


# ---------------------------------------------------------------------------------------------- under torchrun


def _torchrun(tmp_path: Path, *args, timeout: int = 240):
    """Run ``args`` under torchrun with 2 CPU ranks; (result, {rank: its stderr})."""
    logs = tmp_path / "torchrun_logs"
    target = ["-m", "medseg.cli"] if not str(args[0]).endswith(".py") else []
    # a slow monitor: each rank ends by itself, not by the launcher's SIGTERM once the first one exited
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--monitor-interval", "2", "--log-dir", str(logs), "--redirects", "3", *target, *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r, {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stderr.log")}


def _every_rank_stopped_with(r, ranks: dict[int, str], message: str) -> None:
    assert r.returncode != 0, r.stderr[-3000:]
    assert sorted(ranks) == [0, 1], r.stderr[-3000:]
    for rank, text in ranks.items():
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (rank, text)
        assert "Traceback" not in text and "lost contact" not in text and "unexpected" not in text, (rank, text)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "ds", [11, 12, 13, 14], shape=(32, 32, 8),
                        spacing=(10.0, 10.0, 20.0))


@pytest.mark.slow
def test_train_nan_loss_on_one_rank_stops_both(dataset, tmp_path):
    """Rank 1's loss is NaN, rank 0's finite: rank 0 must not wait for rank 1 in the mean loss."""
    run = tmp_path / "run"
    r, ranks = _torchrun(tmp_path, HERE / "torchrun_nan_on_rank1.py", "train", dataset, "-o", run, "--epochs", "2",
                         "--steps-per-epoch", "2", *TINY)
    _every_rank_stopped_with(r, ranks, f"{run}: the loss became nan in epoch 1; try a lower --lr")
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_train_diverging_lr_stops_every_rank(dataset, tmp_path):
    run = tmp_path / "run"
    r, ranks = _torchrun(tmp_path, "train", dataset, "-o", run, "--epochs", "3", "--steps-per-epoch", "2", *TINY,
                         "--lr", "1e30")
    _every_rank_stopped_with(r, ranks, f"{run}: the loss became nan in epoch 1")


@pytest.mark.slow
def test_train_rank0_cannot_write_stops_both(dataset, tmp_path):
    """Rank 0 fails writing the run folder (history.csv is a folder) while rank 1 waits for it."""
    run = tmp_path / "run"
    (run / "history.csv").mkdir(parents=True)
    r, ranks = _torchrun(tmp_path, "train", dataset, "-o", run, "--epochs", "2", "--steps-per-epoch", "2", *TINY,
                         "--lr", "0.01")
    _every_rank_stopped_with(r, ranks, f"{run / 'history.csv'}: cannot write")
    assert "epoch   2" not in ranks[0] and not (run / "checkpoint.pt").exists()


def _scans(folder: Path, names: list[str]) -> None:
    for n, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(make_phantom(70 + n, shape=(48, 48, 8), spacing=(8.0, 8.0, 20.0)), folder / name, None)


@pytest.mark.slow
def test_batch_one_rank_cannot_write_stops_both(tmp_path):
    """Rank 1's share (site_b/) has an output folder it cannot create; rank 0 segments its own share
    and must not wait for rank 1 forever."""
    src, out = tmp_path / "in", tmp_path / "out"
    _scans(src, ["a.nii.gz", "site_b/b.nii.gz"])  # sorted: rank 0 takes a.nii.gz, rank 1 site_b/b.nii.gz
    out.mkdir()
    (out / "site_b").write_text("a file where rank 1's folder of masks goes")
    r, ranks = _torchrun(tmp_path, "batch", src, out, "--recursive", "--device", "cpu")
    _every_rank_stopped_with(r, ranks, f"{out / 'site_b'}: ")
    assert not (out / "summary.csv").exists()


@pytest.mark.slow
def test_batch_rank0_cannot_write_summary_stops_both(tmp_path):
    """Rank 0 fails writing the merged summary (a full disk) while rank 1 waits for it: both stop
    with rank 0's message, and no half summary is left."""
    src, out = tmp_path / "in", tmp_path / "out"
    _scans(src, ["a.nii.gz", "b.nii.gz"])
    r, ranks = _torchrun(tmp_path, HERE / "torchrun_summary_fails_on_rank0.py", "batch", src, out, "--device", "cpu")
    _every_rank_stopped_with(r, ranks, f"{out / 'summary.csv'}: cannot write (No space left on device)")
    assert (out / "a.nii.gz").is_file() and (out / "b.nii.gz").is_file()
    assert not (out / "summary.csv").exists()


