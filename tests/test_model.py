"""model/: parameter counts, initialisation, the cell equations of docs/behaviour.md §3, and the fast paths
(fused kernels, gathers) against the plain per-step graph `CharRNN.forward_steps`."""

import pytest
import torch
import torch.nn.functional as F

import conftest  # noqa: F401  (puts the repository on sys.path)
import model.char_rnn as char_rnn
from model import CharRNN

CELLS = ("lstm", "gru", "rnn")
RTOL, ATOL = 1e-5, 1e-6
# Gradients are sums over batch and time that reach a few hundred here; float32 sums taken in
# another order differ by a few float32 epsilons of that size (float64 check: <= 4e-7 of it).
GRAD_ATOL = 1e-6  # times the largest gradient of the tensor


def close(actual, expected, what="", rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}" if what else m)


def make_model(cell, vocab_size, rnn_size, num_layers, dropout=0.0, seed=0, scale=0.5):
    """A model with weights uniform in [-scale, scale]: large enough that every nonlinearity and
    every gate matters (char-rnn's ±0.08 leaves the gates near 0.5)."""
    torch.manual_seed(seed)
    model = CharRNN(cell, vocab_size, rnn_size, num_layers, dropout)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-scale, scale)
    return model


def random_state(model, batch_size, seed=1):
    generator = torch.Generator().manual_seed(seed)
    parts = len(model.layers[0].state_names)
    # h in (-1, 1); an LSTM cell state may be larger
    return tuple((torch.rand(model.num_layers, batch_size, model.rnn_size, generator=generator) * 2 - 1) * (1 + 2 * k)
                 for k in range(parts))


def tokens(vocab_size, batch_size, length, seed=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (batch_size, length), generator=generator)
    x[0, 0], x[-1, -1] = 0, vocab_size - 1  # the first and the last column of the one-hot
    return x


# ---- sizes and initialisation --------------------------------------------------------------------

@pytest.mark.parametrize("cell, expected", [("lstm", 240_321), ("gru", 182_337), ("rnn", 66_369)])
def test_parameter_count_matches_char_rnn(cell, expected):
    model = CharRNN(cell, 65, 128, 2)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert char_rnn.parameter_count(cell, 65, 128, 2) == expected  # what train.py's memory check counts


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_count_is_the_built_models_without_building_it(cell):
    for layers in (1, 3, 7):
        built = sum(p.numel() for p in CharRNN(cell, 11, 6, layers).parameters())
        assert char_rnn.parameter_count(cell, 11, 6, layers) == built
    assert char_rnn.parameter_count(cell, 65, 128, 10 ** 12) > 10 ** 16  # counted, not built
    with pytest.raises(OverflowError):
        char_rnn.parameter_count(cell, 65, 2 ** 62, 2)


@pytest.mark.parametrize("cell", CELLS)
def test_initialisation_uniform_and_lstm_forget_bias(cell):
    torch.manual_seed(0)
    H, layers = 32, 3
    model = CharRNN(cell, 20, H, layers)
    with torch.no_grad():  # poison: initialize() must overwrite every parameter
        for p in model.parameters():
            p.fill_(7.0)
    model.initialize()
    for name, p in model.named_parameters():
        values = p.detach()
        if cell == "lstm" and name.endswith("i2h.bias"):
            forget = values[H:2 * H]
            assert torch.equal(forget, torch.ones(H)), name
            values = torch.cat([values[:H], values[2 * H:]])
        assert values.min() >= -0.08 and values.max() <= 0.08, name
        assert values.abs().max() > 0.04, name  # drawn, not zeros
        if values.numel() >= 64:
            assert values.min() < -0.06 and values.max() > 0.06, name  # spread over the whole range
            assert abs(values.mean().item()) < 0.02, name
    if cell == "lstm":
        for layer in model.layers:
            # only the input-to-hidden forget bias is 1, the other gates' biases and h2h's are not
            assert (layer.i2h.bias[:H].abs() <= 0.08).all() and (layer.i2h.bias[2 * H:].abs() <= 0.08).all()
            assert (layer.h2h.bias.abs() <= 0.08).all()
    # uniform: a histogram of all weights is flat
    weights = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("weight")])
    counts = torch.histc(weights, bins=8, min=-0.08, max=0.08)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


# ---- one step against the equations of docs/behaviour.md §3 ----------------------------------------------------

def hand_step(model, token_ids, state):
    """One time step of the model written out from docs/behaviour.md §3, in float64, from its
    state_dict: the weights as checkpoints hold them, LSTM gates in char-rnn's order i, f, o, g."""
    weights = {name: value.double() for name, value in model.state_dict().items()}

    def linear(name, x):
        return x @ weights[name + ".weight"].t() + weights[name + ".bias"]

    H = model.rnn_size
    x = F.one_hot(token_ids, model.vocab_size).double()
    state = [part.double() for part in state]
    new_state = [[] for _ in state]
    for n in range(model.num_layers):
        layer = f"layers.{n}."
        h = state[0][n]
        if model.model_type == "lstm":
            c = state[1][n]
            a = linear(layer + "i2h", x) + linear(layer + "h2h", h)
            i = torch.sigmoid(a[:, 0:H])
            f = torch.sigmoid(a[:, H:2 * H])
            o = torch.sigmoid(a[:, 2 * H:3 * H])
            g = torch.tanh(a[:, 3 * H:4 * H])
            c_new = f * c + i * g
            h_new = o * torch.tanh(c_new)
            new_state[1].append(c_new)
        elif model.model_type == "gru":
            ax = linear(layer + "i2h", x)  # rows z, r, candidate
            ah = linear(layer + "h2h", h)  # rows z, r
            z = torch.sigmoid(ax[:, 0:H] + ah[:, 0:H])
            r = torch.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
            candidate = torch.tanh(ax[:, 2 * H:3 * H] + linear(layer + "h2h_candidate", r * h))
            h_new = z * candidate + (1 - z) * h
        else:
            h_new = torch.tanh(linear(layer + "i2h", x) + linear(layer + "h2h", h))
        new_state[0].append(h_new)
        x = h_new
    log_probs = torch.log_softmax(linear("decoder", x), dim=1)
    return log_probs, tuple(torch.stack(parts) for parts in new_state)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_one_step_equals_hand_computation(cell, num_layers):
    model = make_model(cell, 7, 5, num_layers, dropout=0.5).eval()
    state = random_state(model, 4)
    x = torch.tensor([0, 3, 6, 3])
    expected_logp, expected_state = hand_step(model, x, state)
    with torch.no_grad():
        for name, run in [("forward", lambda: model(x[:, None], state)),
                          ("forward_steps", lambda: model.forward_steps(x[:, None], state)),
                          ("step", lambda: model.step(x, state))]:
            logits, new_state = run()
            logp = torch.log_softmax(logits.reshape(4, 7), dim=1)
            close(logp.double(), expected_logp, name)
            assert len(new_state) == len(expected_state)
            for got, want in zip(new_state, expected_state, strict=True):
                close(got.double(), want, name)
    # the hand computation is sensitive: a state ignored or a gate order swapped would show
    assert (expected_state[0][0] - state[0][0]).abs().max() > 0.05


def test_hand_computation_detects_swapped_lstm_gates():
    """Guard for the test above: the same LSTM with its o and g rows swapped gives other numbers."""
    model = make_model("lstm", 7, 5, 1).eval()
    state = random_state(model, 4)
    x = torch.tensor([0, 3, 6, 3])
    expected_logp, _ = hand_step(model, x, state)
    H = 5
    with torch.no_grad():
        for linear_layer in (model.layers[0].i2h, model.layers[0].h2h):
            for p in (linear_layer.weight, linear_layer.bias):
                p.copy_(torch.cat([p[:2 * H], p[3 * H:], p[2 * H:3 * H]]))
        logits, _ = model(x[:, None], state)
    assert not torch.allclose(torch.log_softmax(logits[:, 0], 1).double(), expected_logp, atol=1e-3)


# ---- fast paths against the plain per-step graph -----------------------------------------------

def vocab_size(which: str) -> int:
    """A 'small' vocabulary, whose one-hot goes into the fused kernel, or the smallest 'large' one,
    just above the kernel's one-hot limit."""
    return 11 if which == "small" else char_rnn.KERNEL_ONE_HOT_LIMIT + 1


class KernelSpy:
    """Records the calls of a layer's fused kernel (input width, number of layers)."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __call__(self, *args, **options):
        self.calls.append((args[0].shape[-1], options["num_layers"]))
        return self.kernel(*args, **options)


def run_and_grad(model, run, x, state, seed=3):
    """logits, final state and the gradient of a loss of both w.r.t. every parameter."""
    model.zero_grad(set_to_none=True)
    logits, final = run(x, state)
    generator = torch.Generator().manual_seed(seed)
    loss = (logits * torch.randn(logits.shape, generator=generator)).sum()
    for part in final:
        loss = loss + (part * torch.randn(part.shape, generator=generator)).sum()
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        grads[name] = p.grad.clone()
    return logits.detach(), tuple(part.detach() for part in final), grads


# (cell, whether its fused kernel runs on the CPU): the CPU default of each cell, and the other
# choice too, so that both the kernel path (GPUs) and the sequence path are checked for LSTM and RNN
PATHS = [("lstm", True), ("lstm", False), ("gru", False), ("rnn", False), ("rnn", True)]


@pytest.mark.parametrize("cell, kernel_on_cpu", PATHS)
@pytest.mark.parametrize("vocab", ["small", "large"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_fast_path_equals_per_step_graph(cell, kernel_on_cpu, vocab, num_layers, monkeypatch):
    H, B, T = 8, 3, 6
    V = vocab_size(vocab)
    assert (V > char_rnn.KERNEL_ONE_HOT_LIMIT) == (vocab == "large")
    model = make_model(cell, V, H, num_layers, dropout=0.5).eval()
    assert model.layers[0].kernel_on_cpu == (cell == "lstm")  # the defaults
    monkeypatch.setattr(type(model.layers[0]), "kernel_on_cpu", kernel_on_cpu)
    spy = KernelSpy(model.layers[0].kernel) if model.layers[0].kernel is not None else None
    if spy is not None:
        model.layers[0].kernel = spy
    state = random_state(model, B)
    x = tokens(V, B, T)

    logits, final, grads = run_and_grad(model, model.forward, x, state)
    ref_logits, ref_final, ref_grads = run_and_grad(model, model.forward_steps, x, state)

    # the path under test is the one intended
    if cell == "gru":
        assert not model.use_kernel
    elif not kernel_on_cpu:
        assert spy.calls == []  # every layer as its `sequence`
    elif vocab == "small":
        assert spy.calls == [(V, num_layers)]  # one-hot input into the kernel, all layers
    else:
        assert spy.calls == ([] if num_layers == 1 else [(H, num_layers - 1)])  # layer 1 as a sequence
    assert logits.shape == (B, T, V)
    close(logits, ref_logits)
    assert len(final) == len(ref_final) == (2 if cell == "lstm" else 1)
    for got, want in zip(final, ref_final, strict=True):
        assert got.shape == (num_layers, B, H)
        close(got, want)
    assert grads.keys() == ref_grads.keys() == {n for n, _ in model.named_parameters()}
    for name in grads:  # sums over batch and time: float32 rounding grows with the gradients' size
        scale = ref_grads[name].abs().max().item()
        close(grads[name], ref_grads[name], name, atol=GRAD_ATOL * max(1.0, scale))
        assert ref_grads[name].abs().max() > 0, name
    # gradients reach the parameters and nothing else
    assert all(not part.requires_grad and part.grad is None for part in state)
    assert x.grad is None


@pytest.mark.parametrize("cell, kernel_on_cpu", PATHS)
@pytest.mark.parametrize("vocab", ["small", "large"])
def test_bfloat16_autocast_follows_the_float32_numbers(cell, kernel_on_cpu, vocab, monkeypatch):
    """-precision bf16 runs the forward pass under bfloat16 autocast: every path runs there (the
    hand-written sequences take their inputs back to float32), the state stays float32, and logits
    and gradients follow float32's within bfloat16's precision (8 bits of mantissa)."""
    H, B, T = 16, 4, 8
    V = vocab_size(vocab)
    model = make_model(cell, V, H, 2, scale=0.3).train()
    monkeypatch.setattr(type(model.layers[0]), "kernel_on_cpu", kernel_on_cpu)
    state = random_state(model, B)
    x = tokens(V, B, T)

    def run(x, state):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, final = model(x, state)
        return logits.float(), final

    logits, final, grads = run_and_grad(model, run, x, state)
    ref_logits, ref_final, ref_grads = run_and_grad(model, model.forward, x, state)
    assert all(part.dtype == torch.float32 for part in final)
    assert all(grad.dtype == torch.float32 for grad in grads.values())
    assert not torch.equal(logits, ref_logits)  # bfloat16 did run
    close(logits, ref_logits, "logits", rtol=0.05, atol=0.05)
    for got, want in zip(final, ref_final, strict=True):
        close(got, want, "state", rtol=0.05, atol=0.05)
    for name in grads:
        scale = ref_grads[name].abs().max().item()
        close(grads[name], ref_grads[name], name, rtol=0.1, atol=0.05 * scale)


def test_on_a_gpu_the_one_hot_goes_into_the_kernel_at_every_vocabulary():
    """The path table: on the CPU only up to KERNEL_ONE_HOT_LIMIT; a GPU is launch-bound, and layer
    1's sequence launches kernels at every time step."""
    cpu, limit = torch.device("cpu"), char_rnn.KERNEL_ONE_HOT_LIMIT
    assert char_rnn.one_hot_into_kernel(cpu, limit) and not char_rnn.one_hot_into_kernel(cpu, limit + 1)
    for gpu in (torch.device("cuda", 0), torch.device("mps")):
        assert char_rnn.one_hot_into_kernel(gpu, 2583) and char_rnn.one_hot_into_kernel(gpu, 10 ** 5)


def test_without_onednn_bfloat16_lstm_the_kernel_runs_in_float32_and_the_rest_in_bfloat16(monkeypatch):
    """A CPU without AVX-512 has no bfloat16 LSTM in oneDNN (torch.lstm raises there): under
    bfloat16 autocast the kernel then runs in float32, so the state is float32's exactly, and the
    decoder still runs in bfloat16."""
    model = make_model("lstm", 11, 16, 2, scale=0.3)
    state, x = random_state(model, 4), tokens(11, 4, 8)
    autocast_in_kernel = []
    lstm = char_rnn.LSTMLayer.kernel

    def spy(*args, **kwargs):
        autocast_in_kernel.append(torch.is_autocast_enabled("cpu"))
        return lstm(*args, **kwargs)

    monkeypatch.setattr(char_rnn, "cpu_lstm_takes_bfloat16", lambda: False)
    monkeypatch.setattr(char_rnn.LSTMLayer, "kernel", staticmethod(spy))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, final = model(x, state)
    assert autocast_in_kernel == [False]
    assert logits.dtype == torch.bfloat16 and all(part.dtype == torch.float32 for part in final)
    _, float32_final = model(x, state)
    for got, want in zip(final, float32_final, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_on_a_gpu_under_bfloat16_autocast_the_kernel_runs_in_float32(monkeypatch):
    """kernel_precision: autocast would run cuDNN's RNN in float16 (no gradient scaler), so on a GPU
    the kernel runs with autocast off; on a CPU with oneDNN's bfloat16 LSTM autocast stays on."""
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type="cuda": True)
    off = char_rnn.kernel_precision(torch.device("cuda"))
    assert isinstance(off, torch.autocast) and not off._enabled and off.device == "cuda"
    monkeypatch.setattr(char_rnn, "cpu_lstm_takes_bfloat16", lambda: True)
    assert not isinstance(char_rnn.kernel_precision(torch.device("cpu")), torch.autocast)
    monkeypatch.setattr(char_rnn, "cpu_lstm_takes_bfloat16", lambda: False)
    assert isinstance(char_rnn.kernel_precision(torch.device("cpu")), torch.autocast)


def test_asking_the_cpu_for_a_bfloat16_lstm_draws_no_random_numbers():
    """It is asked before the model is initialised (check_precision) and in the middle of a run: a
    draw would change the run's weights or dropout masks."""
    before = torch.random.get_rng_state()
    assert char_rnn.cpu_lstm_takes_bfloat16.__wrapped__() in (True, False)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("cell, kernel_on_cpu", PATHS)
@pytest.mark.parametrize("vocab", ["small", "large"])
@pytest.mark.parametrize("loss_of", ["outputs", "final state"])
def test_fast_path_gradients_from_part_of_the_outputs(cell, kernel_on_cpu, vocab, loss_of, monkeypatch):
    """Training uses the logits only (the state is carried detached); the hand-written backwards
    get no gradient for the final state then, or none for the outputs in the other case."""
    H, B, T = 8, 3, 5
    V = vocab_size(vocab)
    model = make_model(cell, V, H, 2, dropout=0.5).eval()
    monkeypatch.setattr(type(model.layers[0]), "kernel_on_cpu", kernel_on_cpu)
    state = random_state(model, B)
    x = tokens(V, B, T)
    results = []
    for run in (model.forward, model.forward_steps):
        model.zero_grad(set_to_none=True)
        logits, final = run(x, state)
        loss = (logits ** 2).sum() if loss_of == "outputs" else sum((part ** 2).sum() for part in final)
        loss.backward()
        results.append({n: p.grad for n, p in model.named_parameters()})
    got, want = results
    for name in want:
        if want[name] is None:  # the decoder, when only the state counts
            assert got[name] is None or not got[name].any(), name
            continue
        scale = want[name].abs().max().item()
        close(got[name], want[name], name, atol=GRAD_ATOL * max(1.0, scale))


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_backward_is_the_derivative(cell):
    """Each cell's hand-written backward against numerical derivatives (float64), with gradients
    for every output, the initial state included."""
    from model.gru import GRUSequence
    from model.lstm import LSTMSequence
    from model.rnn import RNNSequence
    T, B, H = 4, 3, 5
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) - 0.5).requires_grad_()

    if cell == "lstm":
        function, inputs = LSTMSequence, (rand(T, B, 4 * H), rand(4 * H), rand(4 * H, H), rand(B, H), rand(B, H))
    elif cell == "gru":
        function, inputs = GRUSequence, (rand(T, B, 3 * H), rand(3 * H), rand(2 * H, H), rand(H, H), rand(B, H))
    else:
        function, inputs = RNNSequence, (rand(T, B, H), rand(H), rand(H, H), rand(B, H))
    inputs = tuple(t * 4 for t in inputs)  # spread the pre-activations over the nonlinearities
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(function.apply, inputs)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("vocab", ["small", "large"])
def test_one_kernel_call_per_layer_draws_the_masks_the_kernel_draws(cell, vocab, monkeypatch):
    """CharRNN.kernel_per_layer (a GPU, for a model with dropout; forced here on the CPU): the
    kernel called once per layer with self.dropout between gives, from the same seed, the outputs,
    state and gradients of the one call whose kernel draws the masks from torch's generator, and
    evaluation too."""
    assert not CharRNN(cell, 5, 4, 2, dropout=0.5).kernel_per_layer(torch.device("cpu"))
    assert CharRNN(cell, 5, 4, 2, dropout=0.5).kernel_per_layer(torch.device("cuda"))
    assert not CharRNN(cell, 5, 4, 2).kernel_per_layer(torch.device("cuda"))
    V = vocab_size(vocab)
    model = make_model(cell, V, 8, 3, dropout=0.5).train()
    monkeypatch.setattr(type(model.layers[0]), "kernel_on_cpu", True)
    spy = KernelSpy(model.layers[0].kernel)
    model.layers[0].kernel = spy
    state, x = random_state(model, 3), tokens(V, 3, 6)
    first = 0 if char_rnn.one_hot_into_kernel(x.device, V) else 1  # else layer 1 runs as its `sequence`
    results = {}
    for per_layer in (False, True):
        monkeypatch.setattr(CharRNN, "kernel_per_layer", lambda self, device, answer=per_layer: answer)
        for mode in ("train", "eval"):
            getattr(model, mode)()
            spy.calls.clear()
            torch.manual_seed(5)
            results[per_layer, mode] = run_and_grad(model, model.forward, x, state)
            assert [layers for _, layers in spy.calls] == ([1] * (3 - first) if per_layer else [3 - first])
    for mode in ("train", "eval"):
        (logits, final, grads), (ref_logits, ref_final, ref_grads) = results[True, mode], results[False, mode]
        close(logits, ref_logits, mode)
        for got, want in zip(final, ref_final, strict=True):
            close(got, want, mode)
        for name in grads:
            close(grads[name], ref_grads[name], name, atol=GRAD_ATOL * max(1.0, ref_grads[name].abs().max().item()))
    assert not torch.equal(results[True, "train"][0], results[True, "eval"][0])  # dropout acted


def test_lstm_keeps_the_kernels_gate_order_and_its_state_dict_char_rnns():
    """The parameters hold the gates as the kernels order them (i, f, g, o); state_dict() gives
    and load_state_dict() takes char-rnn's i, f, o, g (checkpoints, Torch7 files), and the kernel
    is handed the parameters themselves, with no copy in between."""
    model = make_model("lstm", 11, 4, 2)
    saved = model.state_dict()
    for n, layer in enumerate(model.layers):
        for linear_name in ("i2h", "h2h"):
            for part in ("weight", "bias"):
                kept = getattr(getattr(layer, linear_name), part).detach()
                given = saved[f"layers.{n}.{linear_name}.{part}"]
                assert torch.equal(given[:8], kept[:8])  # i, f
                assert torch.equal(given[8:12], kept[12:16]) and torch.equal(given[12:16], kept[8:12])  # o, g
    other = CharRNN("lstm", 11, 4, 2)
    other.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters(), strict=True))
    assert model.swapped_rows() == [not name.startswith("decoder") for name, _ in model.named_parameters()]
    spy = KernelSpy(torch.lstm)
    handed = []
    model.layers[0].kernel = lambda *args, **options: handed.extend(args[2]) or spy(*args, **options)
    model(tokens(11, 2, 3), random_state(model, 2))
    assert [id(w) for w in handed] == [id(w) for layer in model.layers
                                       for w in (layer.i2h.weight, layer.h2h.weight, layer.i2h.bias, layer.h2h.bias)]


def test_kernel_weights_follow_the_parameters():
    """The kernel path hands the kernel its parameters on every call: it must follow in-place
    updates (the optimizer's), parameters replaced and state loaded into place."""
    model = make_model("lstm", 11, 8, 2).eval()
    state = random_state(model, 3)
    x = tokens(11, 3, 5)

    def check():
        with torch.no_grad():
            logits, final = model(x, state)
            ref_logits, ref_final = model.forward_steps(x, state)
        close(logits, ref_logits)
        for got, want in zip(final, ref_final, strict=True):
            close(got, want)

    check()
    with torch.no_grad():  # in place, as the optimizer does
        for p in model.parameters():
            p.mul_(-0.9)
    check()
    model.layers[1].h2h.weight = torch.nn.Parameter(torch.rand(32, 8) - 0.5)  # replaced
    model.layers[0].i2h.weight.data = torch.rand(32, 11) - 0.5  # new memory under the same Parameter
    check()
    model.load_state_dict(make_model("lstm", 11, 8, 2, seed=5).state_dict())  # copied into place
    check()


def test_gather_columns_is_the_one_hot_product():
    from model.sequence import gather_columns
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(6, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    x = tokens(9, 3, 4)
    got = gather_columns(weight, x.t())
    want = F.one_hot(x.t(), 9).double() @ weight.t()
    assert torch.equal(got, want)
    grad = torch.rand(got.shape, generator=generator, dtype=torch.float64)
    (got_grad,) = torch.autograd.grad(got, weight, grad)
    (want_grad,) = torch.autograd.grad(want, weight, grad)
    close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("vocab", ["small", "large"])
def test_step_equals_forward_on_one_character(cell, vocab):
    H, B = 8, 4
    V = vocab_size(vocab)
    model = make_model(cell, V, H, 2, dropout=0.5).eval()
    state = random_state(model, B)
    x = tokens(V, B, 1)[:, 0]
    with torch.no_grad():
        logits, new_state = model.step(x, state)
        ref_logits, ref_state = model(x[:, None], state)
        steps_logits, _ = model.forward_steps(x[:, None], state)
    assert logits.shape == (B, V)
    close(logits, ref_logits[:, 0])
    close(logits, steps_logits[:, 0])
    for got, want in zip(new_state, ref_state, strict=True):
        close(got, want)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("vocab", ["small", "large"])
def test_fast_path_carries_state_across_calls(cell, vocab):
    """Two calls of forward, the state carried, equal one call on the whole sequence."""
    H, B, T = 8, 2, 6
    V = vocab_size(vocab)
    model = make_model(cell, V, H, 2).eval()
    state = random_state(model, B)
    x = tokens(V, B, T)
    with torch.no_grad():
        whole, whole_state = model(x, state)
        first, mid_state = model(x[:, :2], state)
        second, end_state = model(x[:, 2:], mid_state)
    close(torch.cat([first, second], dim=1), whole)
    for got, want in zip(end_state, whole_state, strict=True):
        close(got, want)


# ---- dropout --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_dropout_active_in_train_mode_only(cell, num_layers):
    V, H, B, T = 11, 16, 4, 5
    x = tokens(V, B, T)
    dropped = make_model(cell, V, H, num_layers, dropout=0.5).train()
    plain = make_model(cell, V, H, num_layers, dropout=0.0).train()
    state = random_state(dropped, B)
    with torch.no_grad():
        a, a_state = dropped(x, state)
        b, _ = dropped(x, state)
        assert not torch.allclose(a, b), "dropout 0.5 in train mode must make two calls differ"
        c, _ = plain(x, state)
        d, _ = plain(x, state)
        assert torch.equal(c, d), "dropout 0 must be deterministic"
        # the same weights in eval mode: no dropout, equal to dropout 0
        e, e_state = dropped.eval()(x, state)
        close(e, c)
        # never on the recurrent state: layer 1's input is not dropped, so its state is untouched
        for part, eval_part in zip(a_state, e_state, strict=True):
            close(part[0], eval_part[0])
        if num_layers > 1:  # the input of layer 2 is dropped
            assert not torch.allclose(a_state[0][1], e_state[0][1])


def test_dropout_rate_is_the_one_asked_for():
    """With dropout 0.5 about half of the decoder's inputs are zeroed (a 1-layer model: only there),
    the rest scaled by 1 / (1 - p)."""
    model = make_model("lstm", 11, 64, 1, dropout=0.5)
    seen = []
    model.decoder.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    x = tokens(11, 8, 20)
    with torch.no_grad():
        model.train()(x, model.zero_state(8))
        model.eval()(x, model.zero_state(8))
    dropped, plain = seen
    assert (plain == 0).float().mean().item() < 0.01
    zeroed = dropped == 0
    assert 0.4 < zeroed.float().mean().item() < 0.6
    close(dropped[~zeroed], 2 * plain[~zeroed])
