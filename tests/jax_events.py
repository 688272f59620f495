"""What JAX did while a block ran, seen through `jax.monitoring`'s public listener hook:
the traces of each jitted function and the XLA compilations, by the names JAX gives them.

    with JaxEvents() as seen:
        ...  # three train steps
    assert seen.traces["train_step"] == 1 and seen.compiles["jit(train_step)"] == 1

A trace is a Python call of the function by `jax.jit` (a cache miss: new shapes, dtypes,
shardings or static arguments); a compilation is an executable built for a program, a hit
of the persistent compilation cache included (JAX times `compile_or_get_cached`).
"""

import collections

import jax

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


class JaxEvents:
    """Counts, while active, `traces[fun_name]` and `compiles['jit(fun_name)']`."""

    def __enter__(self):
        self.traces, self.compiles = collections.Counter(), collections.Counter()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        del duration
        if event == TRACE:
            self.traces[kwargs.get("fun_name")] += 1
        elif event == COMPILE:
            self.compiles[kwargs.get("fun_name")] += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)
