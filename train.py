"""Train a character-level language model, as char-rnn's train.lua does.

    python train.py -rnn_size 256 -num_layers 2 -gpuid 0
"""
import csv
import math
import os
import signal
import time
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model import LAYERS, CharRNN, State
from util.checkpoint import (FORMAT, checkpoint_path, checkpoint_vocab, load_checkpoint, log_path,
                             model_from_checkpoint, save_checkpoint)
from util.data import BatchLoader, data_source, load_training_data
from util.device import (GPU_OPTIONS, PRECISION_OPTION, THREADS_OPTION, autocast, check_precision, configure_cpu,
                         manual_seed, select_device, synchronize)
from util import distributed
from util.errors import UserError, run_main
from util.options import Option, Parsed, lua_number, parse_options
from util.vocab import BYTES, Vocab

OPTIONS = [
    Option("data_dir", "data/tinyshakespeare", "char-rnn style folder with input.txt, preprocessed on first use"),
    Option("input_h5", "data/input.h5", "token splits written by preprocess.py"),
    Option("input_json", "data/input.json", "vocabulary written by preprocess.py"),
    Option("train_frac", 0.95, "fraction of batches for training (with -data_dir)"),
    Option("val_frac", 0.05, "fraction of batches for validation (with -data_dir)"),
    Option("rnn_size", 128, "size of the LSTM internal state"),
    Option("num_layers", 2, "number of layers in the LSTM"),
    Option("model", "lstm", "lstm, gru or rnn"),
    Option("learning_rate", 2e-3, "learning rate"),
    Option("learning_rate_decay", 0.97, "learning rate decay"),
    Option("learning_rate_decay_after", 10.0, "in number of epochs, when to start decaying the learning rate"),
    Option("decay_rate", 0.95, "decay rate for rmsprop"),
    Option("dropout", 0.0, "dropout for regularization, used after each RNN hidden layer. 0 = no dropout"),
    Option("seq_length", 50, "number of timesteps to unroll for"),
    Option("batch_size", 50, "number of sequences to train on in parallel"),
    Option("max_epochs", 50.0, "number of full passes through the training data"),
    Option("grad_clip", 5.0, "clip gradients at this value"),
    Option("init_from", "", "initialize network parameters from checkpoint at this path"),
    Option("resume", "", "continue the run saved in this checkpoint exactly where it stopped"),
    Option("seed", 123, "torch manual random number generator seed"),
    Option("print_every", 1, "how many steps/minibatches between printing out the loss"),
    Option("eval_val_every", 1000, "every how many iterations should we evaluate on validation data?"),
    Option("checkpoint_dir", "cv", "output directory where checkpoints get written"),
    Option("savefile", "", "filename to autosave the checkpoint to; cv/lm_<savefile>_epoch<N>.pt"),
    Option("accurate_gpu_timing", 0, "1 = synchronize the GPU before reading the per-batch timer"),
    *GPU_OPTIONS,
    THREADS_OPTION,
    PRECISION_OPTION,
]
SHAPE_OPTIONS = ("model", "rnn_size", "num_layers")
DATA_OPTIONS = ("data_dir", "input_h5", "input_json", "train_frac", "val_frac", "batch_size", "seq_length")
# options -resume cannot change, and what it continues instead
FIXED_ON_RESUME = {**dict.fromkeys(SHAPE_OPTIONS + DATA_OPTIONS, "the same model on the same data"),
                   "seed": "from the random-number state saved in it"}


def check_options(opt: SimpleNamespace) -> None:
    if opt.model not in LAYERS:
        raise UserError(f"-model must be lstm, gru or rnn, not '{opt.model}'")
    for name in ("rnn_size", "num_layers", "seq_length", "batch_size", "max_epochs", "learning_rate",
                 "learning_rate_decay", "grad_clip", "print_every", "eval_val_every"):
        value = getattr(opt, name)
        if not 0 < value < math.inf:
            raise UserError(f"-{name} must be a positive number, not {lua_number(value)}")
    for name in ("dropout", "decay_rate"):
        if not 0 <= getattr(opt, name) < 1:
            raise UserError(f"-{name} must be in [0, 1), not {lua_number(getattr(opt, name))}")
    if not (0 <= opt.train_frac <= 1 and 0 <= opt.val_frac <= 1 and opt.train_frac + opt.val_frac <= 1):
        raise UserError("-train_frac and -val_frac must be in [0, 1] and sum to at most 1")
    if opt.init_from and opt.resume:
        raise UserError("use either -init_from (new run from weights) or -resume (continue a run), not both")


def resumed_options(parsed: Parsed, checkpoint: dict) -> SimpleNamespace:
    """The checkpoint's options, overridden by those given now; shape and data may not change."""
    opt = parsed.values
    saved = checkpoint["opt"]
    for name, continued in FIXED_ON_RESUME.items():
        if name in parsed.given and getattr(opt, name) != saved.get(name):
            raise UserError(f"-{name} {lua_number(getattr(opt, name))} conflicts with the checkpoint's "
                            f"{lua_number(saved.get(name))}; -resume continues {continued}")
    for name, value in saved.items():
        if name not in parsed.given and name not in ("resume", "init_from"):
            setattr(opt, name, value)
    return opt


def rmsprop(params: list[torch.nn.Parameter], learning_rate: float, decay_rate: float) -> torch.optim.RMSprop:
    """char-rnn's optim.rmsprop: PyTorch's RMSprop with decay_rate as alpha and char-rnn's epsilon."""
    return torch.optim.RMSprop(params, lr=learning_rate, alpha=decay_rate, eps=1e-8)


def forward_backward(model: CharRNN, x: torch.Tensor, y: torch.Tensor, state: State,
                     grad_clip: float, precision: str = "fp32") -> tuple[torch.Tensor, State]:
    """One batch: the loss (mean per character) and clamped gradients of its sum over time steps;
    returns the loss and the state to carry into the next batch, cut from this batch's graph."""
    with autocast(x.device, precision):
        logits, state = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    model.zero_grad(set_to_none=True)
    (loss * x.shape[1]).backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
    return loss.detach(), tuple(part.detach() for part in state)


def evaluate_split(model: CharRNN, loader: BatchLoader, split: str, device: torch.device,
                   precision: str = "fp32") -> float:
    """Mean loss over a whole split, from a zero state carried across its batches."""
    was_training = model.training
    model.eval()
    state = model.zero_state(loader.batch_size)
    total = 0.0
    with torch.no_grad():
        for k in range(loader.n_batches(split)):
            x, y = (t.to(device) for t in loader.batch(split, k))
            with autocast(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, model.vocab_size).float(), y.reshape(-1)).item()
    model.train(was_training)
    return total / loader.n_batches(split)


def to_cpu(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cpu(v) for v in value]
    return value


class StopRequest:
    """Ctrl-C or SIGTERM: finish the step, save, exit. A second signal exits at once (checkpoints
    are renamed into place whole, so nothing on disk is half-written)."""

    def __init__(self):
        self.signal_number = 0
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number, _frame):
        if self.signal_number:
            os._exit(128 + number)
        self.signal_number = number
        print(f"\n{signal.Signals(number).name} received: saving a checkpoint after this step "
              f"(send it again to quit at once)", flush=True)


def starting_model(opt, vocab: Vocab, start: dict | None, say: Callable[[str], None]) -> CharRNN:
    """A fresh model, or the weights and shape of the -init_from / -resume checkpoint `start` (its
    shape wins, as in char-rnn; learned forget biases are kept)."""
    if start is None:
        model = CharRNN(opt.model, len(vocab), opt.rnn_size, opt.num_layers, opt.dropout)
        model.initialize()
        return model
    path = opt.resume or opt.init_from
    if not checkpoint_vocab(start).same_tokens(vocab):
        raise UserError(f"the vocabulary of {path} ({len(start['vocab']['tokens'])} tokens) differs "
                        f"from the data's ({len(vocab)} tokens)")
    model = model_from_checkpoint(start, path, dropout=opt.dropout)
    opt.model, opt.rnn_size, opt.num_layers = model.model_type, model.rnn_size, model.num_layers
    say(f"loaded the model from {path}: {model.model_type}, {model.num_layers} x {model.rnn_size}")
    return model


def main(argv: list[str]) -> int:
    parsed = parse_options(argv, "train.py", "Train a character-level language model.", OPTIONS)
    resume = load_checkpoint(parsed.values.resume) if parsed.values.resume else None
    if resume is not None and "resume" not in resume:
        raise UserError(f"{parsed.values.resume} holds weights only (no training state); use -init_from")
    opt = resumed_options(parsed, resume) if resume else parsed.values
    check_options(opt)
    configure_cpu(opt.threads)
    ranks = distributed.start(use_cuda=opt.gpuid >= 0 and torch.cuda.is_available())
    status = train(opt, parsed.given, resume, ranks)
    distributed.finish(ranks)
    return status


def train(opt, given: set[str], resume: dict | None, ranks: distributed.Ranks) -> int:
    say = print if ranks.is_main else (lambda *_, **__: None)
    manual_seed(opt.seed)
    device = select_device(ranks.local_rank if ranks.active and opt.gpuid >= 0 else opt.gpuid, opt.opencl, say)
    check_precision(opt.precision, device, say)
    opt.data_source = resume["opt"]["data_source"] if resume else data_source(opt, given)
    start = resume or (load_checkpoint(opt.init_from) if opt.init_from else None)
    byte_level = start is not None and checkpoint_vocab(start).is_bytes  # e.g. a char-rnn .t7 model
    vocab, loader = load_training_data(opt, opt.data_source, say, BYTES if byte_level else None)
    rows = ranks.rows(opt.batch_size)
    model = starting_model(opt, vocab, start, say).to(device)
    network = DistributedDataParallel(model) if ranks.active else model
    params = list(model.parameters())

    ntrain = loader.n_batches("train")
    say(f"vocab size: {len(vocab)}")
    say(f"batches: train {ntrain}, val {loader.n_batches('val')}, test {loader.n_batches('test')}")
    if ntrain < 50:
        say("warning: fewer than 50 training batches; consider a smaller -batch_size or -seq_length")
    say(f"number of parameters in the model: {sum(p.numel() for p in params)}")
    if ranks.active:
        say(f"data parallel: {ranks.world_size} processes, {rows.stop - rows.start} streams each")

    optimizer = rmsprop(params, opt.learning_rate, opt.decay_rate)
    iterations = int(opt.max_epochs * ntrain)
    if iterations == 0:
        raise UserError(f"-max_epochs {lua_number(opt.max_epochs)} is less than one iteration of the "
                        f"{ntrain} per epoch")
    state = tuple(part[:, rows] for part in model.zero_state(opt.batch_size))
    train_losses, val_losses = [], []
    first_iteration, loss0, seconds, last_saved = 1, None, 0.0, None
    if resume:
        saved = resume["resume"]
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # load_state_dict brought back the saved hyperparameters
            group["lr"] = opt.learning_rate if "learning_rate" in given else saved["learning_rate"]
            group["alpha"] = opt.decay_rate
        loader.position["train"] = saved["loader_position"]
        state = tuple(part[:, rows].to(device) for part in saved["hidden"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"])
        train_losses, val_losses = list(resume["train_losses"]), [list(v) for v in resume["val_losses"]]
        first_iteration, loss0, seconds = resume["iteration"] + 1, saved["loss0"], saved["seconds"]
        last_saved = opt.resume
        say(f"resuming at iteration {first_iteration} of {iterations}")
    if ranks.active:  # each process draws its own dropout masks
        torch.manual_seed((opt.seed + 1_000_003 * ranks.rank + first_iteration) % 2 ** 63)

    if ranks.is_main:
        try:
            os.makedirs(opt.checkpoint_dir, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create -checkpoint_dir {opt.checkpoint_dir}: {error.strerror}") from None
        log = TrainingLog(log_path(opt.checkpoint_dir, opt.savefile), keep_until=first_iteration - 1)

    def save(iteration: int, val_loss: float | None) -> str:
        """Every process takes part (the carried state is gathered); the main one writes."""
        if not all(torch.isfinite(p).all() for p in params):
            raise UserError(f"the weights became NaN or infinite at iteration {iteration} (is -learning_rate "
                            f"too high?); not saving them. The last good checkpoint is {last_saved or 'none'}")
        hidden = ranks.gather_rows(state)
        path = checkpoint_path(opt.checkpoint_dir, opt.savefile, iteration, ntrain)
        if ranks.is_main:
            save_checkpoint(path, {
                "format": FORMAT, "model": model.shape(), "state_dict": to_cpu(model.state_dict()),
                "vocab": {"tokens": vocab.tokens, "encoding": vocab.encoding}, "opt": dict(vars(opt)),
                "iteration": iteration, "epoch": iteration / ntrain, "train_losses": train_losses,
                "val_losses": val_losses, "val_loss": val_loss,
                "resume": {"optimizer": to_cpu(optimizer.state_dict()),
                           "learning_rate": optimizer.param_groups[0]["lr"],
                           "loader_position": loader.position["train"], "hidden": to_cpu(hidden),
                           "rng": torch.get_rng_state(),
                           "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                           "loss0": loss0, "seconds": seconds},
            })
        return path

    def abort(message: str) -> int:
        say(message)
        say(f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written yet")
        return 1

    stop = StopRequest()
    model.train()
    for i in range(first_iteration, iterations + 1):
        started = time.perf_counter()
        x, y = (t[rows].to(device) for t in loader.next_batch("train"))
        loss, state = forward_backward(network, x, y, state, opt.grad_clip, opt.precision)
        train_loss = ranks.mean(loss)
        if train_loss != train_loss:
            return abort(f"loss is NaN at iteration {i}: stopping before the weights are updated.")
        loss0 = train_loss if loss0 is None else loss0
        if train_loss > loss0 * 3:
            return abort("loss is exploding, aborting.")
        if i % opt.print_every == 0:
            norm_ratio = (torch.stack([p.grad.norm() for p in params]).norm() /
                          torch.stack([p.detach().norm() for p in params]).norm()).item()
        optimizer.step()
        if opt.accurate_gpu_timing:
            synchronize(device)
        elapsed = time.perf_counter() - started
        seconds += elapsed
        train_losses.append(train_loss)
        epoch = i / ntrain
        if i % opt.print_every == 0:
            say(f"{i}/{iterations} (epoch {epoch:.3f}), train_loss = {train_loss:6.8f}, "
                f"grad/param norm = {norm_ratio:6.4e}, time/batch = {elapsed:.4f}s", flush=True)

        if i % ntrain == 0 and opt.learning_rate_decay < 1 and epoch >= opt.learning_rate_decay_after:
            for group in optimizer.param_groups:
                group["lr"] *= opt.learning_rate_decay
            say(f"decayed learning rate by a factor {lua_number(opt.learning_rate_decay)} "
                f"to {lua_number(optimizer.param_groups[0]['lr'])}")

        val_loss = None
        if i % opt.eval_val_every == 0 or i % ntrain == 0 or i == iterations:
            if ranks.is_main and loader.n_batches("val"):
                val_loss = evaluate_split(model, loader, "val", device, opt.precision)
                val_losses.append([i, val_loss])
                say(f"validation loss at epoch {epoch:.2f}: {val_loss:.4f}")
            last_saved = save(i, val_loss)
            say(f"saved checkpoint {last_saved}", flush=True)
        if ranks.is_main:
            log.append(i, epoch, train_loss, val_loss, optimizer.param_groups[0]["lr"], seconds)

        signal_number = ranks.any_signal(stop.signal_number)
        if signal_number:
            if last_saved != checkpoint_path(opt.checkpoint_dir, opt.savefile, i, ntrain):
                last_saved = save(i, None)
            say(f"stopped at iteration {i}; checkpoint {last_saved}; continue with: "
                f"python train.py -resume {last_saved}", flush=True)
            return 128 + signal_number
    return 0


class TrainingLog:
    """cv/<prefix>log.csv, one row per iteration; a resumed run drops rows past its checkpoint."""
    HEADER = ["iteration", "epoch", "train_loss", "val_loss", "learning_rate", "seconds"]

    def __init__(self, path: str, keep_until: int):
        self.path = path
        try:
            rows = []
            if keep_until > 0 and os.path.exists(path):
                with open(path, newline="") as handle:
                    rows = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= keep_until]
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerows([self.HEADER, *rows])
            self.handle = open(path, "a", newline="")
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


if __name__ == "__main__":
    run_main(main)
