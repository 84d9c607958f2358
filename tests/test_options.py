"""util/options.py: Torch7-style options, their typing, errors and help (docs/behaviour.md §2)."""

import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_user_error, run_script
from util.errors import UserError
from util.options import Option, lua_number, parse_options

import preprocess

TABLE = [
    Option("input", "", "text file", aliases=("input_txt",)),
    Option("rnn_size", 128, "hidden size"),
    Option("learning_rate", 2e-3, "RMSprop step"),
    Option("gpuid", 0, "GPU index"),
    Option("model", "lstm", "lstm, gru or rnn"),
    Option("dropout", 0.0, "dropout"),
]
NAMES = {n for o in TABLE for n in (o.name, *o.aliases)}


def parse(*argv, options=TABLE, positional=()):
    return parse_options(list(argv), "train.py", "Train a model.", options, positional)


# ---- spellings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-rnn_size", "256"], ["--rnn_size", "256"], ["-rnn_size=256"], ["--rnn_size=256"],
])
def test_single_double_dash_and_inline_value(argv):
    parsed = parse(*argv)
    assert parsed.values.rnn_size == 256 and type(parsed.values.rnn_size) is int
    assert parsed.given == {"rnn_size"}


def test_defaults_and_given():
    parsed = parse("-model", "gru")
    v = parsed.values
    assert (v.rnn_size, v.learning_rate, v.gpuid, v.model, v.input) == (128, 2e-3, 0, "gru", "")
    assert parsed.given == {"model"}


def test_alias_sets_main_name():
    parsed = parse("--input_txt", "a.txt")
    assert parsed.values.input == "a.txt" and parsed.given == {"input"}
    assert not hasattr(parsed.values, "input_txt")


def test_inline_value_keeps_later_equals_signs():
    assert parse("--input=a=b.txt").values.input == "a=b.txt"
    assert parse("-input=").values.input == ""


def test_last_occurrence_wins():
    assert parse("-rnn_size", "1", "--rnn_size", "7").values.rnn_size == 7


@pytest.mark.parametrize("argv, expected", [
    (["-gpuid", "-1"], -1),
    (["--gpuid", "-1"], -1),
    (["-gpuid=-1"], -1),
    (["-gpuid", "-2e0"], -2),
])
def test_negative_numbers(argv, expected):
    assert parse(*argv).values.gpuid == expected


def test_negative_float_and_string_value_starting_with_dash():
    v = parse("-learning_rate", "-0.5", "-input", "-weird-name.txt").values
    assert v.learning_rate == -0.5 and v.input == "-weird-name.txt"


# ---- typing --------------------------------------------------------------------------------------

def test_int_vs_float():
    v = parse("-learning_rate", "2e-3", "-dropout", "1", "-rnn_size", "1e2").values
    assert v.learning_rate == 0.002 and type(v.learning_rate) is float
    assert v.dropout == 1.0 and type(v.dropout) is float  # a float option stays float
    assert v.rnn_size == 100 and type(v.rnn_size) is int
    assert parse("-rnn_size", "256.0").values.rnn_size == 256


@pytest.mark.parametrize("value", ["2.5", "abc", "1e-3", "inf", "nan", "", "0x10", "1,5"])
def test_int_option_rejects_non_integers(value):
    with pytest.raises(UserError) as error:
        parse("-rnn_size", value)
    message = str(error.value)
    assert "-rnn_size" in message and "integer" in message and f"'{value}'" in message


@pytest.mark.parametrize("value", ["abc", "", "2e-3x", "--"])
def test_float_option_rejects_non_numbers(value):
    with pytest.raises(UserError) as error:
        parse("-learning_rate", value)
    assert "-learning_rate" in str(error.value) and "number" in str(error.value)


def test_string_option_takes_anything():
    assert parse("-model", "2.5").values.model == "2.5"


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["-bogus", "--bogus", "-bogus=3"])
def test_unknown_option_is_named(token):
    with pytest.raises(UserError, match=r"unknown option -bogus"):
        parse(token, "3")


@pytest.mark.parametrize("argv", [["-rnn_size"], ["--rnn_size"], ["-model", "gru", "-gpuid"]])
def test_missing_value_is_named(argv):
    with pytest.raises(UserError) as error:
        parse(*argv)
    name = argv[-1].lstrip("-")
    assert f"-{name}" in str(error.value) and "needs a value" in str(error.value)


def test_required_and_positional():
    options = [Option("input", "", "text", required=True), Option("length", 2000, "chars")]
    with pytest.raises(UserError, match="-input is required"):
        parse("-length", "5", options=options)
    pos = [("checkpoint", "a .pt file")]
    parsed = parse("cv/lm.pt", "-length", "5", "-input", "x", options=options, positional=pos)
    assert parsed.values.checkpoint == "cv/lm.pt" and parsed.values.length == 5
    with pytest.raises(UserError, match="missing argument <checkpoint>"):
        parse("-input", "x", options=options, positional=pos)
    with pytest.raises(UserError, match="unexpected argument 'extra'"):
        parse("a.pt", "extra", "-input", "x", options=options, positional=pos)


# ---- help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_in_process_exits_zero(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("-rnn_size", "5", flag, "-bogus")  # help wins even over later mistakes
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option, default in [("-rnn_size", "[128]"), ("-learning_rate", "[0.002]"), ("-gpuid", "[0]"),
                            ("-model", "[lstm]"), ("-dropout", "[0]"), ("-input_txt", "[]")]:
        line = next(line for line in out.splitlines() if option in line)
        assert default in line, line
    assert "128.0" not in out and "Usage: python train.py" in out


def help_line(output: str, option: Option) -> str:
    lines = [line for line in output.splitlines() if line.split(",")[0].split()[:1] == [f"-{option.name}"]]
    assert len(lines) == 1, (option.name, output)
    return lines[0]


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_preprocess_help_subprocess(flag, tmp_path):
    result = run_script("preprocess.py", flag, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []
    for option in preprocess.OPTIONS:
        line = help_line(result.stdout, option)
        for alias in option.aliases:
            assert f"-{alias}" in line
        if option.required:
            assert "(required)" in line
        else:
            shown = lua_number(option.default) if isinstance(option.default, (int, float)) else option.default
            assert f"[{shown}]" in line, line
    assert "[0.05]" in help_line(result.stdout, preprocess.OPTIONS[3])
    assert "[data/input.h5]" in result.stdout and "[utf-8]" in result.stdout


def test_preprocess_cli_errors_are_one_line(tmp_path):
    assert_user_error(run_script("preprocess.py", "-input", "x.txt", "-nope", "1", cwd=tmp_path), "-nope")
    assert_user_error(run_script("preprocess.py", "-input", cwd=tmp_path), "-input", "needs a value")
    assert_user_error(run_script("preprocess.py", "-input", "x", "-val_frac", "lots", cwd=tmp_path),
                      "-val_frac", "'lots'")
    assert_user_error(run_script("preprocess.py", "-input", "x", "-quiet", "0.5", cwd=tmp_path),
                      "unexpected argument '0.5'")
    assert_user_error(run_script("preprocess.py", cwd=tmp_path), "-input", "required")
    assert list(tmp_path.iterdir()) == []


# ---- lua_number ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (128.0, "128"), (128, "128"), (0.002, "0.002"), (2e-3, "0.002"), (1e-05, "1e-05"), (0.0, "0"),
    (-1.0, "-1"), (-1, "-1"), (0.95, "0.95"), (1.5, "1.5"), (1e15, "1e+15"), (123456789012.0, "123456789012"),
    (1 / 3, "0.33333333333333"), (float("inf"), "inf"), ("lstm", "lstm"),
])
def test_lua_number(value, text):
    assert lua_number(value) == text


# ---- properties ----------------------------------------------------------------------------------

INT_OPTION = Option("n", 0, "an int")
FLOAT_OPTION = Option("x", 0.5, "a float")


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2 ** 53), max_value=2 ** 53))
def test_int_round_trip(n):
    for argv in (["-n", lua_number(n)], [f"--n={lua_number(n)}"]):
        value = parse_options(argv, "t.py", "", [INT_OPTION]).values.n
        assert value == n and type(value) is int


def test_int_round_trip_beyond_double_precision():
    n = 2 ** 53 + 1
    assert parse_options(["-n", str(n)], "t.py", "", [INT_OPTION]).values.n == n


def lua_representable(x: float) -> float:
    """Lua prints 14 significant digits, so only such numbers can round-trip through print."""
    return float(f"{x:.14g}")


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False).map(lua_representable))
def test_float_round_trip(x):
    text = lua_number(x)
    assert not text.endswith(".0")
    value = parse_options(["-x", text], "t.py", "", [FLOAT_OPTION]).values.x
    assert value == x and type(value) is float


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10 ** 15) + 1, 10 ** 15 - 1).map(float))
def test_integral_floats_print_without_point(x):
    assert lua_number(x) == str(int(x))
    assert parse_options(["-n", lua_number(x)], "t.py", "", [INT_OPTION]).values.n == int(x)


@settings(max_examples=300, deadline=None)
@given(name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
       .filter(lambda n: n not in NAMES and n not in ("h", "help")),
       dashes=st.sampled_from(["-", "--"]), inline=st.booleans())
def test_unknown_names_rejected(name, dashes, inline):
    argv = [f"{dashes}{name}=1"] if inline else [f"{dashes}{name}", "1"]
    with pytest.raises(UserError) as error:
        parse(*argv)
    assert name in str(error.value)
    # numeric-looking tokens such as '-inf' are values, so they are named as stray arguments
    assert str(error.value).startswith(("unknown option", "unexpected argument"))
