"""What a run shows and raises on the host: epoch headers, the live bar, epoch lines, NaN stops.

``verbose=1`` draws a tqdm bar per epoch that moves at every host stop of the epoch
(every ``progress_every`` batches) and starts where a resumed epoch resumed;
``verbose=2`` prints one Keras-style line per epoch; 0 is silent. A non-finite loss
raises ``NonFiniteLossError`` with the state from before the bad step.
"""

from __future__ import annotations

import numpy as np

from fnlearn.state import NonFiniteLossError, TrainState


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())


def to_floats(logs: dict) -> dict[str, float]:
    """Host floats of a logs dict fetched from the device (nested metric sums excluded)."""
    return {name: float(np.asarray(value)) for name, value in logs.items()}


def cache_notice() -> str | None:
    """The one line a run's first log says about JAX's persistent compilation cache, if on."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    if not folder:
        return None
    return (f"fnlearn: compiled programs are cached in {folder} (set "
            "FNLEARN_COMPILATION_CACHE=0 to turn this off)")


class Progress:
    """The output of one ``fit`` call."""

    def __init__(self, verbose: int, steps: int):
        self.verbose, self.steps = verbose, steps
        self.bar = None
        self.noticed = False

    def epoch_begins(self, epoch: int, epochs: int, done: int = 0) -> None:
        if not self.verbose:
            return
        if not self.noticed:
            self.noticed = True
            notice = cache_notice()
            if notice:
                print(notice, flush=True)
        resumed = f" (resumed after batch {done} of {self.steps})" if done else ""
        print(f"Epoch {epoch + 1}/{epochs}{resumed}", flush=True)
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.steps, initial=done, unit="step", leave=True,
                            dynamic_ncols=True)

    def batches_done(self, done: int, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = min(done, self.steps)
            self.bar.set_postfix({name: f"{value:.4f}" for name, value in logs.items()},
                                 refresh=True)

    def epoch_ends(self, logs: dict[str, float], seconds: float, ran: int) -> None:
        if self.bar is not None:
            self.bar.n = self.steps
            self.bar.set_postfix_str(format_logs(logs), refresh=True)
            self.bar.close()
            self.bar = None
        elif self.verbose == 2:
            per_step = seconds / max(ran, 1)
            unit = f"{per_step * 1e3:.0f}ms" if per_step >= 1e-3 else f"{per_step * 1e6:.0f}us"
            print(f"{self.steps}/{self.steps} - {seconds:.1f}s - {unit}/step - "
                  f"{format_logs(logs)}", flush=True)

    def nonfinite(self, epoch: int, bad_row: int, state: TrainState) -> NonFiniteLossError:
        """The error for a non-finite loss at row ``bad_row`` of epoch ``epoch`` (0-based)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return NonFiniteLossError(
            f"loss became NaN or inf at epoch {epoch + 1}, step {bad_row + 1} of {self.steps}; "
            "training stopped: the error's .state (and any checkpoint) is from before that "
            "step. Lower the learning rate or check the data for extreme values.", state)
