"""Student models for multi-task distillation: a word-level BiLSTM and a small BERT, one interface
(:class:`StudentBase`), one saved-folder format (:func:`load_student`)."""
from .base import StudentBase, load_student
from .bilstm import BiLSTMStudent
from .configs import BiLSTMStudentConfig, TransformerStudentConfig
from .transformer import TransformerStudent

__all__ = ["StudentBase", "BiLSTMStudent", "BiLSTMStudentConfig", "TransformerStudent", "TransformerStudentConfig",
           "load_student"]
