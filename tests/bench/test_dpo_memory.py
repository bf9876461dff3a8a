"""bench/dpo_memory.py runs end to end (--quick) and prints a table and verdicts that parse."""

import re
import subprocess
import sys

VERDICT = re.compile(r"^claim (decoupled|sequential)\s+(equal|unequal)\s+O\(L_w\+L_l\)->O\(max\): (holds|does not hold) "
                     r"\(memory x[\d.]+, O\(max\) predicts x0\.\d\d\); zero overhead: (holds|does not hold) \(time x[\d.]+\)$")
ROW = re.compile(r"^(equal|unequal) (\d+)/(\d+)\s+(standard|decoupled|sequential)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def test_quick_run_prints_ratios_and_verdicts():
    output = subprocess.run(
        [sys.executable, "-m", "bench.dpo_memory", "--quick"], capture_output=True, text=True, timeout=240, check=True
    ).stdout
    rows = {(m[1], m[4]): [float(x) for x in m.groups()[4:]] for m in map(ROW.match, output.splitlines()) if m}
    assert len(rows) == 6, output
    for (lengths, mode), (peak_mib, memory_ratio, seconds, time_ratio) in rows.items():
        assert peak_mib > 0 and seconds > 0, (lengths, mode)
        if mode == "standard":
            assert memory_ratio == 1.0 and time_ratio == 1.0
    # one branch's graph instead of two equal ones: the measurement must see it
    assert rows[("equal", "sequential")][1] < 0.8, output
    verdicts = [VERDICT.match(line) for line in output.splitlines() if line.startswith("claim ")]
    assert len(verdicts) == 4 and all(verdicts), output
