"""The listing of a checkpoint folder (`python evaluate.py -list DIR`): every checkpoint with its
epoch, iteration and losses, each run's best marked, without loading the weights.

list_checkpoints(DIR) lists the checkpoints of DIR (its .pt and .t7 files; not subfolders) without
loading the weights of .pt files. A file named in an index in DIR (any lm_*index.csv: train.py's
lm_index.csv, lm_NAME_index.csv) is listed from its index row; any other .pt from its metadata
(torch.load weights-only, memory-mapped: its tensors are not read); a .t7 (char-rnn) through
util.checkpoint.load_checkpoint. A file that cannot be read, is not a char-rnn checkpoint, or holds
anything but tensors and plain data (never unpickled further) is a line of its own marked
unreadable; an index that cannot be read is a one-line note on stderr, and its checkpoints are then
read from their files. On stdout: one header line, then one line per checkpoint:

    checkpoint       epoch  iteration  train_loss  val_loss
    broken.pt            -          -           -         -  unreadable: not a checkpoint (not a file ...)
    lm_epoch0.43.pt   0.43          3    3.409594  3.408217
    lm_epoch0.86.pt   0.86          6    3.389898  3.404378
    lm_epoch1.pt      1.00          7    3.389925  3.404598
    lm_epoch1.29.pt   1.29          9    3.366352  3.402780
    lm_epoch1.71.pt   1.71         12    3.387252  3.402321  best
    lm_best.pt        1.71         12    3.387252  3.402321  copy of lm_epoch1.71.pt
    lm_epoch2.pt      2.00         14    3.367344  3.403050

Columns are joined by two spaces: the file name (left-aligned, padded to the longest), then
right-aligned the epoch (2 decimals), the iteration, the train loss (of the checkpoint's last
iteration; a .t7: the last of its train_losses) and the val loss (6 decimals each); `-` for a
value that is missing (no validation, no train loss, an unreadable file). Some lines end in a note
(two spaces before it; several are joined by ", "): `best` on the line with the lowest val loss of
its run (ties: the earliest iteration, then the original before a copy); `copy of NAME` on a
*best.pt line, NAME being the checkpoint of the same run with the same iteration and val loss (or
`copy of iteration N (not on disk)`, the copy then being the run's best); `unreadable: REASON`.
A file's run is its name up to `epoch<N>` or `best` (lm_, lm_NAME_; a file named in an index: that
index's, lm_ for lm_index.csv); a .t7's is char-rnn's prefix (lm_lstm_ of lm_lstm_epoch30.00_1.3950.t7),
a run apart from .pt files of the same prefix (char-rnn counted its own iterations); a file named
otherwise is a run of its own. Lines are sorted by run, then iteration (a copy after the checkpoint
it copies; unreadable files last in their run), then name. A missing DIR, a file, or a folder
without .pt or .t7 files is an error.
"""
import math
import os
import re
from dataclasses import dataclass, field

from util.checkpoint import FORMAT, IndexRow, load_checkpoint, read_index, read_pt
from util.errors import LINE_BREAKS, UserError, diagnostic

CHECKPOINT_SUFFIXES = (".pt", ".t7")
PT_RUN = re.compile(r"^(.*?)(?:epoch\d+(?:\.\d+)?|best)\.pt$")  # lm_NAME_ of lm_NAME_epoch3.50.pt, lm_best.pt
T7_RUN = re.compile(r"^(.*?)epoch\d+(?:\.\d+)?_\d+(?:\.\d+)?\.t7$")  # lm_lstm_ of lm_lstm_epoch30.00_1.3950.t7
INDEX_FILE = re.compile(r"^(lm_.*)index\.csv$")  # lm_ of lm_index.csv, lm_NAME_ of lm_NAME_index.csv
LIST_HEADER = ("checkpoint", "epoch", "iteration", "train_loss", "val_loss")


@dataclass
class Listed:
    """A line of -list: a checkpoint file of the folder and what is known of it (None: nothing)."""
    name: str
    run: tuple[str, str]  # (the name's prefix, ".pt" or ".t7"): see run_of
    iteration: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_copy(self) -> bool:
        """lm_best.pt, lm_NAME_best.pt: train.py's copy of a run's best checkpoint."""
        return self.name.endswith("best.pt")

    def cells(self) -> list[str]:
        def number(value: float | None, decimals: int) -> str:
            return "-" if value is None else f"{value:.{decimals}f}"
        return [self.name.translate(LINE_BREAKS), number(self.epoch, 2),
                "-" if self.iteration is None else str(self.iteration),
                number(self.train_loss, 6), number(self.val_loss, 6)]


def run_of(name: str) -> tuple[str, str]:
    """A file's run: its name up to epoch<N> or best (a .t7: char-rnn's lm_<savefile>_, kept apart
    from .pt runs of the same prefix); a name of neither form is a run of its own."""
    kind = ".t7" if name.endswith(".t7") else ".pt"
    match = (T7_RUN if kind == ".t7" else PT_RUN).match(name)
    return (match.group(1) if match else name, kind)


def folder_checkpoints(folder: str) -> tuple[list[str], list[str]]:
    """The folder's file names and, of them, its checkpoint files (.pt, .t7), sorted."""
    if not os.path.exists(folder):
        raise UserError(f"-list: folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise UserError(f"-list: {folder} is a file, not a folder; give the folder that holds the checkpoints")
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        raise UserError(f"-list: cannot read folder {folder}: {error.strerror}") from None
    files = [name for name in names
             if name.endswith(CHECKPOINT_SUFFIXES) and os.path.isfile(os.path.join(folder, name))]
    if not files:
        raise UserError(f"-list: {folder} holds no checkpoints (.pt or .t7 files); train.py writes them to "
                        f"its -checkpoint_dir (cv by default): try -list cv")
    return names, files


def indexed(folder: str, names: list[str], files: set[str]) -> dict[str, Listed]:
    """The index rows (every lm_*index.csv of the folder) of the checkpoint files that are there;
    an index that cannot be read gets a note on stderr and its files are read one by one."""
    listed: dict[str, Listed] = {}
    for index in names:
        match = INDEX_FILE.match(index)
        if not match:
            continue
        try:
            rows: list[IndexRow] = read_index(os.path.join(folder, index))
        except UserError as error:
            diagnostic(f"note: {error}; its checkpoints are listed from their own files".translate(LINE_BREAKS))
            continue
        for row in rows:
            if row.checkpoint in files and row.checkpoint not in listed:
                run = (match.group(1), ".t7" if row.checkpoint.endswith(".t7") else ".pt")
                listed[row.checkpoint] = Listed(row.checkpoint, run, row.iteration, row.epoch, row.train_loss,
                                                row.val_loss)
    return listed


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def from_checkpoint(listed: Listed, checkpoint: object) -> Listed:
    """Fill in a checkpoint's numbers (the layout of util.checkpoint's docstring)."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError("not a char-rnn checkpoint")
    iteration, epoch, losses, val_loss = (checkpoint.get(key) for key in ("iteration", "epoch", "train_losses",
                                                                           "val_loss"))
    if not (isinstance(iteration, int) and not isinstance(iteration, bool) and isinstance(epoch, (int, float))
            and isinstance(losses, list) and (val_loss is None or is_number(val_loss))):
        raise UserError("its iteration, epoch, train_losses or val_loss is missing or of the wrong type")
    listed.iteration, listed.epoch = iteration, float(epoch)
    listed.val_loss = None if val_loss is None else float(val_loss)
    listed.train_loss = float(losses[-1]) if losses and is_number(losses[-1]) else None
    return listed


def read_listed(folder: str, name: str) -> Listed:
    """A checkpoint not in any index, from its metadata (.pt) or its conversion (.t7); a file that
    cannot be read, or is not a char-rnn checkpoint, is listed as unreadable with the reason."""
    path = os.path.join(folder, name)
    listed = Listed(name, run_of(name))
    try:
        checkpoint = load_checkpoint(path) if name.endswith(".t7") else read_pt(path, mmap=True)
        return from_checkpoint(listed, checkpoint)
    except UserError as error:
        reason = str(error)
    except OSError as error:
        reason = f"cannot read it ({error.strerror})"
    except Exception as error:  # a listing never stops at one file
        reason = f"{type(error).__name__}"
    for lead in (f"{path} is ", f"{path}: ", f"{path} "):
        if reason.startswith(lead):
            reason = reason[len(lead):]
            break
    listed.notes.append(f"unreadable: {reason.replace(path, name)}")
    return listed


def same_numbers(a: Listed, b: Listed) -> bool:
    if a.iteration != b.iteration or (a.val_loss is None) != (b.val_loss is None):
        return False
    return a.val_loss is None or b.val_loss is None or abs(a.val_loss - b.val_loss) <= 1e-7


def mark(rows: list[Listed]) -> None:
    """Note each run's best line (the lowest val loss) and what each *best.pt is a copy of."""
    runs: dict[tuple[str, str], list[Listed]] = {}
    for row in rows:
        runs.setdefault(row.run, []).append(row)
    for members in runs.values():
        for copy in (row for row in members if row.is_copy and row.iteration is not None):
            source = next((row for row in members if not row.is_copy and same_numbers(row, copy)), None)
            copy.notes.append(f"copy of {source.name.translate(LINE_BREAKS)}" if source
                              else f"copy of iteration {copy.iteration} (not on disk)")
        scored = [row for row in members if row.val_loss is not None and math.isfinite(row.val_loss)]
        if scored:
            best = min(scored, key=lambda row: (row.val_loss, row.iteration, row.is_copy, row.name))
            best.notes.insert(0, "best")


def list_checkpoints(folder: str) -> list[str]:
    """The lines -list DIR prints: a header, then one line per checkpoint (format: the docstring)."""
    names, files = folder_checkpoints(folder)
    listed = indexed(folder, names, set(files))
    rows = [listed.get(name) or read_listed(folder, name) for name in files]
    mark(rows)
    rows.sort(key=lambda row: (row.run, row.iteration is None, row.iteration or 0, row.is_copy, row.name))
    table = [list(LIST_HEADER), *(row.cells() for row in rows)]
    widths = [max(len(cells[k]) for cells in table) for k in range(len(LIST_HEADER))]
    notes = ["", *(", ".join(row.notes) for row in rows)]
    lines = []
    for cells, note in zip(table, notes, strict=True):
        numbers = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        columns = [cells[0].ljust(widths[0]), *numbers]
        lines.append(f"{'  '.join(columns)}  {note}".rstrip())
    return lines
