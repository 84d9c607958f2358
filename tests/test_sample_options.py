"""sample.py's generator options as a user runs them (docs/behaviour.md §2.11): -num_samples,
-output, -stop, -beam_size, -top_k/-top_p, -interactive, -check_copy, and their errors, which
come before any text.

All runs start at once on a small pool (runner.Runs) once the checkpoints are written."""
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY_TEXT
from runner import Runs, ok
from test_generate import needs_concatenating_draws, sample_lua_reference
from test_sample import PRIME, assert_error_line, run_sample, trained_ascii_checkpoint
from util.checkpoint import save_checkpoint

CPU_QUIET = ("-gpuid", "-1", "-verbose", "0")
DELIMITER = "=" * 20


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sample_options")
    training = folder / "data"
    training.mkdir()
    (training / "input.txt").write_text(TINY_TEXT, encoding="utf-8")
    checkpoint = trained_ascii_checkpoint()
    checkpoint["opt"]["data_dir"] = str(training)
    checkpoint["run"] = {"data_source": "data_dir"}
    paths = {"ascii": folder / "ascii.pt", "data": training, "folder": folder,
             "existing": folder / "existing.txt", "corpus": folder / "corpus.txt"}
    save_checkpoint(str(paths["ascii"]), checkpoint)
    paths["existing"].write_text("keep me\n", encoding="utf-8")
    paths["corpus"].write_text("nothing of the sort\n", encoding="utf-8")
    return paths


def cases(f: dict[str, Path]) -> dict[str, tuple]:
    ck, out = f["ascii"], f["folder"]
    return {
        "default": (ck, "-gpuid", "-1", "-verbose", "0", "-length", 300),
        "samples3": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 80, "-num_samples", 3, "-seed", 4),
        "samples3_file": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 80, "-num_samples", 3, "-seed", 4,
                          "-output", out / "three.txt"),
        "one_file": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 80, "-output", out / "one.txt"),
        "stop": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 300, "-num_samples", 5, "-stop", "\n"),
        "top": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 200, "-top_k", 3, "-top_p", 0.9),
        "top_all": (ck, *CPU_QUIET, "-length", 300, "-top_k", 1000, "-top_p", 1),
        "beam": (ck, *CPU_QUIET, "-primetext", PRIME, "-length", 60, "-sample", 0, "-beam_size", 6,
                 "-num_samples", 2),
        "copy_training": (ck, *CPU_QUIET, "-primetext", "First", "-sample", 0, "-length", 60, "-check_copy", 1),
        "copy_file": (ck, *CPU_QUIET, "-primetext", "First", "-sample", 0, "-length", 60,
                      "-check_copy", f["corpus"]),
        # bad input: nothing on stdout, no file written or replaced
        "top_k-1": (ck, *CPU_QUIET, "-top_k", -1),
        "top_p0": (ck, *CPU_QUIET, "-top_p", 0),
        "top_p2": (ck, *CPU_QUIET, "-top_p", 2),
        "samples0": (ck, *CPU_QUIET, "-num_samples", 0),
        "beam_sampling": (ck, *CPU_QUIET, "-beam_size", 4),
        "beam_negative": (ck, *CPU_QUIET, "-sample", 0, "-beam_size", -2),
        "copy_missing": (ck, *CPU_QUIET, "-check_copy", out / "no_such.txt"),
        "output_no_folder": (ck, *CPU_QUIET, "-output", out / "no_such_folder" / "x.txt"),
        "output_exists": (ck, *CPU_QUIET, "-output", f["existing"]),
        "stop_unknown": (ck, *CPU_QUIET, "-stop", "Qx"),
        "interactive_prime": (ck, *CPU_QUIET, "-interactive", 1, "-primetext", PRIME),
    }


@pytest.fixture(scope="module")
def runs(files: dict[str, Path]) -> Iterator[Runs]:
    with Runs(workers=3) as r:
        for name, args in cases(files).items():
            r.submit(name, run_sample, *args)
        r.submit("interactive", run_sample, files["ascii"], *CPU_QUIET, "-interactive", 1, "-length", 40,
                 stdin=b"Speak\nQx\nFirst\n")
        r.submit("overwrite", run_sample, files["ascii"], *CPU_QUIET, "-length", 30, "-output",
                 files["folder"] / "replaced.txt", "-overwrite", 1, after=("output_exists",))
        yield r


def samples_of(stdout: bytes) -> list[str]:
    return stdout.decode("utf-8").split(f"\n{DELIMITER}\n")


@needs_concatenating_draws
def test_no_new_option_gives_the_text_sample_py_always_gave(runs, files):
    expected = sample_lua_reference(files["ascii"], "", 300, 1.0, 123)
    assert ok(runs["default"]).stdout.decode("utf-8") == expected + "\n"


def test_num_samples_prints_each_sample_between_delimiter_lines(runs):
    samples = samples_of(ok(runs["samples3"]).stdout)
    assert len(samples) == 3 and samples[-1].endswith("\n")
    assert all(s.rstrip("\n").startswith(PRIME) and len(s.rstrip("\n")) == len(PRIME) + 80
               for s in [*samples[:-1], samples[-1][:-1]])
    assert len(set(samples)) == 3


def test_output_writes_what_stdout_would_get_and_nothing_to_stdout(runs, files):
    result = ok(runs["samples3_file"])
    assert result.stdout == b""
    assert (files["folder"] / "three.txt").read_bytes() == ok(runs["samples3"]).stdout
    assert ok(runs["one_file"]).stdout == b""
    one = (files["folder"] / "one.txt").read_text(encoding="utf-8")
    assert one.startswith(PRIME) and len(one) == len(PRIME) + 81


def test_an_existing_output_file_is_kept_unless_overwrite_is_given(runs, files):
    assert_error_line(runs["output_exists"], "exists", "-overwrite 1")
    assert files["existing"].read_text(encoding="utf-8") == "keep me\n"
    ok(runs["overwrite"])
    assert len((files["folder"] / "replaced.txt").read_text(encoding="utf-8")) == 31


def test_stop_ends_every_sample_at_its_first_line_break(runs):
    samples = samples_of(ok(runs["stop"]).stdout)
    assert len(samples) == 5
    continuations = [s[len(PRIME):].removesuffix("\n") for s in samples]
    assert all("\n" not in c for c in continuations)
    assert any(len(c) < 300 for c in continuations)


def test_top_k_and_top_p_run_and_top_k_of_all_changes_nothing(runs):
    text = ok(runs["top"]).stdout.decode("utf-8")
    assert text.startswith(PRIME) and len(text) == len(PRIME) + 201
    assert ok(runs["top_all"]).stdout == ok(runs["default"]).stdout


def test_beam_search_prints_the_best_continuations(runs):
    samples = samples_of(ok(runs["beam"]).stdout)
    assert len(samples) == 2 and samples[0] != samples[1]
    assert all(s.startswith(PRIME) for s in samples)


def test_interactive_continues_each_line_and_skips_a_bad_one(runs):
    result = ok(runs["interactive"])
    text = result.stdout.decode("utf-8")
    first, second = text[:46], text[46:]
    assert first.startswith("Speak") and first.endswith("\n")
    assert second.startswith("First") and second.endswith("\n") and len(second) == 46
    assert "warning" in result.stderr and "'Q'" in result.stderr


def test_check_copy_reports_on_stderr_against_the_training_text(runs, files):
    result = ok(runs["copy_training"])
    report = [line for line in result.stderr.splitlines() if line.startswith("copy check")]
    assert len(report) == 1, result.stderr
    assert str(files["data"] / "input.txt") in report[0]
    other = ok(runs["copy_file"])
    assert other.stdout == result.stdout  # the report goes to stderr only
    assert "corpus.txt" in other.stderr


@pytest.mark.parametrize("name, fragments", [
    ("top_k-1", ["-top_k", "-1"]),
    ("top_p0", ["-top_p", "(0, 1]"]),
    ("top_p2", ["-top_p", "2"]),
    ("samples0", ["-num_samples", "0"]),
    ("beam_sampling", ["-beam_size", "-sample 0"]),
    ("beam_negative", ["-beam_size", "-2"]),
    ("copy_missing", ["-check_copy", "no_such.txt"]),
    ("output_no_folder", ["-output", "does not exist"]),
    ("stop_unknown", ["-stop", "'Q'"]),
    ("interactive_prime", ["-interactive", "-primetext"]),
])
def test_bad_generator_options_are_one_error_line_before_any_text(runs, name, fragments):
    result = runs[name]
    assert_error_line(result, *fragments)
    assert result.stdout == b""
