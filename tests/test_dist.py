"""Distributed training on CPU (gloo): DDP ≡ one process at the same global batch, FSDP2 save → resume on another
world size → export, SIGKILL in the middle of a checkpoint write, and the wrapping switches (checkpointing, compile).

The multi-process tests launch the real CLI under `torchrun` (2 ranks, 1 thread each), as a user would.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from microt2i import presets
from microt2i.config import apply_overrides
from microt2i.models import build
from microt2i.train import dist
from microt2i.train.state import list_checkpoints

# world-tiny shrunk: 4 optimizer steps of 8 images, checkpoints every 2 steps. Adam's eps is raised from 1e-8: with
# it, a parameter whose gradient is ~1e-9 (a norm gain at init) moves by ±lr on the sign of rounding noise, which
# would hide real differences between the parallel layouts behind 1e-3 jitter.
TINY = ["data.num_images=32", "train.total_nimg=32", "train.batch_size=8", "train.log_every_nimg=8",
        "train.ckpt_every_nimg=16", "train.ema_decay=0.5", "train.threads=1", "train.warmup_nimg=0", "train.eps=1e-4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TOL = 2e-5  # fp32 all-reduce sums in another order than local accumulation: ~1e-7 per step, far below this


def _run(args, nproc=1, timeout=300):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
              if nproc > 1 else [sys.executable, "-m"])
    out = subprocess.run(launch + ["microt2i.cli", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _train(run_dir, cache, *extra, nproc=1):
    return _run(["train", "world-tiny", *TINY, f"data.cache_dir={cache}", *extra, "--run-dir", str(run_dir),
                 "--no-progress"], nproc=nproc)


def _ema(run_dir):
    return load_file(str(run_dir / "ema" / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, global batch 8 as 2 accumulation rounds of 4."""
    root = tmp_path_factory.mktemp("dist")
    _train(root / "ref", root / "cache", "train.micro_batch=4")
    return root


def test_ddp_two_ranks_match_one_process(reference):
    """2 ranks × micro-batch 4 ≡ 1 process × 2 rounds of 4: same samples, same noise, averaged gradients."""
    _train(reference / "ddp", reference / "cache", "train.micro_batch=4", nproc=2)
    assert _max_diff(_ema(reference / "ddp"), _ema(reference / "ref")) < TOL
    ckpts = list_checkpoints(reference / "ddp")
    assert [p.suffix for p in ckpts] == [".pt", ".pt"]  # rank 0 wrote them; no duplicates, no torn files


def test_fsdp_two_ranks_resume_on_one_and_export(reference):
    """FSDP2 on 2 ranks to half-way (a sharded DCP checkpoint), resumed on 1 rank to the end: the exported EMA
    equals a gathered copy of the sharded EMA, and the whole run matches the one-process reference."""
    run = reference / "fsdp"
    _run(["train", "world-tiny", *TINY, f"data.cache_dir={reference / 'cache'}", "train.parallel=fsdp",
          "train.micro_batch=4", "--run-dir", str(run), "--no-progress", "--stop-nimg", "16"], nproc=2)
    assert [p.suffix for p in list_checkpoints(run)] == [".dcp"]
    _train(run, reference / "cache", "train.parallel=fsdp", "train.micro_batch=4")  # 1 process, 2 rounds: DCP reshards
    exported = _ema(run)
    cfg = apply_overrides(presets.get("world-tiny"), TINY)
    net, ema = build(cfg.model), build(cfg.model)
    opt = torch.optim.AdamW(net.parameters())
    meta = dist.load_sharded(list_checkpoints(run)[-1], net, opt, ema)  # no process group: plain tensors
    assert meta["nimg"] == 32
    assert _max_diff(exported, ema.state_dict()) == 0.0
    assert _max_diff(exported, _ema(reference / "ref")) < TOL


KILLER = textwrap.dedent("""
    import os, signal, sys
    import microt2i.train.state as state
    real, calls = state.atomic_write_bytes, []

    def torn(path, data):  # the 2nd checkpoint: half the bytes reach the temp file, then the process dies
        calls.append(path)
        if len(calls) == 2:
            with open(str(path) + ".tmp", "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)

    state.atomic_write_bytes = torn
    from microt2i.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_mid_checkpoint_resumes_from_last_complete(reference):
    run = reference / "killed"
    args = ["train", "world-tiny", *TINY, f"data.cache_dir={reference / 'cache'}", "train.micro_batch=4",
            "--run-dir", str(run), "--no-progress"]
    out = subprocess.run([sys.executable, "-c", KILLER, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]
    assert [p.name for p in list_checkpoints(run)] == ["training-state-000000000016.pt"]
    assert not (run / "ema").exists()
    _train(run, reference / "cache", "train.micro_batch=4")  # resumes at 16 images, ignores the torn temp file
    assert _max_diff(_ema(run), _ema(reference / "ref")) == 0.0  # bit-exact, as if never killed


def test_fsdp_recipe_two_ranks(tmp_path):
    """MicroDiT's 4-stage world recipe under torchrun with FSDP2: sharded stages seed the next (weights, EMA and
    optimizer at equal resolution, weights only across 8 → 16 px) and the last exports consolidated weights."""
    out = _run(["train", "--recipe", "world-microdit-tiny", "train.total_nimg=8", "train.batch_size=4",
                "train.parallel=fsdp", "train.threads=1", "data.num_images=16", f"data.cache_dir={tmp_path / 'c'}",
                "--run-dir", str(tmp_path / "run"), "--no-progress"], nproc=2)
    assert out.stdout.count("[recipe] finished: 4 of 4 stages") == 1  # rank 0 alone reports
    stages = sorted((tmp_path / "run").iterdir())
    assert [list_checkpoints(d)[-1].suffix for d in stages] == [".dcp"] * 4
    assert "(weights)" in out.stdout and "(weights, EMA and optimizer)" in out.stdout
    weights = _ema(stages[-1])
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


def test_split_batch():
    assert dist.split_batch(64, 0, 1) == (64, 1)
    assert dist.split_batch(64, 8, 2) == (8, 4)
    assert dist.split_batch(64, 0, 4) == (16, 1)
    for bad in [(64, 0, 3), (64, 12, 2), (8, 8, 2)]:
        with pytest.raises(ValueError, match="train.batch_size"):
            dist.split_batch(*bad)


def _loss_and_grads(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = net.config
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    tokens, mask = torch.randn(2, 5, cfg.text_dim, generator=g), torch.ones(2, 5, dtype=torch.bool)
    net.zero_grad()
    loss = net(x, torch.tensor([0.3, 2.0]), tokens, mask).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", ["world-tiny", "world-microdit-tiny", "world-cad-tiny"])
def test_activation_checkpointing_keeps_loss_grads_and_names(preset):
    torch.manual_seed(0)
    net = build(presets.get(preset).model)
    names = list(net.state_dict())
    loss, grads = _loss_and_grads(net)
    dist.wrap_model(net, activation_checkpointing=True)
    loss2, grads2 = _loss_and_grads(net)
    assert list(net.state_dict()) == names
    assert torch.equal(loss, loss2) and all(torch.allclose(grads[k], grads2[k], atol=1e-6) for k in grads)


def test_compile_per_block_matches_eager():
    torch.manual_seed(0)
    net = build(presets.get("world-tiny").model)
    loss, grads = _loss_and_grads(net)
    dist.apply_compile(net, backend="aot_eager")  # inductor needs a C++ toolchain: the slow test below uses it
    loss2, grads2 = _loss_and_grads(net)
    assert torch.allclose(loss, loss2, atol=1e-6) and all(torch.allclose(grads[k], grads2[k], atol=1e-5) for k in grads)


@pytest.mark.slow
def test_train_with_compile_inductor(tmp_path):
    _train(tmp_path / "run", tmp_path / "cache", "train.compile=true", "train.activation_checkpointing=true")
    assert (tmp_path / "run" / "ema" / "model.safetensors").is_file()


def test_blocks_found_for_every_family():
    for preset in ["world-tiny", "world-microdit-tiny", "world-cad-tiny"]:
        with torch.device("meta"):
            net = build(presets.get(preset).model)
        assert len(dist.blocks(net)) >= 1
    with pytest.raises(ValueError, match="no `blocks`"):
        dist.blocks(torch.nn.Linear(2, 2))
