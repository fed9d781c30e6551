import re

import pandas as pd
import pytest

from analysis.validate import prepare_answers
from study.errors import AnalysisError


def test_training_answers_are_always_excluded(small_study):
    answers = small_study.answers
    test = prepare_answers(answers)
    assert len(test) == int((~answers["training"]).sum())
    assert not test["training"].any() and "training" not in set(test["scene"].astype(str))


def test_training_flags_from_csv_text_are_understood(small_study):
    answers = small_study.answers.assign(training=small_study.answers["training"].map({True: "True", False: "False"}))
    assert len(prepare_answers(answers)) == int((~small_study.answers["training"]).sum())


def _bad_cases(answers: pd.DataFrame):
    test = answers[~answers["training"]]
    out_of_range = answers.copy()
    out_of_range.loc[test.index[0], "value"] = 7
    mixed = answers.copy()
    mixed["protocol_hash"] = mixed["protocol_hash"].astype(str)
    mixed.loc[mixed.index[len(mixed) // 2:], "protocol_hash"] = "f" * 64
    no_pcr_indoor = answers[~((answers["scale"] == "PCR") & (answers["scene"] == "indoor"))]
    return {
        "empty": (answers.iloc[:0], "no answers"),
        "training only": (answers[answers["training"]], "only training answers"),
        "out of range": (out_of_range, "outside their scale's range"),
        "mixed protocols": (mixed, "2 protocol versions"),
        "scale missing for a scene": (no_pcr_indoor, "scene 'indoor' has no answers for scale(s) PCR"),
        "missing column": (answers.drop(columns=["scale"]), "lack the column(s) scale"),
    }


@pytest.mark.parametrize("case", ["empty", "training only", "out of range", "mixed protocols",
                                  "scale missing for a scene", "missing column"])
def test_bad_input_raises_one_line(small_study, case):
    frame, message = _bad_cases(small_study.answers)[case]
    with pytest.raises(AnalysisError, match=re.escape(message)) as info:
        prepare_answers(frame)
    assert "\n" not in str(info.value)
