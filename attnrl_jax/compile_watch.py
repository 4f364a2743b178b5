"""Which programs JAX compiles, and how long that takes, while a block runs.

    with CompileWatch() as watch:
        trainer.train_step()
    watch.names    # ["jit(sample_batch)", ...], one entry per XLA compilation
    watch.seconds  # tracing + lowering + XLA compile time, summed

Names come from JAX's own "Compiling <name> with global shapes ..." log record (emitted at
DEBUG unless jax_log_compiles is on; the watch enables DEBUG on that one logger and keeps the
records to itself, so nothing is printed). Seconds come from jax.monitoring's compile-duration
events. Used by the no-recompilation tests and by benchmarks that report compile time apart
from steady-state time.
"""

from __future__ import annotations

import logging

import jax

_LOGGER = "jax._src.interpreters.pxla"
_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class _Names(logging.Handler):
    def __init__(self, out: list[str], shapes: list[str]):
        super().__init__(logging.DEBUG)
        self.out, self.shapes = out, shapes

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.out.append(message.split(" ", 2)[1])
            self.shapes.append(message.split(". Argument mapping")[0])


class CompileWatch:
    """Context manager recording compilations (names, full messages, seconds); not reentrant."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.messages: list[str] = []  # "Compiling <name> with global shapes and types (...)"
        self.seconds = 0.0

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if event in _EVENTS:
            self.seconds += duration

    def __enter__(self) -> CompileWatch:
        logger = logging.getLogger(_LOGGER)
        self._saved = (logger.level, logger.propagate)
        self._handler = _Names(self.names, self.messages)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(self._handler)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(_LOGGER)
        logger.removeHandler(self._handler)
        logger.setLevel(self._saved[0])
        logger.propagate = self._saved[1]
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
