"""Lines up the teacher's class (vocabulary) dimension with the student's before a distillation loss.

A teacher and student with different vocabulary sizes is a common, silent bug: if one tensor were simply
broadcast or cut, the loss would compare unrelated tokens.  So a mismatch is an error that names both sizes,
unless the caller asks to drop the teacher's extra trailing classes (e.g. a teacher whose embedding matrix
was padded to a multiple of 64 while the tokenizers agree on the first V ids).
"""
from __future__ import annotations

import torch


def match_teacher_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                          truncate_teacher_vocab: bool = False) -> torch.Tensor:
    """Teacher logits whose last dimension equals the student's; raise when the sizes cannot be matched.

    With ``truncate_teacher_vocab=True`` a *larger* teacher vocabulary is cut to the student's first V
    classes (its softmax is then renormalised over those V).  A smaller teacher vocabulary is always an error.
    """
    if not isinstance(truncate_teacher_vocab, bool):
        raise TypeError(f"truncate_teacher_vocab: expected a bool, got {type(truncate_teacher_vocab).__name__}")
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise TypeError(f"{name}: expected a tensor of logits [..., classes], got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else 'a 0-dim tensor'}")
    n_student, n_teacher = student_logits.shape[-1], teacher_logits.shape[-1]
    if n_teacher == n_student:
        return teacher_logits
    if n_teacher > n_student and truncate_teacher_vocab:
        return teacher_logits[..., :n_student]
    hint = (" Pass truncate_teacher_vocab=True to keep only the teacher's first "
            f"{n_student} classes if the extra ones are padding." if n_teacher > n_student else
            " A teacher with fewer classes than the student cannot be used.")
    raise ValueError(f"teacher_logits: the teacher has {n_teacher} classes (vocabulary size) but the student "
                     f"has {n_student}; distilling across different vocabularies would compare unrelated "
                     f"classes.{hint}")
