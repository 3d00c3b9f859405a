"""Data: examples, loaders (glue_data files, local tables, the Hub), the synthetic corpus, vocabularies and
transfer-set augmentation."""
from .augment import Augmenter, augment_examples
from .examples import Example
from .glue_files import ExampleList, glue_splits, glue_test_splits, load_glue_split
from .hub import HubUnavailableError, load_hub
from .synthetic import DEFAULT_SIZES, SYNTHETIC_TASKS, make_synthetic_corpus
from .tabular import load_table, parse_label
from .vocab import Vocab, build_vocab, load_word_vectors, tokenize

__all__ = [
    "Example", "ExampleList", "glue_splits", "glue_test_splits", "load_glue_split", "HubUnavailableError", "load_hub",
    "DEFAULT_SIZES", "SYNTHETIC_TASKS", "make_synthetic_corpus", "load_table", "parse_label", "Vocab",
    "build_vocab", "load_word_vectors", "tokenize", "Augmenter", "augment_examples",
]
