"""jaxdistill: knowledge distillation in JAX/Flax NNX.

The public API, imported lazily (so `import jaxdistill` starts no JAX backend):

- `losses`: the pure loss library (`losses.kd_loss`, `losses.dkd_loss`, ...);
- `base_config()`: the run config every `configs/*.py` starts from;
- `build_objective(config.objective, has_teacher=...)`: the weighted sum of loss terms;
- `prepare_run(config)`: everything static about a run, validated, before compiling;
- `train_and_evaluate(config, workdir)`: one run; `run_experiment(config, workdir)`: the
  teacher -> scratch -> distilled demo with its table;
- `build_model(name, ...)`, `model_names()`: the model registry;
- `TeacherStore(path)`: an offline teacher store; `sample(...)`: decoder LM generation;
- `export(workdir, format, out)`: a trained student as StableHLO or TFLite, verified.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "losses": ("jaxdistill.losses", None),
    "base_config": ("jaxdistill.defaults", "base_config"),
    "build_objective": ("jaxdistill.objective", "build_objective"),
    "prepare_run": ("jaxdistill.run_setup", "prepare_run"),
    "train_and_evaluate": ("jaxdistill.train", "train_and_evaluate"),
    "run_experiment": ("jaxdistill.experiment", "run"),
    "build_model": ("jaxdistill.models", "build_model"),
    "model_names": ("jaxdistill.models", "model_names"),
    "TeacherStore": ("jaxdistill.store", "TeacherStore"),
    "sample": ("jaxdistill.generate", "sample"),
    "export": ("jaxdistill.export", "export"),
}
__all__ = ["TeacherStore", "base_config", "build_model", "build_objective", "export", "losses",
           "model_names", "prepare_run", "run_experiment", "sample", "train_and_evaluate"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxdistill' has no attribute '{name}'")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
