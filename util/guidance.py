"""What train.py tells the user beyond char-rnn's lines: the validation line's extras, the best
checkpoint, over-fitting with advice for the corpus at hand, and validation that costs too much.
Each function turns numbers into the line to print; train.py decides when."""
import math

import torch

from model import CharRNN
from util.training import RISE_MARGIN, VALIDATION_SHARE, suggested_val_batches


def format_duration(seconds: float) -> str:
    """0.4s, 45s, 3m05s, 2h03m."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def perplexity(loss: float) -> str:
    """exp(loss), the d2l book's measure: the number of equally likely characters it amounts to."""
    value = math.exp(loss) if loss < 709 else math.inf  # beyond, exp overflows a double
    return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"


def validation_details(val_loss: float, best: tuple[int, float], iterations_per_epoch: int,
                       batches: tuple[int, int], elapsed: float, left: float) -> str:
    """The parenthesis after char-rnn's validation loss: the book's perplexity (exp of the loss),
    the best so far, the batches used when -val_max_batches cut them, the time."""
    best_iteration, best_loss = best
    parts = [f"perplexity {perplexity(val_loss)}"]
    if val_loss <= best_loss:
        parts.append("best so far")
    else:
        parts.append(f"best {best_loss:.4f} at epoch {best_iteration / iterations_per_epoch:.2f}")
    used, total = batches
    if used < total:
        parts.append(f"on {used} of {total} batches")
    parts.append(f"elapsed {format_duration(elapsed)}, about {format_duration(left)} left")
    return f"({'; '.join(parts)})"


def best_line(best: tuple[int, float] | None, best_path: str, iterations_per_epoch: int,
              last_saved: str | None) -> str:
    """The run's last line: the best checkpoint and the last one."""
    last = last_saved or "none"
    if best is None:
        return f"no validation loss was measured, so there is no best checkpoint; last checkpoint: {last}"
    iteration, loss = best
    return (f"best checkpoint: {best_path} (epoch {iteration / iterations_per_epoch:.2f}, iteration {iteration}, "
            f"val loss {loss:.4f}); last checkpoint: {last}")


def parameter_count(model_type: str, vocab_size: int, rnn_size: int, num_layers: int) -> int:
    """The parameters of a model of this shape (built on the meta device: no memory used)."""
    with torch.device("meta"):
        return sum(p.numel() for p in CharRNN(model_type, vocab_size, rnn_size, num_layers).parameters())


def smaller_rnn_size(model: CharRNN, characters: int) -> int | None:
    """Half the model's rnn_size (at least 16) when its parameters outnumber the training characters
    (char-rnn's rule of thumb: about as many parameters as characters); None when they do not."""
    if sum(p.numel() for p in model.parameters()) <= characters or model.rnn_size <= 16:
        return None
    return max(16, model.rnn_size // 2)


def overfitting_notice(rises: int, best: tuple[int, float], best_path: str, iterations_per_epoch: int,
                       model: CharRNN, dropout: float, characters: int) -> str:
    """The one notice that the model has started to memorise its training text, with what to try."""
    iteration, loss = best
    epoch = iteration / iterations_per_epoch
    tips = [] if dropout >= 0.5 else ["-dropout 0.5"]
    smaller = smaller_rnn_size(model, characters)
    if smaller:
        params = parameter_count(model.model_type, model.vocab_size, smaller, model.num_layers)
        tips.append(f"-rnn_size {smaller} ({params:,} parameters instead of "
                    f"{sum(p.numel() for p in model.parameters()):,})")
    tips.append(f"-max_epochs {max(1, math.ceil(epoch))}")
    return (f"notice: the validation loss has risen for {rises} validations in a row (each more than "
            f"{RISE_MARGIN:.0%} above its lowest, {loss:.4f} at epoch {epoch:.2f}): the model is over-fitting "
            f"its {characters:,} training characters. The best checkpoint is {best_path}. For a corpus of "
            f"this size try {', '.join(tips)}; -early_stop N ends a run after N such validations")


def early_stop_line(rises: int, best: tuple[int, float], iterations_per_epoch: int) -> str:
    iteration, loss = best
    return (f"stopping early (-early_stop {rises}): the validation loss has risen for {rises} validations "
            f"in a row since its lowest, {loss:.4f} at epoch {iteration / iterations_per_epoch:.2f}")


NOTICEABLE_SECONDS = 1.0  # a validation pass shorter than this is not worth a notice, whatever the ratio


def validation_cost_notice(pass_seconds: float, batches: int, interval_iterations: int,
                           step_seconds: float, measured: bool) -> str | None:
    """A notice when a validation pass of `batches` takes NOTICEABLE_SECONDS or more and more than
    VALIDATION_SHARE of the training time between validations (interval_iterations steps of
    step_seconds); None when it does not."""
    interval = interval_iterations * step_seconds
    if pass_seconds < NOTICEABLE_SECONDS or pass_seconds <= VALIDATION_SHARE * interval:
        return None
    suggestion = suggested_val_batches(pass_seconds, batches, interval)
    how = "took" if measured else "will take about"
    return (f"notice: a validation pass over {batches} batches {how} {format_duration(pass_seconds)}, "
            f"{pass_seconds / interval:.1f}x the {format_duration(interval)} of training between validations "
            f"(every {interval_iterations} iterations): -val_max_batches {suggestion} validates on an evenly "
            f"spread {suggestion} of them (about {format_duration(pass_seconds * suggestion / batches)}, the "
            f"same batches every time), or a larger -eval_val_every validates less often")
