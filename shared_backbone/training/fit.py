"""The one training loop every trainer uses (primary module, heads, baselines).

Each run gets its own folder holding `config.yaml`, `seed.txt`, `history.csv`, TensorBoard logs
and checkpoints. Early stopping watches the validation loss but may not stop, nor pick its "best"
epoch, before `min_epochs`: with BatchNorm moving averages still settling, early epochs' val loss
is an artifact, and keeping such an epoch once produced a detector that called everything fake.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shared_backbone.config import DataConfig, PerturbConfig, TrainConfig
from shared_backbone.data.datasets import DatasetIndex, Sample, make_tf_dataset
from shared_backbone.data.stats import compute_normstats
from shared_backbone.model.preprocessing import InputSpec, Normstats

log = logging.getLogger(__name__)

MIN_PATIENCE = 3
BINARY = "binary"
MULTICLASS = "multiclass"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"


@dataclass
class FitResult:
    """What a training run produced; `model` holds the restored best weights."""

    model: Any
    run_dir: Path
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0  # 1-based; the epoch whose weights the model now holds
    epochs_run: int = 0
    seconds: float = 0.0


def _tensorboard_callback_class():
    import keras

    class TensorBoardScalars(keras.callbacks.Callback):
        """Per-epoch train/val scalars as TensorBoard event files.

        Keras' own TensorBoard callback needs the `tensorboard` package for `tf.summary.scalar`;
        `tf.summary.write` with the scalars plugin's metadata is in TensorFlow itself.
        """

        def __init__(self, log_dir: Path) -> None:
            super().__init__()
            self.log_dir = Path(log_dir)

        def on_train_begin(self, logs=None):
            import tensorflow as tf

            self._writers = {
                name: tf.summary.create_file_writer(str(self.log_dir / name)) for name in ("train", "validation")
            }

        def on_epoch_end(self, epoch, logs=None):
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            )
            for key, value in (logs or {}).items():
                writer, tag = (self._writers["validation"], key[4:]) if key.startswith("val_") else (self._writers["train"], key)
                with writer.as_default():
                    tf.summary.write(f"epoch_{tag}", tf.constant(float(value)), step=epoch, metadata=metadata)

        def on_train_end(self, logs=None):
            for writer in self._writers.values():
                writer.close()

    return TensorBoardScalars


def tensorboard_scalars(log_dir: Path):
    """A Keras callback writing epoch scalars for TensorBoard (built lazily: Keras imports late)."""
    return _tensorboard_callback_class()(log_dir)


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(run_dir: str | Path, config: dict[str, Any], seed: int, *, exist_ok: bool = False) -> Path:
    """Creates the run folder and records the full config and seed, so a run can be repeated."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not exist_ok:
        raise FileExistsError(f"run folder {run_dir} exists and is not empty; choose another (--out)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "seed.txt").write_text(f"{seed}\n")
    return run_dir


def input_spec(data: DataConfig, train_samples: list[Sample]) -> InputSpec:
    """The model input of a run: DCT runs use data.normstats, else normstats of the training split."""
    if data.mode != "dct":
        return InputSpec(data.image_size, data.mode)
    if data.normstats:
        return InputSpec(data.image_size, "dct", Normstats.load(data.normstats))
    log.info("computing DCT normstats from %d training images", len(train_samples))
    normstats, _ = compute_normstats([s.path for s in train_samples], data.image_size)
    return InputSpec(data.image_size, "dct", normstats)


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def detection_labels(index: DatasetIndex, samples: list[Sample]) -> np.ndarray:
    """1 = fake, 0 = real (the primary module's convention)."""
    return np.array([0.0 if index.is_real(s.source) else 1.0 for s in samples], dtype=np.float32)


def class_weights(labels: np.ndarray, num_classes: int = 2) -> dict[int, float]:
    """Balanced weights n / (k * n_c), so a 1:9 split trains like 1:1; absent classes get 1."""
    labels = np.asarray(labels).astype(int).ravel()
    counts = np.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    return {c: (float(len(labels) / (present * counts[c])) if counts[c] else 1.0) for c in range(num_classes)}


def compile_model(model, train: TrainConfig, task: str = BINARY) -> None:
    import keras

    if task == MULTICLASS:
        loss, metrics = "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"]
    else:
        loss, metrics = "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    model.compile(optimizer=keras.optimizers.Adam(train.learning_rate), loss=loss, metrics=metrics)


def early_stopping_start(train: TrainConfig) -> int:
    """0-based epoch index from which val loss counts (epoch `min_epochs` in 1-based terms)."""
    return max(0, train.min_epochs - 1)


def _callbacks(train: TrainConfig, run_dir: Path, checkpoints: Path) -> list:
    """Early stopping with best-weight restore (never before `min_epochs`), checkpoints and logs."""
    import keras

    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=max(MIN_PATIENCE, train.patience), restore_best_weights=True,
            start_from_epoch=early_stopping_start(train),
        ),
        keras.callbacks.ModelCheckpoint(str(checkpoints / LAST_WEIGHTS), save_weights_only=True),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        tensorboard_scalars(run_dir / "tensorboard"),
    ]


def best_epoch_of(val_loss: list[float], start: int) -> int:
    """1-based epoch whose weights early stopping restored: the lowest val loss from `start` on."""
    if len(val_loss) > start:
        return start + int(np.argmin(val_loss[start:])) + 1
    return len(val_loss)


def validation_weights(labels: np.ndarray, weights: dict[int, float] | None) -> np.ndarray | None:
    """Per-example weights of the validation split: the training class weights, so early stopping
    and best-epoch selection watch the same (class-weighted) loss that training optimises."""
    if weights is None:
        return None
    return np.array([weights[int(label)] for label in np.asarray(labels).ravel()], dtype=np.float32)


def _run(model, train_data, val_data, train: TrainConfig, run_dir: Path, *, class_weight, progress: bool,
         steps: int | None = None, batch_size: int | None = None) -> FitResult:
    """The fit every trainer shares: callbacks, early stopping on the weighted val loss, fit.json."""
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    x, y = train_data if isinstance(train_data, tuple) else (train_data, None)
    began = time.monotonic()
    history = model.fit(
        x, y, validation_data=val_data, epochs=train.epochs, steps_per_epoch=steps, batch_size=batch_size,
        class_weight=class_weight, callbacks=_callbacks(train, run_dir, checkpoints), verbose=1 if progress else 0,
        shuffle=y is not None,  # arrays: Keras shuffles; tf.data shuffles itself
    ).history
    seconds = time.monotonic() - began
    val_loss = history.get("val_loss", [])
    best_epoch = best_epoch_of(val_loss, early_stopping_start(train))
    model.save_weights(checkpoints / BEST_WEIGHTS)
    history = {k: [float(v) for v in values] for k, values in history.items()}
    (run_dir / "fit.json").write_text(
        json.dumps({"best_epoch": best_epoch, "epochs_run": len(val_loss), "seconds": round(seconds, 2), "history": history}, indent=2)
    )
    log.info("stopped after %d epochs (%.0f s); kept epoch %d", len(val_loss), seconds, best_epoch)
    return FitResult(model, run_dir, history, best_epoch, len(val_loss), seconds)


def fit(
    model,
    train_samples: list[Sample],
    train_labels: np.ndarray,
    val_samples: list[Sample],
    val_labels: np.ndarray,
    spec: InputSpec,
    train: TrainConfig,
    run_dir: str | Path,
    *,
    task: str = BINARY,
    num_classes: int = 2,
    perturb: PerturbConfig | None = None,
    progress: bool = True,
) -> FitResult:
    """Trains `model` on images, with early stopping and best-weight restore; logs to run_dir.

    Like `fit_arrays`, it trains a compiled twin of `model` and leaves the trained weights in `model`."""
    from shared_backbone.runtime.device import configure_tensorflow
    from shared_backbone.training.compiled_twins import compiled_twin

    configure_tensorflow()
    run_dir = Path(run_dir)
    steps = train.steps_per_epoch or None
    weights = class_weights(train_labels, num_classes) if train.class_weighting else None
    log.info(
        "training %s on %d images (val %d) for up to %d epochs, class weights %s, run folder %s",
        model.name, len(train_samples), len(val_samples), train.epochs, weights, run_dir,
    )
    with compiled_twin(model, task, train.learning_rate, lambda twin: compile_model(twin, train, task)) as twin:
        set_seed(train.seed)
        train_ds = make_tf_dataset(
            train_samples, train_labels, spec, batch_size=train.batch_size, shuffle=True, seed=train.seed,
            perturb=perturb, repeat=bool(steps),
        )
        val_ds = make_tf_dataset(val_samples, val_labels, spec, batch_size=train.batch_size,
                                 weights=validation_weights(val_labels, weights))
        result = _run(twin, train_ds, val_ds, train, run_dir, class_weight=weights, progress=progress, steps=steps)
    result.model = model
    return result


def fit_arrays(
    model,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    train: TrainConfig,
    run_dir: str | Path,
    *,
    task: str = BINARY,
    num_classes: int = 2,
    progress: bool = True,
) -> FitResult:
    """`fit` on arrays held in memory, e.g. a head on trunk features computed once (the trunk is frozen).

    It trains a compiled twin of `model` (`compiled_twins`: no second tracing for the same architecture,
    the same weights as a fresh compile) and leaves the trained weights in `model`."""
    from shared_backbone.runtime.device import configure_tensorflow
    from shared_backbone.training.compiled_twins import compiled_twin

    configure_tensorflow()
    weights = class_weights(train_y, num_classes) if train.class_weighting else None
    val_w = validation_weights(val_y, weights)
    val_data = (val_x, val_y) if val_w is None else (val_x, val_y, val_w)
    log.info("training %s on %d arrays (val %d) for up to %d epochs, class weights %s", model.name, len(train_x),
             len(val_x), train.epochs, weights)
    with compiled_twin(model, task, train.learning_rate, lambda twin: compile_model(twin, train, task)) as twin:
        set_seed(train.seed)  # after the twin exists: a new twin and a reused one then train from the same state
        result = _run(twin, (train_x, train_y), val_data, train, Path(run_dir), class_weight=weights, progress=progress,
                      batch_size=train.batch_size)
    result.model = model
    return result
