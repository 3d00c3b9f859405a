"""Teachers: loading pretrained models, multi-task teachers and ensembles, and their training."""
from .loading import (load_encoder, load_sequence_classifier, load_tokenizer, minilm_path, resolve_model_path,
                      tokenizer_identity)
from .multitask import MultiTaskTeacher, TeacherEnsemble, state_fingerprint, tokenize_examples
from .training import (TaskBatchSampler, TeacherTrainConfig, config_from_dict, config_from_yaml, evaluate_teacher,
                       load_train_config, train_from_config, train_teacher)

__all__ = ["load_encoder", "load_sequence_classifier", "load_tokenizer", "minilm_path", "resolve_model_path",
           "tokenizer_identity", "MultiTaskTeacher", "TeacherEnsemble", "state_fingerprint", "tokenize_examples",
           "TaskBatchSampler", "TeacherTrainConfig", "config_from_dict", "config_from_yaml", "evaluate_teacher",
           "load_train_config", "train_from_config", "train_teacher"]
