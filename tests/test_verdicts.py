"""evaluation.verdicts: each verdict follows its rule from the interval alone."""
import math

import pytest

from evaluation.verdicts import INCONCLUSIVE, NOT_SHOWN, SHOWN, SLICE_SIZES, STUDY_RULES, TRANSPOSE_KEPT_METRICS, \
    TRANSPOSE_RULE, TRANSPOSE_SCALE, Rule, choose_slice_codebook_size, judge, judge_guidance, judge_guidance_scale, \
    judge_interval, judge_transpose, slice_sizes_within


@pytest.mark.parametrize("low, high, threshold, verdict", [
    (0.1, 0.3, 0.0, SHOWN), (-0.3, -0.1, 0.0, NOT_SHOWN), (-0.1, 0.2, 0.0, INCONCLUSIVE),
    (0.0, 0.2, 0.0, INCONCLUSIVE), (-0.2, 0.0, 0.0, NOT_SHOWN), (0.3, 0.4, 0.25, SHOWN),
    (0.2, 0.24, 0.25, NOT_SHOWN), (math.nan, 1.0, 0.0, INCONCLUSIVE), (None, None, 0.0, INCONCLUSIVE),
])
def test_an_interval_is_judged_against_the_threshold(low, high, threshold, verdict):
    assert judge_interval(low, high, threshold) == verdict


def test_per_element_claims_need_most_elements():
    rule = Rule("claim", "m", 0.0, per_element=True)
    up, down, wide = (0.1, 0.2), (-0.2, -0.1), (-0.1, 0.1)
    assert judge(rule, [up] * 4 + [wide] * 3)["verdict"] == SHOWN
    assert judge(rule, [up] * 3 + [wide] * 4)["verdict"] == INCONCLUSIVE
    assert judge(rule, [down] * 4 + [up] * 3)["verdict"] == NOT_SHOWN
    assert judge(rule, [up, down, wide, wide])["per_element"] == [SHOWN, NOT_SHOWN, INCONCLUSIVE, INCONCLUSIVE]


def test_the_study_rules_are_written_down_and_distinct():
    assert len({r.measure for r in STUDY_RULES}) == len(STUDY_RULES)
    for rule in STUDY_RULES:
        text = rule.describe()
        assert rule.measure in text and SHOWN in text and INCONCLUSIVE in text
    chance = {r.measure: r.threshold for r in STUDY_RULES}
    assert chance["quadrant_match"] == 0.25 and chance["valence_match"] == chance["arousal_match"] == 0.5


# Match intervals in GUIDANCE_TARGETS order (quadrant 0.55, valence 0.70, arousal 0.85), then the
# distance-from-data increases of pitch classes and polyphony.
CLEARS = [(0.6, 0.7), (0.75, 0.8), (0.9, 0.95)]
KEPT = [(-0.5, 0.2), (-0.1, 0.1)]


@pytest.mark.parametrize("matches, further, verdict", [
    (CLEARS, KEPT, SHOWN),
    (CLEARS, [(-0.5, 0.2), (0.05, 0.3)], NOT_SHOWN),                     # polyphony further for sure
    ([(0.6, 0.7), (0.5, 0.7), (0.9, 0.95)], KEPT, NOT_SHOWN),           # valence at or below 0.70
    ([(0.6, 0.7), (0.65, 0.8), (0.9, 0.95)], KEPT, INCONCLUSIVE),       # valence straddles 0.70
    ([(0.6, 0.7), (math.nan, math.nan), (0.9, 0.95)], KEPT, INCONCLUSIVE),
])
def test_a_guidance_scale_needs_every_target_and_no_metric_further(matches, further, verdict):
    assert judge_guidance_scale(matches, further) == verdict


def test_the_guidance_claim_needs_one_scale():
    assert judge_guidance([NOT_SHOWN, SHOWN, INCONCLUSIVE]) == SHOWN
    assert judge_guidance([NOT_SHOWN, NOT_SHOWN]) == NOT_SHOWN
    assert judge_guidance([NOT_SHOWN, INCONCLUSIVE]) == INCONCLUSIVE
    assert judge_guidance([]) == INCONCLUSIVE


# The remedy (transposition augmentation): the augmented prior's valence match minus the
# guided prior's at S = 2, then the distance-from-data increases of pitch classes and polyphony.
@pytest.mark.parametrize("valence, further, verdict", [
    ((0.02, 0.12), KEPT, SHOWN),
    ((0.02, 0.12), [(0.01, 0.4), (-0.1, 0.1)], NOT_SHOWN),              # pitch classes further for sure
    ((-0.05, 0.08), KEPT, INCONCLUSIVE),                                # the difference straddles 0
    ((-0.05, 0.08), [(-0.1, 0.1), (0.02, 0.2)], NOT_SHOWN),
    ((-0.12, 0.0), KEPT, NOT_SHOWN),                                    # at or below 0
    ((math.nan, math.nan), KEPT, INCONCLUSIVE),                         # no paired seed
    ((None, None), [], INCONCLUSIVE),
])
def test_the_remedy_needs_more_valence_than_guidance_and_no_metric_further(valence, further, verdict):
    assert judge_transpose(valence, further) == verdict
    assert TRANSPOSE_RULE.measure in TRANSPOSE_RULE.describe() and TRANSPOSE_RULE.threshold == 0.0
    assert TRANSPOSE_SCALE == 2.0 and TRANSPOSE_KEPT_METRICS == ("pitch_classes", "polyphony")


@pytest.mark.parametrize("readings, within, chosen", [
    # the smallest size within 1 point of the best accuracy and 0.02 of the best DCI
    ({32: (0.905, 0.44), 64: (0.912, 0.45), 128: (0.914, 0.46)}, [32, 64, 128], 32),
    ({32: (0.900, 0.44), 64: (0.912, 0.45), 128: (0.914, 0.46)}, [64, 128], 64),   # 32 is 1.4 points behind
    ({32: (0.914, 0.40), 64: (0.912, 0.43), 128: (0.910, 0.46)}, [128], 128),       # DCI decides
    ({32: (0.95, 0.30), 64: (0.92, 0.50), 128: (0.96, 0.49)}, [128], 128),
    ({32: (0.88, 0.50), 64: (0.92, 0.45), 128: (0.95, 0.40)}, [], None),           # no size is within both
    ({32: (0.90, 0.45), 64: (0.91, 0.45)}, None, None),                            # 128 has not run
    ({32: (0.90, 0.45), 64: (0.91, 0.45), 128: (math.nan, 0.45)}, None, None),
])
def test_the_slice_codebook_size_rule(readings, within, chosen):
    assert SLICE_SIZES == (32, 64, 128)
    assert slice_sizes_within(readings) == within
    assert choose_slice_codebook_size(readings) == chosen
