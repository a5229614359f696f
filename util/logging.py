"""Progress lines, TensorBoard scalars and the JSON-lines ``log.txt``.

Values are accumulated on the device and read back only every ``print_freq`` steps, so the hot loop
never waits for the GPU.
"""
import datetime
import json
import math
import os
import time

import torch

from base.errors import UsageError
from util.distributed import all_reduce_mean, is_main_process


class NonFiniteLossError(UsageError):
    """The loss became NaN or infinite: training stops with the step and a hint."""


class EtaMeter:
    """Seconds per training step, smoothed over the run, for an ETA of the whole run (not just the epoch).

    Fed with timed windows of steps (``add``) by each epoch's ``MetricLogger``, which leaves out the first
    step of every epoch: it holds the data loader's start-up (workers spawning, the first batches read), which
    would make the ETA jump at each epoch start. Windows are averaged exponentially (``smoothing`` = the new
    window's weight), so a slow or fast stretch moves the estimate gradually."""

    def __init__(self, smoothing: float = 0.3):
        self.smoothing = smoothing
        self.step_time: float | None = None

    def add(self, seconds: float, steps: int) -> None:
        """A window of ``steps`` steps that took ``seconds``."""
        if steps <= 0:
            return
        rate = seconds / steps
        self.step_time = rate if self.step_time is None else \
            (1 - self.smoothing) * self.step_time + self.smoothing * rate

    def eta(self, steps_left: int) -> float | None:
        """Seconds for ``steps_left`` more steps, or None before any window was timed."""
        return None if self.step_time is None else self.step_time * steps_left


class MetricLogger:
    """Sums per-step scalars on the device; prints and averages them every ``print_freq`` steps.

    ``later_steps``: the steps of the epochs after this one, for the whole run's ETA; ``eta_meter`` carries
    the smoothed step time from epoch to epoch (a fresh one when not given)."""

    def __init__(self, header: str, num_steps: int, print_freq: int, device: torch.device,
                 later_steps: int = 0, eta_meter: EtaMeter | None = None):
        self.header, self.num_steps, self.print_freq, self.device = header, num_steps, print_freq, device
        self.later_steps = later_steps
        self.eta_meter = eta_meter if eta_meter is not None else EtaMeter()
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        # the timing window starts after this epoch's first step (see EtaMeter)
        self.window_start: float | None = None
        self.window_steps = self.window_images = 0
        self.last: dict[str, float] = {}

    def update(self, batch_size: int, **values: torch.Tensor) -> None:
        """Add one step's detached scalars (no host sync)."""
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1
        if self.window_start is None:
            self.window_start = time.time()
        else:
            self.window_steps += 1
            self.window_images += batch_size

    def averages(self) -> dict[str, float]:
        """Epoch averages over all processes (syncs: call only at the end)."""
        if not self.sums:
            return {}
        stacked = torch.stack([self.sums[k] for k in self.sums]) / max(self.count, 1)
        return dict(zip(self.sums, all_reduce_mean(stacked).tolist()))

    def maybe_print(self, step: int, lr: float) -> bool:
        """Every ``print_freq`` steps (and at the last one): check the loss is finite, print a line.
        Returns whether it did (``self.last`` then holds the running means)."""
        if step % self.print_freq and step != self.num_steps - 1:
            return False
        values = torch.stack(list(self.sums.values())).div(max(self.count, 1)).tolist()  # one host sync
        current = dict(zip(self.sums, values))
        if any(not math.isfinite(v) for v in current.values()):
            raise NonFiniteLossError(
                f"loss is not finite at step {step} of {self.header.strip()} ({current}): lower --blr, "
                "set --clip_grad, or use --amp bf16/fp32 instead of fp16")
        speed = None
        if self.window_steps:  # after the host sync above, so the window's device work is done
            now = time.time()
            self.eta_meter.add(now - self.window_start, self.window_steps)
            speed = self.window_images / max(now - self.window_start, 1e-9)
            self.window_start, self.window_steps, self.window_images = now, 0, 0
        parts = [f"{self.header} [{step:>{len(str(self.num_steps))}}/{self.num_steps}]"]
        eta = self.eta_meter.eta(self.num_steps - step - 1 + self.later_steps)
        if eta is not None:
            parts.append(f"run eta {datetime.timedelta(seconds=int(eta))}")
        parts += [f"{k} {v:.4f}" for k, v in current.items()] + [f"lr {lr:.3e}"]
        if speed is not None:
            parts.append(f"{speed:.1f} img/s")
        if self.device.type == "cuda":
            parts.append(f"mem {torch.cuda.max_memory_allocated(self.device) / 2 ** 30:.1f}G")
        self.last = current
        if is_main_process():
            print("  ".join(parts), flush=True)
        return True


class RunLog:
    """TensorBoard (main process, ``log_dir``) and ``output_dir/log.txt`` JSON lines."""

    def __init__(self, output_dir: str | None, log_dir: str | None):
        self.output_dir = output_dir if is_main_process() else None
        self.writer = None
        if is_main_process() and log_dir:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(log_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values: dict[str, float], epoch_1000x: int, prefix: str = "train") -> None:
        """x-axis is epoch x 1000, as in the official code, so runs of any batch size compare."""
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, epoch_1000x)

    def image(self, tag: str, image_uint8: torch.Tensor, epoch: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image_uint8, epoch)

    def json_line(self, record: dict) -> None:
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()
