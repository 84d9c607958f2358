"""Torch7-style command-line options, shared by every script.

`-rnn_size 256` and `--rnn_size 256` (or `--rnn_size=256`) both work. The token after an option
is always its value, so negative numbers need no quoting (`-gpuid -1`). Each option is typed by
its default unless a type is given; numbers print like Lua does (`128`, `0.002`).
"""
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from util.errors import UserError


def lua_number(value: object) -> str:
    """Format a number as Lua's print would: integral floats without `.0`; anything else as str()."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.14g}"
    return str(value)


def shown(value: object, limit: int = 40) -> str:
    """A value read from a file, for a message, in a bounded length whatever it is: numbers as Python
    writes them (3.0 is not 3 here), text quoted and cut at `limit` characters, anything else by its
    type (a full repr of an untrusted value may be huge, or nested too deep to print)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):  # str() refuses ints of more than 4,300 digits
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    value_type: type | None = None  # None: the type of the default
    aliases: tuple[str, ...] = ()
    required: bool = False

    @property
    def kind(self) -> type:
        return self.value_type or type(self.default)


@dataclass
class Parsed:
    values: SimpleNamespace
    given: set[str] = field(default_factory=set)  # option names set on the command line


def _convert(option: Option, text: str) -> Any:
    if option.kind is str:
        return text
    if option.kind is bool:
        if text not in ("0", "1"):
            raise UserError(f"option -{option.name} is a flag: give it alone, or with 0 or 1, not '{text}'")
        return int(text)
    if option.kind is int:
        try:
            return int(text)  # exact, even beyond a double's 53 bits
        except ValueError:
            pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if option.kind is int:
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"option -{option.name} expects an integer, got '{text}'")
        return int(number)
    if math.isnan(number) and text.strip().lower() != "nan":
        raise UserError(f"option -{option.name} expects a number, got '{text}'")
    return number


KIND_RULES = {str: "a text", bool: "0 or 1", int: "a 64-bit integer", float: "a number"}


def of_kind(option: Option, value: object) -> bool:
    """Whether `value` is one parse_options could give the option: a text for a text option, 0 or 1
    for a flag, a 64-bit integer for an integer option, a number (a float, or such an integer) for a
    number option."""
    if option.kind is str:
        return isinstance(value, str)
    if type(value) is float:
        return option.kind is float
    if type(value) is not int and type(value) is not bool:
        return False
    if option.kind is bool:
        return value in (0, 1)
    return type(value) is int and -(2 ** 63) <= value < 2 ** 64


def recorded_values(options: Sequence[Option], recorded: dict, source: str) -> dict[str, Any]:
    """The values a file recorded for these options (a checkpoint's opt), each checked with of_kind:
    a UserError naming `source` and the first option whose value is not of its kind. Names that are
    not among the options are left out."""
    values = {}
    for option in options:
        if option.name in recorded:
            value = recorded[option.name]
            if not of_kind(option, value):
                raise UserError(f"{source}: its saved option -{option.name} must be {KIND_RULES[option.kind]}, "
                                f"not {shown(value)}")
            values[option.name] = value
    return values


def format_help(script: str, description: str, options: Sequence[Option], positional: Sequence[tuple[str, str]]) -> str:
    usage = " ".join([f"python {script}", *(f"<{name}>" for name, _ in positional), "[options]"])
    lines = [description, "", f"Usage: {usage}", ""]
    for name, text in positional:
        lines.append(f"  {name:<28} {text}")
    lines.append("Options:")
    for option in options:
        names = ", ".join(f"-{n}" for n in (option.name, *option.aliases))
        default = "(required)" if option.required else (
            f"[{option.default}]" if option.kind is str else f"[{lua_number(option.default)}]")
        lines.append(f"  {names:<28} {option.help} {default}")
    return "\n".join(lines)


def parse_options(argv: Sequence[str], script: str, description: str, options: Sequence[Option],
                  positional: Sequence[tuple[str, str]] = ()) -> Parsed:
    """Parse argv; print help and exit 0 on -h/-help/--help; raise UserError on anything wrong."""
    by_name = {n: o for o in options for n in (o.name, *o.aliases)}
    values = {o.name: o.default for o in options}
    given: set[str] = set()
    positional_values: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token in ("-h", "-help", "--help"):
            print(format_help(script, description, options, positional))
            sys.exit(0)
        if not token.startswith("-") or token in ("-", "--") or _looks_numeric(token):
            positional_values.append(token)
            continue
        name, has_inline, inline = token.lstrip("-").partition("=")
        option = by_name.get(name)
        if option is None:
            raise UserError(f"unknown option -{name} (see -help)")
        if has_inline:
            text = inline
        elif option.kind is bool:  # a flag: `-quiet` alone means 1, `-quiet 0` still works
            takes_value = i < len(argv) and argv[i] in ("0", "1")
            text = argv[i] if takes_value else "1"
            i += takes_value
        elif i < len(argv):
            text = argv[i]
            i += 1
        else:
            raise UserError(f"option -{option.name} needs a value")
        values[option.name] = _convert(option, text)
        given.add(option.name)
    if len(positional_values) > len(positional):
        raise UserError(f"unexpected argument '{positional_values[len(positional)]}' (see -help)")
    if len(positional_values) < len(positional):
        raise UserError(f"missing argument <{positional[len(positional_values)][0]}> (see -help)")
    for (name, _), value in zip(positional, positional_values, strict=True):
        values[name] = value
    for option in options:
        if option.required and option.name not in given:
            raise UserError(f"option -{option.name} is required (see -help)")
    return Parsed(SimpleNamespace(**values), given)


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
