"""The sweeps that ship with mlux: which layer, which strength, how far before the text breaks.

This package is part of the installed library; each module is one sweep, a Python function and a
command (`python -m mlux.experiments.<name>`, or its `mlux` verb) that writes a resumable JSON
result (schemas in `schemas/`) and a PNG plot:

- `layer_sweep` (`mlux layer-sweep`): rank layers by how far a vector moves a behaviour;
- `strength_sweep` (`mlux strength-sweep`): behaviour rate per strength, beside a random
  direction of equal norm and an optional prompting baseline; `find_best_layers`;
- `alpha_calibration` (`mlux calibrate`): the strength at which each layer's output degenerates.

They share one calling convention, `fn(hooked, vector, prompts, scorer, **options)`: `vector`
is a `SteeringVector` (or `{layer: (D,) array}`) or a contrast `(positive, negative)` of prompts
to extract from (`method`, `chat`); `scorer(text) -> True | False | None` decides the behaviour
(`mlux.behavior.behavior_rates` measures it). `common` holds what the sweeps share, `options`
their command-line side. `steering_explorer` is only an alias of `mlux.explorer.launch`.

Not to be confused with the repository's top-level `experiments/` folder: reproducible runs and
benchmarks with their results, which use the library but are not installed with it.
"""
