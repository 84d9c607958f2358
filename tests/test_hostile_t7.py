"""Hostile and broken .t7 files (issue 19): util.torch7.load_char_rnn_checkpoint gives a checkpoint
whose every field has the type it should, or a ValueError with a short message, and nothing else:
no other exception, no crash, no gigabytes, no minutes. Through sample.py, as a user runs it,
that ValueError is one `Error:` line and status 1.

Each file is built here, small, mostly from a valid char-rnn checkpoint (t7_graphs) broken one way.
All of them are loaded in one forked child under an address-space cap and a time limit
(load_in_child, which test_fuzz_t7.py uses too); a handful also go through sample.py under
conftest.MEMORY_LIMIT_MB.
"""
from __future__ import annotations

import json
import math
import os
import signal
import struct
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MEMORY_LIMIT_MB, assert_user_error, limit_growth, run_script
from runner import Runs
from t7_graphs import array_part, char_rnn_checkpoint
from t7_writer import Raw, TensorView, write_t7
from util.torch7 import TableKey, TorchObject, load_char_rnn_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the address space's size in /proc")



# --- loading files in a child under limits ------------------------------------------------------

def load_in_child(paths: list[Path], seconds: int = 60) -> list[dict]:
    """load_char_rnn_checkpoint on each path in turn, in one forked child whose address space may
    grow by conftest.HEADROOM_MB and which is killed after `seconds`. For each path a dict: outcome ("ok",
    "ValueError", "mistyped", "warning" or the name of another exception), detail (the message,
    the field mistyped, or the traceback's end), seconds. Fails naming the path that killed the
    child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        _report_loads(paths, write_end, seconds)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as pipe:
        results = [json.loads(line) for line in pipe]
    _, status = os.waitpid(pid, 0)
    assert len(results) == len(paths), (f"the child ended with status {status} (signal {status & 0x7F}) "
                                        f"while loading {paths[len(results)]}")
    return results


def _report_loads(paths: list[Path], fd: int, seconds: int) -> None:
    status = 1
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # which ends the child
        signal.alarm(seconds)
        limit_growth()
        with os.fdopen(fd, "w", encoding="utf-8") as pipe:
            for path in paths:
                pipe.write(json.dumps(load_outcome(path)) + "\n")
                pipe.flush()  # what was loaded before a crash still reaches the parent
        status = 0
    finally:
        os._exit(status)


def load_outcome(path: Path) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning would be a second line on a script's stderr
        outcome, detail = _load(path)
    if caught:
        outcome, detail = "warning", str(caught[0].message)
    return {"path": str(path), "outcome": outcome, "detail": detail, "seconds": time.perf_counter() - start}


def _load(path: Path) -> tuple[str, str]:
    try:
        checkpoint = load_char_rnn_checkpoint(path)
    except ValueError as error:
        return "ValueError", str(error)
    except BaseException as error:  # anything else is a bug (MemoryError, RecursionError, ...)
        return type(error).__name__, "".join(traceback.format_exception(error)[-3:])
    problem = mistyped_field(checkpoint)
    return ("mistyped", problem) if problem else ("ok", "")


def _number(value: object) -> bool:
    return type(value) is float and math.isfinite(value)


def _count(value: object, low: int) -> bool:
    return type(value) is int and value >= low  # type, not isinstance: a bool is an int


def mistyped_field(c: dict) -> str:
    """The first field of a converted checkpoint whose type is not the one it should have, or ""."""
    checks = {
        "model_type": c["model_type"] in ("lstm", "gru", "rnn"),
        "rnn_size": _count(c["rnn_size"], 1), "num_layers": _count(c["num_layers"], 1),
        "dropout": _number(c["dropout"]), "iteration": _count(c["iteration"], 0), "epoch": _number(c["epoch"]),
        "val_loss": c["val_loss"] is None or type(c["val_loss"]) is float,
        "train_losses": type(c["train_losses"]) is list and all(type(v) is float for v in c["train_losses"]),
        "val_losses": type(c["val_losses"]) is list and all(
            type(pair) is list and len(pair) == 2 and _count(pair[0], 0) and type(pair[1]) is float
            for pair in c["val_losses"]),
        "tokens": type(c["tokens"]) is list and c["tokens"] != [] and all(
            type(t) is str and len(t) == 1 for t in c["tokens"]),
        "encoding": c["encoding"] == "bytes",
        "opt": type(c["opt"]) is dict and all(
            type(k) is str and type(v) in (str, int, float, bool) for k, v in c["opt"].items()),
        "state_dict": type(c["state_dict"]) is dict and all(
            type(k) is str and isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.is_contiguous()
            for k, t in c["state_dict"].items()),
    }
    return next((name for name, ok in checks.items() if not ok), "")


def assert_short_error(result: dict) -> None:
    """A ValueError whose message, the file's name aside, is short: no value from the file in full."""
    assert result["outcome"] == "ValueError", result
    assert len(result["detail"].replace(result["path"], "")) < 300, result["detail"][:1000]


# --- the hostile files ------------------------------------------------------------------------

TOKENS = ["\n", " ", "a", "b", "\xe9"]


def base() -> dict:
    return char_rnn_checkpoint("lstm", TOKENS, 4, 2, 0.5, seed=1)


def nodes(checkpoint: dict) -> list[TorchObject]:
    return checkpoint["protos"]["rnn"].attrs["forwardnodes"]


def node_of(checkpoint: dict, typename: str) -> TorchObject:
    """The first forward node whose module is a `typename`."""
    return next(n for n in nodes(checkpoint)
                if "module" in n.attrs["data"] and n.attrs["data"]["module"].typename == typename)


def named_linear(checkpoint: dict, name: str) -> TorchObject:
    return next(n for n in nodes(checkpoint) if n.attrs["data"]["annotations"].get("name") == name)


def add_child(parent: TorchObject, child: object) -> None:
    children = parent.attrs["children"]
    children[len(array_part(children)) + 1] = child


def nested_tables(depth: int, first_index: int = 1_000_000) -> Raw:
    """{{...{}...}}: `depth` tables, each the next one's only entry (key 1), written as bytes (the
    writer, being recursive, would not get that deep). Its object indices start at `first_index`,
    clear of the writer's."""
    levels = (struct.pack("<iiiid", 3, first_index + i, 1, 1, 1.0) for i in range(depth))
    return Raw(b"".join(levels) + struct.pack("<iii", 3, first_index + depth, 0))


def lua_string(text: str) -> bytes:
    return struct.pack("<i", len(text)) + text.encode("latin-1")


def torch_header(index: int, class_name: str) -> bytes:
    return struct.pack("<ii", 4, index) + lua_string("V 1") + lua_string(class_name)


def changed(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """The maker of a file: the base checkpoint after change(checkpoint)."""
    def make(path: Path) -> None:
        checkpoint = base()
        change(checkpoint)
        write_t7(path, checkpoint)
    return make


def written(obj: object) -> Callable[[Path], None]:
    """The maker of a file holding `obj`."""
    return lambda path: write_t7(path, obj)


def sparse_file(path: Path) -> None:
    """2 GiB of zeros that take no disk: more than load_in_child's headroom and conftest.SCRIPT_HEADROOM_MB."""
    with open(path, "wb") as handle:
        handle.truncate(2 << 30)


def set_opt(**values: object) -> Callable[[Path], None]:
    return changed(lambda checkpoint: checkpoint["opt"].update(values))


def set_fields(**values: object) -> Callable[[Path], None]:
    return changed(lambda checkpoint: checkpoint.update(values))


def set_module(typename: str, **fields: object) -> Callable[[Path], None]:
    return changed(lambda checkpoint: node_of(checkpoint, typename).attrs["data"]["module"].attrs.update(fields))


def link(parent: Callable[[dict], TorchObject], child: Callable[[dict], object]) -> Callable[[Path], None]:
    return changed(lambda checkpoint: add_child(parent(checkpoint), child(checkpoint)))


def output_dropout(checkpoint: dict) -> None:
    outputs = checkpoint["protos"]["rnn"].attrs["outnode"].attrs["data"]["mapindex"]
    outputs[1] = node_of(checkpoint, "nn.Dropout").attrs["data"]


def label(name: str, value: object) -> Callable[[Path], None]:
    return changed(lambda checkpoint: named_linear(checkpoint, name).attrs["data"]["annotations"].update(name=value))


STORAGE = np.arange(1000, dtype=np.float32)
# A tensor over another tensor (index 2 in [tensor, this]) where its storage should be.
TENSOR_OVER_A_TENSOR = Raw(torch_header(50, "torch.DoubleTensor") + struct.pack("<iqqq", 1, 4, 1, 3)
                           + struct.pack("<ii", 4, 2))

# name: (maker of the file, a fragment of the ValueError's message, or None where the file loads)
CASES: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "valid": (changed(lambda _: None), None),
    # the reader: every allocation bounded by the file's size
    "stride_zero_bomb": (written(TensorView(STORAGE[:1], (24_000, 24_000), (0, 0))),  # 2.3 GB
                         "tensors would hold more than the file's"),
    "stride_zero_weight": (set_module("nn.Linear", weight=TensorView(STORAGE[:1], (2**20, 2**20), (0, 0))),
                           "tensors would hold more than the file's"),
    "many_views_of_one_storage": (written([TensorView(STORAGE, (1000,), (1,)) for _ in range(200)]),
                                  "tensors would hold more than the file's"),
    "sizes_overflow": (written(TensorView(STORAGE, (2**62, 2**62, 2**62), (0, 0, 0))),
                       "tensors would hold more than the file's"),
    "forty_dimensions": (written(TensorView(STORAGE, (1,) * 40, (1,) * 40)), "bad tensor dimension count 40"),
    "negative_stride": (written(TensorView(STORAGE, (3,), (-1,), 2)), "bad tensor layout"),
    "size_zero": (written(TensorView(STORAGE, (0, 3), (3, 1))), "bad tensor layout"),
    "size_one_huge_stride": (set_fields(extra=TensorView(STORAGE, (1, 3), (2**62, 1))), None),
    "tensor_over_a_tensor": (written([np.ones((2, 3)), TENSOR_OVER_A_TENSOR]), "without a storage of that type"),
    "table_count_huge": (written(Raw(struct.pack("<iii", 3, 1, 2**31 - 1))), "bad table size"),
    "string_length_huge": (written(Raw(struct.pack("<ii", 2, 2**31 - 1))), "needs 2147483647 more bytes"),
    "storage_size_huge": (written(Raw(torch_header(1, "torch.FloatStorage") + struct.pack("<q", 2**62))),
                          "bad storage size"),
    "nested_100000": (written(nested_tables(100_000)), "nested too deeply"),
    "sparse_2gb": (sparse_file, "not enough memory"),
    # the graph
    "dropout_own_child": (link(lambda c: node_of(c, "nn.Dropout"), lambda c: node_of(c, "nn.Dropout")),
                          "has a cycle"),
    "dropout_two_inputs": (link(lambda c: c["protos"]["rnn"].attrs["innode"], lambda c: node_of(c, "nn.Dropout")),
                           "Dropout that has other than one input"),
    "child_not_a_node": (link(lambda c: node_of(c, "OneHot"), lambda _: 3.0), "children are not forward nodes"),
    "output_a_dropout": (changed(output_dropout), "outputs a Dropout"),
    "forward_nodes_not_nodes": (changed(lambda c: c["protos"]["rnn"].attrs.update(forwardnodes=[1.0])),
                                "has no forward nodes"),
    "weight_a_table": (set_module("nn.Linear", weight={}), "Linear weight of shape a table"),
    "label_a_tensor": (label("i2h_1", np.ones(3)), "has a Linear named a tensor where 'i2h_1' was expected"),
    # numbers, strings and tables where others belong
    "i_inf": (set_fields(i=math.inf), "i (the iteration) is inf"),
    "i_nan": (set_fields(i=math.nan), "i (the iteration) is nan"),
    "i_table": (set_fields(i={1: 2}), "i (the iteration) is a table"),
    "i_negative": (set_fields(i=-1), "not a whole number from 0"),
    "i_string": (set_fields(i="3"), "i (the iteration) is '3'"),
    "i_fraction": (set_fields(i=2.5), "not a whole number"),
    "epoch_nan": (set_fields(epoch=math.nan), "epoch is nan"),
    "epoch_string": (set_fields(epoch="0.75"), "epoch is '0.75'"),
    "val_loss_table": (set_fields(val_loss={}), "val_loss is a table"),
    "train_losses_tables": (set_fields(train_losses=[3.0, {}, 2.0]), "train_losses is not a list of numbers"),
    "train_losses_string": (set_fields(train_losses="3.0"), "train_losses is not a list of numbers"),
    "val_losses_string_key": (set_fields(val_losses={3: 2.4, "x": 1.0}), "val_losses is not a table"),
    "val_losses_string_value": (set_fields(val_losses={3: "2.4"}), "val_losses is not a table"),
    "val_losses_fraction_key": (set_fields(val_losses={1.5: 2.0}), "val_losses is not a table"),
    "val_losses_boolean_key": (set_fields(val_losses={True: 2.0}), "val_losses is not a table"),
    "val_losses_table_value": (set_fields(val_losses={3: {}}), "val_losses is not a table"),
    "rnn_size_string": (set_opt(rnn_size="4"), "option 'rnn_size' is '4'"),
    "rnn_size_table": (set_opt(rnn_size={}), "option 'rnn_size' is a table"),
    "rnn_size_huge": (set_opt(rnn_size=1e300), "option 'rnn_size' is 1e+300"),
    "rnn_size_zero": (set_opt(rnn_size=0), "option 'rnn_size' is 0.0"),
    "rnn_size_boolean": (set_opt(rnn_size=True), "option 'rnn_size' is true"),
    "rnn_size_missing": (changed(lambda c: c["opt"].pop("rnn_size")), "option 'rnn_size' is nil"),
    "rnn_size_nested_5000": (set_opt(rnn_size=nested_tables(5000)), "option 'rnn_size' is a table"),
    "rnn_size_nested_20000": (set_opt(rnn_size=nested_tables(20_000)), "nested too deeply"),
    "num_layers_table": (set_opt(num_layers={}), "option 'num_layers' is a table"),
    "num_layers_inf": (set_opt(num_layers=math.inf), "option 'num_layers' is inf"),
    "dropout_table": (set_opt(dropout={1: {}}), "option 'dropout' is a table"),
    "dropout_nan": (set_opt(dropout=math.nan), "option 'dropout' is nan"),
    "dropout_5": (set_opt(dropout=5), None),  # a range is for util.checkpoint.validate to check
    "batch_size_huge": (set_opt(batch_size=1e300), None),
    "model_table": (set_opt(model={"lstm": 1}), "unsupported char-rnn model type a table"),
    "model_long_string": (set_opt(model="x" * 100_000), "unsupported char-rnn model type 'xxx"),
    "opt_key_a_table": (changed(lambda c: c["opt"].update({TableKey({}): 1})), "opt has an option named by a table"),
    "opt_value_a_tensor": (set_opt(data_dir=np.ones(2)), "option 'data_dir' is a tensor"),
    "opt_value_an_object": (set_opt(data_dir=TorchObject("nn.Linear")), "option 'data_dir' is a 'nn.Linear' object"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: folder / f"{name}.t7" for name in CASES}
    for name, (make, _) in CASES.items():
        make(paths[name])
    return dict(zip(paths, load_in_child(list(paths.values())), strict=True))


@pytest.mark.parametrize("name", CASES)
def test_loader(outcomes: dict[str, dict], name: str) -> None:
    result, fragment = outcomes[name], CASES[name][1]
    if fragment is None:
        assert result["outcome"] == "ok", result
    else:
        assert_short_error(result)
        assert fragment in result["detail"], result["detail"][:1000]
    assert result["seconds"] < 5, result


def test_files_are_small(tmp_path: Path) -> None:
    # The point of the bombs: a few hundred bytes that would take gigabytes.
    CASES["stride_zero_bomb"][0](tmp_path / "bomb.t7")
    assert (tmp_path / "bomb.t7").stat().st_size < 400


# --- as a user runs them ----------------------------------------------------------------------

SCRIPT_CASES = ["stride_zero_bomb", "sparse_2gb", "nested_100000", "dropout_own_child", "i_inf"]


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    folder = tmp_path_factory.mktemp("hostile_scripts")
    with Runs(workers=2) as runs:
        for name in SCRIPT_CASES:
            CASES[name][0](folder / f"{name}.t7")
            runs.submit(name, run_script, "sample.py", str(folder / f"{name}.t7"), "-length", "5", "-gpuid", "-1",
                        cwd=folder, memory_mb=MEMORY_LIMIT_MB, timeout=60)
        yield runs


@pytest.mark.parametrize("name", SCRIPT_CASES)
def test_sample_py(script_runs: Runs, name: str) -> None:
    # run_script's timeout bounds the time: a run past it fails the test with TimeoutExpired
    fragment = CASES[name][1]
    assert fragment is not None
    assert_user_error(script_runs[name], fragment)
