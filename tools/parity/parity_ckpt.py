"""Checkpoint files in the layout of the DVA release (PyTorch Lightning 1.6 ``.ckpt``, ``latent.pkl``).

The release was trained with pytorch-lightning 1.6.1 / torch 1.12.1 (the reference's ``dva.yaml``). What
Lightning 1.6's ``CheckpointConnector.dump_checkpoint`` writes, as far as it could be established here:
``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict`` (an OrderedDict of the
LightningModule, i.e. ``model.*`` then ``ema_model.*`` for ``LitModel``), ``loops`` (progress counters, plain
dicts of ints), ``callbacks`` (ModelCheckpoint state keyed by its ``state_key``), ``optimizer_states`` (the
Adam ``state_dict``), ``lr_schedulers``, ``native_amp_scaling_state`` (GradScaler state; precision 16),
``hparams_name`` and ``hyper_parameters``. The reference calls ``save_hyperparameters(conf.as_dict_jsonable())``,
so ``hyper_parameters`` is a plain dict of the config's JSON-able fields (enums dropped), NOT a
``TrainConfig`` object, and ``hparams_name`` is None. Nothing in these files needs a class outside torch
and the builtins to unpickle.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

LIGHTNING_VERSION = "1.6.1"


def _progress(done: int, *, started: bool = True, processed: bool = True) -> dict:
    counters = {"ready": done, "completed": done}
    if started:
        counters["started"] = done
    if processed:
        counters["processed"] = done
    return {"total": dict(counters), "current": dict(counters)}


def _loops(global_step: int, epoch: int, batches_per_epoch: int) -> dict:
    in_epoch = global_step - epoch * batches_per_epoch
    optimizer_progress = {
        "step": _progress(global_step, started=False, processed=False),
        "zero_grad": _progress(global_step, processed=False),
    }
    fit = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": global_step},
        "epoch_loop.batch_progress": {**_progress(in_epoch), "is_last_batch": False},
        "epoch_loop.scheduler_progress": _progress(0, started=False, processed=False),
        "epoch_loop.batch_loop.state_dict": {},
        "epoch_loop.batch_loop.optimizer_loop.state_dict": {},
        "epoch_loop.batch_loop.optimizer_loop.optim_progress": {"optimizer": optimizer_progress,
                                                                 "optimizer_position": 1},
        "epoch_loop.batch_loop.manual_loop.state_dict": {},
        "epoch_loop.batch_loop.manual_loop.optim_step_progress": _progress(0, started=False, processed=False),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.dataloader_progress": _progress(0, started=False, processed=False),
        "epoch_loop.val_loop.epoch_loop.state_dict": {},
        "epoch_loop.val_loop.epoch_loop.batch_progress": {**_progress(0), "is_last_batch": False},
        "epoch_progress": _progress(epoch),
    }
    idle = {"state_dict": {}, "dataloader_progress": _progress(0, started=False, processed=False),
            "epoch_loop.state_dict": {}, "epoch_loop.batch_progress": {**_progress(0), "is_last_batch": False}}
    return {"fit_loop": fit, "validate_loop": dict(idle), "test_loop": dict(idle), "predict_loop": dict(idle)}


def _model_checkpoint_state(dirpath: str, every_n_train_steps: int, last_path: str) -> dict:
    key = ("ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': "
           f"{every_n_train_steps}, 'every_n_epochs': 0, 'train_time_interval': None, "
           "'save_on_train_epoch_end': True}")
    state = {"monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
             "dirpath": dirpath, "best_k_models": {}, "kth_best_model_path": "",
             "kth_value": torch.tensor(float("inf")), "last_model_path": last_path}
    return {key: state}


def adam_state(params: list[torch.nn.Parameter], *, lr: float, g: torch.Generator) -> dict:
    """The ``state_dict`` of an Adam over ``params`` after one step with small random gradients.

    Only parameters that require grad get moments, as in training (the face encoders are frozen). The
    parameters themselves are left unchanged.
    """
    params = list(params)
    trained = [p for p in params if p.requires_grad]
    saved = [p.detach().clone() for p in trained]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=0)
    for p in trained:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    optimizer.step()
    with torch.no_grad():
        for p, value in zip(trained, saved):
            p.copy_(value)
            p.grad = None
    return optimizer.state_dict()


def lightning_checkpoint(state_dict: dict, hyper_parameters: dict, *, epoch: int, global_step: int,
                         optimizer_state: dict, dirpath: str, every_n_train_steps: int,
                         batches_per_epoch: int, fp16: bool = True) -> dict:
    """A dict with the keys and value types Lightning 1.6 writes for a ``LightningModule`` checkpoint."""
    checkpoint = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": OrderedDict(state_dict),
        "loops": _loops(global_step, epoch, batches_per_epoch),
        "callbacks": _model_checkpoint_state(dirpath, every_n_train_steps, f"{dirpath}/last.ckpt"),
        "optimizer_states": [optimizer_state],
        "lr_schedulers": [],
    }
    if fp16:
        checkpoint["native_amp_scaling_state"] = {"scale": 32768.0, "growth_factor": 2.0,
                                                  "backoff_factor": 0.5, "growth_interval": 2000,
                                                  "_growth_tracker": 1417}
    checkpoint["hparams_name"] = None
    checkpoint["hyper_parameters"] = dict(hyper_parameters)
    return checkpoint
