"""GSB statistics (report Table 1), Wilson intervals and annotation parsing, against hand counts."""

import json
import math

import pytest

from evaluation.gsb import (
    GSBCounts,
    count_gsb,
    gsb_metrics,
    gsb_table,
    load_judgements,
    parse_judgements,
    summarize_gsb,
    wilson_interval,
)


def test_gsb_metrics_hand_computed():
    assert gsb_metrics(6, 2, 2) == pytest.approx({"win_rate": 0.75, "preference": 0.7, "margin": 0.4})
    assert gsb_metrics(1, 0, 3) == pytest.approx({"win_rate": 0.25, "preference": 0.25, "margin": -0.5})
    assert all(isinstance(v, float) for v in gsb_metrics(6, 2, 2).values())


@pytest.mark.parametrize("good, same, bad", [(6, 2, 2), (0, 7, 1), (10, 0, 0), (3, 9, 11)])
def test_margin_is_twice_preference_minus_one(good, same, bad):
    # (G - B)/N = 2 (G + S/2)/N - 1: Table 1's overall row (66.38 %, 32.71 %) satisfies it to rounding
    metrics = gsb_metrics(good, same, bad)
    assert metrics["margin"] == pytest.approx(2 * metrics["preference"] - 1)


def test_zero_counts_read_as_a_tie():
    assert gsb_metrics(0, 5, 0) == {"win_rate": 0.5, "preference": 0.5, "margin": 0.0}
    assert gsb_metrics(0, 0, 0) == {"win_rate": 0.5, "preference": 0.5, "margin": 0.0}


@pytest.mark.parametrize("args, field", [((-1, 0, 0), "good"), ((0, math.nan, 0), "same"), ((0, 0, "3"), "bad")])
def test_gsb_metrics_rejects_bad_counts_naming_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        gsb_metrics(*args)


def test_wilson_interval_hand_computed():
    # 8 of 10, z = 1.96: the textbook 0.490 - 0.943, and both ends solve (p_hat - p)^2 = z^2 p (1 - p) / n
    low, high = wilson_interval(8, 10, z=1.96)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    for end in (low, high):
        assert (0.8 - end) ** 2 == pytest.approx(1.96**2 * end * (1 - end) / 10)
    low, high = wilson_interval(10, 10, z=1.96)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert (1.0 - low) ** 2 == pytest.approx(1.96**2 * low * (1 - low) / 10)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_intervals_use_decisive_and_half_credit_counts():
    summary = summarize_gsb(GSBCounts(good=8, same=4, bad=2), z=1.96)
    assert summary.win_rate_interval == pytest.approx(wilson_interval(8, 10, z=1.96))
    assert summary.preference_interval == pytest.approx(wilson_interval(10, 14, z=1.96))
    assert (summary.win_rate, summary.preference, summary.margin) == pytest.approx((0.8, 10 / 14, 6 / 14))


def test_gsb_table_follows_report_aspect_order():
    counts = {"overall": GSBCounts(good=1, same=0, bad=0), "visual_quality": GSBCounts(good=0, same=0, bad=1)}
    table = gsb_table(counts)
    assert list(table) == ["visual_quality", "overall"]
    assert table["visual_quality"].win_rate == 0.0 and table["overall"].win_rate == 1.0


def row(**fields):
    base = {"prompt": "a red square moves left on a gray background", "left": "grpo", "right": "base",
            "aspect": "overall", "judgement": "left"}
    return json.dumps({**base, **fields})


def test_parse_judgements_keeps_valid_rows_and_names_bad_rows_and_fields():
    lines = [
        row(),                                  # 1 valid
        row(aspect="sharpness"),                # 2 unknown aspect
        "",                                     # 3 blank: skipped, still numbered
        row(annotatr="a1"),                     # 4 misspelt optional field
        "{not json",                            # 5
        row(right="grpo"),                      # 6 same video on both sides
        row(judgement="both", annotator="a2"),  # 7
        "[1, 2]",                               # 8 not an object
        row(judgement="same", annotator="a2"),  # 9 valid
    ]
    loaded = parse_judgements(lines)
    assert [(r.judgement, r.annotator) for r in loaded.rows] == [("left", None), ("same", "a2")]
    assert [(e.row, e.field) for e in loaded.errors] == [
        (2, "aspect"), (4, "annotatr"), (5, "<line>"), (6, "<row>"), (7, "judgement"), (8, "<line>"),
    ]
    assert "row 2, aspect:" in str(loaded.errors[0]) and "visual_quality" in loaded.errors[0].message


def test_load_judgements_reads_a_file(tmp_path):
    path = tmp_path / "gsb.jsonl"
    path.write_text(row() + "\n" + row(aspect="nope") + "\n")
    loaded = load_judgements(path)
    assert len(loaded.rows) == 1 and [(e.row, e.field) for e in loaded.errors] == [(2, "aspect")]


def test_count_gsb_is_side_independent_and_ignores_other_pairs():
    rows = parse_judgements([
        row(left="grpo", right="base", judgement="left"),   # A shown left, A preferred: good
        row(left="base", right="grpo", judgement="right"),  # A shown right, A preferred: good
        row(left="base", right="grpo", judgement="left"),   # B preferred: bad
        row(left="grpo", right="base", judgement="same"),   # same
        row(left="sft", right="base", judgement="left"),    # another pair: ignored
        row(left="grpo", right="base", judgement="right", aspect="motion_quality"),
    ]).rows
    counts = count_gsb(rows, "grpo", "base")
    assert list(counts) == ["motion_quality", "overall"]
    assert counts["overall"] == GSBCounts(good=2, same=1, bad=1)
    assert counts["motion_quality"] == GSBCounts(good=0, same=0, bad=1)
    assert count_gsb(rows, "base", "grpo")["overall"] == GSBCounts(good=1, same=1, bad=2)


def test_count_gsb_maps_video_paths_to_systems():
    rows = parse_judgements([
        row(left="videos/grpo/p0_s0.mp4", right="videos/base/p0_s0.mp4", judgement="right"),
        row(left="videos/base/p1_s0.mp4", right="videos/grpo/p1_s0.mp4", judgement="right"),
    ]).rows
    counts = count_gsb(rows, "grpo", "base", system_of=lambda path: path.split("/")[1])
    assert counts["overall"] == GSBCounts(good=1, same=0, bad=1)
