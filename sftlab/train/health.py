"""Training health alarms and early stopping.

The monitor watches the same records the loop logs and raises an `Alarm` when a stream shows the
signature of a known failure, each with what to check. The loop logs the alarm (`alarm.record()`), shows
it, and stops when `should_abort` says so. Trend alarms use a least-squares slope over a window and its
t-statistic, so one noisy step never fires them; every alarm fires once when its condition starts and
re-arms once the condition has cleared, so a long bad stretch is one line, not thousands.

Alarm names (usable in `abort_on`, or "all"):
  nonfinite_loss      loss is NaN/inf
  no_supervision      a step had 0 supervised tokens
  initial_loss        first loss above ln(vocab)+margin, or far above the first eval loss
  loss_rising         train loss trending up over the window
  grad_spike          grad norm > k x running median
  channel_divergence  one channel's loss trending up while the total falls
  padding             padding ratio above padding_ratio_max
  memorisation        train loss below memorisation_floor for memorisation_steps records
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from sftlab.config import ALARM_NAMES, HealthConfig
from sftlab.errors import UserError


@dataclass(frozen=True)
class Alarm:
    name: str
    step: int
    message: str

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl line for this alarm."""
        return {"step": self.step, "alarm": self.name, "message": self.message}


def fit_slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys on xs and its t-statistic (slope / standard error).

    A perfect line has an infinite t (sign of the slope); a flat or degenerate series has t = 0."""
    n = len(xs)
    if n < 3:
        return 0.0, 0.0
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ssr = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(ssr / (n - 2) / sxx)
    if se <= 1e-12 * max(1.0, abs(slope)):
        return slope, (math.copysign(math.inf, slope) if slope else 0.0)
    return slope, slope / se


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class HealthMonitor:
    """Feeds on train and eval records (the dicts given to MetricsWriter.log); returns new alarms.

    Not checkpointed: after a resume the windows refill from the resumed records."""

    def __init__(self, cfg: HealthConfig | None = None, vocab_size: int | None = None) -> None:
        self.cfg = cfg or HealthConfig()
        unknown = [n for n in self.cfg.abort_on if n not in ALARM_NAMES and n != "all"]
        if unknown:
            raise UserError(f"unknown health alarm(s) in abort_on: {', '.join(unknown)} "
                            f"(known: {', '.join(ALARM_NAMES)}, all)")
        self.vocab_size = vocab_size
        w = self.cfg.window
        self._loss: deque[tuple[float, float]] = deque(maxlen=w)
        self._total_div: deque[tuple[float, float]] = deque(maxlen=self.cfg.divergence_window)
        self._chan: dict[str, deque[tuple[float, float]]] = {}
        self._grad: deque[float] = deque(maxlen=w)
        self._pad: deque[float] = deque(maxlen=w)
        self._low_run = 0
        self._first_train: float | None = None
        self._first_train_step = 0
        self._first_eval: float | None = None
        self._first_eval_step = 0
        self._initial_checked = False
        self._active: set[str] = set()  # latched conditions (name or name:channel)
        self._runs: dict[str, int] = {}  # consecutive records a trend condition has held
        self._n_train = 0  # train records seen
        self._last_spike: int | None = None  # record number of the last grad_spike alarm

    # -- helpers ----------------------------------------------------------------------------------
    def _edge(self, key: str, condition: bool) -> bool:
        """True only when `condition` becomes true (fires once, re-arms after it clears)."""
        if condition and key not in self._active:
            self._active.add(key)
            return True
        if not condition:
            self._active.discard(key)
        return False

    def _sustained(self, key: str, condition: bool) -> bool:
        """True once `condition` has held for cfg.sustain consecutive records."""
        n = self._runs[key] = self._runs.get(key, 0) + 1 if condition else 0
        return n >= self.cfg.sustain

    def _rising(self, series: deque[tuple[float, float]]) -> tuple[bool, float]:
        """(significantly rising?, t) for a (step, value) series."""
        if len(series) < self.cfg.min_points:
            return False, 0.0
        xs = [p[0] for p in series]
        ys = [p[1] for p in series]
        slope, t = fit_slope(xs, ys)
        mean = sum(ys) / len(ys)
        rise = slope * (xs[-1] - xs[0])
        return (t > self.cfg.slope_t and rise > self.cfg.min_rise * abs(mean)), t

    # -- main entry -------------------------------------------------------------------------------
    def update(self, record: dict[str, Any]) -> list[Alarm]:
        """Check one record; returns the alarms that start at this record (usually none)."""
        if "alarm" in record:
            return []
        step = int(record.get("step", 0))
        if "loss" not in record and "eval_loss" in record:
            return self._update_eval(step, record)
        if "loss" not in record:
            return []
        cfg = self.cfg
        alarms: list[Alarm] = []
        loss = record["loss"]

        def fire(name: str, msg: str) -> None:
            alarms.append(Alarm(name, step, msg))

        if self._edge("nonfinite_loss", not _is_finite_number(loss)):
            fire("nonfinite_loss", f"loss is {loss} at step {step}: check for fp16 overflow (use bf16 or "
                 "fp32), a too-high learning rate, and samples with no supervised tokens")
        sup = record.get("supervised_tokens")
        if self._edge("no_supervision", _is_finite_number(sup) and sup == 0):
            fire("no_supervision", f"step {step} had 0 supervised tokens: check the chat template's "
                 "assistant markers, data.train_on, and max_length truncating the answers away")
        if not _is_finite_number(loss):
            return alarms
        loss = float(loss)

        if self._first_train is None:
            self._first_train, self._first_train_step = loss, step
        alarms += self._check_initial(step)

        # diverged: after the first step, a loss worse than a uniform guess over the vocabulary
        if self.vocab_size and self.vocab_size > 1 and step > self._first_train_step:
            ceiling = math.log(self.vocab_size) + cfg.initial_loss_margin
            if self._edge("diverged", loss > ceiling >= self._first_train):  # else initial_loss has fired
                fire("diverged", f"train loss {loss:.3g} is above ln(vocab)+margin = {ceiling:.3f}, worse than a "
                     "uniform guess: the optimisation diverged; lower the learning rate, keep max_grad_norm "
                     "clipping on, lengthen the warmup")

        # loss trending up
        self._loss.append((step, loss))
        rising, t = self._rising(self._loss)
        if self._edge("loss_rising", self._sustained("loss_rising", rising)):
            fire("loss_rising", f"train loss has been rising over the last {len(self._loss)} logged steps "
                 f"(slope t={t:.1f}): check the learning rate (too high? warmup too short?), the data "
                 "order (a new data source or epoch boundary?), and the grad norm")

        # grad norm spike (vs the median of the previous records), rate-limited
        self._n_train += 1
        g = record.get("grad_norm")
        if g is not None and isinstance(g, (int, float)):
            g = float(g)
            spike = False
            if len(self._grad) >= cfg.min_points:
                med = statistics.median(self._grad)
                spike = (not math.isfinite(g)) or (med > 0 and g > cfg.grad_spike_k * med)
                quiet = self._last_spike is not None and self._n_train - self._last_spike < cfg.grad_spike_every
                if self._edge("grad_spike", spike) and not quiet:
                    self._last_spike = self._n_train
                    fire("grad_spike", f"grad norm {g:.3g} is more than {cfg.grad_spike_k:g}x the running "
                         f"median {med:.3g}: check this step's batch for broken or very long samples, "
                         "lower the learning rate, keep max_grad_norm clipping on")
            if math.isfinite(g) and not spike:
                self._grad.append(g)

        # channel divergence: one channel rising while the total falls
        self._total_div.append((step, loss))
        for k, v in record.items():
            if not k.startswith("loss/") or not _is_finite_number(v):
                continue
            ch = k[len("loss/"):]
            series = self._chan.setdefault(ch, deque(maxlen=cfg.divergence_window))
            series.append((step, float(v)))
        if len(self._total_div) >= cfg.min_points:
            _, t_total = fit_slope([p[0] for p in self._total_div], [p[1] for p in self._total_div])
            for ch, series in self._chan.items():
                ch_rising, t_ch = self._rising(series)
                key = f"channel_divergence:{ch}"
                if self._edge(key, self._sustained(key, ch_rising and t_total < 0)):
                    fire("channel_divergence", f"channel '{ch}' loss is rising (slope t={t_ch:.1f}) while the "
                         f"total loss falls (t={t_total:.1f}): check that task's data (labels, template, "
                         "duplicates), its share of the mix (data weights), and conflicts with other tasks")

        # padding
        pr = record.get("padding_ratio")
        if _is_finite_number(pr):
            self._pad.append(float(pr))
            if len(self._pad) >= min(cfg.min_points, cfg.window):
                mean_pad = sum(self._pad) / len(self._pad)
                if self._edge("padding", mean_pad > cfg.padding_ratio_max):
                    fire("padding", f"{mean_pad:.0%} of the tokens in the batches are padding: set "
                         "data.batching: padfree (same samples, no padding), or group_by_length / pack")

        # memorisation
        self._low_run = self._low_run + 1 if loss < cfg.memorisation_floor else 0
        if self._edge("memorisation", self._low_run >= cfg.memorisation_steps):
            fire("memorisation", f"train loss has stayed below {cfg.memorisation_floor:g} for "
                 f"{self._low_run} logged steps: the model is memorising; check for duplicated samples, "
                 "use fewer epochs or a lower learning rate, and watch the eval loss (early_stopping)")
        return alarms

    def _update_eval(self, step: int, record: dict[str, Any]) -> list[Alarm]:
        v = record.get("eval_loss")
        if self._first_eval is None and _is_finite_number(v):
            self._first_eval, self._first_eval_step = float(v), step
            return self._check_initial(step)
        return []

    def _check_initial(self, step: int) -> list[Alarm]:
        """Once per run: the first train loss against ln(vocab) and against the first eval loss."""
        if self._initial_checked or self._first_train is None:
            return []
        cfg = self.cfg
        loss = self._first_train
        if self.vocab_size and self.vocab_size > 1:
            ceiling = math.log(self.vocab_size) + cfg.initial_loss_margin
            if loss > ceiling:
                self._initial_checked = True
                return [Alarm("initial_loss", step, f"first train loss {loss:.3f} is above ln(vocab)+margin = "
                              f"{ceiling:.3f} (worse than a uniform guess): check the chat template, label "
                              "masks / label shifting, tokenizer-model vocab match, and the learning rate")]
        if self._first_eval is not None:
            self._initial_checked = True
            # only a baseline eval (before or at the first train log) is comparable to the first train loss
            if self._first_eval_step <= self._first_train_step and loss > cfg.initial_loss_factor * self._first_eval:
                return [Alarm("initial_loss", step, f"first train loss {loss:.3f} is more than "
                              f"{cfg.initial_loss_factor:g}x the first eval loss {self._first_eval:.3f}: "
                              "train and eval should see the same rendering; check the train data's chat "
                              "template and label masks, and the learning rate/warmup")]
        return []

    def should_abort(self, alarms: list[Alarm]) -> bool:
        """True when one of `alarms` is named in cfg.abort_on ("all" aborts on any alarm)."""
        abort_on = set(self.cfg.abort_on)
        return any("all" in abort_on or a.name in abort_on for a in alarms)


class EarlyStopping:
    """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations."""

    def __init__(self, metric: str = "eval_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: Literal["min", "max"] = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.metric = metric
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.mode = mode
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0

    def update(self, step: int, value: float) -> tuple[bool, bool]:
        """(improved, stop) after one evaluation. A NaN counts as no improvement."""
        v = float(value)
        if math.isfinite(v) and (self.best is None or (
                v < self.best - self.min_delta if self.mode == "min" else v > self.best + self.min_delta)):
            self.best, self.best_step, self.bad_evals = v, step, 0
            return True, False
        self.bad_evals += 1
        return False, self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints, so a resumed run keeps counting patience where it stopped."""
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals", 0))
