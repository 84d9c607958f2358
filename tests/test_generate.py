"""The generator and its Python API (util/generate.py, util/charmodel.py; docs/behaviour.md §2.11):
filters, streams, stop texts, beam search against exhaustive search, byte-level models, errors."""
import itertools
import math
from pathlib import Path
from unittest import mock

import pytest
import torch

from model.char_rnn import Stepper
from test_sample import (  # one_thread: test_sample's module-wide fixture, which this module uses too
    ASCII_TOKENS,
    build_model,
    byte_checkpoint,
    checkpoint_dict,
    one_thread,  # noqa: F401
    trained_ascii_checkpoint,
)
from util import generate
from util.charmodel import CharModel, held_back
from util.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from util.errors import UserError
from util.generate import Sampling, beam_search, filtered_probabilities, sample_steps, stream_generators

PRIME = "Speak"


@pytest.fixture(scope="module")
def ascii_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("generate") / "ascii.pt"
    save_checkpoint(str(path), trained_ascii_checkpoint())
    return path


@pytest.fixture(scope="module")
def model(ascii_path) -> CharModel:
    return CharModel.load(str(ascii_path))


def sample_lua_reference(path: Path, prime: str, length: int, temperature: float, seed: int) -> str:
    """sample.py's loop before the generator issue: torch's generator seeded before the model is
    built, CharRNN.step, softmax(logits / T), torch.multinomial."""
    torch.manual_seed(seed)
    checkpoint = load_checkpoint(str(path))
    network = model_from_checkpoint(checkpoint, str(path)).eval()
    tokens = checkpoint["vocab"]["tokens"]
    out = []
    with torch.inference_mode():
        state = network.zero_state(1)
        logits = torch.zeros(1, len(tokens))
        for character in prime:
            logits, state = network.step(torch.tensor([tokens.index(character)]), state)
        for _ in range(length):
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
            out.append(tokens[int(token.item())])
            logits, state = network.step(token, state)
    return "".join(out)


# ---- the text of before, byte for byte ----------------------------------------------------------

def exponential_draws_concatenate() -> bool:
    """Whether this torch's CPU exponential_ gives, for a block of steps, the numbers that drawing each
    step alone gives (torch 2.11 and 2.13 do; 2.4 does not, its MKL path seeds each call afresh): the
    generator's noise blocks then match torch.multinomial's draws one step at a time."""
    generator = torch.Generator().manual_seed(0)
    block = torch.empty(2, 65).exponential_(generator=generator)
    generator.manual_seed(0)
    return torch.equal(block, torch.stack([torch.empty(65).exponential_(generator=generator) for _ in range(2)]))


needs_concatenating_draws = pytest.mark.skipif(
    not exponential_draws_concatenate(),
    reason=f"torch {torch.__version__}'s CPU exponential_ draws a block unlike one step at a time: a seed's "
           "text differs from torch.multinomial's there (docs/behaviour.md §2.11)")


@needs_concatenating_draws
@pytest.mark.parametrize("prime, temperature, seed", [("", 1.0, 123), (PRIME, 1.0, 5), (PRIME, 0.7, 99)])
def test_one_sample_is_the_text_sample_py_always_wrote_for_the_seed(model, ascii_path, prime, temperature, seed):
    expected = sample_lua_reference(ascii_path, prime, 400, temperature, seed)
    assert model.generate(prime, 400, temperature=temperature, seed=seed) == [expected]


def test_top_k_of_the_whole_vocabulary_and_top_p_1_change_nothing(model):
    plain = model.generate(PRIME, 300, temperature=0.9, seed=3)
    assert model.generate(PRIME, 300, temperature=0.9, seed=3, top_k=len(ASCII_TOKENS)) == plain
    assert model.generate(PRIME, 300, temperature=0.9, seed=3, top_k=10 * len(ASCII_TOKENS)) == plain
    assert model.generate(PRIME, 300, temperature=0.9, seed=3, top_p=1.0) == plain
    assert model.generate(PRIME, 300, temperature=0.9, seed=3, top_k=3) != plain


# ---- the filters ---------------------------------------------------------------------------------

def test_top_k_keeps_the_k_most_likely_characters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    p = filtered_probabilities(logits, Sampling(top_k=2))
    assert (p[0] > 0).tolist() == [False, True, False, True, False]
    assert p[0, 1] / p[0, 3] == pytest.approx(math.e)  # the kept ones keep their ratio


def test_top_p_keeps_the_fewest_characters_that_reach_p():
    probabilities = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probabilities.log()
    kept = {p: (filtered_probabilities(logits, Sampling(top_p=p))[0] > 0).tolist()
            for p in (0.4, 0.5, 0.79, 0.81, 0.96)}
    assert kept[0.4] == [False, True, False, False]
    assert kept[0.5] == [False, True, False, False]  # 0.5 reaches 0.5
    assert kept[0.79] == [False, True, True, False]
    assert kept[0.81] == [False, True, True, True]
    assert kept[0.96] == [True, True, True, True]


def test_temperature_applies_before_the_filters():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = filtered_probabilities(logits, Sampling(temperature=0.1, top_p=0.9))
    warm = filtered_probabilities(logits, Sampling(temperature=10.0, top_p=0.9))
    assert (cold[0] > 0).tolist() == [True, False, False]
    assert (warm[0] > 0).tolist() == [True, True, True]


def test_draws_follow_the_filtered_distribution(model):
    """Many first characters after the primetext, drawn as 2,000 streams at once: their frequencies
    match the filtered probabilities."""
    request = model.check(PRIME, 1, temperature=1.3, top_k=6, top_p=0.9, num_samples=2000, seed=11)
    counts = torch.bincount(torch.tensor([ids[0] for ids in model.generate_ids(request)]),
                            minlength=len(ASCII_TOKENS)).double()
    network = model.model
    with torch.inference_mode():
        prime = torch.tensor([[ASCII_TOKENS.index(c) for c in PRIME]])
        logits, _ = network(prime, network.zero_state(1))
        p = filtered_probabilities(logits[:, -1], Sampling(1.3, 6, 0.9)).double()[0]
    p = p / p.sum()
    assert (counts[p == 0] == 0).all()
    assert (counts / 2000 - p).abs().max() < 0.04


# ---- many samples, stop texts ----------------------------------------------------------------------

def test_num_samples_gives_different_reproducible_streams(model):
    samples = model.generate(PRIME, 200, num_samples=4, seed=8)
    assert len(samples) == 4 and all(len(s) == 200 for s in samples)
    assert len(set(samples)) == 4
    assert model.generate(PRIME, 200, num_samples=4, seed=8) == samples
    assert model.generate(PRIME, 200, num_samples=4, seed=9) != samples


def draw_sizes(streams: int, length: int, vocab: int = 2583) -> list[list[int]]:
    """How many numbers each of `streams` generators is asked for at each call, in order, while
    sample_steps makes `length` steps of a model with `vocab` characters."""
    network = build_model("lstm", [chr(0x4E00 + i) for i in range(vocab)], 8, 1).eval()
    generators = stream_generators(list(range(streams)), torch.device("cpu"), 0)
    calls: dict[int, list[int]] = {id(g): [] for g in generators}
    real = torch.Tensor.exponential_

    def counted(tensor: torch.Tensor, *args, generator: torch.Generator, **options) -> torch.Tensor:
        calls[id(generator)].append(tensor.numel())
        return real(tensor, *args, generator=generator, **options)

    with mock.patch.object(torch.Tensor, "exponential_", counted):
        list(sample_steps(network, [1], length, Sampling(0.8), generators))
    return [calls[id(g)] for g in generators]


def test_a_stream_asks_its_generator_for_the_same_draws_alone_and_among_64():
    # CUDA's numbers for a call depend on the sizes of the calls before it: alike calls, alike text
    alone, = draw_sizes(1, 60)
    assert len(alone) > 1 and set(alone) == {alone[0]} and alone[0] % 2583 == 0  # whole steps, one size
    assert draw_sizes(64, 60) == [alone] * 64
    longer, = draw_sizes(1, 130)
    assert longer[:len(alone)] == alone
    shorter, = draw_sizes(1, 3)
    assert shorter == [3 * 2583]


def test_stop_ends_each_sample_before_the_stop_text(model):
    full = model.generate(PRIME, 400, num_samples=6, seed=2)
    stopped = model.generate(PRIME, 400, num_samples=6, seed=2, stop="\n")
    for whole, cut in zip(full, stopped, strict=True):
        assert cut == whole.split("\n")[0]
    assert any(len(cut) < 400 for cut in stopped)


def test_a_stop_text_of_several_characters(model):
    whole = model.generate(PRIME, 600, seed=4)[0]
    stop = next(whole[k:k + 2] for k in range(len(whole) - 1) if whole[k:k + 2] in ("e ", ":\n", " t", "s "))
    assert model.generate(PRIME, 600, seed=4, stop=stop) == [whole[:whole.index(stop)]]


def test_stream_holds_back_only_what_may_begin_the_stop_text(model):
    whole = model.generate(PRIME, 300, seed=6)[0]
    stop = whole[100:103]
    pieces = list(model.stream(PRIME, 300, seed=6, stop=stop))
    assert "".join(pieces) == whole[:whole.index(stop)]
    assert len(pieces) > 20  # it streamed; it did not wait for the end
    assert "".join(model.stream(PRIME, 300, seed=6)) == whole


def test_held_back_counts_the_longest_start_of_the_stop_text():
    assert held_back([1, 2, 3], []) == 0
    assert held_back([1, 2, 3], [3, 4]) == 1
    assert held_back([1, 2, 3], [2, 3, 4]) == 2
    assert held_back([1, 2, 3], [9, 9]) == 0
    assert held_back([3, 3], [3, 3, 3]) == 2


def steps_of_a_stream_closed_after(model, pieces: int, monkeypatch) -> int:
    """How many model steps a stream of 100,000 characters has made when it is closed after `pieces` pieces."""
    steps = []
    real_step = Stepper.step
    monkeypatch.setattr(Stepper, "step", lambda self, *a: steps.append(1) or real_step(self, *a))
    stream = model.stream("", 100000, seed=1)
    for _ in itertools.islice(stream, pieces):
        pass
    stream.close()
    return len(steps)


def test_closing_a_stream_stops_the_generation(model, monkeypatch):
    assert steps_of_a_stream_closed_after(model, 10, monkeypatch) < 20


def test_characters_read_back_a_window_at_a_time_are_the_ones_read_one_at_a_time(model, monkeypatch):
    """On a GPU generation reads its characters back READBACK_WINDOW steps at once (util.generate);
    forced here on the CPU with a window of 7, which divides none of the lengths: the same texts,
    stop texts and streams; a closed stream has computed at most a window more."""
    whole = model.generate(PRIME, 300, seed=6)[0]
    stop = whole[100:103]

    def texts():
        return (model.generate(PRIME, 203, num_samples=3, seed=5),
                model.generate(PRIME, 400, num_samples=3, seed=2, stop="\n"),
                list(model.stream(PRIME, 300, seed=6, stop=stop)),
                model.generate(PRIME, 50, temperature=0.01, seed=3))

    one_at_a_time = texts()
    generators = stream_generators([3, 4], torch.device("cpu"), 0)
    single = list(sample_steps(model.model, [1, 2], 50, Sampling(0.8), generators, window=1))
    monkeypatch.setattr(generate, "readback_window", lambda device: 7)
    assert texts() == one_at_a_time
    generators = stream_generators([3, 4], torch.device("cpu"), 0)
    assert list(sample_steps(model.model, [1, 2], 50, Sampling(0.8), generators)) == single
    assert 10 <= steps_of_a_stream_closed_after(model, 10, monkeypatch) < 10 + 7


class CountedCapture:
    """util.training.cuda_graph's stand-in on the CPU: the body is not run at capture (as CUDA records
    it without running it) and its replay runs it; counts the captures."""

    def __init__(self, refusal: str = ""):
        self.captures, self.refusal = 0, refusal

    def __call__(self, body):
        self.captures += 1
        if self.refusal:
            raise RuntimeError(self.refusal)
        return body


def graphs_forced_on_the_cpu(monkeypatch, capture: CountedCapture) -> None:
    """Sampling graphed wherever asked (as on CUDA) with a window of 7, which divides none of the lengths."""
    monkeypatch.setattr(generate, "readback_window", lambda device: 7)
    monkeypatch.setattr(generate, "sampling_graphed", lambda requested, device, length, window: requested)
    monkeypatch.setattr(generate, "cuda_graph", capture)


def graph_texts(model: CharModel) -> tuple:
    """Generations of every kind that sample_steps runs: streams, filters, argmax, stop texts, a stream."""
    stop = model.generate(PRIME, 300, seed=6)[0][100:103]
    return (model.generate(PRIME, 203, num_samples=3, seed=5),
            model.generate(PRIME, 200, num_samples=2, seed=2, temperature=0.7, top_k=5, top_p=0.9),
            model.generate(PRIME, 400, num_samples=3, seed=2, stop="\n"),
            list(model.stream(PRIME, 300, seed=6, stop=stop)),
            model.generate(PRIME, 50, sample=False),
            model.generate("", 1, seed=3))


def test_windows_replayed_as_cuda_graphs_give_the_characters_of_eager_steps(model, monkeypatch):
    """On CUDA each window of sampling steps is replayed as one captured graph (SamplingGraph): the
    same texts as eager steps, one capture per generation (none with cuda_graphs off)."""
    monkeypatch.setattr(generate, "readback_window", lambda device: 7)
    eager = graph_texts(model)
    capture = CountedCapture()
    graphs_forced_on_the_cpu(monkeypatch, capture)
    assert graph_texts(model) == eager
    assert capture.captures == 7
    monkeypatch.setattr(model, "cuda_graphs", False)
    assert graph_texts(model) == eager
    assert capture.captures == 7


def test_a_sampling_graph_that_cannot_be_captured_gives_a_notice_and_the_same_text(model, monkeypatch, capsys):
    monkeypatch.setattr(generate, "readback_window", lambda device: 7)
    eager = model.generate(PRIME, 100, num_samples=2, seed=4)
    graphs_forced_on_the_cpu(monkeypatch, CountedCapture("CUDA error: operation not permitted when stream is "
                                                         "capturing\nmore"))
    assert model.generate(PRIME, 100, num_samples=2, seed=4) == eager
    assert capsys.readouterr().err == ("notice: sampling could not be captured as a CUDA graph (CUDA error: "
                                       "operation not permitted when stream is capturing); it goes on without "
                                       "one (-cuda_graphs 0 asks for that)\n")


def test_sampling_is_graphed_only_on_cuda_when_asked_and_for_more_than_two_windows():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert generate.sampling_graphed(True, cuda, 33, 16)
    assert not generate.sampling_graphed(True, cuda, 32, 16)
    assert not generate.sampling_graphed(False, cuda, 2000, 16)
    assert not generate.sampling_graphed(True, cpu, 2000, 1)
    assert not generate.sampling_graphed(True, torch.device("mps"), 2000, 16)


# ---- beam search -------------------------------------------------------------------------------------

def exhaustive_best(network, prime: list[int], length: int, stop: list[int]) -> tuple[list[int], float]:
    """Every continuation of `length` ids (cut at the stop text), scored as beam_search scores them:
    log-probability per character. The best one and its score."""
    best, best_score = [], -math.inf
    seen = set()
    for candidate in itertools.product(range(network.vocab_size), repeat=length):
        ids = list(candidate)
        for end in range(len(stop), length + 1):
            if stop and ids[end - len(stop):end] == stop:
                ids = ids[:end]
                break
        if tuple(ids) in seen:
            continue
        seen.add(tuple(ids))
        with torch.no_grad():
            x = torch.tensor([prime + ids])
            logits, _ = network(x, network.zero_state(1))
            log_p = torch.log_softmax(logits[0].double(), dim=-1)
            start = len(prime) - 1
            score = sum(log_p[start + k, t].item() for k, t in enumerate(ids)) / len(ids)
        if score > best_score:
            best, best_score = ids, score
    return best, best_score


@pytest.mark.parametrize("stop", [[], [1]])
def test_a_wide_beam_finds_the_most_probable_continuation(stop):
    torch.manual_seed(0)
    network = build_model("lstm", ["a", "b", "c"], 8, 1)
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(20)  # peaked, varied distributions
    network.eval()
    prime, length = [0, 2], 5
    expected, _ = exhaustive_best(network, prime, length, stop)
    assert beam_search(network, prime, length, 3 ** length, stop) == [expected]
    greedy = beam_search(network, prime, length, 1, stop)[0]
    assert len(greedy) <= length


def test_beam_of_one_is_the_argmax_text(model):
    assert model.generate(PRIME, 120, sample=False, beam_size=1) == model.generate(PRIME, 120, sample=False)


def test_beam_search_returns_the_best_num_samples_in_order(model):
    best = model.generate(PRIME, 60, sample=False, beam_size=8, num_samples=3)
    assert len(best) == 3 and len(set(best)) == 3
    assert best[0] == model.generate(PRIME, 60, sample=False, beam_size=8)[0]
    network = model.model
    scores = []
    for text in best:
        ids = [ASCII_TOKENS.index(c) for c in PRIME + text]
        with torch.no_grad():
            logits, _ = network(torch.tensor([ids[:-1]]), network.zero_state(1))
            log_p = torch.log_softmax(logits[0].double(), dim=-1)
        scores.append(sum(log_p[k, ids[k + 1]].item() for k in range(len(PRIME) - 1, len(ids) - 1)))
    assert scores == sorted(scores, reverse=True)


# ---- byte-level models and errors -------------------------------------------------------------------

def test_a_byte_level_model_gives_text_and_whole_characters_in_a_stream(tmp_path):
    path = tmp_path / "bytes.pt"
    save_checkpoint(str(path), byte_checkpoint())
    model = CharModel.load(str(path))
    text = model.generate("é", 200, seed=1)[0]
    assert isinstance(text, str) and len(text.encode("utf-8", errors="surrogatepass")) > 0
    pieces = list(model.stream("é", 200, seed=1))
    assert "".join(pieces) == text


def test_a_chinese_model_generates_from_a_chinese_prime(tmp_path):
    tokens = sorted(set("分开不懂爱你的我\n"))
    path = tmp_path / "cjk.pt"
    save_checkpoint(str(path), checkpoint_dict(build_model("gru", tokens, 16, 1), tokens))
    model = CharModel.load(str(path))
    samples = model.generate("分开", 30, num_samples=2, seed=1)
    assert all(len(s) == 30 and set(s) <= set(tokens) for s in samples)


@pytest.mark.parametrize("settings, fragment", [
    ({"top_k": -1}, "top_k must be 0 (no filter) or more, not -1"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], not 0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], not 1.5"),
    ({"num_samples": 0}, "num_samples must be 1 or more, not 0"),
    ({"temperature": 0.0}, "temperature must be greater than 0"),
    ({"beam_size": 3}, "beam_size searches for the most probable text"),
    ({"beam_size": 2, "sample": False, "num_samples": 3}, "more than a beam of 2"),
    ({"stop": "\u00e9"}, "stop text has characters that are not in the model's vocabulary"),
])
def test_bad_settings_are_one_line_errors(model, settings, fragment):
    with pytest.raises(UserError) as error:
        model.generate(PRIME, 10, **settings)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_prime_with_unknown_characters_names_them(model):
    with pytest.raises(UserError) as error:
        model.generate("Qx", 10)
    assert "'Q'" in str(error.value) and "'x'" in str(error.value)


def test_a_stream_checks_its_settings_when_it_is_asked_for_before_any_text(model):
    with pytest.raises(UserError):
        model.stream("Qx", 10)
    with pytest.raises(UserError):
        model.stream(PRIME, 10, top_p=2.0)


def test_neighbouring_seeds_share_no_sample(model):
    first = model.generate(PRIME, 150, num_samples=3, seed=1)
    second = model.generate(PRIME, 150, num_samples=3, seed=2)
    assert not set(first) & set(second)
