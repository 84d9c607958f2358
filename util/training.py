"""The pieces of char-rnn's training that train.py, evaluate.py and the benchmarks share: the
optimizer, one batch's forward and backward pass, the training step (eager or replayed as a CUDA
graph), a split's mean loss, what a run has done so far, the stop request of Ctrl-C / SIGTERM and
the CSV log of every iteration."""
import contextlib
import csv
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

import torch
import torch.nn.functional as F

from model import CharRNN, State
from util.data import BatchLoader
from util.device import autocast
from util.errors import UserError


def rmsprop(params: list[torch.nn.Parameter], learning_rate: float, decay_rate: float,
            capturable: bool = False) -> torch.optim.RMSprop:
    """char-rnn's optim.rmsprop: PyTorch's RMSprop with decay_rate as alpha and char-rnn's epsilon;
    `capturable` for a step captured in a CUDA graph (its step count kept on the GPU; same updates)."""
    return torch.optim.RMSprop(params, lr=learning_rate, alpha=decay_rate, eps=1e-8, capturable=capturable)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, state: State,
                     grad_clip: float, precision: str = "fp32", grad_norm: float = 0.0) -> tuple[torch.Tensor, State]:
    """One batch: the loss (mean per character) and the gradients of its sum over time steps,
    clipped: with grad_norm > 0 their global L2 norm to at most grad_norm (d2l's grad_clipping,
    torch's clip_grad_norm_), else every element clamped to +-grad_clip (char-rnn). Returns the
    loss and the state to carry into the next batch, cut from this batch's graph. `model` is a
    CharRNN or the DistributedDataParallel wrapping one."""
    with autocast(x.device, precision):
        logits, state = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    model.zero_grad(set_to_none=True)
    (loss * x.shape[1]).backward()
    if grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_norm)
    else:
        torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
    return loss.detach(), tuple(part.detach() for part in state)


def grad_param_norm_ratio(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """char-rnn's progress figure: the norm of all gradients over the norm of all weights (a scalar
    tensor on the weights' device: reading it is the caller's choice)."""
    grads = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()
    return grads / torch.stack([p.detach().norm() for p in params]).norm()


def cuda_graph(body: Callable[[], None]) -> Callable[[], None]:
    """`body`'s kernels captured in a CUDA graph (recorded, not run); returns the graph's replay,
    which runs them all again, in one launch, on the tensors they were captured on. Other threads
    go on launching their own kernels meanwhile (serve.py's requests each have one): only this
    thread's calls are checked for what a capture forbids."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph.replay


def refused_capture(what: str, error: RuntimeError, who: str) -> str:
    """The notice for a capture that raised: its error's first line, and that `who` goes on without."""
    reason = (str(error).splitlines() or [""])[0][:160]
    return f"notice: {what} could not be captured as a CUDA graph ({reason}); {who} goes on without one " \
           f"(-cuda_graphs 0 asks for that)"


def graphs_used(requested: bool, device: torch.device, distributed: bool) -> bool:
    """Whether train.py replays its steps as CUDA graphs (TrainingStep): when asked (-cuda_graphs, on
    by default), on a CUDA device, in one process (under torchrun DDP's all-reduce runs between
    the backward pass and the update, outside any graph)."""
    return requested and device.type == "cuda" and not distributed


GRAPH_WARMUP = 3  # eager steps before a capture, on a side stream, as torch.cuda.graphs asks


class TrainingStep:
    """One iteration's update: forward_backward, the progress figure (grad_param_norm_ratio, before
    the update) and the optimizer's step. Returns the loss, the figure when `printing` and the state
    to carry, all left on the device.

    `graphed` (train.py's -cuda_graphs on a CUDA device, one process): after GRAPH_WARMUP eager
    steps the whole update is captured once as a CUDA graph (cuda_graph) and replayed for every
    batch, one launch instead of the hundreds a char-rnn-sized step makes. The graph reads the batch
    and the carried state from tensors of its own, into which each call copies them, and writes the
    next state there (the state returned is those tensors: the next call's copy is then skipped).
    The learning rate is a constant of the captured kernels, so a decay captures the graph again.
    A capture that fails gives a notice and the run goes on eager."""

    def __init__(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                 precision: str, grad_norm: float, graphed: bool, say: Callable[..., None] = print):
        self.network, self.optimizer, self.graphed, self.say = network, optimizer, graphed, say
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.grad_clip, self.precision, self.grad_norm = grad_clip, precision, grad_norm
        self.eager_steps = 0
        self.replay: Callable[[], None] | None = None
        self.captured_rate: float | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.state: State = ()
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None  # the loss and the figure

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: State,
                 printing: bool) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        if not self.graphed or self.eager_steps < GRAPH_WARMUP:
            self.eager_steps += 1
            with side_stream(x.device) if self.graphed else contextlib.nullcontext():
                return self.eager(x, y, state, printing)
        rate = self.optimizer.param_groups[0]["lr"]
        if self.replay is None or rate != self.captured_rate:
            self.capture(x, y, state)
            if self.replay is None:
                return self.eager(x, y, state, printing)
            self.captured_rate = rate
        assert self.inputs is not None and self.replay is not None
        for static, given in zip((*self.inputs, *self.state), (x, y, *state), strict=True):
            if static is not given:
                static.copy_(given)
        self.replay()
        assert self.outputs is not None  # set as the body was captured
        loss, norm_ratio = self.outputs
        return loss.clone(), norm_ratio.clone() if printing else None, self.state

    def eager(self, x: torch.Tensor, y: torch.Tensor, state: State,
              printing: bool) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        loss, state = self.forward_backward(x, y, state)
        norm_ratio = grad_param_norm_ratio(self.params) if printing else None
        self.optimizer.step()
        return loss, norm_ratio, state

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return forward_backward(self.network, x, y, state, self.grad_clip, self.precision, self.grad_norm)

    def capture(self, x: torch.Tensor, y: torch.Tensor, state: State) -> None:
        """The update captured on tensors of its own (kept from an earlier capture), or, when the
        capture fails, the notice and no graph from then on."""
        if self.inputs is None:
            self.inputs, self.state = (x.clone(), y.clone()), tuple(part.clone() for part in state)

        def body() -> None:
            assert self.inputs is not None
            loss, new_state = self.forward_backward(*self.inputs, self.state)
            norm_ratio = grad_param_norm_ratio(self.params)
            self.optimizer.step()
            for part, new in zip(self.state, new_state, strict=True):
                part.copy_(new)
            self.outputs = loss, norm_ratio

        self.optimizer.zero_grad(set_to_none=True)  # the gradients then live in the graph's memory
        try:
            self.replay = cuda_graph(body)
        except RuntimeError as error:
            self.graphed, self.replay = False, None
            self.say(refused_capture("the training step", error, "training"))


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Where the eager steps before a capture run: a CUDA stream of their own that the current one
    then waits for (torch.cuda.graphs' warm-up); no other stream on other devices."""
    if device.type != "cuda":
        yield
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


READBACK_WINDOW = 16  # iterations (or generated characters) a GPU runs ahead of the numbers read for them


def readback_window(device: torch.device) -> int:
    """How many iterations train.py reads back at once, and how many characters generation does
    (util.generate). On a GPU each read waits for every queued kernel, so the loss, the checks and
    the progress lines come READBACK_WINDOW iterations at a time (and at every checkpoint). On the
    CPU a read costs nothing: each iteration as it ends, as in char-rnn."""
    return 1 if device.type == "cpu" else READBACK_WINDOW


def spread_batches(n_batches: int, max_batches: int) -> list[int]:
    """The indices of at most max_batches of n_batches, evenly spread and always the same (all of
    them for max_batches 0 or at least n_batches)."""
    if max_batches <= 0 or max_batches >= n_batches:
        return list(range(n_batches))
    return [k * n_batches // max_batches for k in range(max_batches)]


def evaluate_split(model: CharRNN, loader: BatchLoader, split: str, device: torch.device,
                   precision: str = "fp32", max_batches: int = 0,
                   stopped: Callable[[], bool] = lambda: False) -> float | None:
    """Mean loss over a split's batches (spread_batches' subset of them for max_batches > 0), from a
    zero state carried from batch to batch: char-rnn's eval_split. None when `stopped()` turns true
    before the last batch: a stop request does not wait for a long pass."""
    was_training = model.training
    model.eval()
    state = model.zero_state(loader.batch_size)
    batches = spread_batches(loader.n_batches(split), max_batches)
    total = 0.0
    with torch.no_grad():
        for k in batches:
            if stopped():
                model.train(was_training)
                return None
            x, y = (t.to(device) for t in loader.batch(split, k))
            with autocast(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, model.vocab_size).float(), y.reshape(-1)).item()
    model.train(was_training)
    return total / len(batches)


VALIDATION_SHARE = 0.25  # the most of the time between evaluations a validation pass should take


def suggested_val_batches(pass_seconds: float, n_batches: int, interval_seconds: float) -> int:
    """The most validation batches whose pass takes at most VALIDATION_SHARE of the time between
    evaluations, for a pass of n_batches that takes pass_seconds."""
    per_batch = pass_seconds / n_batches
    return max(1, min(n_batches, int(VALIDATION_SHARE * interval_seconds / per_batch)))


RISE_MARGIN = 0.01  # a validation loss counts as a rise when it is this much (1%) above the best


def best_validation(val_losses: list[list]) -> tuple[int, float] | None:
    """The (iteration, loss) of the lowest validation loss, the first of equals; None before any."""
    if not val_losses:
        return None
    iteration, loss = min(val_losses, key=lambda entry: entry[1])
    return int(iteration), float(loss)


def rises_since_best(val_losses: list[list]) -> int:
    """How many of the last validations in a row are rises: more than RISE_MARGIN above the best."""
    best = best_validation(val_losses)
    rises = 0
    while best and rises < len(val_losses) and val_losses[-1 - rises][1] > best[1] * (1 + RISE_MARGIN):
        rises += 1
    return rises


@dataclass
class Progress:
    """What a run has done so far: written into every checkpoint and brought back by -resume."""
    iteration: int = 0  # the last completed iteration
    train_losses: list[float] = field(default_factory=list)  # one per iteration
    val_losses: list[list] = field(default_factory=list)  # [iteration, loss] per validation
    loss0: float | None = None  # the first iteration's loss, the explosion check's reference
    seconds: float = 0.0  # time spent in training steps


class StopRequest:
    """Ctrl-C or SIGTERM: finish the step, save, exit. A second signal exits at once (checkpoints
    are renamed into place whole, so nothing on disk is half-written)."""

    def __init__(self) -> None:
        self.signal_number = 0
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        if self.signal_number:
            os._exit(128 + number)
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: saving a checkpoint after this step "
              f"(send it again to quit at once)", flush=True)


class TrainingLog:
    """cv/<prefix>log.csv, one row per iteration; a resumed run drops rows past its checkpoint."""
    HEADER = ("iteration", "epoch", "train_loss", "val_loss", "learning_rate", "seconds")

    def __init__(self, path: str, keep_until: int):
        self.path = path
        try:
            rows = []
            if keep_until > 0 and os.path.exists(path):
                with open(path, newline="") as handle:
                    rows = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= keep_until]
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerows([self.HEADER, *rows])
            self.handle = open(path, "a", newline="")  # noqa: SIM115  (written to until the run ends)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot write the training log {path}: {error}") from None
        self.writer = csv.writer(self.handle)

    def append(self, iteration: int, epoch: float, train_loss: float, val_loss: float | None,
               learning_rate: float, seconds: float) -> None:
        try:
            self.writer.writerow([iteration, f"{epoch:.4f}", f"{train_loss:.8f}",
                                  "" if val_loss is None else f"{val_loss:.8f}", f"{learning_rate:.6g}",
                                  f"{seconds:.3f}"])
            self.handle.flush()
        except OSError as error:
            raise UserError(f"cannot write the training log {self.path}: {error.strerror}") from None
