"""Good-Same-Bad (GSB) statistics for pairwise video comparisons (report §7.1, Table 1, Figure 8).

Protocol: an annotator (or the automatic judge in `evaluation.judge`) sees two videos for the same
prompt side by side, left/right order randomised, and for ONE aspect answers left | right | same.
For "system A vs system B" a judgement is Good when A was preferred, Bad when B was, Same otherwise,
whichever side A was shown on.

Human annotations are JSONL, one judgement per line:

    {"prompt": "...", "left": "grpo", "right": "base", "aspect": "motion_quality",
     "judgement": "left", "annotator": "a3"}

`left` / `right` name the systems, or the videos shown (pass `system_of` to map a video path to
its system). `load_judgements` validates row by row and keeps every valid row, so one typo does not
discard a day of annotation; each bad row is reported with its 1-based line number and field.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Callable, Iterable, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ASPECTS = ("visual_quality", "motion_quality", "text_alignment", "preservation", "overall")
Aspect = Literal["visual_quality", "motion_quality", "text_alignment", "preservation", "overall"]
Z_95 = 1.959963984540054  # standard normal 97.5 % quantile: two-sided 95 % intervals


class GSBCounts(BaseModel):
    """Good / Same / Bad counts of one comparison on one aspect (also the `eval.json` wire format)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    good: int = Field(ge=0)
    same: int = Field(ge=0)
    bad: int = Field(ge=0)

    @property
    def total(self) -> int:
        return self.good + self.same + self.bad


def gsb_metrics(good: float, same: float, bad: float) -> dict[str, float]:
    """Table 1's statistics as fractions: win rate G/(G+B), preference (G + S/2)/(G+S+B),
    margin (G − B)/(G+S+B).

    Zero denominators read as a tie, the value an all-"same" table gives: win rate 0.5 when
    G + B = 0 (no decisive judgement favours either side), preference 0.5 and margin 0.0 when there
    are no judgements at all. Reports show the count beside them, so a 0.5 from nothing is visible.
    """
    for name, value in (("good", good), ("same", same), ("bad", bad)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise ValueError(f"gsb_metrics: {name}={value!r} must be a finite count >= 0")
    decisive, total = good + bad, good + same + bad
    return {
        "win_rate": good / decisive if decisive else 0.5,
        "preference": (good + 0.5 * same) / total if total else 0.5,
        "margin": (good - bad) / total if total else 0.0,
    }


def wilson_interval(successes: float, trials: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials.

    Preferred over the normal (Wald) interval because it stays inside [0, 1] and keeps its coverage
    at the extreme win rates and small counts a GSB study often has.
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


class GSBSummary(NamedTuple):
    """One Table 1 row: counts, the three statistics and 95 % intervals for two of them."""

    counts: GSBCounts
    win_rate: float
    preference: float
    margin: float
    win_rate_interval: tuple[float, float]
    preference_interval: tuple[float, float]


def summarize_gsb(counts: GSBCounts, z: float = Z_95) -> GSBSummary:
    """Table 1 row with Wilson intervals.

    The preference interval treats a "same" as half a win over G+S+B trials (the score Table 1
    defines); ties are not Bernoulli trials, so this is an approximation — slightly conservative,
    as half-credits vary less than wins.
    """
    metrics = gsb_metrics(counts.good, counts.same, counts.bad)
    return GSBSummary(
        counts=counts,
        win_rate=metrics["win_rate"],
        preference=metrics["preference"],
        margin=metrics["margin"],
        win_rate_interval=wilson_interval(counts.good, counts.good + counts.bad, z),
        preference_interval=wilson_interval(counts.good + 0.5 * counts.same, counts.total, z),
    )


def gsb_table(counts_by_aspect: dict[str, GSBCounts], z: float = Z_95) -> dict[str, GSBSummary]:
    """Table 1: one summary per aspect, in the report's aspect order (unknown aspects last)."""
    order = [a for a in ASPECTS if a in counts_by_aspect] + [a for a in counts_by_aspect if a not in ASPECTS]
    return {aspect: summarize_gsb(counts_by_aspect[aspect], z) for aspect in order}


# ----------------------------------------------------------------------------------------------
# Human annotations.


class Judgement(BaseModel):
    """One annotated comparison: which of two videos is better on one aspect of one prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    left: str = Field(min_length=1)
    right: str = Field(min_length=1)
    aspect: Aspect
    judgement: Literal["left", "right", "same"]
    annotator: str | None = None

    @model_validator(mode="after")
    def _two_different_videos(self) -> "Judgement":
        if self.left == self.right:
            raise ValueError(f"left and right are both {self.left!r}; a comparison needs two different videos")
        return self


class RowError(NamedTuple):
    """Why one JSONL line was rejected: 1-based line number, field (or "<line>"), message."""

    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.message}"


class LoadedJudgements(NamedTuple):
    rows: list[Judgement]
    errors: list[RowError]


def parse_judgements(lines: Iterable[str]) -> LoadedJudgements:
    """Validate JSONL lines one by one; blank lines are skipped but keep their line numbers."""
    rows, errors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(RowError(number, "<line>", f"not JSON ({error.msg})"))
            continue
        if not isinstance(data, dict):
            errors.append(RowError(number, "<line>", f"expected a JSON object, got {type(data).__name__}"))
            continue
        try:
            rows.append(Judgement.model_validate(data))
        except ValidationError as error:
            for issue in error.errors():
                field = ".".join(str(part) for part in issue["loc"]) or "<row>"
                errors.append(RowError(number, field, issue["msg"]))
    return LoadedJudgements(rows, errors)


def load_judgements(path: str | Path) -> LoadedJudgements:
    """`parse_judgements` on a JSONL file."""
    return parse_judgements(Path(path).read_text().splitlines())


def count_gsb(
    rows: Iterable[Judgement],
    system_a: str,
    system_b: str,
    system_of: Callable[[str], str] = str,
) -> dict[str, GSBCounts]:
    """G/S/B counts per aspect for "A vs B" (Good = A preferred), whichever side A was shown on.

    Rows comparing any other pair are ignored; aspects without a row are absent.
    """
    tallies: dict[str, list[int]] = {}
    for row in rows:
        left, right = system_of(row.left), system_of(row.right)
        if {left, right} != {system_a, system_b}:
            continue
        tally = tallies.setdefault(row.aspect, [0, 0, 0])
        if row.judgement == "same":
            tally[1] += 1
        elif (row.judgement == "left") == (left == system_a):
            tally[0] += 1
        else:
            tally[2] += 1
    order = [a for a in ASPECTS if a in tallies]
    return {aspect: GSBCounts(good=tallies[aspect][0], same=tallies[aspect][1], bad=tallies[aspect][2]) for aspect in order}
