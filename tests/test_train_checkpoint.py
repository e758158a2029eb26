"""Checkpoints of the training loop: round trip, bad files, pruning, and resume — in process for
every kind of data source and with a real SIGKILL on a subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from flowdiff.io import write_json
from flowdiff.train import (
    TrainConfig,
    fit,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from test_train import ConstantGradient, GaussianFit, Interrupted, gaussian_data

torch.set_num_threads(1)
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path / "run"
    config = TrainConfig(steps=4, batch_size=16, checkpoint_every=2, progress=False, out_dir=out)
    fit(GaussianFit(noise_std=0.1), gaussian_data(64), config)
    return out


# ---------------------------------------------------------------------------------- round trip
def test_save_load_round_trip_restores_every_state(tmp_path):
    model = GaussianFit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        model.loss(gaussian_data(32)).mean().backward()
        optimizer.step()
    model.ema_state = {"mu": torch.tensor([0.5, -0.5]), "log_std": torch.tensor([0.1, 0.2])}
    gen = torch.Generator().manual_seed(5)
    config = TrainConfig(steps=9, lr=0.1)
    history = [{"step": 3, "loss": 1.25, "lr": 0.1, "grad_norm": 0.5, "steps_per_s": 10.0}]
    path = save_checkpoint(
        tmp_path / "c.safetensors", model, step=3, config=config, optimizers={"model": optimizer},
        history=history, loop_state={"data": {"batches": 3}}, rng={"loss": gen.get_state()},
    )  # fmt: skip

    fresh = GaussianFit()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    ckpt = load_checkpoint(path, fresh, optimizers={"model": fresh_opt})
    assert_same_tensors(weights_of(fresh), weights_of(model))
    assert_same_tensors(fresh.ema_state, model.ema_state)
    saved, loaded = optimizer.state_dict(), fresh_opt.state_dict()
    assert loaded["param_groups"][0]["betas"] == [0.8, 0.9]  # JSON lists; AdamW unpacks either
    for index in saved["state"]:  # int keys survived JSON (a str key would silently not match)
        assert_same_tensors(saved["state"][index], loaded["state"][index])
    assert (ckpt.step, ckpt.config, ckpt.history) == (3, config, history)
    assert ckpt.loop_state == {"data": {"batches": 3}}
    assert torch.equal(ckpt.rng["loss"], gen.get_state())


# ---------------------------------------------------------------------------------- bad files
def test_checkpoint_of_another_model_is_refused_and_nothing_changes(run_dir, monkeypatch):
    before = files_of(run_dir)
    other = ConstantGradient()
    w = other.w.detach().clone()
    config = TrainConfig(steps=8, batch_size=16, progress=False, out_dir=run_dir)
    with pytest.raises(ValueError, match=r"checkpoint of a class test_train\.GaussianFit model.*"
                       r"class test_train\.ConstantGradient"):  # fmt: skip
        fit(other, gaussian_data(64), config)
    assert torch.equal(other.w, w)
    with pytest.raises(ValueError, match=r"another configuration.*'event_shape': \(\[2\], \[3\]\)"):
        fit(GaussianFit((3,), noise_std=0.1), torch.zeros(8, 3), config)
    # Registered families are told apart by kind.
    monkeypatch.setattr(GaussianFit, "kind", "gauss-b")
    with pytest.raises(ValueError, match=r"class test_train\.GaussianFit model.*'gauss-b' model"):
        load_checkpoint(latest_checkpoint(run_dir), GaussianFit(noise_std=0.1))
    assert files_of(run_dir) == before


def test_truncated_checkpoint_is_refused_and_nothing_changes(run_dir):
    latest = latest_checkpoint(run_dir)
    latest.write_bytes(latest.read_bytes()[:-100])
    before = files_of(run_dir)
    model = GaussianFit(noise_std=0.1)
    initial = weights_of(model)
    with pytest.raises(ValueError, match=r"checkpoint-00000004.*truncated"):
        load_checkpoint(latest, model)
    config = TrainConfig(steps=8, batch_size=16, progress=False, out_dir=run_dir)
    with pytest.raises(ValueError, match="truncated"):
        fit(model, gaussian_data(64), config)
    assert_same_tensors(weights_of(model), initial)
    assert files_of(run_dir) == before


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    model = GaussianFit()
    initial = weights_of(model)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(4096))
    json_file = tmp_path / "config.safetensors"
    write_json(json_file, {"steps": 3})
    saved_model = model.save(tmp_path / "model.safetensors")
    for path, message in [
        (noise, "not a readable flowdiff checkpoint"),
        (json_file, "not a readable flowdiff checkpoint"),
        (saved_model, "is a saved model .*GenerativeModel.load.*not a training checkpoint"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path, model)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors", model)
    assert_same_tensors(weights_of(model), initial)


def test_optimizer_mismatch_is_refused_before_loading(run_dir):
    model = GaussianFit(noise_std=0.1)
    initial = weights_of(model)
    optimizers = {"generator": torch.optim.AdamW(model.parameters())}
    with pytest.raises(ValueError, match=r"optimizers \['model'\].*trains \['generator'\]"):
        load_checkpoint(latest_checkpoint(run_dir), model, optimizers=optimizers)
    assert_same_tensors(weights_of(model), initial)


def test_resume_false_refuses_an_out_dir_with_checkpoints(run_dir):
    before = files_of(run_dir)
    config = TrainConfig(steps=8, batch_size=16, progress=False, out_dir=run_dir, resume=False)
    with pytest.raises(ValueError, match=r"already holds checkpoints.*resume=False"):
        fit(GaussianFit(noise_std=0.1), gaussian_data(64), config)
    assert files_of(run_dir) == before


def test_keep_last_prunes_and_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".checkpoint-00000009.safetensors.x1y2.tmp").write_bytes(b"torn")
    (tmp_path / "checkpoint-notes.txt").write_text("not a checkpoint name")
    config = TrainConfig(steps=20, batch_size=8, checkpoint_every=3, keep_last=2,
                         progress=False, out_dir=tmp_path)  # fmt: skip
    fit(GaussianFit(), gaussian_data(64), config)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [18, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000018.safetensors",
        "checkpoint-00000020.safetensors",
        "checkpoint-notes.txt",
        "metrics.csv",
        "model.safetensors",
    ]


@pytest.mark.skipif(os.name != "posix", reason="folders are flushed on POSIX only")
def test_atomic_write_flushes_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is an entry of the folder: without flushing the folder after it, a power loss
    can bring back the old file (or none) after the write was reported done."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def recording_replace(source, target):
        events.append(("replace", Path(target).name))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    write_json(tmp_path / "sub" / "a.json", {"x": 1})
    file_inode, folder_inode = (
        p.stat().st_ino for p in (tmp_path / "sub" / "a.json", tmp_path / "sub")
    )
    assert events == [("fsync", file_inode), ("replace", "a.json"), ("fsync", folder_inode)]


# ---------------------------------------------------------------------------------- resume
def _source(kind: str, x: torch.Tensor):
    if kind == "tensor":
        return x
    if kind == "dataset":
        return TensorDataset(x)
    # A deterministic user loader: DistributedSampler reshuffles by set_epoch(epoch).
    sampler = DistributedSampler(TensorDataset(x), num_replicas=1, rank=0, shuffle=True, seed=3)
    return DataLoader(TensorDataset(x), batch_size=16, sampler=sampler)


@pytest.mark.parametrize("kind", ["tensor", "dataset", "loader"])
def test_interrupted_run_resumes_bit_identical(tmp_path, kind):
    """Crash (an exception) at step 13, restart: the run continues from the checkpoint of step
    10 and ends with exactly the weights, EMA and loss history of an uninterrupted run."""
    x = gaussian_data(200)
    options = dict(steps=30, batch_size=16, lr=0.05, checkpoint_every=5, log_every=5,
                   ema_decay=0.9, lr_schedule="cosine", progress=False)  # fmt: skip
    reference = GaussianFit(noise_std=0.3)
    expected = fit(reference, _source(kind, x), TrainConfig(**options, out_dir=tmp_path / "a"))

    crashing = GaussianFit(noise_std=0.3)
    crashing.fault = (13, "interrupt")
    config = TrainConfig(**options, out_dir=tmp_path / "b")
    with pytest.raises(Interrupted):
        fit(crashing, _source(kind, x), config)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-00000010.safetensors"
    resumed = GaussianFit(noise_std=0.3)
    result = fit(resumed, _source(kind, x), config)

    assert result.resumed_from == 10 and result.step == 30
    assert_same_tensors(weights_of(resumed), weights_of(reference))
    assert_same_tensors(resumed.ema_state, reference.ema_state)
    assert [r["loss"] for r in result.history] == [r["loss"] for r in expected.history]


# Checkpoints every 7 steps; the run takes ~1 s (4 ms per step), so kills land mid-run.
KILL_RUN = dict(
    steps=200, batch_size=32, lr=0.05, lr_schedule="cosine", warmup_steps=20, ema_decay=0.95,
    checkpoint_every=7, keep_last=2, log_every=10, progress=False,
)  # fmt: skip

# A fork server: it imports torch and flowdiff once, then runs each training run in a fresh
# fork (which the test SIGKILLs), so a restart costs no import. It reports "started <pid>" and
# "exit <code>" for each run; a run's own lines ("torn", its JSON result) come in between.
KILL_SERVER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import safetensors.torch
from test_train import GaussianFit, gaussian_data
from flowdiff.train import TrainConfig, fit

def train(out, tear_at, tear_fraction):
    fast_loss, save_file, writes = GaussianFit.loss, safetensors.torch.save_file, [0]
    def slow_loss(self, *args, **kwargs):
        time.sleep(0.004)  # slow enough to be killed mid-run; changes no number
        return fast_loss(self, *args, **kwargs)
    def tearing_save(tensors, filename, metadata=None):
        writes[0] += 1
        if writes[0] == tear_at:  # write the start of the file, then wait to be killed
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(filename, "wb") as fh:
                fh.write(data[: int(tear_fraction * len(data))])
            print("torn", flush=True)
            time.sleep(60)
        return save_file(tensors, filename, metadata=metadata)
    GaussianFit.loss, safetensors.torch.save_file = slow_loss, tearing_save
    config = TrainConfig(**{options!r}, out_dir=out)
    result = fit(GaussianFit(noise_std=0.3), gaussian_data(1000), config)
    print(json.dumps({{"step": result.step, "resumed_from": result.resumed_from}}), flush=True)

for line in sys.stdin:  # "<out_dir> <tear_at> <tear_fraction>", tear_at 0: no torn write
    out, tear_at, fraction = line.split()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            train(out, int(tear_at), float(fraction))
            code = 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print("started", pid, flush=True)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_sigkilled_run_restarted_at_random_moments_is_bit_identical(tmp_path):
    """SIGKILL a run three times, at moments drawn with a fixed seed: once in the middle of a
    checkpoint write (a random fraction of the file on disk), twice at a random delay after the
    restarted run wrote a new checkpoint; the last restart ends bit-identical to a run never
    killed, with no torn or duplicated file."""
    rng = random.Random(5)
    out = tmp_path / "run"
    script = tmp_path / "server.py"
    script.write_text(KILL_SERVER.format(tests=str(TESTS_DIR), options=KILL_RUN))
    errors = tmp_path / "server.err"
    # The uninterrupted reference runs in this process: same code, same single thread.
    reference = GaussianFit(noise_std=0.3)
    fit(reference, gaussian_data(1000), TrainConfig(**KILL_RUN, out_dir=tmp_path / "reference"))

    with open(errors, "w") as err:
        server = subprocess.Popen(
            [sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    watchdog = threading.Timer(120, server.kill)  # a hang fails the test instead of the CI job
    watchdog.start()

    def read(prefix: str) -> str:
        line = server.stdout.readline()
        assert line.startswith(prefix), (line, errors.read_text()[-3000:])
        return line.strip()

    def start(tear_at: int = 0, fraction: float = 0.0) -> int:
        server.stdin.write(f"{out} {tear_at} {fraction}\n")
        server.stdin.flush()
        return int(read("started").split()[1])

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        assert read("exit") == f"exit {-signal.SIGKILL}"
        for _, path in list_checkpoints(out):  # every checkpoint left is complete
            load_checkpoint(path, GaussianFit(noise_std=0.3))

    def latest_step() -> int:
        found = list_checkpoints(out)
        return found[-1][0] if found else 0

    try:
        pid = start(tear_at=rng.randint(2, 5), fraction=rng.uniform(0.05, 0.95))
        read("torn")
        kill(pid)
        torn = [p for p in out.iterdir() if p.name.endswith(".tmp")]
        assert len(torn) == 1 and torn[0].stat().st_size > 0  # killed mid-write
        for _ in range(2):
            before = latest_step()
            pid = start()
            deadline = time.monotonic() + 60
            while latest_step() <= before and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.15))
            kill(pid)
        killed_at = latest_step()
        assert 14 <= killed_at < 200
        start()
        report = json.loads(read("{"))
        assert read("exit") == "exit 0"
    finally:
        watchdog.cancel()
        server.kill()
        server.wait()
    assert report["step"] == 200 and report["resumed_from"] == killed_at

    final = load_file(str(out / "model.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))
    assert_same_tensors(final, expected)  # weights and EMA ("ema.*"), bit for bit
    assert (out / "metrics.csv").read_text().count("\n") == 21  # header + 20 rows, none twice
    # No partial file survives, and every checkpoint left is complete and loads.
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert [step for step, _ in list_checkpoints(out)] == [196, 200]
    for _, path in list_checkpoints(out):
        load_checkpoint(path, GaussianFit(noise_std=0.3))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_files_get_the_permissions_of_an_ordinary_open(tmp_path):
    """Not mkstemp's private 0600, also when the writer replaces the temporary file (safetensors
    does): a run folder can be shared like any other."""
    umask = os.umask(0o022)
    try:
        GaussianFit().save(tmp_path / "model.safetensors")
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
