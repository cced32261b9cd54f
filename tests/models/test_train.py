"""The trainer: schedules, parameter groups, update noise, Kolen-Pollack transport, divergence reporting,
determinism, resume, logs. Tiny ResNets on 16x16 images, a few steps each."""
import json

import numpy as np
import pytest
import torch

import models
from models.checkpoint import load_checkpoint, read_checkpoint, weights_sha256
from models.data import ArrayDataset
from models.evaluate import evaluate
from models.factory import alignment_options, build_model_from_config, rule_from_config
from models.optimizers import add_update_noise, build_optimizers, split_parameters
from models.presets import TrainConfig, load_preset, with_overrides
from models.schedules import alignment_lr, forward_lr
from models.train import DIVERGED_ACCURACY, train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # 2 OpenMP threads on a busy 2-core machine are many times slower


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = (data.images / 16.0).astype(np.float32), data.target
    return (ArrayDataset(images[:96], labels[:96], image_size=16, name="digits-train"),
            ArrayDataset(images[96:144], labels[96:144], image_size=16, name="digits-val"))


def tiny(rule="sa", **overrides) -> TrainConfig:
    base = load_preset(rule) if rule in ("bp", "fa", "kp", "sa", "aa", "wm", "ia_tpe") else TrainConfig(rule=rule)
    settings = dict(epochs=2, batch_size=32, width=0.0625, small_input=True, image_size=16, warmup_epochs=0,
                    lr_drops=[], num_classes=10)
    settings.update(overrides)
    return with_overrides(base, **settings)


# ---------------------------------------------------------------------------------------------------------
# Schedules


def test_forward_schedule_warmup_drops_and_delay():
    config = TrainConfig(lr=0.8, warmup_epochs=2, lr_drops=[3, 5], lr_drop_factor=0.1, delay_epochs=1)
    steps = 10  # per epoch
    assert forward_lr(config, 0, steps) == 0.0 and forward_lr(config, 9, steps) == 0.0  # delay epoch: J off
    assert forward_lr(config, 10, steps) == pytest.approx(0.8 * 1 / 20)  # warm-up starts after the delay
    assert forward_lr(config, 29, steps) == pytest.approx(0.8)
    assert forward_lr(config, 39, steps) == pytest.approx(0.8)
    assert forward_lr(config, 40, steps) == pytest.approx(0.08)  # epoch 3 of J = epoch 4 of the run
    assert forward_lr(config, 60, steps) == pytest.approx(0.008)


def test_alignment_schedule_syncs_drops_and_warms_up_only_without_delay():
    delayed = TrainConfig(lr_drops=[2], delay_epochs=1, alignment={"lr": 0.5, "warmup_epochs": 6})
    assert alignment_lr(delayed, 0, 10) == 0.5  # full rate during the delay, no warm-up
    assert alignment_lr(delayed, 29, 10) == 0.5
    assert alignment_lr(delayed, 30, 10) == pytest.approx(0.05)  # J's drop at its epoch 2, shifted by 1
    warm = TrainConfig(lr_drops=[2], delay_epochs=0, alignment={"lr": 0.5, "warmup_epochs": 1})
    assert alignment_lr(warm, 4, 10) == pytest.approx(0.25)
    own = TrainConfig(lr_drops=[2], alignment={"lr": 0.5, "lr_drops": [1]})
    assert alignment_lr(own, 10, 10) == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------------------
# Parameter groups, optimizers, noise


def _model(config):
    model = build_model_from_config(config)
    return model, rule_from_config(config)


def test_weight_decay_only_on_forward_kernels_and_b_placement():
    for rule in ("sa", "kp", "fa", "bp"):
        config = tiny(rule)
        model, rule_obj = _model(config)
        backward = {id(p) for p in models.backward_parameters(model)}
        groups = split_parameters(model, rule_obj)
        optimizer = build_optimizers(config, groups)["forward"]
        decay_group, free_group = optimizer.param_groups
        assert decay_group["weight_decay"] == config.weight_decay and free_group["weight_decay"] == 0
        forward_decay = [p for p in decay_group["params"] if id(p) not in backward]
        assert forward_decay and all(p.ndim > 1 for p in forward_decay)
        assert all(p.ndim == 1 for p in free_group["params"])  # BN weights/biases and linear biases
        in_forward_opt = sum(id(p) in backward for p in decay_group["params"])
        if rule == "kp":
            assert in_forward_opt == len(backward) > 0  # B in W's group: same update rule, same decay
        else:
            assert in_forward_opt == 0
        assert [id(p) for p in groups["backward"]] == ([id(p) for p in models.backward_parameters(model)]
                                                       if rule == "sa" else [])
        if rule == "fa":
            assert not any(p.requires_grad for p in models.backward_parameters(model))


def test_update_noise_is_scaled_by_the_learning_rate():
    weights = torch.nn.Parameter(torch.zeros(200_000))
    optimizer = torch.optim.SGD([weights], lr=0.05)
    add_update_noise(optimizer, sigma=2.0, generator=torch.Generator().manual_seed(1))
    assert weights.detach().std().item() == pytest.approx(2.0 * 0.05, rel=0.02)
    assert abs(weights.detach().mean().item()) < 1e-3
    again = torch.nn.Parameter(torch.zeros(200_000))
    add_update_noise(torch.optim.SGD([again], lr=0.05), 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(weights, again)  # same seed, same noise (what keeps DDP replicas identical)


def test_kolen_pollack_b_receives_exactly_w_updates(tmp_path, digits):
    config = tiny("kp", weight_decay=0.0, epochs=1)
    torch.manual_seed(0)
    model, _ = _model(config)
    torch.manual_seed(0)
    initial = {name: (layer.weight.detach().clone(), layer.weight_backward.detach().clone())
               for name, layer in models.asymmetric_layers(model)}
    path = train(config, digits[0], None, tmp_path, progress=False)
    trained, _ = load_checkpoint(path)
    for name, layer in models.asymmetric_layers(trained):
        w0, b0 = initial[name]
        assert not torch.allclose(layer.weight, w0)  # W did move...
        torch.testing.assert_close(layer.weight_backward - layer.weight, b0 - w0, atol=1e-6, rtol=0)  # ...and B with it


# ---------------------------------------------------------------------------------------------------------
# Whole runs


def test_training_learns_logs_and_records_metadata(tmp_path, digits):
    train_set, val_set = digits
    path = train(tiny("sa", epochs=3, alignment={"lr": 1e-2}), train_set, val_set, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert {"task_loss", "alignment_loss", "top1", "top5", "lr", "alignment_lr", "layers"} <= set(line)
        assert set(line["layers"]) == {name for name, _ in models.asymmetric_layers(_model(tiny("sa"))[0])}
    angles = [np.mean([v["angle_deg"] for v in line["layers"].values()]) for line in lines]
    assert angles[-1] < angles[0] < 90  # SA pulls B towards W
    assert lines[-1]["task_loss"] < lines[0]["task_loss"]
    model, metadata = load_checkpoint(path)
    assert metadata["status"] == "ok" and metadata["rule"] == "sa" and metadata["epoch"] == 3
    assert metadata["dataset"] == "digits-train" and metadata["seed"] == 0
    assert metadata["top1"] == pytest.approx(lines[-1]["top1"])
    assert metadata["sha256"] == weights_sha256(model)
    assert evaluate(model, val_set, batch_size=16)["top1"] == pytest.approx(metadata["top1"])


def test_reruns_are_identical_and_seed_matters(tmp_path, digits):
    config = tiny("aa", epochs=1, alternating=True, update_noise=0.01,
                  alignment={"input_noise": 0.5, "optimizer": "adam", "lr": 1e-3})
    first = read_checkpoint(train(config, digits[0], None, tmp_path / "a", progress=False))["metadata"]["sha256"]
    second = read_checkpoint(train(config, digits[0], None, tmp_path / "b", progress=False))["metadata"]["sha256"]
    other = read_checkpoint(train(with_overrides(config, seed=1), digits[0], None, tmp_path / "c",
                                  progress=False))["metadata"]["sha256"]
    assert first == second != other


def test_interrupted_run_resumes_to_identical_weights(tmp_path, digits):
    # delay epoch (R only) + alternating + input noise + update noise: every RNG stream and optimizer state
    config = tiny("aa", epochs=2, delay_epochs=1, alternating=True, update_noise=0.01, lr_drops=[1],
                  alignment={"input_noise": 0.5, "optimizer": "adam", "lr": 1e-3})
    straight = train(config, digits[0], digits[1], tmp_path / "straight", progress=False)
    stopped = train(config, digits[0], digits[1], tmp_path / "resumed", progress=False, stop_after_epoch=2)
    assert read_checkpoint(stopped)["metadata"]["epoch"] == 2
    resumed = train(config, digits[0], digits[1], tmp_path / "resumed", progress=False, resume=True)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["metadata"]["epoch"] == b["metadata"]["epoch"] == 3
    assert a["metadata"]["sha256"] == b["metadata"]["sha256"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    log = [json.loads(line)["epoch"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    with pytest.raises(ValueError, match="cannot resume.*rule"):
        train(with_overrides(config, rule="sa", terms={"self": 1.0, "decay": 1.0}), digits[0], None,
              tmp_path / "resumed", progress=False, resume=True)


def test_delay_epochs_train_only_b(tmp_path, digits):
    config = tiny("sa", epochs=0, delay_epochs=1)
    torch.manual_seed(0)
    model, _ = _model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained, _ = load_checkpoint(train(config, digits[0], None, tmp_path, progress=False))
    for name, parameter in trained.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == name.endswith("weight_backward"), name


def test_alignment_divergence_is_reported_with_step_and_layer(tmp_path, digits, caplog):
    # amp without decay is unbounded below; a huge plain-GD rate makes R overflow within a few steps
    config = tiny("amp=1", epochs=2, alignment={"optimizer": "sgd", "lr": 1e30})
    path = train(config, digits[0], digits[1], tmp_path, progress=False)
    metadata = json.loads(path.with_suffix(".json").read_text())
    layer_names = {name for name, _ in models.asymmetric_layers(_model(config)[0])}
    assert metadata["status"] == "diverged"
    assert metadata["top1"] == metadata["top5"] == DIVERGED_ACCURACY
    assert metadata["diverged_at"]["layer"] in layer_names
    step = metadata["diverged_at"]["step"]
    assert 0 < step < 6
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "models.train" and record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert f"step {step}" in warnings[0] and metadata["diverged_at"]["layer"] in warnings[0]
    last = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "diverged" and last["diverged_at"]["step"] == step


def test_task_divergence_names_the_task_loss(tmp_path, digits):
    path = train(tiny("bp", epochs=1, lr=1e30), digits[0], None, tmp_path, progress=False)
    metadata = json.loads(path.with_suffix(".json").read_text())
    assert metadata["status"] == "diverged" and metadata["diverged_at"]["layer"] is None
    assert metadata["diverged_at"]["loss"] == "task loss"


# ---------------------------------------------------------------------------------------------------------
# The run folder: refuse, resume, overwrite, reuse


def folder_state(folder):
    return {name: (folder / name).read_bytes() for name in ("checkpoint.pt", "checkpoint.json", "train_log.jsonl")
            if (folder / name).exists()}


def test_a_folder_holding_a_run_is_refused_and_left_alone(tmp_path, digits):
    config = tiny("bp", epochs=1)
    train(config, digits[0], None, tmp_path / "run", progress=False)
    before = folder_state(tmp_path / "run")
    assert set(before) == {"checkpoint.pt", "checkpoint.json", "train_log.jsonl"}
    with pytest.raises(FileExistsError, match=r"run already holds a training run \(checkpoint\.pt, checkpoint\.json, "
                                              r"train_log\.jsonl\); pass --resume to continue it or --overwrite"):
        train(with_overrides(config, seed=1), digits[0], None, tmp_path / "run", progress=False)
    assert folder_state(tmp_path / "run") == before
    (tmp_path / "killed").mkdir()  # a run killed in its first epoch leaves only a log line
    (tmp_path / "killed" / "train_log.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(FileExistsError, match="train_log.jsonl"):
        train(config, digits[0], None, tmp_path / "killed", progress=False)
    assert (tmp_path / "killed" / "train_log.jsonl").read_text() == '{"epoch": 1}\n'
    with pytest.raises(ValueError, match="exclude each other"):
        train(config, digits[0], None, tmp_path / "run", resume=True, overwrite=True, progress=False)


def test_overwrite_removes_the_old_run_before_the_first_epoch(tmp_path, digits, monkeypatch):
    import models.train as trainer

    config = tiny("fa", epochs=1)
    train(config, digits[0], None, tmp_path / "run", progress=False)
    seen = []
    original = trainer._train_epoch
    monkeypatch.setattr(trainer, "_train_epoch", lambda run, *args: (seen.append(folder_state(tmp_path / "run")),
                                                                      original(run, *args)))
    new = with_overrides(config, seed=1, epochs=2)
    path = train(new, digits[0], None, tmp_path / "run", overwrite=True, progress=False)
    assert seen[0] == {}  # nothing of the old run is left when training starts
    fresh = train(new, digits[0], None, tmp_path / "fresh", progress=False)
    assert read_checkpoint(path)["metadata"]["sha256"] == read_checkpoint(fresh)["metadata"]["sha256"]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]


def test_resume_after_a_kill_between_checkpoint_and_sidecar(tmp_path, digits, caplog):
    config = tiny("fa", epochs=3)
    folder = tmp_path / "run"
    train(config, digits[0], None, folder, progress=False, stop_after_epoch=1)
    stale = (folder / "checkpoint.json").read_text()
    train(config, digits[0], None, folder, resume=True, progress=False, stop_after_epoch=2)
    (folder / "checkpoint.json").write_text(stale)  # the .pt of epoch 2 was written, its sidecar was not
    path = train(config, digits[0], None, folder, resume=True, progress=False)
    assert any("disagrees" in record.getMessage() for record in caplog.records if record.name == "models.run_folder")
    straight = train(config, digits[0], None, tmp_path / "straight", progress=False)
    assert read_checkpoint(path)["metadata"]["sha256"] == read_checkpoint(straight)["metadata"]["sha256"]
    assert load_checkpoint(path)[1]["epoch"] == 3  # the sidecar is consistent again


def test_train_or_reuse_reuses_finished_runs_and_resumes_unfinished_ones(tmp_path, digits, monkeypatch):
    import models.train as trainer

    config = tiny("sa", epochs=1, delay_epochs=1)
    folder = tmp_path / "run"
    train(config, digits[0], None, folder, progress=False, stop_after_epoch=1)  # the delay epoch only
    path = trainer.train_or_reuse(config, digits[0], None, folder)  # epoch 1 of 1 + 1: not finished
    assert path == (folder / "checkpoint.pt").resolve()
    assert read_checkpoint(path)["metadata"]["epoch"] == 2
    straight = train(config, digits[0], None, tmp_path / "straight", progress=False)
    assert read_checkpoint(path)["metadata"]["sha256"] == read_checkpoint(straight)["metadata"]["sha256"]
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: pytest.fail("a finished run was trained again"))
    assert trainer.train_or_reuse(config, digits[0], None, folder) == path
    assert path.stat().st_mtime_ns == stamp


def test_train_or_reuse_keeps_a_diverged_run(tmp_path, digits, monkeypatch):
    import models.train as trainer

    config = tiny("bp", epochs=2, lr=1e30)
    path = trainer.train_or_reuse(config, digits[0], None, tmp_path)
    assert read_checkpoint(path)["metadata"]["status"] == "diverged"
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: pytest.fail("a diverged run was trained again"))
    assert trainer.train_or_reuse(config, digits[0], None, tmp_path) == path


def test_training_log_without_per_layer_metrics(tmp_path, digits):
    from models.train_log import read_log, training_log

    assert training_log(tmp_path / "checkpoint.pt") == []
    path = train(tiny("fa", epochs=2), digits[0], digits[1], tmp_path, progress=False)
    records = training_log(path)
    assert [record["epoch"] for record in records] == [1, 2] and training_log(tmp_path) == records
    full = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(record["layers"] for record in full)
    assert read_log(path) == read_log(tmp_path) == read_log(tmp_path / "train_log.jsonl") == full
    assert records == [{key: value for key, value in record.items() if key != "layers"} for record in full]


def test_evaluate_top1_top5_against_direct_computation(digits):
    torch.manual_seed(3)
    model, _ = _model(tiny("fa"))
    result = evaluate(model, digits[1], batch_size=7)
    model.eval()
    with torch.no_grad():
        logits = model(digits[1].images)
    labels = digits[1].labels
    ranks = (logits > logits.gather(1, labels[:, None])).sum(1)
    assert result["top1"] == pytest.approx((ranks == 0).float().mean().item())
    assert result["top5"] == pytest.approx((ranks < 5).float().mean().item())


def test_cli_train_and_sweep_noise(tmp_path, capsys):
    from flows.cli import main

    tiny_args = ["--data", "builtin:digits", "--epochs", "1", "--width", "0.0625", "--small-input",
                 "--image-size", "16", "--batch-size", "256", "--no-progress", "--threads", "1"]
    assert main(["train", "--preset", "sa", "--out", str(tmp_path / "sa"), *tiny_args]) == 0
    metadata = json.loads((tmp_path / "sa" / "checkpoint.json").read_text())
    assert (metadata["preset"], metadata["status"], metadata["epoch"]) == ("sa", "ok", 1)
    assert metadata["dataset"].startswith("builtin:digits")
    assert metadata["config"]["width"] == 0.0625 and metadata["config"]["small_input"] is True

    assert main(["sweep-noise", "--rules", "bp,fa", "--sigmas", "0,1000", "--out", str(tmp_path / "sweep"),
                 *tiny_args]) == 0
    rows = (tmp_path / "sweep" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("rule,sigma,top1") and len(rows) == 5
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert table.startswith("| sigma | bp | fa |")
    clean = {line.split(",")[0] + line.split(",")[1]: float(line.split(",")[2]) for line in rows[1:]}
    assert clean["bp0.0"] > clean["bp1000.0"]  # enormous update noise destroys what was learned

    capsys.readouterr()
    assert main(["train", "--preset", "sa", "--out", str(tmp_path / "sa"), *tiny_args]) == 2
    assert "pass --resume to continue it or --overwrite to start again" in capsys.readouterr().err
    assert main(["train", "--preset", "sa", "--out", str(tmp_path / "sa"), "--overwrite", "--seed", "1",
                 *tiny_args]) == 0
    assert json.loads((tmp_path / "sa" / "checkpoint.json").read_text())["seed"] == 1

    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x"), *tiny_args]) == 2
    assert "error: unknown preset 'nope'; valid presets" in capsys.readouterr().err  # no KeyError quotes


def test_layer_ops_and_input_noise_reach_the_engine_options():
    config = with_overrides(load_preset("ia_tpe"), alignment={"batch_fraction": 0.5})
    options = alignment_options(config)
    assert options.input_noise == config.alignment.input_noise and options.noise_mode == "replace"
    for key, value in config.layer_ops.model_dump().items():
        assert getattr(options, key) == value, key
    assert options.bo_fwmc and options.bo_fwl2n and not options.bi_bwmc  # Table 5, R_IA^TPE column
    assert options.batch_fraction == 0.5
    assert type(config.layer_ops) is models.LayerOps and isinstance(options, models.LayerOps)  # one schema


# ---------------------------------------------------------------------------------------------------------
# Data


def test_builtin_digits_split_is_fixed_and_normalised():
    from models.data import IMAGENET_MEAN, builtin

    train_a, val_a = builtin("digits", image_size=16, seed=0)
    train_b, val_b = builtin("digits", image_size=16, seed=0)
    assert torch.equal(train_a.images, train_b.images) and torch.equal(val_a.labels, val_b.labels)
    assert len(train_a) + len(val_a) == 1797 and train_a.num_classes == 10
    image, label = train_a[0]
    assert image.shape == (3, 16, 16) and isinstance(label, int)
    torch.testing.assert_close(image[0] * 0.229 + IMAGENET_MEAN[0], image[1] * 0.224 + IMAGENET_MEAN[1])  # gray
    other_train, _ = builtin("digits", image_size=16, seed=1)
    assert not torch.equal(other_train.labels, train_a.labels)  # the seed picks the split
    with pytest.raises(KeyError, match="digits"):
        builtin("mnist")


def test_array_dataset_accepts_uint8_float_gray_and_rgb():
    labels = np.array([0, 1, 2])
    gray = ArrayDataset(np.full((3, 8, 8), 255, np.uint8), labels)
    rgb = ArrayDataset(np.ones((3, 8, 8, 3), np.float32), labels, image_size=4)
    assert gray[0][0].shape == (3, 8, 8) and rgb[0][0].shape == (3, 4, 4)
    torch.testing.assert_close(gray.images[:, :, :4, :4], rgb.images)  # 255 uint8 == 1.0 float
    with pytest.raises(ValueError, match="shape"):
        ArrayDataset(np.zeros((3, 8, 8, 2)), labels)
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(np.zeros((3, 8, 8)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ArrayDataset(np.full((3, 8, 8), 2.0), labels)


def test_imagenet_folders_train_and_eval_transforms(tmp_path):
    from PIL import Image

    from models.data import imagenet

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / split / cls / "a.png")
    train_set, val_set = imagenet(tmp_path, image_size=24)
    assert train_set[0][0].shape == val_set[0][0].shape == (3, 24, 24)
    assert train_set.num_classes == 2 and val_set.name.endswith("/val")
    with pytest.raises(FileNotFoundError, match="train"):
        imagenet(tmp_path / "val")
