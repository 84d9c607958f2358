"""Train a character-level language model, as char-rnn's train.lua does.

    python train.py -rnn_size 256 -num_layers 2 -gpuid 0

main() reads the options (and the checkpoint of -resume), set_up() builds the run: device, data,
model, optimizer; starting_point() restores a resumed run's progress; Trainer runs the iterations:
the step, the progress line, the learning-rate decay, validation, checkpoints and the stop request.
"""
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel

from model import LAYERS, CharRNN, State
from model.char_rnn import parameter_count
from util import distributed
from util.checkpoint import (
    IndexRow,
    RunCheckpoints,
    best_path,
    build_checkpoint,
    checkpoint_path,
    checkpoint_vocab,
    load_checkpoint,
    log_path,
    model_from_checkpoint,
    require_training_state,
    restore_training,
    run_facts,
    save_checkpoint,
    training_state,
)
from util.data import SCHEMES, BatchLoader, codec_key, data_source, load_training_data
from util.device import (
    CUDA_GRAPHS_OPTION,
    GPU_OPTIONS,
    PRECISION_OPTION,
    THREADS_OPTION,
    check_precision,
    configure_cpu,
    graphs_requested,
    manual_seed,
    memory_bytes,
    select_device,
    synchronize,
)
from util.errors import LINE_BREAKS, UserError, run_main
from util.generate import Sampling, sample_steps
from util.guidance import (
    best_line,
    early_stop_line,
    overfitting_notice,
    validation_cost_notice,
    validation_details,
)
from util.lock import RunLock
from util.options import Option, Parsed, lua_number, parse_options, recorded_values
from util.plot import curves_from_progress, draw_loss_plot, loss_plot_path
from util.training import (
    Progress,
    StopRequest,
    TrainingLog,
    TrainingStep,
    best_validation,
    evaluate_split,
    graphs_used,
    readback_window,
    rises_since_best,
    rmsprop,
    spread_batches,
)
from util.vocab import BYTES, Vocab, check_text_encoding, unknown_names

OPTIONS = [
    Option("data_dir", "data/tinyshakespeare", "char-rnn style folder with input.txt, preprocessed on first use"),
    Option("input_h5", "data/input.h5", "token splits written by preprocess.py"),
    Option("input_json", "data/input.json", "vocabulary written by preprocess.py"),
    Option("train_frac", 0.95, "fraction of batches for training (with -data_dir)"),
    Option("val_frac", 0.05, "fraction of batches for validation (with -data_dir)"),
    Option("encoding", "utf-8", "text codec of -data_dir's input.txt (utf-8, latin-1, ...); bytes = one token "
                                "per byte, as char-rnn; utf-8 falls back to bytes, with a notice, for text "
                                "that is not UTF-8"),
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
    Option("minibatch", "consecutive", "consecutive: each stream continues the last batch, state carried (char-rnn; "
                                       "d2l's data_iter_consecutive); random: subsequences at random positions, "
                                       "state zeroed every batch (d2l's data_iter_random)"),
    Option("max_epochs", 50.0, "number of full passes through the training data"),
    Option("grad_clip", 5.0, "clip gradients at this value"),
    Option("grad_norm", 0.0, "clip the L2 norm of all gradients together at this value instead of -grad_clip's "
                             "clamp (d2l's grad_clipping); 0 = off"),
    Option("init_from", "", "initialize network parameters from checkpoint at this path"),
    Option("resume", "", "continue the run saved in this checkpoint exactly where it stopped"),
    Option("seed", 123, "torch manual random number generator seed"),
    Option("print_every", 1, "how many steps/minibatches between printing out the loss"),
    Option("eval_val_every", 1000, "every how many iterations should we evaluate on validation data?"),
    Option("checkpoint_dir", "cv", "output directory where checkpoints get written"),
    Option("savefile", "", "filename to autosave the checkpoint to; cv/lm_<savefile>_epoch<N>.pt"),
    Option("keep", 0, "keep only the N most recent checkpoints plus the best (cv/lm_best.pt); 0 = keep all"),
    Option("val_max_batches", 0, "validate on at most N evenly spread val batches, the same ones every time; "
                                 "0 = the whole split"),
    Option("overfit_patience", 3, "validations in a row more than 1% above the best before the over-fitting "
                                  "notice; 0 = no notice"),
    Option("early_stop", 0, "stop the run after N validations in a row more than 1% above the best; 0 = never"),
    Option("sample_every", 0, "print samples at every Nth validation; 0 = never"),
    Option("sample_prime", "", "the prefixes of those samples, separated by commas (e.g. 分开,不分开); "
                               "empty = one sample from a drawn first character"),
    Option("sample_length", 50, "characters per sample, after its prefix"),
    Option("sample_temperature", 1.0, "temperature of the samples; 0 = the most likely character (argmax)"),
    Option("accurate_gpu_timing", 0, "1 = synchronize the GPU before reading the per-batch timer"),
    CUDA_GRAPHS_OPTION,
    *GPU_OPTIONS,
    THREADS_OPTION,
    PRECISION_OPTION,
]
SHAPE_OPTIONS = ("model", "rnn_size", "num_layers")
DATA_OPTIONS = ("data_dir", "input_h5", "input_json", "train_frac", "val_frac", "encoding", "batch_size",
                "seq_length", "minibatch")
# options -resume cannot change, and what it continues instead
FIXED_ON_RESUME = {**dict.fromkeys(SHAPE_OPTIONS + DATA_OPTIONS, "the same model on the same data"),
                   "seed": "from the random-number state saved in it"}



def check_options(opt: SimpleNamespace, given: set[str]) -> None:
    if opt.model not in LAYERS:
        raise UserError(f"-model must be lstm, gru or rnn, not '{opt.model}'")
    if opt.minibatch not in SCHEMES:
        raise UserError(f"-minibatch must be consecutive or random, not '{opt.minibatch}'")
    for name in ("rnn_size", "num_layers", "seq_length", "batch_size", "max_epochs", "learning_rate",
                 "learning_rate_decay", "grad_clip", "print_every", "eval_val_every"):
        value = getattr(opt, name)
        if not 0 < value < math.inf:
            raise UserError(f"-{name} must be a positive number, not {lua_number(value)}")
    for name in ("keep", "val_max_batches", "overfit_patience", "early_stop", "sample_every", "sample_length"):
        if getattr(opt, name) < 0:
            raise UserError(f"-{name} must be 0 or more, not {getattr(opt, name)}")
    if opt.accurate_gpu_timing not in (0, 1):
        raise UserError(f"-accurate_gpu_timing must be 0 or 1, not {opt.accurate_gpu_timing}")
    graphs_requested(opt.cuda_graphs)
    for name in ("dropout", "decay_rate"):
        if not 0 <= getattr(opt, name) < 1:
            raise UserError(f"-{name} must be in [0, 1), not {lua_number(getattr(opt, name))}")
    if not (0 <= opt.train_frac <= 1 and 0 <= opt.val_frac <= 1 and opt.train_frac + opt.val_frac <= 1):
        raise UserError("-train_frac and -val_frac must be in [0, 1] and sum to at most 1")
    for name in ("grad_norm", "sample_temperature"):
        if not 0 <= getattr(opt, name) < math.inf:
            raise UserError(f"-{name} must be 0 or a positive number, not {lua_number(getattr(opt, name))}")
    if opt.grad_norm > 0 and "grad_clip" in given:
        raise UserError("use either -grad_clip (clamp each gradient element) or -grad_norm (clip the norm of all "
                        "gradients together), not both")
    if opt.init_from and opt.resume:
        raise UserError("use either -init_from (new run from weights) or -resume (continue a run), not both")
    if opt.encoding != BYTES:
        check_text_encoding(opt.encoding)


def check_saved_options(saved: dict, path: str) -> None:
    """A checkpoint's options (all of them, of their options' types) must pass check_options as a
    run's of its own would; what that run started from is not taken over."""
    try:
        check_options(SimpleNamespace(**{**saved, "init_from": "", "resume": ""}), set())
    except UserError as error:
        raise UserError(f"{path}: its saved options are not valid: {error}") from None


def resumed_options(parsed: Parsed, checkpoint: dict) -> SimpleNamespace:
    """The checkpoint's options, overridden by those given now; shape and data may not change (the
    shape is the model's, which -init_from may have taken from another checkpoint)."""
    opt, shape = parsed.values, checkpoint["model"]
    defaults = {option.name: option.default for option in OPTIONS}  # options older checkpoints lack
    saved = recorded_values(OPTIONS, checkpoint["opt"], opt.resume)
    check_saved_options({**defaults, **saved}, opt.resume)
    fixed = {**defaults, **saved, "model": shape["model_type"], "rnn_size": shape["rnn_size"],
             "num_layers": shape["num_layers"]}
    for name, continued in FIXED_ON_RESUME.items():
        if name in parsed.given and getattr(opt, name) != fixed.get(name):
            raise UserError(f"-{name} {lua_number(getattr(opt, name))} conflicts with the checkpoint's "
                            f"{lua_number(fixed.get(name))}; -resume continues {continued}")
    for name in vars(opt):
        if name not in parsed.given and name not in ("resume", "init_from") and name in saved:
            setattr(opt, name, saved[name])
    return opt


def starting_model(opt: SimpleNamespace, given: set[str], vocab: Vocab, start: dict | None,
                   device: torch.device, say: Callable[..., None]) -> CharRNN:
    """A fresh model of the options' shape, or the weights and shape of the -init_from / -resume
    checkpoint `start` (its shape wins, as in char-rnn; learned forget biases are kept). Its dropout
    too, as char-rnn keeps the saved graph's, unless -dropout is given."""
    if start is None:
        check_model_size(opt.model, len(vocab), opt.rnn_size, opt.num_layers, device)
        model = CharRNN(opt.model, len(vocab), opt.rnn_size, opt.num_layers, opt.dropout)
        model.initialize()
        return model
    path = opt.resume or opt.init_from
    if not checkpoint_vocab(start).same_tokens(vocab):
        raise UserError(f"the vocabulary of {path} ({len(start['vocab']['tokens'])} tokens) differs "
                        f"from the data's ({len(vocab)} tokens)")
    saved_dropout = start["model"]["dropout"]
    dropout = opt.dropout if "dropout" in given else saved_dropout
    model = model_from_checkpoint(start, path, dropout=dropout)
    say(f"loaded the model from {path}: {model.model_type}, {model.num_layers} x {model.rnn_size}")
    if dropout != saved_dropout:
        say(f"-dropout {lua_number(dropout)} replaces the checkpoint's {lua_number(saved_dropout)}")
    return model


BYTES_PER_PARAMETER = 16
"""What training holds per parameter: float32 weights, their gradients, RMSprop's averages and the
copy a checkpoint is written from."""


def check_model_size(model_type: str, vocab_size: int, rnn_size: int, num_layers: int, device: torch.device) -> None:
    """A model whose training needs more than the device's memory is a UserError before it is built
    (building one of millions of layers would take hours, one of a huge -rnn_size fail in the allocator)."""
    shape = f"-model {model_type} at {num_layers} x {rnn_size} over {vocab_size} tokens"
    try:
        needed = parameter_count(model_type, vocab_size, rnn_size, num_layers) * BYTES_PER_PARAMETER
    except OverflowError:
        needed = None
    memory = memory_bytes(device)
    if needed is None or (memory is not None and needed > memory):
        size = "more bytes than 64 bits count" if needed is None else f"{needed / 2**30:,.1f} GiB"
        has = "" if memory is None else f", more than this {device.type.upper()}'s {memory / 2**30:,.1f} GiB"
        raise UserError(f"{shape} needs {size} to train ({BYTES_PER_PARAMETER} bytes per parameter){has}; use a "
                        f"smaller -rnn_size or -num_layers")


def main(argv: list[str]) -> int:
    parsed = parse_options(argv, "train.py", "Train a character-level language model.", OPTIONS)
    resume = load_checkpoint(parsed.values.resume) if parsed.values.resume else None
    if resume is not None:
        require_training_state(resume, parsed.values.resume)
    opt = resumed_options(parsed, resume) if resume else parsed.values
    check_options(opt, parsed.given)
    configure_cpu(opt.threads)
    ranks = distributed.start(use_cuda=opt.gpuid >= 0 and torch.cuda.is_available())
    run = set_up(opt, parsed.given, resume, ranks)
    status = Trainer(run, *starting_point(run, resume, parsed.given)).train()
    distributed.finish(run.ranks)  # set_up's, which knows the device and group
    return status


# ---- setting up a run ------------------------------------------------------------------------------

@dataclass
class Run:
    """What a training run works with, fixed once it is set up."""
    opt: SimpleNamespace  # the options as given (over the resumed checkpoint's)
    ranks: distributed.Ranks
    device: torch.device
    data_source: str  # "h5" or "data_dir": which data the run reads
    vocab: Vocab
    loader: BatchLoader
    model: CharRNN
    network: torch.nn.Module  # the model, or the DistributedDataParallel wrapping it
    optimizer: torch.optim.Optimizer
    graphed: bool  # each step replayed as a CUDA graph (util.training.TrainingStep)
    rows: slice  # this process's streams of each batch
    iterations: int
    say: Callable[..., None]  # print on the main process, nothing elsewhere
    prefixes: list[list[int]]  # -sample_prime's prefixes as token ids

    @property
    def iterations_per_epoch(self) -> int:
        return self.loader.n_batches("train")


def set_up(opt: SimpleNamespace, given: set[str], resume: dict | None, ranks: distributed.Ranks) -> Run:
    """Device, data, model and optimizer of a new or resumed run, described as char-rnn does."""
    say: Callable[..., None] = print if ranks.is_main else (lambda *_, **__: None)
    manual_seed(opt.seed)
    device = select_device(opt.gpuid, opt.opencl, say, ranks.local_rank if ranks.active else None)
    ranks = distributed.on_device(ranks, device, say)
    check_precision(opt.precision, device, say)
    source = run_facts(resume)["data_source"] if resume else data_source(opt, given)
    start = resume or (load_checkpoint(opt.init_from) if opt.init_from else None)
    vocab, loader = load_training_data(opt, source, say, data_encoding(opt, given, start), opt.minibatch, opt.seed)
    loader.keep_on(device)
    if source == "h5" and "encoding" in given and codec_key(opt.encoding) != codec_key(vocab.encoding):
        raise UserError(f"-encoding {opt.encoding} does not match {opt.input_json}, preprocessed as {vocab.encoding}; "
                        f"-encoding reads -data_dir's text (preprocess.py -encoding sets that of an HDF5/JSON pair)")
    rows = ranks.rows(opt.batch_size)
    prefixes = sample_prefixes(opt.sample_prime, vocab)
    model = starting_model(opt, given, vocab, start, device, say).to(device)
    network = DistributedDataParallel(model, process_group=ranks.group) if ranks.active else model
    graphed = graphs_used(graphs_requested(opt.cuda_graphs), device, ranks.active)
    optimizer = rmsprop(list(model.parameters()), opt.learning_rate, opt.decay_rate, capturable=graphed)
    run = Run(opt, ranks, device, source, vocab, loader, model, network, optimizer, graphed, rows,
              int(opt.max_epochs * loader.n_batches("train")), say, prefixes)
    describe(run)
    if run.iterations == 0:
        raise UserError(f"-max_epochs {lua_number(opt.max_epochs)} is less than one iteration of the "
                        f"{run.iterations_per_epoch} per epoch")
    return run


def data_encoding(opt: SimpleNamespace, given: set[str], start: dict | None) -> str | None:
    """How -data_dir's text is read (util.data.load_data_dir): as bytes for a byte-level checkpoint
    to start from (a char-rnn .t7 model), else in -encoding; the default UTF-8 as None, which falls
    back to bytes for text that is not UTF-8."""
    if start is not None and checkpoint_vocab(start).is_bytes:
        if "encoding" in given and opt.encoding != BYTES:
            raise UserError(f"-encoding {opt.encoding} does not fit {opt.resume or opt.init_from}, a byte-level "
                            f"model: its text is read as bytes")
        return BYTES
    if "encoding" not in given and codec_key(opt.encoding) == "utf-8":
        return None
    return opt.encoding


def sample_prefixes(text: str, vocab: Vocab) -> list[list[int]]:
    """-sample_prime as token ids: its comma-separated prefixes, or one empty prefix (the first
    character drawn from a uniform distribution, as sample.py does without a primetext)."""
    prefixes = text.split(",") if text else [""]
    ids = []
    for prefix in prefixes:
        if text and not prefix:
            raise UserError(f"-sample_prime '{text}' has an empty prefix; separate prefixes with single commas")
        tokens = vocab.text_to_tokens(prefix)
        unknown = unknown_names(tokens, vocab)
        if unknown:
            raise UserError(f"-sample_prime prefix '{prefix}' has characters that are not in the vocabulary: {unknown}")
        ids.append([vocab.index[token] for token in tokens])
    return ids


def describe(run: Run) -> None:
    loader, say = run.loader, run.say
    say(f"vocab size: {len(run.vocab)}")
    say(f"batches: train {loader.n_batches('train')}, val {loader.n_batches('val')}, "
        f"test {loader.n_batches('test')}")
    if loader.n_batches("train") < 50:
        say("warning: fewer than 50 training batches; consider a smaller -batch_size or -seq_length")
    say(f"number of parameters in the model: {sum(p.numel() for p in run.model.parameters())}")
    if run.ranks.active:
        say(f"data parallel: {run.ranks.world_size} processes, {run.rows.stop - run.rows.start} streams each")


def starting_point(run: Run, resume: dict | None, given: set[str]) -> tuple[Progress, State, str | None]:
    """The progress, this process's carried state and the last checkpoint a run starts from: none
    for a new run, the checkpoint's for -resume."""
    opt = run.opt
    if resume is None:
        progress, hidden, last_saved = Progress(), run.model.zero_state(opt.batch_size), None
    else:
        learning_rate = opt.learning_rate if "learning_rate" in given else None
        progress, hidden = restore_training(resume, opt.resume, run.model, run.optimizer, run.loader, run.device,
                                            learning_rate)
        last_saved = opt.resume
        run.say(f"resuming at iteration {progress.iteration + 1} of {run.iterations}")
    if run.ranks.active:  # each process draws its own dropout masks
        torch.manual_seed((opt.seed + 1_000_003 * run.ranks.rank + progress.iteration + 1) % 2 ** 63)
    # contiguous: the fused kernels take no strided state
    return progress, tuple(part[:, run.rows].contiguous() for part in hidden), last_saved


def claim_checkpoint_dir(run: Run) -> RunLock | None:
    """The main process's -checkpoint_dir, created if missing, locked for -savefile's names before
    anything is written there (util.lock); None elsewhere."""
    if not run.ranks.is_main:
        return None
    try:
        os.makedirs(run.opt.checkpoint_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create -checkpoint_dir {run.opt.checkpoint_dir}: {error.strerror}") from None
    return RunLock(run.opt.checkpoint_dir, run.opt.savefile)


def training_log(run: Run, keep_until: int) -> TrainingLog | None:
    """The main process's CSV log in -checkpoint_dir, its rows up to `keep_until` kept; None elsewhere."""
    if not run.ranks.is_main:
        return None
    return TrainingLog(log_path(run.opt.checkpoint_dir, run.opt.savefile), keep_until)


# ---- the iterations --------------------------------------------------------------------------------

@dataclass
class LogRow:
    """An iteration read back, for its row of the log (util.training.TrainingLog)."""
    iteration: int
    train_loss: float
    learning_rate: float  # after the iteration's decay
    seconds: float  # the run's training time up to it


@dataclass
class Unread:
    """An iteration whose numbers stay on the device until its window is read back."""
    iteration: int
    loss: torch.Tensor  # this process's
    norm_ratio: torch.Tensor | None  # grad/param norm, on -print_every's iterations
    seconds: float  # the step's
    learning_rate: float  # the step's


class Trainer:
    """char-rnn's loop over a Run: each iteration a step, the progress line, the learning-rate
    decay, and at every -eval_val_every (and each epoch's end, and the last) validation and a
    checkpoint; then what the validations say (over-fitting, -early_stop). A stop request saves and
    ends the run; every end names the best checkpoint."""

    def __init__(self, run: Run, progress: Progress, hidden: State, last_saved: str | None):
        self.run, self.progress, self.hidden, self.last_saved = run, progress, hidden, last_saved
        self.lock = claim_checkpoint_dir(run)  # held by this reference until the process ends
        opt = run.opt
        self.val_batches = spread_batches(run.loader.n_batches("val"), opt.val_max_batches)
        # resumed from a stop that came during the checkpoint's own validation: that validation comes
        # first, and its iteration's log row is written again with it, as a run not stopped has them
        self.validation_due = bool(opt.resume) and self.missed_validation(progress)
        self.log = training_log(run, progress.iteration - self.validation_due)
        self.files = RunCheckpoints(opt.checkpoint_dir, opt.savefile, opt.keep,
                                    progress.iteration if opt.resume else None) if run.ranks.is_main else None
        self.started, self.first_iteration = time.perf_counter(), progress.iteration + 1
        self.overfitting_said, self.plot_drawn, self.plot_failed = False, False, False
        self.validations = len(progress.val_losses)  # -sample_every counts them
        # the samples draw from a generator of their own: the run's random numbers stay the run's
        self.sample_generator = torch.Generator(device=run.device).manual_seed(opt.seed)
        temperature = opt.sample_temperature
        self.sampling = Sampling(temperature or 1.0, sample=temperature > 0)
        self.cost_said = self.say_validation_cost(*estimate_validation(run, self.val_batches), measured=False)
        self.stop = StopRequest()  # from here on a signal asks for a checkpoint and the end of the run
        self.window = readback_window(run.device)
        self.update = TrainingStep(run.network, run.optimizer, opt.grad_clip, opt.precision, opt.grad_norm,
                                   run.graphed, run.say)
        self.unread: list[Unread] = []  # iterations whose numbers are still on the device
        self.unlogged: list[LogRow] = []  # read back, not yet in the log

    def train(self) -> int:
        """The iterations, each read back with its window's others (readback_window): the checks, the
        progress lines and the log rows of a window come at its end, and a window ends at every
        checkpoint, so nothing is validated or saved before the iterations up to it have been checked."""
        run, progress, stop = self.run, self.progress, self.stop
        run.model.train()
        if self.validation_due:
            self.unlogged = [LogRow(progress.iteration, progress.train_losses[-1], run.optimizer.param_groups[0]["lr"],
                                    progress.seconds)]
            status = self.end_of_window(progress.iteration, validating=True)
            if status is not None:
                return status
        for i in range(self.first_iteration, run.iterations + 1):
            self.unread.append(self.step(i))
            validating = self.checkpoint_due(i)  # every epoch's end: a decay comes only after a read-back
            if not (validating or len(self.unread) >= self.window or (stop.signal_number and not run.ranks.active)):
                continue
            problem = self.read_back()
            if problem:
                self.write_log(None)
                return self.abort(problem)
            self.decay_learning_rate(i)
            self.unlogged[-1].learning_rate = run.optimizer.param_groups[0]["lr"]
            status = self.end_of_window(i, validating)
            if status is not None:
                return status
        return self.finish(0)

    def end_of_window(self, i: int, validating: bool) -> int | None:
        """After iteration i's read-back: its validation and checkpoint when due, the log rows, and the
        run's exit status if it ends here (-early_stop, a stop request)."""
        run = self.run
        self.write_log(self.validate_and_save(i) if validating else None)
        if validating and run.ranks.any_true(self.stops_early()):
            return self.finish(0)
        signal_number = run.ranks.any_signal(self.stop.signal_number)
        if signal_number:
            self.save_on_stop(i)
            return self.finish(128 + signal_number)
        return None

    def step(self, i: int) -> "Unread":
        """Iteration i's batch and update, its numbers left on the device."""
        run, opt = self.run, self.run.opt
        started = time.perf_counter()
        if opt.minibatch == "random":  # d2l: each batch's subsequences start from a zero state
            self.hidden = tuple(torch.zeros_like(part) for part in self.hidden)
        x, y = (t[run.rows].to(run.device, non_blocking=True) for t in run.loader.next_batch("train"))
        loss, norm_ratio, self.hidden = self.update(x, y, self.hidden, printing=i % opt.print_every == 0)
        if opt.accurate_gpu_timing:
            synchronize(run.device)
        return Unread(i, loss, norm_ratio, time.perf_counter() - started, run.optimizer.param_groups[0]["lr"])

    def read_back(self) -> str | None:
        """The unread iterations' losses (averaged over the processes) and norms, in one read each:
        each iteration checked, counted and printed in turn; returns why the run must stop at the
        first that fails a check, the later ones then dropped (their weights are never saved)."""
        run, progress, unread = self.run, self.progress, self.unread
        losses = run.ranks.means(torch.stack([record.loss for record in unread]))
        norms = [record.norm_ratio for record in unread if record.norm_ratio is not None]
        printed = iter(torch.stack(norms).tolist() if norms else [])
        self.unread = []
        for record, train_loss in zip(unread, losses, strict=True):
            if train_loss != train_loss:
                return f"loss is NaN at iteration {record.iteration}: stopping; its weights are not saved."
            progress.loss0 = train_loss if progress.loss0 is None else progress.loss0
            if train_loss > progress.loss0 * 3:
                return "loss is exploding, aborting."
            progress.iteration, progress.seconds = record.iteration, progress.seconds + record.seconds
            progress.train_losses.append(train_loss)
            self.unlogged.append(LogRow(record.iteration, train_loss, record.learning_rate, progress.seconds))
            if record.norm_ratio is not None:
                i = record.iteration
                run.say(f"{i}/{run.iterations} (epoch {i / run.iterations_per_epoch:.3f}), train_loss = "
                        f"{train_loss:6.8f}, grad/param norm = {next(printed):6.4e}, time/batch = "
                        f"{record.seconds:.4f}s", flush=True)
        return None

    def write_log(self, val_loss: float | None) -> None:
        """The log rows of the iterations read back, the last with `val_loss`."""
        rows, self.unlogged = self.unlogged, []
        if self.log is None:
            return
        for k, row in enumerate(rows):
            self.log.append(row.iteration, row.iteration / self.run.iterations_per_epoch, row.train_loss,
                            val_loss if k == len(rows) - 1 else None, row.learning_rate, row.seconds)

    def missed_validation(self, progress: Progress) -> bool:
        """Whether the checkpoint resumed from is one due a validation that it does not have (a stop
        request ended the pass)."""
        i = progress.iteration
        return bool(self.val_batches) and 0 < i <= self.run.iterations and self.checkpoint_due(i) \
            and not (progress.val_losses and progress.val_losses[-1][0] == i)

    def decay_learning_rate(self, i: int) -> None:
        """char-rnn's decay: at each epoch's end from -learning_rate_decay_after on."""
        opt, optimizer, epoch = self.run.opt, self.run.optimizer, i / self.run.iterations_per_epoch
        if i % self.run.iterations_per_epoch or opt.learning_rate_decay >= 1 or epoch < opt.learning_rate_decay_after:
            return
        for group in optimizer.param_groups:
            group["lr"] *= opt.learning_rate_decay
        self.run.say(f"decayed learning rate by a factor {lua_number(opt.learning_rate_decay)} "
                     f"to {lua_number(optimizer.param_groups[0]['lr'])}")

    def checkpoint_due(self, i: int) -> bool:
        return i % self.run.opt.eval_val_every == 0 or i % self.run.iterations_per_epoch == 0 or \
            i == self.run.iterations

    def validate_and_save(self, i: int) -> float | None:
        """The validation loss (on the main process, when there is a val split) and a checkpoint."""
        run = self.run
        val_loss = self.validate(i) if run.ranks.is_main and self.val_batches else None
        self.validations += 1
        if run.ranks.is_main and run.opt.sample_every and self.validations % run.opt.sample_every == 0 \
                and not self.stop.signal_number:
            self.say_samples(i)
        if val_loss is not None:
            self.draw_plot()
        self.last_saved = self.save(val_loss)
        run.say(f"saved checkpoint {self.last_saved}", flush=True)
        return val_loss

    def validate(self, i: int) -> float | None:
        """Iteration i's validation loss, said with what it means; None when a stop request came
        during the pass (the checkpoint is then saved without one)."""
        run, started = self.run, time.perf_counter()
        val_loss = evaluate_split(run.model, run.loader, "val", run.device, run.opt.precision,
                                  run.opt.val_max_batches, stopped=lambda: self.stop.signal_number != 0)
        if val_loss is None:
            run.say("validation stopped by the stop request: saving the checkpoint without a validation loss")
            return None
        pass_seconds = time.perf_counter() - started
        self.progress.val_losses.append([i, val_loss])
        run.say(f"validation loss at epoch {i / run.iterations_per_epoch:.2f}: {val_loss:.4f} "
                f"{self.validation_details(i, val_loss)}")
        if not self.cost_said:
            step_seconds = self.progress.seconds / max(1, len(self.progress.train_losses))
            self.cost_said = self.say_validation_cost(pass_seconds, step_seconds, measured=True)
        return val_loss

    def validation_details(self, i: int, val_loss: float) -> str:
        done = max(1, i - self.first_iteration + 1)  # 0 for a resumed run's first, missed validation
        elapsed = time.perf_counter() - self.started
        best = best_validation(self.progress.val_losses)
        assert best is not None  # val_loss was just appended
        return validation_details(val_loss, best, self.run.iterations_per_epoch,
                                  (len(self.val_batches), self.run.loader.n_batches("val")), elapsed,
                                  elapsed / done * (self.run.iterations - i))

    def draw_plot(self) -> None:
        """cv/lm_loss.png, redrawn at every validation; a plot that cannot be drawn is a warning."""
        run, progress = self.run, self.progress
        path = loss_plot_path(run.opt.checkpoint_dir, run.opt.savefile)
        try:
            curves = curves_from_progress(progress.train_losses, progress.val_losses, run.iterations_per_epoch)
            draw_loss_plot(path, curves.train, curves.val, curves.best, f"{os.path.basename(path)}: loss per character")
        except UserError as error:
            if not self.plot_failed:
                run.say(f"warning: {error}; training goes on without the plot")
            self.plot_failed = True
            return
        if not self.plot_drawn:
            run.say(f"loss plot: {path} (redrawn at every validation)")
        self.plot_drawn = True

    def say_samples(self, i: int) -> None:
        """-sample_every's continuations of each prefix, from the model in eval mode."""
        run, opt = self.run, self.run.opt
        run.model.eval()
        for prefix in run.prefixes:
            ids = [*prefix, *(step[0] for step in sample_steps(run.model, prefix, opt.sample_length, self.sampling,
                                                                [self.sample_generator]))]
            text = "".join(run.vocab.tokens[k] for k in ids)
            if run.vocab.is_bytes:
                text = bytes(ord(token) for token in text).decode("utf-8", errors="replace")
            run.say(f"sample at epoch {i / run.iterations_per_epoch:.2f}: {text.translate(LINE_BREAKS)}")
        run.model.train()

    def say_validation_cost(self, pass_seconds: float, step_seconds: float, measured: bool) -> bool:
        """The notice when validation takes too much of the run; whether it was given."""
        run = self.run
        if not (run.ranks.is_main and self.val_batches):
            return False
        interval = min(run.opt.eval_val_every, run.iterations_per_epoch, run.iterations)
        notice = validation_cost_notice(pass_seconds, len(self.val_batches), interval, step_seconds, measured)
        if notice:
            run.say(notice)
        return notice is not None

    def stops_early(self) -> bool:
        """After a validation: the over-fitting notice (once), and whether -early_stop ends the run."""
        run, opt, val_losses = self.run, self.run.opt, self.progress.val_losses
        rises, best = rises_since_best(val_losses), best_validation(val_losses)
        if best is None or rises == 0:
            return False
        if opt.overfit_patience and rises == opt.overfit_patience and not self.overfitting_said:
            characters = run.iterations_per_epoch * opt.batch_size * opt.seq_length
            run.say(overfitting_notice(rises, best, self.best_path, run.iterations_per_epoch, run.model,
                                       run.model.dropout.p, characters))
            self.overfitting_said = True
        if opt.early_stop and rises >= opt.early_stop:
            run.say(early_stop_line(opt.early_stop, best, run.iterations_per_epoch))
            return True
        return False

    @property
    def best_path(self) -> str:
        return best_path(self.run.opt.checkpoint_dir, self.run.opt.savefile)

    def save(self, val_loss: float | None) -> str:
        """Every process takes part (the carried state is gathered); the main one writes."""
        run, progress = self.run, self.progress
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            self.say_best()
            raise UserError(f"the weights became NaN or infinite at iteration {progress.iteration} (is "
                            f"-learning_rate too high?); not saving them. The last good checkpoint is "
                            f"{self.last_saved or 'none'}")
        hidden = run.ranks.gather_rows(self.hidden)
        path = checkpoint_path(run.opt.checkpoint_dir, run.opt.savefile, progress.iteration,
                               run.iterations_per_epoch)
        if self.files is not None:
            training = training_state(run.model, run.optimizer, run.loader.position["train"], hidden, run.device,
                                      progress)
            save_checkpoint(path, build_checkpoint(run.model, run.vocab, vars(run.opt),
                                                   {"data_source": run.data_source}, progress,
                                                   run.iterations_per_epoch, val_loss, training))
            best = best_validation(progress.val_losses)
            row = IndexRow(os.path.basename(path), progress.iteration / run.iterations_per_epoch,
                           progress.iteration, progress.train_losses[-1], val_loss)
            self.files.added(path, row, val_loss is not None and best is not None and best[0] == progress.iteration)
        return path

    def save_on_stop(self, i: int) -> None:
        run = self.run
        if self.last_saved != checkpoint_path(run.opt.checkpoint_dir, run.opt.savefile, i, run.iterations_per_epoch):
            self.last_saved = self.save(None)
        run.say(f"stopped at iteration {i}; checkpoint {self.last_saved}; continue with: "
                f"python train.py -resume {self.last_saved}", flush=True)

    def abort(self, message: str) -> int:
        self.run.say(message)
        self.run.say(f"the last good checkpoint is {self.last_saved}" if self.last_saved
                     else "no checkpoint was written yet")
        return self.finish(1)

    def finish(self, status: int) -> int:
        self.say_best()
        return status

    def say_best(self) -> None:
        self.run.say(best_line(best_validation(self.progress.val_losses), self.best_path,
                               self.run.iterations_per_epoch, self.last_saved), flush=True)


def estimate_validation(run: Run, batches: list[int]) -> tuple[float, float]:
    """Before training: the seconds of a validation pass over `batches` and of a training step,
    from the time of one val batch's forward pass (a step, forward and backward, takes about three).
    Eval mode and no gradients: nothing of the run (weights, random numbers) changes."""
    if not (run.ranks.is_main and batches):
        return 0.0, 0.0
    model = run.model
    x = run.loader.batch("val", batches[0])[0].to(run.device)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(3):  # the first call also pays for setting up the kernels
            started = time.perf_counter()
            model(x, model.zero_state(x.shape[0]))
            synchronize(run.device)
            times.append(time.perf_counter() - started)
    model.train()
    forward = min(times[1:])
    return forward * len(batches), 3 * forward


if __name__ == "__main__":
    run_main(main)
