"""`compile: true` that a compiler failure cannot stop: the run goes on eagerly, with the eager numbers.

`torch.compile` is lazy: inductor generates and builds its kernels (C++ with the system compiler on
the CPU, Triton on CUDA) at the first call of a network, again for each new input shape, and builds the
backward graph at the first backward pass. Whether that build succeeds depends on the machine (a g++
that rejects the code generated for one CPU's vector instructions, say). So each network is compiled in
place (`nn.Module.compile`: the state-dict keys, hence the checkpoints, stay the same) behind a guard:
when the compiler fails, every network of the run goes back to eager, with one warning line naming
the cause, and the call is run again eagerly.

A training step is guarded as a whole (`CompiledNetworks.run_step`): by the time the compiler fails, a
compiled piece before a graph break, or the whole forward pass when the backward graph fails to build,
may have updated the BatchNorm statistics and drawn random numbers. Those are put back as they were
before the step, and the step is taken again eagerly, so that it trains exactly as an eager run does.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

_CAUSE_LENGTH = 300  # characters of the compiler's message kept in the warning line

T = TypeVar("T")


def compiler_failures() -> tuple[type[BaseException], ...]:
    """What "the compiler failed" raises. Dynamo wraps a back-end's failure in BackendCompilerFailed
    (inductor's InductorError derives from it: a real C++ build failure reads "InductorError:
    CppCompileError: ..."); the raw build errors surface where nothing wraps them: the backward graph,
    built at the first backward pass, and kernels built when first run. Imported here, not at the top:
    importing torch._dynamo takes seconds, which a run without `compile` need not spend."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import CppCompileError, CUDACompileError

    return BackendCompilerFailed, CppCompileError, CUDACompileError


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def failure_cause(error: BaseException) -> str:
    """One line saying why the compiler failed: the exception's class and first line, and for a C++/CUDA
    build the compiler's first error line (its first message line is only "C++ compile error")."""
    lines = str(error).strip().splitlines()
    cause = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    inner = getattr(error, "inner_exception", None)
    output = getattr(error, "output", None) or getattr(inner, "output", None)
    if isinstance(output, str):
        first_error = next((line.strip() for line in output.splitlines() if "error" in line.lower()), "")
        if first_error:
            cause = f"{cause}: {first_error}"
    return cause if len(cause) <= _CAUSE_LENGTH else cause[:_CAUSE_LENGTH - 3] + "..."


class CompiledNetworks:
    """The networks a run compiled, and the switch of all of them back to eager when the compiler fails.

    `warn` gets the one warning line. After a failure nothing is compiled again in this process."""

    def __init__(self, warn: Callable[[str], None] = _stderr) -> None:
        self.warn = warn
        self.networks: list[tuple[nn.Module, str]] = []
        self.failure: str | None = None  # the warning given, once the run fell back to eager
        self._in_step = False
        self._failures: tuple[type[BaseException], ...] = ()  # compiler_failures(), once something is compiled

    @property
    def active(self) -> bool:
        """Whether compiled code may still run (a network was compiled and the compiler has not failed)."""
        return bool(self.networks) and self.failure is None

    def compile(self, module: nn.Module, name: str) -> nn.Module:
        """torch.compile `module` in place (its state-dict keys stay as they are) behind the fallback guard;
        `name` ("the back-end") is what the warning calls it. Returns `module`."""
        module.compile()
        compiled = module._compiled_call_impl  # what nn.Module.__call__ runs instead of the eager call
        if compiled is None or self.failure is not None:  # (nn.Module.compile replaced, as in some tests)
            module._compiled_call_impl = None
            return module
        self._failures = compiler_failures()

        def guarded(*args, **kwargs):
            try:
                return compiled(*args, **kwargs)
            except self._failures as error:
                self.fall_back(error, name)
                if self._in_step:  # run_step puts back what ran before the failure and takes the step again
                    raise
                # Outside a training step (scoring, in eval mode) nothing ran that changed the module's state.
                return module(*args, **kwargs)

        module._compiled_call_impl = guarded
        self.networks.append((module, name))
        return module

    def fall_back(self, error: BaseException, name: str) -> None:
        """Put every network back to eager, with one warning line (the first failure's) for the run."""
        for module, _ in self.networks:
            module._compiled_call_impl = None
        if self.failure is None:
            self.failure = f"warning: torch.compile failed for {name} ({failure_cause(error)}); running eagerly"
            self.warn(self.failure)

    def run_step(self, step: Callable[[], T], modules: Iterable[nn.Module], undo: Callable[[], None]) -> T:
        """`step()` (forward and backward of one training batch); when the compiler fails in it, the buffers
        of `modules` and the torch RNG states are put back as before the step, `undo()` puts back the
        caller's own state, and the step runs again eagerly."""
        if not self.active:
            return step()
        # Buffers only: parameters change in the optimiser step, which comes after any compiled code ran.
        buffers = [(buffer, buffer.detach().clone()) for module in modules for buffer in module.buffers()]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        self._in_step = True
        try:
            return step()
        except self._failures as error:
            names = " / ".join(name for _, name in self.networks)
            self.fall_back(error, f"the backward pass of {names}")  # a forward failure was reported already
        finally:
            self._in_step = False
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        undo()
        return step()
