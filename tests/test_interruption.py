"""Stop requests and shared folders (docs/behaviour.md §2.3, README "Interruption" and "Two runs in
one folder"): a signal is acted on at the next batch, also in the middle of a validation pass or of
evaluate.py, and ends a script with one line; a second train.py run writing the same names in one
-checkpoint_dir refuses to start, while the first runs and after it ends, however it ended.
"""
import re
import signal
from pathlib import Path

import pytest

from conftest import assert_user_error, data_folder, run_script
from util.checkpoint import load_checkpoint
from watched import start_script

WORDS = "the quick brown fox jumps over the lazy dog; she sells sea shells by the sea shore.\n"
SMALL = ["-rnn_size", "8", "-num_layers", "1", "-batch_size", "2", "-seq_length", "5", "-gpuid", "-1",
         "-threads", "1"]


def progress_line(line: str) -> bool:
    return line[:1].isdigit() and "train_loss" in line


@pytest.fixture(scope="module")
def long_validation(tmp_path_factory) -> Path:
    """A -data_dir whose val split is thousands of batches of a 2 x 128 model: a pass of many
    seconds, against a training step of milliseconds."""
    return data_folder(tmp_path_factory.mktemp("long_validation") / "data", WORDS * 6000)


@pytest.fixture(scope="module")
def trained(long_validation, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    result = run_script("train.py", "-data_dir", long_validation, *SMALL, "-train_frac", "0.05", "-val_frac",
                        "0.001", "-max_epochs", "0.05", "-print_every", "1000", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "cv" / "lm_best.pt"


def test_sigterm_during_a_validation_pass_ends_it_at_the_next_batch(long_validation, tmp_path):
    run = start_script("train.py", tmp_path, "-data_dir", long_validation, "-rnn_size", "128", "-batch_size", "10",
                       "-seq_length", "50", "-train_frac", "0.05", "-val_frac", "0.95", "-eval_val_every", "1",
                       "-max_epochs", "1", "-gpuid", "-1", "-threads", "1")
    assert run.wait_for(progress_line), run.finish()  # iteration 1 is done: its validation comes next
    run.process.send_signal(signal.SIGTERM)
    returncode, stdout, stderr = run.finish(timeout=60)
    assert returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "validation stopped by the stop request" in stdout
    assert "validation loss at epoch" not in stdout
    stopped = re.search(r"^stopped at iteration 1; checkpoint (\S+);", stdout, re.M)
    assert stopped, stdout
    checkpoint = load_checkpoint(str(tmp_path / stopped.group(1)))
    assert checkpoint["iteration"] == 1
    assert checkpoint["val_loss"] is None and checkpoint["val_losses"] == []
    # -resume runs the validation the stop cut short first, as the run would have had it
    resumed = run_script("train.py", "-resume", stopped.group(1), "-max_epochs", "0.02", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"^validation loss at epoch 0\.02: ", resumed.stdout, re.M), resumed.stdout
    again = load_checkpoint(str(tmp_path / stopped.group(1)))
    assert again["val_losses"] == [[1, again["val_loss"]]] and again["val_loss"] is not None
    rows = (tmp_path / "cv" / "lm_log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[3] == f"{again['val_loss']:.8f}"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_evaluate_ends_it_with_one_line(long_validation, trained, tmp_path, number):
    run = start_script("evaluate.py", tmp_path, trained, "-data_dir", long_validation, "-split", "val",
                       "-train_frac", "0.05", "-val_frac", "0.95", "-gpuid", "-1", "-verbose", "1")
    assert run.wait_for(lambda line: line.startswith("data:"), stderr=True), run.finish()
    run.process.send_signal(number)
    returncode, stdout, stderr = run.finish(timeout=60)
    assert returncode == 128 + number, (stdout, stderr)
    assert stdout == ""
    assert stderr.splitlines()[-1] == f"{number.name} received: stopped"
    assert "Traceback" not in stderr


def test_ctrl_c_during_sampling_ends_it_with_one_line(trained, tmp_path):
    run = start_script("sample.py", tmp_path, trained, "-length", "100000000", "-gpuid", "-1")
    assert run.wait_for(lambda line: True), run.finish()
    run.process.send_signal(signal.SIGINT)
    returncode, _, stderr = run.finish(timeout=60)
    assert returncode == 128 + signal.SIGINT
    assert stderr.splitlines()[-1] == "SIGINT received: stopped" and "Traceback" not in stderr


# ---- two runs, one folder ----------------------------------------------------------------------------

@pytest.fixture
def words(tmp_path) -> Path:
    return data_folder(tmp_path / "data", WORDS * 20)


def start_long_run(folder: Path, data: Path, *args: str):
    run = start_script("train.py", folder, "-data_dir", data, *SMALL, "-max_epochs", "1000", "-print_every", "1",
                       *args)
    assert run.wait_for(progress_line), run.finish()
    return run


def test_a_second_run_on_the_same_names_refuses_and_one_with_another_savefile_runs(tmp_path, words):
    first = start_long_run(tmp_path, words)
    log = (tmp_path / "cv" / "lm_log.csv")
    try:
        second = run_script("train.py", "-data_dir", words, *SMALL, "-max_epochs", "0.1", cwd=tmp_path)
        before = log.read_text()
        other = run_script("train.py", "-data_dir", words, *SMALL, "-max_epochs", "0.1", "-print_every", "1000",
                           "-savefile", "b", cwd=tmp_path)
    finally:
        first.process.send_signal(signal.SIGTERM)
        returncode, _, _ = first.finish()
    line = assert_user_error(second, "cv is in use by another train.py run with the default -savefile",
                             "train.py process")
    assert str(first.process.pid) in line
    assert returncode == 128 + signal.SIGTERM
    iterations = [row.split(",")[0] for row in log.read_text().splitlines()[1:]]
    assert iterations == sorted(set(iterations), key=int), "every iteration once, in order"
    assert before in log.read_text()
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "cv" / "lm_b_best.pt").exists()


def test_the_lock_goes_with_the_process_however_it_ends(tmp_path, words):
    first = start_long_run(tmp_path, words)
    first.process.kill()  # SIGKILL: no handler runs, the file stays behind
    first.finish()
    assert (tmp_path / "cv" / "lm.lock").exists()
    after = run_script("train.py", "-data_dir", words, *SMALL, "-max_epochs", "0.1", "-print_every", "1000",
                       cwd=tmp_path)
    assert after.returncode == 0, after.stderr
