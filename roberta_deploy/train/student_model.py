"""A student's starting point: the teacher's architecture with fewer layers, holding the teacher's embeddings,
every n-th layer and its classifier (the layer-dropping start of DistilBERT and of "Poor Man's BERT")."""

from __future__ import annotations

import re

from ..errors import ModelLoadError

LAYER_INDEX = re.compile(r"\.layer\.(\d+)\.")  # BERT/RoBERTa encoder.layer.N, DistilBERT transformer.layer.N


def kept_layers(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """The teacher layers a student of `student_layers` starts from: the top one of each of as many
    equal blocks, so the last layer (the one the classifier was trained on) is always kept."""
    return tuple(round((index + 1) * teacher_layers / student_layers) - 1 for index in range(student_layers))


def student_from_teacher(teacher, layers: int):
    """A copy of the teacher's architecture with `layers` layers, holding the teacher's embeddings, its
    kept layers (kept_layers) and its classifier; returns (student, kept layers)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    kept = kept_layers(teacher.config.num_hidden_layers, layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    student = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    teacher_state = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        source = LAYER_INDEX.sub(lambda match: f".layer.{kept[int(match.group(1))]}.", name, count=1)
        if source not in teacher_state:
            raise ModelLoadError(f"the student's weight {name} has no counterpart {source} in the teacher",
                                 "distil a BERT, RoBERTa or DistilBERT sequence classifier")
        state[name] = teacher_state[source].detach().clone()
    student.load_state_dict(state)
    return student, kept
