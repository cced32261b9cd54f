"""DDP: two CPU processes (gloo, loopback) train on different shards and must hold identical W and B.

B gets its gradients from a second loss (R) or by transport (kp), outside DDP's reducer; if those were not
averaged across processes, the replicas' B (and then W) would drift apart after the first step.
"""
import json
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONFIGS = {
    "sa_joint": dict(rule="sa", terms={"self": 1.0, "decay": 1.0}, alignment={"lr": 1e-2}),
    "wm_alternating_delay_noise": dict(rule="wm", terms={"amp": 1.0, "decay": 1.0}, alternating=True,
                                       delay_epochs=1, update_noise=0.01,
                                       alignment={"optimizer": "sgd", "lr": 1e-2, "input_noise": 0.5}),
    "kp": dict(rule="kp"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from sklearn.datasets import load_digits

    from models import backward_parameters
    from models.checkpoint import weights_sha256
    from models.data import ArrayDataset
    from models.presets import TrainConfig
    from models.train import train

    data = load_digits()
    train_set = ArrayDataset((data.images[:64] / 16).astype(np.float32), data.target[:64], image_size=16)
    records = []
    for name, settings in CONFIGS.items():
        config = TrainConfig(width=0.0625, small_input=True, image_size=16, num_classes=10, batch_size=16,
                             epochs=1, warmup_epochs=0, lr_drops=[], **settings)

        def record(model, epoch, metrics, name=name):
            records.append({"config": name, "epoch": epoch, "sha256": weights_sha256(model),
                            "b_sum": float(sum(p.detach().double().sum() for p in backward_parameters(model)))})

        train(config, train_set, None, os.path.join(out, name), progress=False, on_epoch_end=record)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(records, handle)
    dist.destroy_process_group()


def test_two_gloo_processes_keep_identical_w_and_b(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert [r["config"] for r in rank0] == ["sa_joint", "wm_alternating_delay_noise", "wm_alternating_delay_noise", "kp"]
    assert rank0 == rank1  # identical W, B and BN state on both replicas after every epoch
    from models.checkpoint import read_checkpoint

    for name in CONFIGS:  # only rank 0 wrote, and what it wrote is the shared state
        metadata = read_checkpoint(tmp_path / name / "checkpoint.pt")["metadata"]
        assert metadata["sha256"] == [r for r in rank0 if r["config"] == name][-1]["sha256"]
