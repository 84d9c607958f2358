from model.char_rnn import LAYERS, CharRNN, State

__all__ = ["LAYERS", "CharRNN", "State"]
